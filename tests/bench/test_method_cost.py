"""bench/method_cost.py: the quick run has a row for every method with positive figures and ratios;
the peak-memory reading against allocations of known size; a second code tree side by side."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("method_cost", REPO / "bench" / "method_cost.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["method_cost"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_quick_table_has_every_method_with_positive_ratios(capsys):
    from mmrec.trainers.methods import METHODS

    out = _module().main(["--quick"])
    printed = capsys.readouterr().out
    assert set(out) == {"ml-1m", "beauty"}
    for shape, res in out.items():
        assert set(res["methods"]) == set(METHODS), shape
        for name, row in res["methods"].items():
            assert "error" not in row, (shape, name, row.get("error"))
            assert row["step_s"]["1t"] > 0 and row["peak_step_mib"] > 0 and all(v > 0 for v in row["eval_s_per_1000"].values())
            assert all(v is not None and v > 0 for v in row["ratio"].values()), (shape, name, row["ratio"])
            ref = res["methods"]["sasrec"]
            assert row["ratio"]["step_s[1t]"] == pytest.approx(row["step_s"]["1t"] / ref["step_s"]["1t"], rel=1e-9)
            assert f"| {name} |" in printed
        assert res["methods"]["sasrec"]["ratio"]["step_s[1t]"] == 1.0


def test_peak_step_memory_counts_the_live_peak_of_a_step(capfd):
    """4 MiB, then 2 MiB more (6 live), the 4 freed, 1 more (3 live): the peak is 6 MiB; a block
    allocated before the reading does not count; the profiler's native start / stop lines are not
    printed, and descriptor 2 works again after the reading."""
    mod = _module()
    before = torch.empty(1 << 22)  # 16 MiB, live before

    def step():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB
        del a
        c = torch.empty(1 << 18)  # 1 MiB
        del b, c

    assert mod.peak_step_mib(step) == pytest.approx(6.0, abs=0.01)
    assert before.numel()
    os.write(2, b"after the reading\n")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "USDT" not in err and "after the reading" in err


def test_method_settings_in_a_row_name():
    mod = _module()
    assert mod.parse_method("ant@hidden=64,inner=64,position=reverse") == (
        "ant", {"hidden": 64, "inner": 64, "position": "reverse"})
    assert mod.parse_method("sasrec") == ("sasrec", {})
    with pytest.raises(ValueError, match="key=value"):
        mod.parse_method("ant@hidden")


def test_another_tree_side_by_side(capsys):
    """``--tree same=REPO``: the same code in a worker process gives a row per method beside this
    tree's, with its ratios to this tree's SASRec; a row's own settings reach the model."""
    out = _module().main(["--quick", "--shapes", "beauty", "--methods", "sasrec", "gru4rec@hidden=32",
                          "--tree", f"same={REPO}"])
    rows = out["beauty"]["methods"]
    assert set(rows) == {"sasrec", "gru4rec@hidden=32", "sasrec [same]", "gru4rec@hidden=32 [same]"}
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["step_s"]["1t"] > 0 and all(v > 0 for v in row["ratio"].values())
    assert "| sasrec [same] |" in capsys.readouterr().out


def test_experts_bound_quick_times_both_ways():
    res = _module().main(["--quick", "--experts-bound"])
    assert res["experts"] >= 2 and res["seconds"]["loop"] > 0 and res["seconds"]["stacked"] > 0
    assert res["loop_over_stacked"] == pytest.approx(res["seconds"]["loop"] / res["seconds"]["stacked"])


def test_moe_quick_times_both_ways():
    res = _module().main(["--quick", "--moe"])
    assert set(res["tables"]) == {"text", "image"}
    for r in res["tables"].values():
        assert r["seconds"]["loop"] > 0 and r["seconds"]["batched"] > 0
        assert r["loop_over_batched"] == pytest.approx(r["seconds"]["loop"] / r["seconds"]["batched"])


def test_readout_quick_times_both_ways_and_they_agree():
    """Every method's ``query`` against its states read at the last position: both timed, the same values."""
    res = _module().main(["--quick", "--readout", "--methods", "sasrec", "odmt", "syncrec", "gru4rec"])
    assert set(res["methods"]) == {"sasrec", "odmt", "syncrec", "gru4rec"}
    for name, r in res["methods"].items():
        assert "error" not in r, (name, r)
        assert r["seconds_per_1000"]["states"] > 0 and r["seconds_per_1000"]["query"] > 0
        assert r["speedup"] == pytest.approx(r["seconds_per_1000"]["states"] / r["seconds_per_1000"]["query"])
        assert r["max_abs_diff"] < 1e-4, name
