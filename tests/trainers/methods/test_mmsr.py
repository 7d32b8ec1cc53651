"""MMSR: the attention fusion's output gain, and runs saved before it."""

import functools
import json
import shutil

import pytest
from conftest import loss_and_grads, prepared_with_text, random_features

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer
from mmrec.trainers.methods import METHODS


def _feats(n_items, dims, missing=()):
    return random_features(n_items, dims, {modality: missing for modality in dims})



def test_mmsr_fusion_gain_reaches_the_attention_fusion():
    """model.fusion_gain sets the attention fusion's initial output gain (default 1/sqrt(hidden)); a
    non-positive one is refused with the setting's name."""
    f = _feats(10, {"text": 12, "image": 8})
    cls = METHODS["mmsr"]
    default = cls(from_dict(cls.Config, {"hidden": 16, "inner": 32}), 10, 5, features=f)
    assert default.items.fusion.ffn.norm.weight.tolist() == [0.25] * 16
    code = cls(from_dict(cls.Config, {"hidden": 16, "inner": 32, "fusion_gain": 1.0}), 10, 5, features=f)
    assert code.items.fusion.ffn.norm.weight.tolist() == [1.0] * 16
    with pytest.raises(ConfigError, match="model.fusion_gain must be positive"):
        cls(from_dict(cls.Config, {"hidden": 16, "fusion_gain": -1.0}), 10, 5, features=f)



def test_a_run_saved_before_fusion_gain_resumes_with_the_gain_it_had(tmp_path):
    """Runs saved before model.fusion_gain existed started attention fusions at gain 1: such a folder
    resumes only with --set model.fusion_gain=1; with another fusion, or one modality (no fusion at
    all), the setting changes nothing and the run resumes as it is."""
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(20)}
    ds, store = prepared_with_text(tmp_path, ring, 20)
    shutil.copytree(store / "text", store / "image")  # a second modality: the same vectors as "image"
    manifest = next((store / "image").glob("manifest*"))
    manifest.write_text(manifest.read_text().replace('"modality": "text"', '"modality": "image"')
                        .replace('"name": "text"', '"name": "image"'))

    def run(fusion, epochs, modalities=("text", "image"), **model):
        return from_dict(RunConfig, {"dataset": str(ds), "method": "mmsr", "features": {s: s for s in modalities},
                                     "store": str(store), "model": {"hidden": 8, "inner": 16, "fusion": fusion, **model},
                                     "train": {"epochs": epochs, "threads": 1, "batch_size": 32}})

    one_modality = functools.partial(run, modalities=("text",))
    for fusion, make in (("merged_attention", run), ("sum", run), ("merged_attention-text", one_modality)):
        Trainer(make(fusion.split("-")[0], 1), tmp_path / fusion, log=lambda s: None).fit()
        cfg_path = tmp_path / fusion / "config.json"
        cfg = json.loads(cfg_path.read_text())
        assert cfg["model"]["fusion_gain"] is None
        del cfg["model"]["fusion_gain"]  # as if saved before the setting existed
        cfg["train"]["epochs"] = 2
        cfg_path.write_text(json.dumps(cfg))
    saved = (tmp_path / "merged_attention" / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"model.fusion_gain: 1.0 there, None now"):
        Trainer(run("merged_attention", 2), tmp_path / "merged_attention", log=lambda s: None).fit(resume=True)
    assert (tmp_path / "merged_attention" / "config.json").read_text() == saved  # the refusal changed nothing
    res = Trainer(run("merged_attention", 2, fusion_gain=1.0), tmp_path / "merged_attention",
                  log=lambda s: None).fit(resume=True)
    assert res["epochs_run"] == 2
    assert Trainer(run("sum", 2), tmp_path / "sum", log=lambda s: None).fit(resume=True)["epochs_run"] == 2
    res = Trainer(one_modality("merged_attention", 2), tmp_path / "merged_attention-text", log=lambda s: None).fit(resume=True)
    assert res["epochs_run"] == 2


# ------------------------------------------------------------------ the code's behaviour (model.* flags)

def _mmsr(feats, **model):
    import torch

    cls = METHODS["mmsr"]
    torch.manual_seed(0)
    cfg = {"hidden": 16, "inner": 32, "dropout": 0.0, "attn_dropout": 0.0, "feature_dropout": 0.0, **model}
    return cls(from_dict(cls.Config, cfg), 10, 5, features=feats).eval()


def test_modality_norm_makes_items_blind_to_a_modality_s_scale():
    """model.modality_norm: a LayerNorm (no gain or bias) on each stored feature, so scaling one
    modality's features (EfficientNet's are ~6x MiniLM's) changes nothing; without it, it does."""
    import torch

    f = _feats(10, {"text": 12, "image": 8})
    scaled = _feats(10, {"text": 12, "image": 8})
    scaled["image"].table.mul_(6.0)
    for norm in (True, False):
        a = _mmsr(f, modality_norm=norm).items.table()
        b = _mmsr(scaled, modality_norm=norm).items.table()
        assert torch.allclose(a, b, atol=1e-5) == norm
    assert not list(_mmsr(f, modality_norm=True).items.modality_norms.parameters())  # no gain, no bias


def _token_feats(n_items=10, t_text=4, t_image=3, dim=6, missing_image=()):
    import torch

    from mmrec.features.aligned import FeatureTable

    g = torch.Generator().manual_seed(3)
    text = torch.randn(n_items + 1, t_text, dim, generator=g)
    lens = torch.randint(1, t_text + 1, (n_items + 1,), generator=g)
    text = text * (torch.arange(text.shape[1])[None, :] < lens[:, None])[..., None]
    image = torch.randn(n_items + 1, t_image, dim, generator=g)
    present = torch.ones(n_items + 1, dtype=torch.bool)
    present[0] = False
    img_present = present.clone()
    img_present[list(missing_image)] = False
    image[~img_present] = 0.0
    text[0] = 0.0
    return {"text": FeatureTable("text", text, present, {}), "image": FeatureTable("image", image, img_present, {})}


def test_feature_tokens_fuse_every_token_and_ignore_padding_tokens():
    """model.feature_tokens: merged attention over all tokens (hand-computed: the block over the
    concatenated valid tokens, then their mean); padding tokens (zero rows) change nothing; an item
    without a modality has the missing vector as its one token; the chunked table() equals lookup()."""
    import torch

    f = _token_feats(missing_image=(4,))
    m = _mmsr(f, feature_tokens=True, fusion_heads=4)
    it = m.items
    ids = torch.arange(1, 11)
    got = it.lookup(ids)
    # by hand for item 2: adapt, concatenate the valid tokens, one block, mean
    text, image = f["text"].table[2], f["image"].table[2]
    keep = (text != 0).any(-1)
    keep[0] = True
    toks = torch.cat([it.adaptors["text"](text)[keep], it.adaptors["image"](image)]) + 0.0
    toks = torch.cat([toks[:int(keep.sum())] + it.fusion.type_emb.weight[0], toks[int(keep.sum()):] + it.fusion.type_emb.weight[1]])
    h = it.fusion.ffn(it.fusion.attn(toks[None], None, False))[0]
    assert torch.allclose(got[1], h.mean(0), atol=1e-5)
    # item 4 has no image: its image part is the missing vector, one token
    toks4 = it._modality_tokens("image", torch.tensor([4]))
    assert toks4[1].tolist() == [[True, False, False]] and torch.equal(toks4[0][0, 0], it.missing["image"].detach())
    # more padding tokens: the same items
    from mmrec.features.aligned import FeatureTable

    more = {k: FeatureTable(k, torch.cat([v.table, torch.zeros(11, 3, 6)], 1), v.present, {}) for k, v in f.items()}
    padded = _mmsr(more, feature_tokens=True, fusion_heads=4)
    assert torch.allclose(padded.items.lookup(ids), got, atol=1e-6)
    it.item_chunk = 3
    assert torch.allclose(it.table()[1:], got, atol=1e-6) and it.table()[0].abs().sum() == 0
    with pytest.raises(ConfigError, match="merged_attention only"):
        _mmsr(f, feature_tokens=True, fusion="sum")
    with pytest.raises(ConfigError, match="token sequences"):
        _mmsr(f)  # token features without model.feature_tokens: refused as before


def test_fusion_flags_reach_the_block():
    """model.fusion_heads/fusion_act/fusion_type_embedding: the code's bert-base block (12 heads, GELU,
    token-type embeddings computed but never added). Without the type embedding, merged attention is
    symmetric in its modalities (swapping text and image tables changes no item)."""
    import torch
    import torch.nn.functional as F

    f = _feats(10, {"text": 8, "image": 8})
    swapped = {"text": f["image"], "image": f["text"]}
    code = dict(fusion_heads=4, fusion_act="gelu", fusion_type_embedding=False)
    m = _mmsr(f, **code)
    assert m.items.fusion.attn.heads == 4 and m.items.fusion.ffn.act is F.gelu and m.items.fusion.type_emb is None
    s = _mmsr(swapped, **code)
    s.items.adaptors["text"].load_state_dict(m.items.adaptors["image"].state_dict())
    s.items.adaptors["image"].load_state_dict(m.items.adaptors["text"].state_dict())
    s.items.fusion.load_state_dict(m.items.fusion.state_dict())
    assert torch.allclose(m.items.table(), s.items.table(), atol=1e-6)
    d = _mmsr(f)  # mmrec's defaults: ReLU, one head, an added modality embedding
    assert d.items.fusion.ffn.act is F.relu and d.items.fusion.attn.heads == 1 and d.items.fusion.type_emb is not None
    with pytest.raises(ConfigError, match="fusion_heads"):
        _mmsr(f, fusion_heads=5)


def test_backbone_flags_attn_bias_eps_and_act():
    """model.attn_bias=false: the SASRec backbone's Q/K/V/output maps have no trainable bias (zero
    buffers that an optimiser step leaves at zero), and query() (the last-position path) still agrees
    with the full states; model.backbone_eps sets every LayerNorm's epsilon; model.act reaches the
    backbone's FFN (it used to be ignored)."""
    import torch
    import torch.nn.functional as F

    from mmrec.trainers.modules.sequence import gather_last

    f = _feats(10, {"text": 8, "image": 8})
    m = _mmsr(f, attn_bias=False, backbone_eps=1e-6, act="relu")
    names = [n for n, _ in m.named_parameters()]
    assert not any(n.startswith("encoder.") and n.endswith(("qkv.bias", "out.bias")) for n in names)
    assert "encoder.blocks.0.ffn.fc1.bias" in names
    items = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    lengths = torch.tensor([3, 5])
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m.loss({"items": items, "targets": items.roll(-1, 1) * (items > 0), "lengths": lengths,
            "negatives": torch.full_like(items, 9)}, type("T", (), {"loss": "bce"})()).backward()
    opt.step()
    m.eval()
    assert all(b.attn.qkv.bias.abs().sum() == 0 and b.attn.out.bias.abs().sum() == 0 for b in m.encoder.blocks)
    with torch.no_grad():
        assert torch.allclose(m.query(items, lengths), gather_last(m.sequence_states(items, lengths), lengths), atol=1e-5)
    norms = [mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert norms and all(n.eps == 1e-6 for n in norms)
    assert all(b.ffn.act is F.relu for b in m.encoder.blocks)
    d = _mmsr(f)
    assert d.encoder.blocks[0].attn.qkv.bias is not None and d.encoder.norm.eps == 1e-12
    assert d.encoder.blocks[0].ffn.act is F.gelu  # mmrec's default act


def test_presets_name_existing_model_keys():
    """Every model.* key of MMSR's presets is a field of its config, and the code preset's values build."""
    import dataclasses

    from mmrec.trainers.presets import presets_of

    fields = {f.name for f in dataclasses.fields(METHODS["mmsr"].Config)}
    presets = presets_of("mmsr")
    for name in ("paper", "code"):
        keys = [k.split(".", 1)[1] for k in presets[name] if k.startswith("model.")]
        assert keys and set(keys) <= fields, set(keys) - fields
    model = {k.split(".", 1)[1]: v.value for k, v in presets["code"].items() if k.startswith("model.")}
    model.update(hidden=24, inner=48, fusion_heads=12)  # scaled down, as on a CPU
    m = _mmsr(_token_feats(dim=6), **model)
    assert m.items.tokens and m.items.fusion.type_emb is None


def test_one_item_table_per_step_keeps_the_loss_and_every_gradient():
    """MMSR's step computes the fused items once (the inputs read the candidates' rows): without
    dropout, the loss and every gradient of the per-use computation (merged-attention fusion)."""
    import torch
    import torch.nn.functional as F

    from mmrec.trainers.modules.sequence import encode

    m = _mmsr(_feats(10, {"text": 6, "image": 4}, missing=[2])).train()
    b = {"items": torch.tensor([[1, 2, 3, 2, 0], [4, 5, 6, 7, 8]]), "targets": torch.tensor([[2, 3, 2, 9, 0], [5, 6, 7, 8, 1]]),
         "lengths": torch.tensor([4, 5])}

    class Train:
        loss = "ce"

    def per_use():
        h = encode(m.encoder, m.items.lookup(b["items"]), b["lengths"])
        mask = b["targets"] > 0
        return F.cross_entropy(h[mask] @ m.items.table()[1:].T, b["targets"][mask] - 1)

    new_loss, new = loss_and_grads(m, lambda: m.loss(b, Train()))
    old_loss, old = loss_and_grads(m, per_use)
    assert abs(new_loss.item() - old_loss.item()) < 1e-6
    assert new.keys() == old.keys() and any(n.startswith("items.fusion") for n in new)
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name
