"""Merging prepared datasets and their feature entries (pre-training on several datasets)."""

import json

import numpy as np
import pytest
from conftest import raw_from_sequences
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.data.schema import Catalogue
from mmrec.features.aligned import load_features
from mmrec.features.store import FeatureEntry
from mmrec.pipeline.extract import ExtractConfig, extract
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer

runner = CliRunner()


def _part(tmp_path, name, seqs, prices):
    raw = raw_from_sequences(seqs, name=name)
    raw.catalogue = Catalogue.build(list(prices), price=list(prices.values()))
    ds = prepare(raw, tmp_path / name, PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    extract(ExtractConfig(encoder="price", dataset=str(ds), store=str(tmp_path / "features" / name), num_workers=0,
                          device="cpu", dtype="float32"), log=lambda m: None)
    return ds


@pytest.fixture
def two(tmp_path):
    a = _part(tmp_path, "a", {"u1": ["1", "2", "3"], "u2": ["2", "3", "1", "2"]}, {"1": 1.0, "2": 2.0, "3": None})
    b = _part(tmp_path, "b", {"u1": ["x", "y", "x", "y"], "v": ["y", "x", "y"]}, {"x": 10.0, "y": 20.0})
    return a, b


def test_merge_keeps_sequences_splits_and_prefixes_ids(two, tmp_path):
    a, b = two
    r = runner.invoke(app, ["data", "merge", f"a={a}", f"b={b}", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    m, da, db = PreparedDataset(tmp_path / "m"), PreparedDataset(a), PreparedDataset(b)
    assert (m.n_users, m.n_items) == (4, 5)
    assert list(m.raw_item_ids) == ["", "a:1", "a:2", "a:3", "b:x", "b:y"]
    assert list(m.raw_user_ids) == ["a:u1", "a:u2", "b:u1", "b:v"]
    # user a:u2 keeps 2 3 1 2; user b:u1 keeps x y x y with b's items after a's 3 items
    assert m.sequence(1).tolist() == da.sequence(1).tolist() == [2, 3, 1, 2]
    assert m.sequence(2).tolist() == (db.sequence(0) + 3).tolist() == [4, 5, 4, 5]
    assert m.split.tolist() == da.split.tolist() + db.split.tolist()
    items = m.item_table().to_pydict()
    assert items["domain"] == ["a", "a", "a", "b", "b"] and items["price"] == [1.0, 2.0, None, 10.0, 20.0]
    assert [x["name"] for x in json.loads((tmp_path / "m" / "dataset.json").read_text())["merged_from"]] == ["a", "b"]
    r = runner.invoke(app, ["data", "merge", f"a={a}", "-o", str(tmp_path / "m2")])
    assert r.exit_code == 2 and "at least two" in r.output


def test_merged_features_align_with_the_merged_dataset(two, tmp_path):
    a, b = two
    runner.invoke(app, ["data", "merge", f"a={a}", f"b={b}", "-o", str(tmp_path / "m")])
    r = runner.invoke(app, ["features", "merge", f"a={tmp_path / 'features' / 'a' / 'price'}",
                            f"b={tmp_path / 'features' / 'b' / 'price'}", "-o", str(tmp_path / "features" / "m" / "price")])
    assert r.exit_code == 0, r.output
    e = FeatureEntry(tmp_path / "features" / "m" / "price")
    assert e.validate() == [] and e.missing == {"a:3": "no price"}
    merged = load_features({"price": "price"}, PreparedDataset(tmp_path / "m"), tmp_path / "features" / "m")["price"]
    pa_ = load_features({"price": "price"}, PreparedDataset(a), tmp_path / "features" / "a")["price"]
    pb = load_features({"price": "price"}, PreparedDataset(b), tmp_path / "features" / "b")["price"]
    assert merged.present.tolist() == [False, True, True, False, True, True]
    assert np.array_equal(merged.table[1:4].numpy(), pa_.table[1:4].numpy())
    assert np.array_equal(merged.table[4:6].numpy(), pb.table[1:3].numpy())
    # a part without this modality is not given: its items are missing in the merged entry
    r = runner.invoke(app, ["features", "merge", f"b={tmp_path / 'features' / 'b' / 'price'}",
                            "-o", str(tmp_path / "features" / "m" / "bonly")])
    assert r.exit_code == 0, r.output
    only_b = load_features({"price": "bonly"}, PreparedDataset(tmp_path / "m"), tmp_path / "features" / "m")["price"]
    assert only_b.present.tolist() == [False, False, False, False, True, True]
    assert np.array_equal(only_b.table[4:6].numpy(), pb.table[1:3].numpy()) and not only_b.table[1:4].any()
    # a UniSRec pre-training run on the merged dataset reads the merged entry
    run = from_dict(RunConfig, {"dataset": str(tmp_path / "m"), "method": "unisrec", "features": {"text": "price"},
                                "store": str(tmp_path / "features" / "m"), "model": {"hidden": 8, "inner": 16}})
    with pytest.raises(Exception, match="holds price features, not text"):
        Trainer(run, tmp_path / "run", log=lambda s: None)
