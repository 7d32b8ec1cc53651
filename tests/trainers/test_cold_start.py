"""The cold-start protocol: held-out items never trained on, ranked by feature methods."""

import numpy as np
import pytest
import torch
from conftest import prepared_with_text

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError
from mmrec.runs.config import ColdConfig, RunConfig
from mmrec.trainers.loop import Trainer, cold_items


def test_cold_items_are_ranked_by_a_feature_method(tmp_path):
    # every user walks the ring 1..20; item features are random but fixed: mmsr-like methods can
    # still rank held-out items, and the results carry cold and warm figures for them
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(80)}
    ds, store = prepared_with_text(tmp_path, ring, 20)
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec_ef", "features": {"text": "text"},
                                "store": str(store), "cold": {"fraction": 0.2, "seed": 0},
                                "model": {"hidden": 16, "inner": 32, "dropout": 0.1, "attn_dropout": 0.1},
                                "train": {"epochs": 2, "threads": 1}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    # by hand: the saved test ranks split by whether the case's target is a held-out item
    from mmrec.trainers.evaluation import metrics_from_ranks

    data = PreparedDataset(ds)
    ranks = np.load(tmp_path / "run" / "test_ranks.npy")
    held = set((tmp_path / "run" / "cold_items.txt").read_text().split())
    raw = np.asarray(data.raw_item_ids)
    targets = raw[np.asarray(data.items)[data.eval_cases("test").pos]]
    is_cold = np.array([str(t) in held for t in targets])
    assert 0 < is_cold.sum() < len(is_cold)  # both kinds of case are there
    assert "note" not in res["test_cold"]  # a feature method ranks items it never trained on
    for name, sel in (("test_cold", is_cold), ("test_warm", ~is_cold)):
        expect = {"n_cases": int(sel.sum()), **metrics_from_ranks(ranks[sel], run.eval.ks)}
        assert res[name] == pytest.approx(expect)




def test_held_out_items_leave_training_parts_only(small):
    d = PreparedDataset(small)
    held = np.zeros(d.n_items + 1, dtype=bool)
    held[3] = True  # item "3"
    v = d.without_training_events_of(held)
    seqs = [v.sequence(u).tolist() for u in range(v.n_users)]
    # leave-one-out: the last two events of each user are validation and test; "3" goes from the rest
    assert seqs == [[1, 2, 4, 5], [2, 1, 5], [4, 5, 1, 2, 3]]
    assert v.split.tolist() == [[2, 3], [1, 2], [3, 4]]
    assert [v.items[p] for p in v.eval_cases("valid").pos] == [4, 1, 2]
    assert [v.items[p] for p in v.eval_cases("test").pos] == [5, 5, 3]
    assert v.item_popularity[3] == 0 and d.item_popularity[3] == 3
    assert d.sequence(2).tolist() == [3, 4, 5, 1, 2, 3]  # the dataset itself is unchanged



def test_cold_items_are_seeded_and_sized():
    a = cold_items(200, ColdConfig(fraction=0.1, seed=3))
    assert a.sum() == 20 and not a[0]
    assert (a == cold_items(200, ColdConfig(fraction=0.1, seed=3))).all()
    assert (a != cold_items(200, ColdConfig(fraction=0.1, seed=4))).any()
    with pytest.raises(ConfigError, match="cold.fraction"):
        from_dict(RunConfig, {"dataset": "x", "cold": {"fraction": 1.0}})



def test_cold_run_never_trains_on_held_out_items(tmp_path, successor_raw):
    ds = prepare(successor_raw, tmp_path / "ds", PrepareConfig())
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec", "cold": {"fraction": 0.2, "seed": 1},
                                "model": {"dropout": 0.1, "attn_dropout": 0.1},
                                "train": {"epochs": 2, "threads": 1, "loss": "bce"}})
    tr = Trainer(run, tmp_path / "run", log=lambda s: None)
    cold = tr.cold
    assert cold.sum() == 8  # 20% of 40 items
    batch = tr.samples.batch(np.arange(len(tr.samples)), n_neg=3, rng=np.random.default_rng(0))
    assert not cold[batch["items"]][batch["items"] > 0].any()
    assert not cold[batch["targets"]][batch["targets"] > 0].any()
    assert not cold[batch["negatives"]].any()
    # the softmax never sees them either: their logits are -inf in training, finite in evaluation
    model = tr.raw_model
    logits = torch.zeros(2, 40)
    model.train()
    assert torch.isinf(model.train_logits(logits)[:, torch.from_numpy(cold[1:])]).all()
    model.eval()
    assert torch.isfinite(model.train_logits(logits)).all()
    res = tr.fit()
    test_cases = res["test"]["n_cases"]
    assert res["test_cold"]["n_cases"] + res["test_warm"]["n_cases"] == test_cases
    assert res["test_cold"]["n_cases"] > 0 and "note" in res["test_cold"]  # sasrec scores ids only
    assert 0 <= res["test_warm"]["ndcg@10"] <= 1
    assert res["protocol"]["cold_start"]["held_out_items"] == 8
    listed = (tmp_path / "run" / "cold_items.txt").read_text().split()
    raw_ids = PreparedDataset(ds).raw_item_ids
    assert sorted(listed) == sorted(raw_ids[np.flatnonzero(cold)])
