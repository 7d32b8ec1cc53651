"""UniSRec: pre-train, then fine-tune with the frozen parts loaded."""

import json
import shutil

import pytest
import torch
from conftest import prepared_with_text

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer


def test_unisrec_pretrain_then_finetune_loads_and_freezes(tmp_path, successor_raw):
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(60)}
    ds, store = prepared_with_text(tmp_path, ring, 20)
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
