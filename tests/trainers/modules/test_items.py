"""Item vectors from stored features (FeatureItemEncoder): missing vectors, refused token features."""

import pytest
import torch
from conftest import random_features

from mmrec.errors import ConfigError
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.modules.items import FeatureItemEncoder


def _feats(n_items, dims, missing=()):
    return random_features(n_items, dims, {modality: missing for modality in dims})



def test_feature_items_use_the_missing_vector_never_zero():
    f = _feats(5, {"text": 6, "image": 4}, missing=[2])
    items = FeatureItemEncoder(f, ["text", "image"], 3, adaptor="linear", fusion="sum")
    items.eval()
    t = items.table()
    assert t.shape == (6, 3) and not t[0].any()
    lin_t = items.adaptors["text"][1]
    lin_i = items.adaptors["image"][1]
    # item 2 has neither feature: both modalities give their learned missing vectors, summed
    assert torch.allclose(t[2], items.missing["text"] + items.missing["image"], atol=1e-6)
    expect3 = lin_t(f["text"].table[3]) + lin_i(f["image"].table[3])
    assert torch.allclose(t[3], expect3, atol=1e-6)
    ids = torch.tensor([[3, 0, 2]])
    assert torch.allclose(items.lookup(ids)[0], t[[3, 0, 2]], atol=1e-6)



def test_feature_items_refuse_token_features():
    f = {"text": FeatureTable("text", torch.zeros(4, 3, 5), torch.ones(4, dtype=torch.bool), {})}
    with pytest.raises(ConfigError, match="token sequences"):
        FeatureItemEncoder(f, ["text"], 8)


# --- one table per step / per evaluation (bench/method_cost.py) ------------------------------------

def test_one_table_computes_the_catalogue_once_and_lookups_read_its_rows():
    """Inside ``one_table`` the table is computed once and ``lookup`` reads its rows (same values
    and gradients as per-use computation without dropout); with dropout, one draw per item per block,
    shared by its lookups and its table row; evaluation without autograd keeps the table until the
    mode changes."""
    f = _feats(6, {"text": 5, "image": 4}, missing=[2])
    items = FeatureItemEncoder(f, ["text", "image"], 3, adaptor="linear", fusion="gated", dropout=0.0).train()
    calls = []
    combine = items._combine
    items._combine = lambda ids: (calls.append(ids), combine(ids))[1]
    ids = torch.tensor([[3, 1, 3, 0], [2, 6, 5, 1]])

    def loss_and_grads(block):
        items.zero_grad(set_to_none=True)
        with block():
            x = items.lookup(ids)
            loss = (x * torch.arange(1.0, 4.0)).pow(2).sum() + items.table().sum() * 0.5
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in items.named_parameters() if p.grad is not None}

    import contextlib

    new_loss, new = loss_and_grads(items.one_table)
    assert calls == [None]  # one computation: the whole table
    calls.clear()
    old_loss, old = loss_and_grads(contextlib.nullcontext)
    assert len(calls) == 2 and calls[1] is None  # outside the block: the ids, then the table
    assert torch.allclose(new_loss, old_loss, atol=1e-6)
    assert new.keys() == old.keys() and len(new) > 4
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name
    assert items._kept is None  # nothing kept after the block

    drop = FeatureItemEncoder(f, ["text"], 3, adaptor="linear", dropout=0.5).train()
    with drop.one_table():
        a, t = drop.lookup(ids), drop.table()
        assert torch.equal(a, t[ids])  # one draw shared by the lookups and the table
    b = drop.lookup(ids)
    assert not torch.allclose(b[0, 0], b[0, 2])  # per use: item 3's two positions draw apart

    items.eval()
    calls.clear()
    with torch.no_grad():
        t1 = items.lookup(ids)
        t2 = items.table()
    assert calls == [None] and torch.equal(t2[ids], t1)  # evaluation: one table for the lookups and scores
    with torch.no_grad():
        items.feat_text.mul_(2.0)  # a feature table written in place: the kept table is stale
        t3 = items.lookup(ids)
        items.adaptors["image"][1].weight.add_(1.0)  # so is a parameter (an optimiser step, load_state_dict)
        t4 = items.lookup(ids)
    assert len(calls) == 3 and not torch.allclose(t3, t1) and not torch.allclose(t4, t3)
    assert torch.allclose(t4, items._combine(ids), atol=1e-6)
    items.train()
    assert items._kept is None


def test_one_table_of_ids_computes_only_those_rows():
    """``one_table(ids)``: the rows of the step's ids only, once; lookups read them with the values
    and gradients of the whole table's rows; the whole table and ids outside the set are refused;
    with every id given it is the whole table again."""
    f = _feats(9, {"text": 5, "image": 4}, missing=[2])
    items = FeatureItemEncoder(f, ["text", "image"], 3, adaptor="linear", fusion="gated").train()
    calls = []
    combine = items._combine
    items._combine = lambda ids: (calls.append(None if ids is None else ids.clone()), combine(ids))[1]
    ids = torch.tensor([[3, 1, 3, 0], [2, 7, 5, 1]])
    weights = torch.arange(1.0, 4.0)

    def rows_loss(block, step_ids):
        items.zero_grad(set_to_none=True)
        with block(step_ids):
            loss = (items.lookup(ids) * weights).pow(2).sum() + items.lookup(torch.tensor([5, 7])).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in items.named_parameters() if p.grad is not None}

    new_loss, new = rows_loss(items.one_table, torch.tensor([0, 1, 2, 3, 5, 7, 7]))
    assert len(calls) == 1 and calls[0].tolist() == [0, 1, 2, 3, 5, 7]  # once, the distinct ids only
    old_loss, old = rows_loss(lambda _: items.one_table(), None)
    assert calls[1] is None  # the whole table
    assert torch.allclose(new_loss, old_loss, atol=1e-6) and new.keys() == old.keys() and len(new) > 4
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name
    with items.one_table(torch.tensor([0, 1, 3])):
        with pytest.raises(RuntimeError, match=r"item ids \[4\] are not among the ids given to one_table"):
            items.lookup(torch.tensor([1, 4]))
        with pytest.raises(RuntimeError, match="table\\(\\) inside one_table\\(ids\\)"):
            items.table()
    calls.clear()
    with items.one_table(torch.arange(10)):  # every row asked for: the whole table, as one_table()
        assert items.table().shape == (10, 3)
    assert calls == [None] and items._step_rows is None


def test_token_rows_are_fused_in_chunks_of_items():
    """With token features, ``_combine(ids)`` of more ids than ``item_chunk`` fuses them in chunks:
    the same rows as in one piece."""
    g = torch.Generator().manual_seed(0)
    f = {s: FeatureTable(s, torch.randn(8, 3, 4, generator=g), torch.ones(8, dtype=torch.bool), {}) for s in ("text", "image")}
    items = FeatureItemEncoder(f, ["text", "image"], 4, fusion="merged_attention", tokens=True, item_chunk=3).eval()
    ids = torch.tensor([[1, 2, 7, 4], [0, 5, 5, 6]])
    chunked = items._combine(ids)
    items.item_chunk = 100
    assert chunked.shape == (2, 4, 4) and torch.allclose(chunked, items._combine(ids), atol=1e-6)


@pytest.mark.parametrize("tokens", [False, True])
def test_input_dropout_zero_keeps_the_adaptor_input_while_the_fusion_drops(tokens):
    """``input_dropout=0`` (MMSR's code: its projections read the encoders' states directly): in training
    the adapted features are the linear map of the stored ones, draw after draw, while the fusion block
    keeps its dropout; the default (None) drops the adaptor's input with ``dropout``."""
    torch.manual_seed(0)
    f = _feats(6, {"text": 5, "image": 4})
    fusion = "merged_attention" if tokens else "sum"
    kept = FeatureItemEncoder(f, ["text", "image"], 8, fusion=fusion, dropout=0.5, input_dropout=0.0, tokens=tokens).train()
    default = FeatureItemEncoder(f, ["text", "image"], 8, fusion=fusion, dropout=0.5, tokens=tokens).train()
    x = kept.feat_text
    lin = kept.adaptors["text"][1]
    for _ in range(3):
        assert torch.allclose(kept._adapt("text", x), lin(x), atol=1e-6)
    assert kept.adaptors["text"][0].p == 0.0 and default.adaptors["text"][0].p == 0.5
    assert not torch.allclose(default._adapt("text", x), default.adaptors["text"][1](x), atol=1e-6)
    if tokens:  # the fusion still drops: two passes over the same items differ
        a, b = kept.table(), kept.table()
        assert not torch.allclose(a, b)
    kept.eval()
    with torch.no_grad():
        assert torch.allclose(kept.table(), kept.table())


def test_mmsr_presets_keep_the_adaptor_input_as_the_code_and_old_runs_keep_theirs():
    from mmrec.config import from_dict
    from mmrec.runs.config import preset_settings
    from mmrec.trainers.methods.mmsr import MMSR, MMSRConfig

    for preset in ("paper", "code"):
        assert preset_settings("mmsr", preset)["model"]["adaptor_dropout"] == 0.0
    f = _feats(6, {"text": 5, "image": 4})
    m = MMSR(from_dict(MMSRConfig, {"hidden": 8, "inner": 16, "adaptor_dropout": 0.0}), 6, 4, features=f)
    assert [m.items.adaptors[s][0].p for s in ("text", "image")] == [0.0, 0.0]
    assert m.items.fusion is not None
    old = MMSR(from_dict(MMSRConfig, {"hidden": 8, "inner": 16}), 6, 4, features=f)  # a config saved without the key
    assert [old.items.adaptors[s][0].p for s in ("text", "image")] == [0.1, 0.1]
