"""The extraction pipeline: plan, shards, resume, stale-feature refusal, missing items."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError
from mmrec.features.base import Encoder, Missing
from mmrec.features.store import FeatureEntry
from mmrec.pipeline.extract import ExtractConfig, extract

from conftest import raw_from_sequences


class HashText(Encoder):
    """A deterministic stand-in encoder: a 4-d vector from the title's characters."""

    key = "hashtext"
    modality = "text"
    dim = 4

    def make_input(self, item):
        t = item.get("title")
        if not t:
            return Missing("empty text")
        return t

    def collate(self, inputs):
        codes = [[ord(c) for c in t] for t in inputs]
        return {"x": torch.tensor([[sum(c), len(c), max(c), min(c)] for c in codes], dtype=torch.float32)}

    def encode(self, batch):
        return batch["x"] / 100.0

    def sort_key(self, item):
        return len(item.get("title") or "")

    def describe(self):
        return {"key": self.key, "pooling": "pooled", "dim": 4}


@pytest.fixture
def catalogue_ds(tmp_path):
    ids = [str(i) for i in range(1, 26)]
    raw = raw_from_sequences({f"u{u}": [str((u + k) % 25 + 1) for k in range(6)] for u in range(30)})
    titles = [f"item number {i}" if i != "7" else None for i in ids]
    raw.catalogue = Catalogue.build(ids, title=titles)
    return prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))


def _cfg(ds, tmp_path, **kw):
    return ExtractConfig(encoder="hashtext", dataset=str(ds), store=str(tmp_path / "store"), shard_size=10,
                         batch_size=4, num_workers=0, device="cpu", **kw)


def test_extract_writes_shards_manifest_and_missing(catalogue_ds, tmp_path):
    res = extract(_cfg(catalogue_ds, tmp_path), encoder=HashText(), log=lambda m: None)
    m = res.manifest
    assert m["n_items"] == 25 and m["n_rows"] == 24 and len(m["shards"]) == 3
    assert m["missing"] == {"7": "empty text"}
    errors = [json.loads(l) for l in (res.entry_dir / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"item_id": "7", "reason": "empty text"}]
    e = FeatureEntry(res.entry_dir)
    assert e.validate() == []
    feats, present = e.aligned(["", "3", "7", "unknown"])
    t = "item number 3"
    expect = np.array([sum(map(ord, t)), len(t), max(map(ord, t)), min(map(ord, t))]) / 100.0
    assert np.allclose(feats[1], expect.astype(np.float16).astype(np.float32))
    assert present.tolist() == [False, True, False, False]
    assert not feats[0].any() and not feats[2].any()


def test_rerun_resumes_and_changed_inputs_are_refused(catalogue_ds, tmp_path):
    done = []
    cfg = _cfg(catalogue_ds, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        def stop(s):
            done.append(s)
            if len(done) == 2:
                raise KeyboardInterrupt
        extract(cfg, encoder=HashText(), log=lambda m: None, on_shard_done=stop)
    assert not (Path(cfg.store) / "hashtext" / "manifest.json").exists()
    res = extract(cfg, encoder=HashText(), log=lambda m: None)
    assert (res.shards_written, res.shards_skipped) == (1, 2)
    # another dtype is another configuration: refused, then allowed with overwrite
    with pytest.raises(ConfigError, match="features from another encoder or settings; pass --overwrite"):
        extract(_cfg(catalogue_ds, tmp_path, dtype="float32"), encoder=HashText(), log=lambda m: None)
    res = extract(_cfg(catalogue_ds, tmp_path, dtype="float32", overwrite=True), encoder=HashText(), log=lambda m: None)
    assert res.shards_written == 3 and res.manifest["dtype"] == "float32"


def test_changed_catalogue_is_detected(catalogue_ds, tmp_path):
    cfg = _cfg(catalogue_ds, tmp_path)
    extract(cfg, encoder=HashText(), log=lambda m: None)
    import pyarrow.parquet as pq

    items = pq.read_table(catalogue_ds / "items.parquet")
    titles = items["title"].to_pylist()
    titles[0] = "a new title"
    import pyarrow as pa

    pq.write_table(items.set_column(items.column_names.index("title"), "title", pa.array(titles)),
                   catalogue_ds / "items.parquet")
    with pytest.raises(ConfigError, match=r"catalogue \(1 of 3 shards differ\)"):
        extract(cfg, encoder=HashText(), log=lambda m: None)
