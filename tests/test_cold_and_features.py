"""Features into training (slots, alignment, errors) and the cold-start protocol."""


import numpy as np
import pytest
import torch

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError, DataError
from mmrec.features.aligned import check_slots, load_features, parse_features_option
from mmrec.pipeline.extract import ExtractConfig, extract
from mmrec.trainers.loop import ColdConfig, RunConfig, Trainer, cold_items

from conftest import raw_from_sequences


@pytest.fixture
def small(tmp_path):
    # u0: 1 2 3 4 5   u1: 2 3 1 5   u2: 3 4 5 1 2 3
    raw = raw_from_sequences({"u0": ["1", "2", "3", "4", "5"], "u1": ["2", "3", "1", "5"],
                              "u2": ["3", "4", "5", "1", "2", "3"]})
    raw.catalogue = Catalogue.build(["1", "2", "3", "4", "5", "6"], price=[1.0, 2.0, None, 4.0, 5.0, 6.0])
    return prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))


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


def test_features_option_and_slot_errors(small, tmp_path):
    assert parse_features_option("text=minilm, image=/x/effnet") == {"text": "minilm", "image": "/x/effnet"}
    with pytest.raises(ConfigError, match="slot=entry pairs"):
        parse_features_option("minilm")
    with pytest.raises(ConfigError, match="method sasrec uses no item features"):
        check_slots("sasrec", {"text": "x"}, (), (), tmp_path)
    with pytest.raises(ConfigError, match=r"needs features for image: give them with --features text=ENTRY,image=ENTRY "
                                          r"\(store .*: none in"):
        check_slots("mmsr", {"text": "x"}, ("text", "image"), ("text", "image"), tmp_path / "nostore")


def test_load_features_aligns_and_marks_absent_items(small, tmp_path):
    store = tmp_path / "store"
    extract(ExtractConfig(encoder="price", dataset=str(small), store=str(store), num_workers=0, device="cpu",
                          dtype="float32"), log=lambda m: None)
    d = PreparedDataset(small)
    feats = load_features({"price": "price"}, d, store)
    f = feats["price"]
    assert f.table.shape == (d.n_items + 1, 64) and f.present.tolist() == [False, True, True, False, True, True]
    assert not f.table[0].any() and not f.table[3].any()  # padding and the item with no price are zeros
    assert f.source["items_without"] == 1 and f.source["encoder"] == "price"
    # item "1" (price 1.0) has the sinusoidal code of log1p(1.0) * 100: sin at 0, cos at 1 of frequency 1
    assert f.table[1, 0].item() == pytest.approx(np.sin(np.log1p(1.0) * 100), abs=1e-5)
    assert f.table[1, 1].item() == pytest.approx(np.cos(np.log1p(1.0) * 100), abs=1e-5)
    with pytest.raises(ConfigError, match="holds price features, not text"):
        load_features({"text": "price"}, d, store)
    with pytest.raises(DataError, match="entries under .*: price"):
        load_features({"price": "nope"}, d, store)
