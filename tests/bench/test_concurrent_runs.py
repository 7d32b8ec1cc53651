"""bench/concurrent_runs.py: the table's ratios by hand, and the quick mode (runs started together)."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("concurrent_runs", REPO / "bench" / "concurrent_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(spe, ndcg=0.1, threads=2):
    return {"s_per_epoch": spe, "threads": threads, "test": {"ndcg@10": ndcg}}


def test_table_ratios_against_one_run_after_the_other():
    mod = _bench()
    res = {"alone": [{"wall_s": 60.0, "runs": [_run(19.0)]}],
           # two together at 77 and 104 s an epoch: one after the other would take 2 x 19 = 38 s an epoch
           "two, default threads": [{"wall_s": 330.0, "runs": [_run(77.0), _run(104.0)]}],
           "two, train.threads=1": [{"wall_s": 100.0, "runs": [_run(32.0, threads=1), _run(34.0, 0.2, threads=1)]}]}
    lines = mod.table(res).splitlines()
    assert lines[2] == "| alone | 2 | 19.0 | 60.0 | 1 run | 1 run | yes |"
    # 38 / 104 = 0.37x (slower together); walls 120 / 330 = 0.36x
    assert lines[3] == "| two, default threads | 2, 2 | 77.0, 104.0 | 330.0 | 0.37x | 0.36x | yes |"
    # 38 / 34 = 1.12x faster together; 120 / 100 = 1.20x; one run's metrics differ from the run alone
    assert lines[4] == "| two, train.threads=1 | 1, 1 | 32.0, 34.0 | 100.0 | 1.12x | 1.20x | NO |"


@pytest.mark.slow
def test_quick_mode_runs_every_case(tmp_path, capsys):
    doc = _bench().main(["--quick", "--out", str(tmp_path / "c.json")])
    res = doc["results"]
    assert set(res) >= {"alone", "two, default threads", "two, train.threads=1"}
    assert [len(r[0]["runs"]) for r in res.values()] == [1] + [2] * (len(res) - 1)
    assert all(run["threads"] == 1 for run in res["two, train.threads=1"][0]["runs"])
    if "two, one core each" in res:  # the affinity mask sizes mmrec's default threads
        assert all(run["threads"] == 1 for run in res["two, one core each"][0]["runs"])
    assert all(run["s_per_epoch"] > 0 for r in res.values() for run in r[0]["runs"])
    out = capsys.readouterr().out
    assert out.count("| two, ") == len(res) - 1 and "| alone |" in out
    assert (tmp_path / "c.json").exists()
