"""ODMT: the IMT mask, ID initialisation, debiased in-batch logits, online distillation and its
ramp-up, teacher detaching, and the inference combinations (expected values by hand)."""

import math

import pytest
import torch

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.methods.odmt import (
    ODMT,
    ODMTConfig,
    distill_weight,
    imt_attention_mask,
)

N_ITEMS = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(tokens=True, modalities=("text", "image"), missing=None):
    """Token features (text 4 x 6 with padding rows, image 3 x 5) or pooled ones (text 6, image 5)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for modality, (t, d) in {"text": (4, 6), "image": (3, 5)}.items():
        if modality not in modalities:
            continue
        table = torch.randn(N_ITEMS + 1, t, d, generator=g)
        if modality == "text":
            table[1::2, 3] = 0.0  # odd items have a shorter title: their last token is padding
        if not tokens:
            table = table[:, 0]
        present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
        present[0] = False
        for i in (missing or {}).get(modality, ()):
            present[i] = False
        table[~present] = 0.0
        out[modality] = FeatureTable(modality, table, present, {})
    return out


def _model(seed=0, features=None, **cfg):
    torch.manual_seed(seed)
    base = {"hidden": 8, "inner": 16, "dropout": 0.0, "attn_dropout": 0.0, **cfg}
    m = ODMT(from_dict(ODMTConfig, base), N_ITEMS, 5, features=features if features is not None else _features())
    return m


def _batch():
    return {
        "items": torch.tensor([[1, 2, 3, 0], [7, 3, 0, 0]]),
        "targets": torch.tensor([[2, 3, 4, 0], [3, 8, 0, 0]]),
        "lengths": torch.tensor([3, 2]),
        "user": torch.tensor([0, 1]),
    }


class _Train:
    loss = "ce"


# --- the IMT mask ---------------------------------------------------------------------------------

def test_asymmetric_mask_modality_tokens_never_see_the_id_token():
    # tokens: [text0, text1, image0, image1(padding), ID]
    valid = torch.tensor([[True, True, True, False, True]])
    m = imt_attention_mask(valid, asymmetric=True)
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.bool
    q_sees_k = m[0, 0]
    expect = torch.tensor([
        # keys:  t0     t1     i0     i1(pad) ID
        [True, True, True, False, False],  # text0 query
        [True, True, True, False, False],  # text1
        [True, True, True, False, False],  # image0
        [True, True, True, False, False],  # image1 (a padding query still reads real keys)
        [True, True, True, False, True],   # ID query sees every real token and itself
    ])
    assert torch.equal(q_sees_k, expect)
    sym = imt_attention_mask(valid, asymmetric=False)[0, 0]
    assert torch.equal(sym, valid[0].expand(5, 5))  # everyone sees every non-padding token


def test_mask_on_the_model_text_vectors_ignore_the_id_embedding_only_with_the_mask():
    ids = torch.arange(1, N_ITEMS + 1)
    for mask in (True, False):
        m = _model(mask=mask).eval()
        before = m.item_vectors(ids)
        with torch.no_grad():
            m.id_emb.weight[1:] += torch.randn(N_ITEMS, 8)
        after = m.item_vectors(ids)
        assert not torch.allclose(before["id"], after["id"])
        for s in ("text", "image"):
            assert torch.allclose(before[s], after[s], atol=1e-6) == mask, (s, mask)


def test_padding_tokens_are_not_keys():
    m = _model().eval()
    ids = torch.tensor([1, 3, 4])  # odd items: text token 3 is an all-zero row (padding)
    assert m.valid_text[1:, :3].all() and m.valid_text[[1, 3], 3].eq(False).all() and m.valid_text[4, 3]
    before = m.item_vectors(ids)
    m.feat_text[[1, 3], 3] = 7.0  # a value at a padding position (valid stays False): nobody reads it
    after = m.item_vectors(ids)
    for k in before:
        assert torch.allclose(before[k], after[k], atol=1e-6), k
    m.feat_text[4, 3] += 1.0  # a real token does matter
    assert not torch.allclose(m.item_vectors(ids)["id"][2], before["id"][2])


# --- ID embedding initialisation ------------------------------------------------------------------

def test_id_embeddings_start_as_the_projected_averaged_class_tokens():
    f = _features(missing={"image": [5]})
    m = _model(features=f)
    W_t, b_t = m.proj["text"].weight, m.proj["text"].bias
    W_v, b_v = m.proj["image"].weight, m.proj["image"].bias
    E = m.id_emb.weight
    assert not E[0].any()
    for i in range(1, N_ITEMS + 1):
        t_cls = W_t @ f["text"].table[i, 0] + b_t
        v_cls = W_v @ f["image"].table[i, 0] + b_v
        expect = t_cls if i == 5 else (t_cls + v_cls) / 2  # item 5 has no image: its text class token only
        assert torch.allclose(E[i], expect, atol=1e-6), i
    only_text = _model(features=f, id_init="text")
    assert torch.allclose(only_text.id_emb.weight[3], only_text.proj["text"](f["text"].table[3, 0]), atol=1e-6)
    rnd = _model(features=f, id_init="random")
    proj_avg = (rnd.proj["text"](f["text"].table[3, 0]) + rnd.proj["image"](f["image"].table[3, 0])) / 2
    assert not torch.allclose(rnd.id_emb.weight[3], proj_avg, atol=1e-3)
    assert rnd.id_emb.weight[1:].std().item() == pytest.approx(0.02, rel=0.5)  # N(0, init_std)


def test_pooled_features_are_one_token_and_init_uses_them():
    f = _features(tokens=False, modalities=("text",))
    m = _model(features=f)
    assert m.n_tokens == {"text": 1} and m.subnets == ["id", "text"]
    assert torch.allclose(m.id_emb.weight[4], m.proj["text"](f["text"].table[4]), atol=1e-6)


# --- debiased in-batch logits ---------------------------------------------------------------------

def test_in_batch_masks_and_log_popularity_correction():
    # targets at real positions: row 0 -> 2, 3, 4; row 1 -> 3, 8 (N = 5). Columns holding the row's
    # label again are never negatives; with in_batch_mask=window neither is any item of the row's window
    inf = float("-inf")
    windows = [{1, 2, 3, 4}] * 3 + [{7, 3, 8}] * 2
    tgt = [2, 3, 4, 3, 8]
    for mode in ("window", "label"):
        m = _model(in_batch_mask=mode, distill=False, candidates="positions").train()
        logits, t, label, log_mult = m.batch_logits(_batch())
        assert label.tolist() == list(range(5)) and log_mult is None
        assert t.tolist() == tgt and set(logits) == {"id", "text", "image"}
        for n in range(5):
            for j in range(5):
                masked = j != n and (tgt[j] == tgt[n] or (mode == "window" and tgt[j] in windows[n]))
                assert (logits["id"][n, j].item() == inf) == masked, (mode, n, j)
    # popularity: with counts c, z_debiased - z_plain = -log(c_j / sum c) on every finite entry
    counts = torch.tensor([0, 1, 4, 2, 1, 1, 1, 3, 5, 1, 1, 1, 1])
    m = _model(in_batch_mask="label", candidates="positions").train()
    m.item_popularity = counts
    z = m.batch_logits(_batch()).logits
    m.cfg.debias = False
    z0 = m.batch_logits(_batch()).logits
    total = counts[1:].sum().item()
    for j, item in enumerate(tgt):
        corr = -math.log(counts[item].item() / total)
        assert z["text"][0, j].item() == pytest.approx(z0["text"][0, j].item() + corr, abs=1e-4)
    # without popularity from the loop: the in-batch target counts (item 3 twice out of 5)
    m = _model(in_batch_mask="label", debias=True, candidates="positions").train()
    z = m.batch_logits(_batch()).logits
    m.cfg.debias = False
    z0 = m.batch_logits(_batch()).logits
    assert (z["id"][0, 0] - z0["id"][0, 0]).item() == pytest.approx(-math.log(1 / 5), abs=1e-4)
    assert (z["id"][0, 1] - z0["id"][0, 1]).item() == pytest.approx(-math.log(2 / 5), abs=1e-4)


def _dup_batch():
    # targets with repeats across and within rows (3 four times, 2 twice), two rows of one user
    return {
        "items": torch.tensor([[1, 2, 3, 0, 0], [7, 3, 2, 3, 0], [5, 3, 9, 4, 6]]),
        "targets": torch.tensor([[2, 3, 4, 0, 0], [3, 2, 3, 8, 0], [3, 9, 4, 6, 1]]),
        "lengths": torch.tensor([3, 4, 5]),
        "user": torch.tensor([0, 1, 0]),
    }


@pytest.mark.parametrize("cfg", [
    {"in_batch_mask": "label", "detach_teacher": True},
    {"in_batch_mask": "window", "detach_teacher": False},
    {"in_batch_mask": "label", "debias": False, "temperature": 2.0},
])
def test_distinct_item_candidates_give_the_per_position_loss_and_gradients(cfg):
    """`candidates=items` (one column per distinct target, log-count added) is the same objective as
    the code's one column per position: same total loss, same parts, same gradient on every weight."""
    out = {}
    for cand in ("positions", "items"):
        m = _model(seed=3, candidates=cand, rampup=0.5, **cfg).train()
        m.item_popularity = torch.tensor([0, 1, 4, 2, 1, 1, 1, 3, 5, 1, 1, 1, 1])
        loss = m.loss(_dup_batch(), _Train())
        loss.backward()
        out[cand] = (loss.item(), dict(m._loss_parts),
                     {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    (l_pos, parts_pos, g_pos), (l_item, parts_item, g_item) = out["positions"], out["items"]
    assert l_item == pytest.approx(l_pos, rel=1e-5)
    assert parts_item.keys() == parts_pos.keys() and "kd_ens_id" in parts_item
    for k in parts_pos:
        assert parts_item[k] == pytest.approx(parts_pos[k], rel=1e-5, abs=1e-6), k
    assert g_item.keys() == g_pos.keys() and len(g_pos) > 10
    for k in g_pos:
        assert torch.allclose(g_item[k], g_pos[k], atol=1e-5, rtol=1e-4), k
    # and the logits are smaller: 12 target positions, 7 distinct items
    m = _model(candidates="items").train()
    z, t, label, log_mult = m.batch_logits(_dup_batch())
    assert len(t) == 12 and z["id"].shape == (12, 7)
    assert [int(x) for x in torch.unique(t)[label]] == t.tolist()
    # row 1's label is item 3 (one column); item 3 in another row stands for its 4 positions
    assert log_mult[1, label[1]].item() == 0.0 and log_mult[0, label[1]].item() == pytest.approx(math.log(4))


def _reference_loss(m, batch):
    """ODMT's objective composed from its documented parts: ``batch_logits`` (masked columns -inf),
    ``F.cross_entropy`` with the multiplicities and ``distillation_terms`` (``soft_ce``)."""
    import torch.nn.functional as F

    z, t, label, log_mult = m.batch_logits(batch)
    parts = {f"ce_{k}": F.cross_entropy(v if log_mult is None else v + log_mult, label) for k, v in z.items()}
    total = sum(parts.values())
    if m.cfg.distill:
        kd = m.distillation_terms(z, log_mult)
        total = total + m.current_distill_weight() * sum(kd.values())
        parts.update(kd)
    return total, parts


@pytest.mark.parametrize("cfg", [
    {"candidates": "items"},
    {"candidates": "positions"},
    {"candidates": "items", "first_item_candidates": True, "in_batch_mask": "window", "detach_teacher": False},
    {"candidates": "positions", "first_item_candidates": True, "detach_teacher": False, "temperature": 2.0},
    {"candidates": "positions", "in_batch_mask": "window", "debias": False},
    {"candidates": "items", "distill": False},
])
def test_training_loss_equals_the_composed_objective_with_its_gradients(cfg):
    """``loss`` (one bias for all sub-networks, finite masked columns, each log-softmax once) gives
    the objective composed from ``batch_logits``, cross-entropy and ``distillation_terms``: the total,
    every part and every parameter's gradient."""
    got = {}
    for way in ("loss", "reference"):
        m = _model(seed=5, rampup=0.5, **{"temperature": 0.3, **cfg}).train()
        m.item_popularity = torch.tensor([0, 1, 4, 2, 1, 1, 1, 3, 5, 1, 1, 1, 1])
        torch.manual_seed(1)
        if way == "loss":
            total = m.loss(_dup_batch(), _Train())
            parts = dict(m.loss_parts)
        else:
            total, parts = _reference_loss(m, _dup_batch())
            parts = {k: float(v.detach()) for k, v in parts.items()}
        total.backward()
        got[way] = (float(total.detach()), parts, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    (l_fast, p_fast, g_fast), (l_ref, p_ref, g_ref) = got["loss"], got["reference"]
    assert l_fast == pytest.approx(l_ref, rel=1e-6)
    assert {k for k in p_fast if k != "distill_weight"} == set(p_ref)
    for k in p_ref:
        assert p_fast[k] == pytest.approx(p_ref[k], rel=1e-6, abs=1e-7), k
    assert g_fast.keys() == g_ref.keys() and len(g_ref) > 10
    for k in g_ref:
        assert torch.allclose(g_fast[k], g_ref[k], atol=1e-6, rtol=1e-5), k


def test_training_loss_under_bf16_autocast_stays_near_the_float32_one():
    """Under autocast the in-batch product runs in bf16 and the bias (-log p, log m, the mask) is added
    in float32 after it: the loss stays finite and near the float32 loss, masked columns still masked."""
    m = _model(seed=5, rampup=0.5, temperature=0.3).train()
    m.item_popularity = torch.tensor([0, 1, 4, 2, 1, 1, 1, 3, 5, 1, 1, 1, 1])
    full = float(m.loss(_dup_batch(), _Train()).detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = float(m.loss(_dup_batch(), _Train()).detach())
    assert math.isfinite(low) and low == pytest.approx(full, rel=0.05)


# --- distillation ---------------------------------------------------------------------------------

def _soft_ce_by_hand(student, teacher, T):
    """-mean_rows sum_j softmax(teacher / T)_j log softmax(student / T)_j * T^2, skipping -inf entries."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        keep = [k for k, v in enumerate(s_row) if v != float("-inf")]
        zt = sum(math.exp(t_row[k] / T) for k in keep)
        zs = sum(math.exp(s_row[k] / T) for k in keep)
        total += -sum(math.exp(t_row[k] / T) / zt * (s_row[k] / T - math.log(zs)) for k in keep)
    return total / len(student) * T * T


def test_distillation_terms_on_a_hand_computed_case():
    # 2 rows, 3 candidates, temperature 2; the second row's last candidate is masked in every network
    inf = float("-inf")
    z_id = [[1.0, 2.0, 0.5], [0.0, -1.0, inf]]
    z_t = [[0.3, -0.2, 1.5], [2.0, 1.0, inf]]
    m = _model(features=_features(modalities=("text",)), temperature=2.0)
    kd = m.distillation_terms({"id": torch.tensor(z_id), "text": torch.tensor(z_t)})
    assert set(kd) == {"kd_id_text", "kd_ens_id"}
    # kd_id_text: teacher = ID, student = text. Row 1, written out: q = softmax([1, 2, .5] / 2)
    q = [math.exp(v / 2) for v in z_id[0]]
    q = [v / sum(q) for v in q]
    ls = [v / 2 - math.log(sum(math.exp(u / 2) for u in z_t[0])) for v in z_t[0]]
    row1 = -sum(a * b for a, b in zip(q, ls))
    q2 = [math.exp(0.0), math.exp(-0.5)]
    q2 = [v / sum(q2) for v in q2]
    ls2 = [1.0 - math.log(math.exp(1.0) + math.exp(0.5)), 0.5 - math.log(math.exp(1.0) + math.exp(0.5))]
    row2 = -sum(a * b for a, b in zip(q2, ls2))
    assert kd["kd_id_text"].item() == pytest.approx((row1 + row2) / 2 * 4, rel=1e-6)
    # kd_ens_id: teacher = mean of the two networks, student = ID
    ens = [[(a + b) / 2 for a, b in zip(ra, rb)] for ra, rb in zip(z_id, z_t)]
    assert kd["kd_ens_id"].item() == pytest.approx(_soft_ce_by_hand(z_id, ens, 2.0), rel=1e-6)
    # with three networks the ensemble is the mean of three, and the ID network teaches both
    m3 = _model(temperature=2.0)
    z_v = [[0.0, 0.0, 1.0], [-1.0, 3.0, inf]]
    kd3 = m3.distillation_terms({"id": torch.tensor(z_id), "text": torch.tensor(z_t), "image": torch.tensor(z_v)})
    ens3 = [[(a + b + c) / 3 for a, b, c in zip(ra, rb, rc)] for ra, rb, rc in zip(z_id, z_t, z_v)]
    assert kd3["kd_id_image"].item() == pytest.approx(_soft_ce_by_hand(z_v, z_id, 2.0), rel=1e-6)
    assert kd3["kd_ens_id"].item() == pytest.approx(_soft_ce_by_hand(z_id, ens3, 2.0), rel=1e-6)


def test_sigmoid_rampup_curve():
    for e in (1, 2, 5, 10, 19, 20, 21, 40):
        t = min(e, 20) / 20
        assert distill_weight(e, 20) == pytest.approx(math.exp(-5 * (1 - t) ** 2), rel=1e-12), e
    assert distill_weight(1, 20) == pytest.approx(math.exp(-5 * 0.95 ** 2))
    assert distill_weight(20, 20) == 1.0 and distill_weight(60, 20) == 1.0
    assert distill_weight(3, 0.5) == 0.5 and distill_weight(3, 0) == 0.0  # a < 1: a constant weight
    m = _model(rampup=10.0)
    m.on_epoch_start(5, None)
    assert m.epoch_report()["distill_weight"] == pytest.approx(math.exp(-5 * 0.25))


def test_loss_is_the_three_ce_plus_the_ramped_distillation():
    m = _model(rampup=4.0, temperature=0.5).train()
    m.on_epoch_start(2, None)
    loss = m.loss(_batch(), _Train())
    p = m.loss_parts
    w = math.exp(-5 * 0.5 ** 2)
    assert p["distill_weight"] == pytest.approx(w)
    expect = p["ce_id"] + p["ce_text"] + p["ce_image"] + w * (p["kd_id_text"] + p["kd_id_image"] + p["kd_ens_id"])
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert all(math.isfinite(v) for v in p.values())
    loss.backward()
    assert m.id_emb.weight.grad is not None and torch.isfinite(m.id_emb.weight.grad).all()
    off = _model(distill=False).train()
    loss_off = off.loss(_batch(), _Train())
    q = off.loss_parts
    assert set(q) == {"ce_id", "ce_text", "ce_image"}
    assert loss_off.item() == pytest.approx(q["ce_id"] + q["ce_text"] + q["ce_image"], rel=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_teacher_detaching(detach):
    m = _model(features=_features(modalities=("text",)), detach_teacher=detach, temperature=2.0)
    z_id = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 0.3]], requires_grad=True)
    z_t = torch.tensor([[0.3, -0.2, 1.5], [2.0, 1.0, -0.4]], requires_grad=True)
    kd = m.distillation_terms({"id": z_id, "text": z_t})
    kd["kd_id_text"].backward(retain_graph=True)  # teacher: ID
    assert z_t.grad is not None and z_t.grad.abs().sum() > 0  # the student always learns
    teacher_grad = z_id.grad
    assert (teacher_grad is not None and teacher_grad.abs().sum() > 0) == (not detach)
    z_id.grad = z_t.grad = None
    kd["kd_ens_id"].backward()  # teacher: the ensemble, which contains the text logits
    assert z_id.grad.abs().sum() > 0
    assert (z_t.grad is not None and z_t.grad.abs().sum() > 0) == (not detach)


# --- inference ------------------------------------------------------------------------------------

def test_inference_modes_combine_the_subnetwork_scores():
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    lengths = torch.tensor([3, 2])
    cand = torch.arange(1, N_ITEMS + 1)
    ref = _model(seed=3).eval()
    state = ref.state_dict()
    tables = ref.subnet_tables()
    h = ref.subnet_states(items, lengths)
    s = {k: torch.stack([h[k][b, lengths[b] - 1] for b in range(2)]) @ tables[k][1:].T for k in h}
    for mode, expect in [("ensemble", (s["id"] + s["text"] + s["image"]) / 3), ("id", s["id"]),
                         ("text", s["text"]), ("image", s["image"])]:
        m = _model(seed=99, inference=mode).eval()
        m.load_state_dict(state)
        got = m.score(m.query(items, lengths), cand)
        assert torch.allclose(got, expect, atol=1e-5), mode
        assert m.ranks_unseen_items == (mode != "id")
        # candidates per row ([B, C]) give the same numbers
        per_row = m.score(m.query(items, lengths), torch.tensor([[5, 1], [12, 2]]))
        by_hand = torch.stack([expect[0, [4, 0]], expect[1, [11, 1]]])  # item k is column k - 1
        assert torch.allclose(per_row, by_hand, atol=1e-5)
    with pytest.raises(ConfigError, match="no image sub-network"):
        _model(features=_features(modalities=("text",)), inference="image")


@pytest.mark.parametrize("over", [{}, {"attn_bias": False, "layers": 3}])
def test_query_runs_each_encoders_last_block_at_the_last_position_only(over):
    """Evaluation's read-out: the ensemble of ``sequence_states`` at each row's last real position,
    the sub-networks' last blocks computed there alone (the blocks before them over whole windows)."""
    from mmrec.trainers.modules.sequence import TransformerBlock, gather_last

    m = _model(seed=5, **over).eval()
    items, lengths = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]]), torch.tensor([3, 1, 4])
    with torch.no_grad():
        expect = gather_last(m.sequence_states(items, lengths), lengths)
        seen = []
        hooks = [blk.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
                 for blk in m.encoders.modules() if isinstance(blk, TransformerBlock)]
        got = m.query(items, lengths)
        for h in hooks:
            h.remove()
    assert got.shape == (3, 3 * 8)
    assert torch.allclose(got, expect, atol=1e-5)
    assert seen == [(3, 4, 8)] * (len(m.subnets) * (m.cfg.layers - 1))


def test_text_only_and_image_only_with_token_or_pooled_features_train_a_step():
    for modalities in (("text",), ("image",), ("text", "image")):
        for tokens in (True, False):
            m = _model(features=_features(tokens=tokens, modalities=modalities)).train()
            loss = m.loss(_batch(), _Train())
            assert torch.isfinite(loss)
            loss.backward()
            assert set(m.heads) == {"id", *modalities}
            for s in modalities:  # every modality's projection is trained, and nothing is NaN
                g = m.proj[s].weight.grad
                assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
            m.eval()
            s = m.score(m.query(_batch()["items"], _batch()["lengths"]), torch.arange(1, N_ITEMS + 1))
            assert s.shape == (2, N_ITEMS) and torch.isfinite(s).all()


def test_missing_features_use_a_learned_vector_and_checkpoints_hold_no_features():
    f = _features(missing={"text": [2], "image": [2]})
    m = _model(features=f).eval()
    v = m.item_vectors(torch.tensor([2]))
    assert all(torch.isfinite(x).all() for x in v.values())
    assert "missing.text" in m.state_dict() and not any(k.startswith(("feat_", "valid_", "present_"))
                                                        for k in m.state_dict())
    with pytest.raises(ConfigError, match="needs image features"):
        _model(features=_features(modalities=("text",)), id_init="image")


# --- sub-network figures in results.json ------------------------------------------------------------
def test_results_report_each_subnetwork_as_evaluate_would(tmp_path):
    """After training, results.json has the ensemble under ``test`` and each sub-network alone under
    ``test_variants``; each equals `mmrec evaluate RUN --set model.inference=<subnet>`, and the ID
    sub-network (which cannot rank held-out items) has a note instead of cold figures."""
    import json

    from conftest import prepared_with_text
    from typer.testing import CliRunner

    from mmrec.cli import app
    from mmrec.runs.config import RunConfig
    from mmrec.trainers.loop import Trainer

    ring = {f"u{u:02d}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(60)}
    ds, store = prepared_with_text(tmp_path, ring, 20)
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "odmt", "features": {"text": "text"},
                                "store": str(store), "cold": {"fraction": 0.2, "seed": 0},
                                "model": {"hidden": 16, "inner": 32},
                                "train": {"epochs": 2, "threads": 1, "batch_size": 16}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    assert set(res["test_variants"]) == {"id", "text"}
    assert "note" in res["test_variants"]["id"]["cold"] and "ndcg@10" in res["test_variants"]["text"]["cold"]
    assert res["test_variants"]["text"]["cold"]["n_cases"] == res["test_cold"]["n_cases"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test_variants"]["text"]["ndcg@10"] == res["test_variants"]["text"]["ndcg@10"]
    for sub in ("id", "text"):
        r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--set", f"model.inference={sub}"])
        assert r.exit_code == 0, r.output
        again = json.loads(r.output)
        for k in ("hr@10", "ndcg@10", "mrr@10"):
            assert again[k] == pytest.approx(res["test_variants"][sub][k], abs=1e-12), (sub, k)
    # the ensemble is not either sub-network's figures relabelled
    assert res["test"]["ndcg@10"] != res["test_variants"]["id"]["ndcg@10"] or \
        res["test"]["ndcg@10"] != res["test_variants"]["text"]["ndcg@10"]


# --- flags for the released code's behaviour ------------------------------------------------------------

def test_first_item_candidates_add_each_rows_first_input_as_a_column():
    # _batch(): row 0 items [1, 2, 3] -> targets [2, 3, 4]; row 1 items [7, 3] -> targets [3, 8].
    # The code's candidates are every item slot: the targets, then the first inputs 1 (row 0) and 7 (row 1)
    inf = float("-inf")
    tgt = [2, 3, 4, 3, 8]
    cols = tgt + [1, 7]
    windows = [{1, 2, 3, 4}] * 3 + [{7, 3, 8}] * 2
    for mode in ("label", "window"):
        m = _model(in_batch_mask=mode, candidates="positions", first_item_candidates=True).train()
        z, _, label, log_mult = m.batch_logits(_batch())
        assert z["id"].shape == (5, 7) and label.tolist() == list(range(5)) and log_mult is None
        for n in range(5):
            for j, item in enumerate(cols):
                masked = j != n and (item == tgt[n] or (mode == "window" and item in windows[n]))
                assert (z["text"][n, j].item() == inf) == masked, (mode, n, j)
        # the flag only appends columns: the target columns are those of the default
        off = _model(in_batch_mask=mode, candidates="positions").train()
        z0 = off.batch_logits(_batch()).logits
        assert torch.allclose(z["id"][:, :5], z0["id"], atol=1e-6)  # the target columns are unchanged
    # row 0's first input (item 1) is a negative of row 1 under both masks, and of row 0 only under label
    m = _model(in_batch_mask="window", candidates="positions", first_item_candidates=True).train()
    z = m.batch_logits(_batch()).logits["id"]
    assert z[3, 5].item() != inf and z[0, 5].item() == inf and z[3, 6].item() == inf


def test_first_item_candidates_by_item_give_the_per_slot_loss_and_gradients():
    out = {}
    for cand in ("positions", "items"):
        m = _model(seed=3, candidates=cand, first_item_candidates=True, in_batch_mask="window",
                   detach_teacher=False, rampup=0.5).train()
        m.item_popularity = torch.tensor([0, 1, 4, 2, 1, 1, 1, 3, 5, 1, 1, 1, 1])
        loss = m.loss(_dup_batch(), _Train())
        loss.backward()
        out[cand] = (loss.item(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert out["items"][0] == pytest.approx(out["positions"][0], rel=1e-5)
    for k, g in out["positions"][1].items():
        assert torch.allclose(out["items"][1][k], g, atol=1e-5, rtol=1e-4), k
    # items: first inputs 1, 7, 5 join the targets' distinct items; item 5 (one slot) is a new column,
    # item 3 counts its 4 target slots only (no row starts with 3), item 1 its target slot and row 0's input
    m = _model(candidates="items", first_item_candidates=True).train()
    z, t, _, log_mult = m.batch_logits(_dup_batch())
    cand = torch.unique(torch.cat([t, torch.tensor([1, 7, 5])]))
    assert z["id"].shape == (12, len(cand))
    k1, k3 = int((cand == 1).nonzero()), int((cand == 3).nonzero())
    assert log_mult[0, k1].item() == pytest.approx(math.log(2)) and log_mult[0, k3].item() == pytest.approx(math.log(4))


def test_attn_bias_false_removes_the_attention_biases_only():
    with_b = _model(seed=5)
    without = _model(seed=5, attn_bias=False)
    names_b, names = set(dict(with_b.named_parameters())), set(dict(without.named_parameters()))
    gone = names_b - names
    # 2 IMT blocks + 3 sub-networks x 2 blocks, each losing its qkv and out biases
    assert len(gone) == 2 * (2 + 3 * 2) and not names - names_b
    assert all(k.endswith(("attn.qkv.bias", "attn.out.bias")) for k in gone)
    assert not any(k in without.state_dict() for k in gone)  # zero buffers, not saved
    # the same weights with zero biases: the same outputs; a non-zero bias in the other changes them
    state = {k: v for k, v in with_b.state_dict().items() if k not in gone}
    without.load_state_dict(state)
    with torch.no_grad():
        for k in gone:
            dict(with_b.named_parameters())[k].zero_()
    ids = torch.arange(1, N_ITEMS + 1)
    a, b = with_b.eval().item_vectors(ids), without.eval().item_vectors(ids)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with torch.no_grad():
        with_b.imt.blocks[0].attn.qkv.bias.fill_(0.3)
    assert not torch.allclose(with_b.item_vectors(ids)["id"], b["id"], atol=1e-4)
    loss = without.train().loss(_batch(), _Train())
    loss.backward()  # trains without them
    assert torch.isfinite(loss)


def test_id_dim_is_the_codes_raw_class_token_table_and_id_proj():
    # text and image of one dimension (the code: 768 for both); id_dim must match for id_init=mean
    g = torch.Generator().manual_seed(1)
    f = {}
    for s, t in (("text", 4), ("image", 3)):
        table = torch.randn(N_ITEMS + 1, t, 6, generator=g)
        present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
        present[0] = False
        table[0] = 0.0
        f[s] = FeatureTable(s, table, present, {})
    m = _model(features=f, id_dim=6)
    assert m.id_emb.weight.shape == (N_ITEMS + 1, 6) and m.id_proj.weight.shape == (8, 6)
    raw = (f["text"].table[:, 0] + f["image"].table[:, 0]) / 2
    assert torch.allclose(m.id_emb.weight[1:], raw[1:], atol=1e-6) and not m.id_emb.weight[0].any()
    # the ID token entering the IMT is id_proj(E(i)): changing id_proj changes only what the ID token sees
    m.eval()
    ids = torch.arange(1, N_ITEMS + 1)
    before = m.item_vectors(ids)
    with torch.no_grad():
        m.id_proj.bias += 1.0
    after = m.item_vectors(ids)
    assert not torch.allclose(before["id"], after["id"], atol=1e-4)
    assert torch.allclose(before["text"], after["text"], atol=1e-6)  # asymmetric mask: modalities never see it
    default = _model(features=f)
    assert default.id_proj is None and default.id_emb.weight.shape == (N_ITEMS + 1, 8)
    with pytest.raises(ConfigError, match="id_dim=5 with id_init=mean"):
        _model(features=f, id_dim=5)
    rnd = _model(features=f, id_dim=5, id_init="random")  # random init: any dimension
    assert rnd.id_emb.weight.shape == (N_ITEMS + 1, 5)
