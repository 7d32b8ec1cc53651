"""UniSRec: pre-train, then fine-tune with the frozen parts loaded."""

import json
import shutil

import pytest
import torch
from conftest import loss_and_grads, prepared_with_text

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


# -- the sequence-sequence task and the code flags ----------------------------------------------------
def _model(n=12, dim=6, word_drop=None, **cfg):
    from mmrec.features.aligned import FeatureTable
    from mmrec.trainers.methods.unisrec import UniSRec, UniSRecConfig

    g = torch.Generator().manual_seed(3)
    table = torch.randn(n + 1, dim, generator=g)
    table[0] = 0
    present = torch.ones(n + 1, dtype=torch.bool)
    feats = {"text": FeatureTable("text", table, present, {})}
    wd = None
    if word_drop is not None:
        wd = FeatureTable("text", word_drop(table), present.clone(), {})
    base = {"hidden": 8, "inner": 16, "heads": 2, "dropout": 0.0, "attn_dropout": 0.0, "adaptor_dropout": 0.0,
            "objective": "pretrain"}
    torch.manual_seed(0)
    m = UniSRec(from_dict(UniSRecConfig, {**base, **cfg}), n, 6, features=feats, word_drop=wd)
    with torch.no_grad():  # non-uniform gates and centres, so a wrong feature would show
        for p in m.text.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _batch():
    items = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 12, 1], [2, 4, 0, 0, 0, 0]])
    lengths = torch.tensor([4, 3, 6, 2])
    targets = torch.zeros_like(items)
    targets[torch.arange(4), lengths - 1] = torch.tensor([5, 8, 2, 5])  # rows 0 and 3 share a target
    return {"items": items, "lengths": lengths, "targets": targets}


def test_item_drop_rules_by_hand():
    from mmrec.trainers.methods.unisrec import item_drop

    items = torch.tensor([[5, 6, 7, 8, 0, 0], [1, 2, 3, 0, 0, 0]])
    lengths = torch.tensor([4, 3])
    keep = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 1]]).bool()
    ids, n = item_drop(items, lengths, keep, "keep")
    assert ids.tolist() == [[5, 7, 8, 0, 0, 0], [1, 0, 0, 0, 0, 0]] and n.tolist() == [3, 1]
    # the released code: a run of dropped items overwrites the kept one before it (6 replaces 5; the
    # last item, 3, always survives)
    ids, n = item_drop(items, lengths, keep, "scatter")
    assert ids.tolist() == [[6, 7, 8, 0, 0, 0], [3, 0, 0, 0, 0, 0]] and n.tolist() == [3, 1]


def test_item_drop_scatter_rule_is_the_codes_scatter():
    """UniSRec data/transform.py's packing, written out, against ``item_drop(..., "scatter")``."""
    from mmrec.trainers.methods.unisrec import item_drop

    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 13, (200,), generator=g)
    items = torch.randint(1, 50, (200, 12), generator=g) * (torch.arange(12)[None] < lengths[:, None])
    keep = torch.bernoulli(torch.full(items.shape, 0.8), generator=g).bool()
    mask = keep | items.eq(0)
    mask[:, 0] = True
    drop_index = torch.cumsum(mask, dim=1) - 1
    code = torch.zeros_like(items).scatter(dim=-1, index=drop_index, src=items)
    code_len = torch.gather(drop_index, 1, (lengths - 1).unsqueeze(1)).squeeze(1) + 1
    ids, n = item_drop(items, lengths, keep, "scatter")
    assert torch.equal(ids, code) and torch.equal(n, code_len)
    ids_keep, n_keep = item_drop(items, lengths, keep, "keep")
    assert torch.equal(n_keep, code_len) and not torch.equal(ids_keep, code)
    assert torch.equal(ids_keep[:, 0], items[:, 0])  # the first item always survives under "keep"


def test_seq_seq_loss_is_lambda_times_the_augmented_infonce():
    from mmrec.trainers.methods.unisrec import item_drop

    m = _model(seq_seq_weight=0.5, same_target_logit="0")
    b = _batch()
    keep = torch.tensor([[1, 0, 1, 0, 1, 1]] * 4).bool()
    m.augmentation_draw = lambda items: (False, keep[: len(items)])
    total = m.loss(b, None)
    m0 = _model(seq_seq_weight=0.0, same_target_logit="0")
    l_si = m0.loss(b, None)
    assert set(m0.loss_parts) == {"seq_item"}
    with torch.no_grad():
        s = m.query(b["items"], b["lengths"])
        aug, n = item_drop(b["items"], b["lengths"], keep, "keep")
        a = m.query(aug, n)
        logits = (s @ a.T) / 0.07
        logits[0, 3] = logits[3, 0] = 0.0  # rows 0 and 3 share their target: the code's logit 0
        l_ss = (torch.logsumexp(logits, 1) - logits.diag()).mean()
    assert torch.allclose(total, l_si + 0.5 * l_ss, atol=1e-5)
    assert m.loss_parts["seq_seq"] == pytest.approx(float(l_ss), abs=1e-5) and m.loss_parts["word_drop"] == 0.0


def test_seq_seq_weight_zero_is_the_loss_before_the_task():
    """seq_seq_weight=0 draws nothing and gives the sequence-item loss alone, as before."""
    import torch.nn.functional as F

    from mmrec.trainers.modules.losses import infonce_in_batch

    m = _model(seq_seq_weight=0.0, dropout=0.3, attn_dropout=0.3).train()
    b = _batch()
    torch.manual_seed(5)
    loss = m.loss(b, None)
    after = torch.rand(())
    torch.manual_seed(5)
    h = m.sequence_states(b["items"], b["lengths"])  # the former pre-training loss, step by step
    last = h[torch.arange(4), b["lengths"] - 1]
    tgt = torch.tensor([5, 8, 2, 5])
    old = infonce_in_batch(last, F.normalize(m._items(tgt), dim=-1), 0.07, target_ids=tgt)
    assert torch.equal(loss, old) and torch.equal(after, torch.rand(()))


def test_word_drop_swaps_the_dropped_positions_vectors():
    b = _batch()
    m = _model(word_drop=lambda t: t * -2.0 + 1.0, item_drop_prob=0.0)
    torch.manual_seed(0)
    word, keep = m.augmentation_draw(b["items"])
    assert word and keep.shape == b["items"].shape  # item_drop_prob 0: always word drop
    with torch.no_grad():
        s = m.query(b["items"], b["lengths"])
        all_kept = m.augmented_last(b["items"], b["lengths"], True, torch.ones_like(keep))
        none_kept = m.augmented_last(b["items"], b["lengths"], True, torch.zeros_like(keep))
        # a mixed mask: even positions kept, odd ones dropped. Row 1 is [5, 6, 7]: item 5 (position 0)
        # keeps its text vector, item 6 (position 1) takes its word-drop one; neither is in another row
        half = torch.ones_like(keep)
        half[:, 1::2] = False
        base = m.augmented_last(b["items"], b["lengths"], True, half)

        def moved(table, item):
            saved = table[item].clone()
            table[item] += 1.0
            out = m.augmented_last(b["items"], b["lengths"], True, half)
            table[item] = saved
            return [not torch.allclose(out[r], base[r], atol=1e-6) for r in range(4)]

        assert moved(m.feat_word_drop, 6) == [False, True, False, False]  # dropped: its word-drop vector is read
        assert moved(m.text.feat_text, 6) == [False] * 4  # ... and its text vector is not
        assert moved(m.feat_word_drop, 5) == [False] * 4  # kept: its word-drop vector is not read
        assert moved(m.text.feat_text, 5) == [False, True, False, False]
        m.text.feat_text.copy_(m.feat_word_drop)  # every position from the word-drop table
        s_wd = m.query(b["items"], b["lengths"])
    assert torch.allclose(all_kept, s, atol=1e-6) and torch.allclose(none_kept, s_wd, atol=1e-6)
    assert not torch.allclose(s, s_wd, atol=1e-3)
    # without a word-drop table every batch uses item drop
    assert not _model(item_drop_prob=0.0).augmentation_draw(b["items"])[0]


def test_pad_candidate_adds_the_codes_padding_class():
    m = _model(objective="finetune", mode="transductive")
    with torch.no_grad():
        m.item.weight[0].normal_()
    b = _batch()
    plain = m.loss(b, None)
    m.cfg.pad_candidate = True
    pad = m.loss(b, None)
    with torch.no_grad():
        h = m.sequence_states(b["items"], b["lengths"])[b["targets"] > 0]
        t = b["targets"][b["targets"] > 0]
        items = m.item_embeddings()[1:]
        row0 = m.text.adaptors["text"](torch.zeros(1, 6)) + m.item.weight[:1]
        row0 = row0 / row0.norm()
        z = h @ items.T / 0.07
        z0 = h @ row0.T / 0.07
        want_plain = (torch.logsumexp(z, 1) - z[torch.arange(len(t)), t - 1]).mean()
        want_pad = (torch.logsumexp(torch.cat([z0, z], 1), 1) - z[torch.arange(len(t)), t - 1]).mean()
    assert torch.allclose(plain, want_plain, atol=1e-5) and torch.allclose(pad, want_pad, atol=1e-5)
    assert float(pad.detach()) > float(plain.detach())


def test_unisrec_pretrain_with_word_drop_features_entry(tmp_path):
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(30)}
    ds, store = prepared_with_text(tmp_path, ring, 20)
    cfg = {"dataset": str(ds), "method": "unisrec", "features": {"text": "text"}, "store": str(store),
           "model": {"hidden": 16, "inner": 32, "objective": "pretrain", "item_drop_prob": 0.0,
                     "word_drop_features": str(store / "text")},
           "train": {"epochs": 1, "threads": 1, "batch_size": 16}}
    tr = Trainer(from_dict(RunConfig, cfg), tmp_path / "pre", log=lambda s: None)
    assert tr.raw_model.has_word_drop
    tr.fit()
    rows = [json.loads(x) for x in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    parts = [r["loss_parts"] for r in rows if "loss_parts" in r]
    assert parts and parts[0]["word_drop"] == 1.0 and "seq_seq" in parts[0]
    cfg["model"]["word_drop_features"] = "text"  # a name: looked up in the run's store, as --features names are
    assert Trainer(from_dict(RunConfig, cfg), tmp_path / "pre2", log=lambda s: None).raw_model.has_word_drop


def test_a_pretraining_folder_saved_before_the_seq_seq_term_resumes_without_it():
    from mmrec.runs.config import upgrade_saved_config
    from mmrec.trainers.methods.unisrec import UniSRecConfig

    old = {"dataset": "d", "method": "unisrec", "model": {"objective": "pretrain"}}
    assert upgrade_saved_config(old, UniSRecConfig)["model"]["seq_seq_weight"] == 0.0
    finetune = {"dataset": "d", "method": "unisrec", "model": {}}
    assert upgrade_saved_config(finetune, UniSRecConfig)["model"]["seq_seq_weight"] == 1e-3  # unused there


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_finetune_one_item_table_per_step_keeps_the_loss_and_every_gradient(mode):
    """Fine-tuning computes the text items once per step (the inputs read the candidates' rows):
    without dropout and gate noise, the loss and every gradient of the per-use computation."""
    import torch.nn.functional as F

    from mmrec.trainers.modules.sequence import encode

    m = _model(objective="finetune", mode=mode).train()
    for a in m.text.adaptors.values():
        a.noise = False
    b = _batch()
    b["targets"] = torch.where(b["items"] > 0, torch.roll(b["items"], -1, 1).clamp(min=1), 0)

    class Train:
        loss = "ce"

    def per_use():
        h = F.normalize(encode(m.encoder, m._items(b["items"]), b["lengths"]), dim=-1)
        mask = b["targets"] > 0
        e = F.normalize(m._items(None), dim=-1)
        return F.cross_entropy(h[mask] @ e[1:].T / m.cfg.temperature, b["targets"][mask] - 1)

    new_loss, new = loss_and_grads(m, lambda: m.loss(b, Train()))
    old_loss, old = loss_and_grads(m, per_use)
    assert new_loss.item() == pytest.approx(old_loss.item(), abs=1e-6)
    assert new.keys() == old.keys() and any(".experts." in n for n in new)
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name
