"""UniSRec: pre-train, then fine-tune with the frozen parts loaded."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import raw_from_sequences

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError
from mmrec.features.store import write_manifest, write_shard
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer


def _prepared_with_text(tmp_path, seqs, n_items, dim=8, seed=0):
    raw = raw_from_sequences(seqs)
    ids = [str(i) for i in range(1, n_items + 1)]
    raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids])
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    # a text "feature" that reveals the successor rule: item k's vector is a one-hot-ish code of k
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_items, dim)).astype(np.float32)
    entry = tmp_path / "store" / "text"
    (entry / "shards").mkdir(parents=True)
    info = write_shard(entry / "shards" / "part-00000.h5", ids, feats, fmt="h5", dtype="float32")
    write_manifest(entry, {"version": 1, "name": "text", "encoder": {"encoder": "synthetic"}, "modality": "text",
                           "format": "h5", "dtype": "float32", "shape_per_item": [dim], "n_items": n_items,
                           "n_rows": n_items, "shards": [info], "missing": {}, "catalogue_hash": "x",
                           "config_hash": "y", "library_versions": {}, "created": "now"})
    return ds, tmp_path / "store"



def test_unisrec_pretrain_then_finetune_loads_and_freezes(tmp_path, successor_raw):
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(60)}
    ds, store = _prepared_with_text(tmp_path, ring, 20)
    base = {"dataset": str(ds), "method": "unisrec", "features": {"text": "text"}, "store": str(store),
            "model": {"hidden": 16, "inner": 32, "dropout": 0.1, "attn_dropout": 0.1},
            "train": {"epochs": 2, "threads": 1, "batch_size": 16}}
    pre = from_dict(RunConfig, {**base, "model": {**base["model"], "objective": "pretrain"}})
    res = Trainer(pre, tmp_path / "pre", log=lambda s: None).fit()
    assert res["features"]["text"]["items_with_feature"] == 20
    ft = from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": str(tmp_path / "pre")}})
    tr = Trainer(ft, tmp_path / "ft", log=lambda s: None)
    m = tr.raw_model
    assert m.loaded_from["frozen"]
    from safetensors.torch import load_file

    pre_w = load_file(str(tmp_path / "pre" / "best.safetensors"))
    blocks = {n: p for n, p in m.named_parameters() if n.startswith("encoder.blocks")}
    assert blocks and all(not p.requires_grad for p in blocks.values())
    assert all(torch.equal(p.detach(), pre_w[n]) for n, p in blocks.items())
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(n.startswith("text.adaptors") for n in trainable) and "encoder.norm.weight" in trainable
    assert not any(n.startswith("encoder.position") for n in trainable)
    res = tr.fit()
    after = load_file(str(tmp_path / "ft" / "best.safetensors"))
    assert all(torch.equal(after[n], pre_w[n]) for n in blocks)  # frozen means unchanged
    # the fine-tuned run evaluates on its own: its checkpoint holds the pre-trained tensors too

    from typer.testing import CliRunner

    from mmrec.cli import app

    shutil.rmtree(tmp_path / "pre")
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ndcg@10"] == pytest.approx(res["test"]["ndcg@10"], abs=1e-12)
    with pytest.raises(ConfigError, match="no best.safetensors"):
        Trainer(from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": str(tmp_path)}}),
                tmp_path / "x", log=lambda s: None)
