"""The RecBole exporter of bench/recbole_side_by_side.py: rows, order and counts (RecBole not needed)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import raw_from_sequences

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("recbole_side_by_side", REPO / "bench" / "recbole_side_by_side.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_rows_order_and_counts(tmp_path):
    long = [f"x{k}" for k in range(55)]  # 55 events: 53 training events -> 52 targets, 50 in mmrec's window
    seqs = {"a": ["p", "q", "r", "s", "t"], "b": ["t", "s", "p", "q"], "c": ["q", "p", "r"], "d": long}
    d = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "p",
                                PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    exp = _bench().export_recbole(tmp_path / "p", tmp_path / "atomic", "toy")

    path = tmp_path / "atomic" / "toy" / "toy.inter"
    assert exp["path"] == str(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = [ln.split("\t") for ln in lines[1:]]
    assert len(rows) == 5 + 4 + 3 + 55

    # back to raw ids: every user's sequence, in order, timestamps 0, 1, 2, ...
    users = list(d.raw_user_ids)
    got: dict[str, list[str]] = {}
    for u, i, t in rows:
        raw_u = users[int(u)]
        assert float(t) == len(got.get(raw_u, []))
        got.setdefault(raw_u, []).append(d.raw_item_ids[int(i)])
    assert got == seqs
    # users appear in internal-id order, each user's rows contiguous
    order = [int(u) for u, _, _ in rows]
    assert order == sorted(order)

    assert exp["n_users"] == 4 and exp["n_items"] == 5 + 55 and exp["n_items_seen"] == 60
    assert exp["n_events"] == 67
    assert exp["n_valid"] == 4 and exp["n_test"] == 4  # every user has >= 3 events
    assert exp["loo"] is True
    # RecBole: one sample per training prefix = sum(a_u - 1), a_u = len - 2
    assert exp["recbole_train_samples"] == 2 + 1 + 0 + 52
    # mmrec: last window of at most 50 targets per user
    assert exp["mmrec_train_targets"] == 2 + 1 + 0 + 50
    assert exp["targets_repeating_history"] == {"valid": 0, "test": 0}


def test_repeated_targets_are_counted(tmp_path):
    seqs = {"a": ["p", "q", "p", "q"], "b": ["p", "q", "r", "r"]}  # a: valid p, test q repeat; b: test r repeats
    prepare(raw_from_sequences(seqs), tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    exp = _bench().export_recbole(tmp_path / "p", tmp_path / "atomic", "rep")
    assert exp["targets_repeating_history"] == {"valid": 1, "test": 2}
    assert (tmp_path / "atomic" / "rep" / "rep.inter").read_text().count("\n") == 1 + 8


def test_show_merges_the_sides_of_two_only_runs(tmp_path, capsys, monkeypatch):
    def side(spe, ndcg):
        return {"epoch_seconds": [spe, spe], "train_targets_per_epoch": 1000, "final_eval_seconds": 2.0,
                "peak_rss_mib": 100.0, "test_ndcg10": ndcg, "test_hr10": 2 * ndcg, "epochs_run": 2, "best_epoch": 1}
    docs = {"m.json": ("mmrec", side(10.0, 0.03)), "r.json": ("recbole", side(40.0, 0.02))}
    for name, (kind, res) in docs.items():
        (tmp_path / name).write_text(json.dumps({"settings": {"seed": 1}, "results": [
            {"dataset": "toy", "seed": 1, "timing_only": False, kind: res}]}))
    bench = _bench()
    monkeypatch.setattr(sys, "argv", ["x", "--show", str(tmp_path / "m.json"), str(tmp_path / "r.json"),
                                      "--out", str(tmp_path / "both.json")])
    bench.main()
    out = capsys.readouterr().out
    ratio = [l for l in out.splitlines() if "mmrec/RecBole" in l][0]
    # s/epoch 10 / 40, targets/s 100 / 25, NDCG 0.03 / 0.02; the seed is named
    assert ratio.startswith("| toy (seed 1) | mmrec/RecBole |")
    assert "| 0.25x | 1.00x | 4.00x |" in ratio and "| 1.50x |" in ratio
    assert len(json.loads((tmp_path / "both.json").read_text())["results"]) == 1
    assert "peak GPU MiB" not in out  # CPU runs: no GPU column
    # an mmrec variant (--mmrec-set) pairs with the same RecBole side
    (tmp_path / "v.json").write_text(json.dumps({"settings": {"seed": 1}, "results": [
        {"dataset": "toy", "seed": 1, "timing_only": False, "mmrec_set": ["train.batch_size=64"],
         "mmrec": side(20.0, 0.02)}]}))
    monkeypatch.setattr(sys, "argv", ["x", "--show", str(tmp_path / "m.json"), str(tmp_path / "r.json"),
                                      str(tmp_path / "v.json")])
    bench.main()
    ratios = [l for l in capsys.readouterr().out.splitlines() if "mmrec/RecBole" in l]
    assert len(ratios) == 2 and ratios[1].startswith("| toy (seed 1) [mmrec train.batch_size=64] | mmrec/RecBole | | 0.50x |")
    table = bench.table([{"dataset": "g", "mmrec": dict(side(1.0, 0.1), cuda_peak_mib=300.0),
                          "recbole": dict(side(2.0, 0.1), cuda_peak_mib=600.0)}])
    assert "peak GPU MiB" in table and "| 300 |" in table and "| 0.50x |" in table.splitlines()[-1]
    # one side alone cannot make a row
    monkeypatch.setattr(sys, "argv", ["x", "--show", str(tmp_path / "m.json")])
    with pytest.raises(SystemExit):
        bench.main()
    assert "no mmrec or no RecBole side" in capsys.readouterr().err
