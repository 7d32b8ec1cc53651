"""KDSR: correlation scores, the holistic and code losses, the codebook, the asynchronous learning
rate, the released code's loss-weight wiring, ablations, and that no n_items x n_items tensor is ever
built (expected values by hand)."""

import json
import math

import pytest
import torch
from conftest import random_features

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.methods.kdsr import (
    KDSR,
    KDSRConfig,
    assign_codes,
    code_loss,
    holistic_loss,
    kmeans,
    modality_lr,
    pair_correlation,
    pairwise_correlation,
    sample_pairs,
    subspace_pair_correlation,
    subspace_pairwise_correlation,
)

N_ITEMS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(n_items=N_ITEMS, dims=None, missing=None, seed=0):
    return random_features(n_items, dims or {"text": 16, "image": 12}, missing, seed)


def _model(seed=0, features=None, n_items=N_ITEMS, **cfg):
    torch.manual_seed(seed)
    base = {"hidden": 8, "inner": 16, "dropout": 0.0, "attn_dropout": 0.0, "feature_dropout": 0.0,
            "code_count": 6, "code_sample_pairs": 400, **cfg}
    return KDSR(from_dict(KDSRConfig, base), n_items, 6, features=features if features is not None else _features())


def _batch():
    return {
        "items": torch.tensor([[1, 2, 3, 2, 0, 0], [7, 3, 9, 10, 11, 0]]),
        "targets": torch.tensor([[2, 3, 2, 4, 0, 0], [3, 9, 10, 11, 12, 0]]),
        "lengths": torch.tensor([4, 5]),
    }


class _Train:
    loss = "ce"


# --- correlation scores ---------------------------------------------------------------------------

X3 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
BY_HAND = {
    # pairs (0,1), (0,2), (1,2) and the diagonal
    "cosine": ([0.0, 3 / 5, 8 / 10], [1.0, 1.0, 1.0]),
    "dot": ([0.0, 3.0, 8.0], [1.0, 4.0, 25.0]),
    "euclidean": ([math.sqrt(1 + 4), math.sqrt(4 + 16), math.sqrt(9 + 4)], [0.0, 0.0, 0.0]),
    "manhattan": ([1 + 2, 2 + 4, 3 + 2], [0.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("metric", sorted(BY_HAND))
def test_teacher_metrics_on_three_vectors(metric):
    off, diag = BY_HAND[metric]
    full = pairwise_correlation(X3, metric)
    expect = torch.tensor([[diag[0], off[0], off[1]], [off[0], diag[1], off[2]], [off[1], off[2], diag[2]]],
                          dtype=torch.float32)
    assert torch.allclose(full, expect, atol=1e-6)
    a, c = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])
    assert torch.allclose(pair_correlation(X3[a], X3[c], metric), torch.tensor(off, dtype=torch.float32), atol=1e-6)
    # batched sets give each set's own matrix
    both = pairwise_correlation(torch.stack([X3, X3.flip(0)]), metric)
    assert torch.allclose(both[0], expect, atol=1e-6) and torch.allclose(both[1], expect.flip(0, 1), atol=1e-6)
    # a student can be trained through it: gradients are finite, the diagonal (distance 0) included
    x = X3.clone().requires_grad_(True)
    pairwise_correlation(x, metric).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dissected_vectors_split_the_features_into_subvectors():
    x = torch.tensor([[1.0, 0.0, 2.0, 2.0]])
    y = torch.tensor([[1.0, 1.0, -2.0, -2.0]])
    v = subspace_pair_correlation(x, y, 2, "cosine")
    assert torch.allclose(v, torch.tensor([[1 / math.sqrt(2), -1.0]]), atol=1e-6)
    assert torch.allclose(subspace_pair_correlation(x, y, 2, "manhattan"), torch.tensor([[1.0, 8.0]]))
    dense = subspace_pairwise_correlation(torch.cat([x, y])[None], 2, "cosine")  # [1, 2, 2, 2]
    assert dense.shape == (1, 2, 2, 2) and torch.allclose(dense[0, 0, 1], v[0], atol=1e-6)
    assert torch.allclose(dense[0, 1, 1], torch.ones(2), atol=1e-6)
    # 5 dims into 2 parts: 3 + 2 (torch.tensor_split), not an error
    assert subspace_pair_correlation(torch.ones(1, 5), torch.ones(1, 5), 2, "dot").tolist() == [[3.0, 2.0]]


# --- losses ---------------------------------------------------------------------------------------

def test_holistic_loss_on_a_hand_computed_case_and_masked_pairs_do_not_count():
    tau = 2.0
    s = torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.9, -1.0], [3.0, 0.2]]])
    t = torch.tensor([[[1.0, 0.1], [0.1, 1.0]], [[1.0, 5.0], [7.0, 1.0]]])
    mask = torch.tensor([[[True, True], [True, True]], [[True, False], [False, False]]])
    row0 = math.sqrt(2 * (0.4 / 2) ** 2 + 4 * 1e-8)  # off-diagonal differences 0.4, diagonal 0
    row1 = math.sqrt((0.1 / 2) ** 2 + 1e-8)  # only (0, 0) counts
    assert holistic_loss(s, t, mask, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # changing masked entries changes nothing; a row without any pair is left out of the mean
    s2, t2 = s.clone(), t.clone()
    s2[1, 0, 1], t2[1, 1, 0] = 100.0, -50.0
    s3 = torch.cat([s2, torch.randn(1, 2, 2)])
    t3 = torch.cat([t2, torch.randn(1, 2, 2)])
    m3 = torch.cat([mask, torch.zeros(1, 2, 2, dtype=torch.bool)])
    assert holistic_loss(s3, t3, m3, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # no pair at all: 0, and backward still works
    z = torch.randn(1, 2, 2, requires_grad=True)
    out = holistic_loss(z, z.detach(), torch.zeros(1, 2, 2, dtype=torch.bool), tau)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(z.grad).all()


def test_code_loss_is_a_weighted_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    codes = torch.tensor([0, 2])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    ce1 = -math.log(1 / (2 + math.e))
    assert code_loss(logits, codes).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    assert code_loss(logits, codes, torch.tensor([2.0, 1.0])).item() == pytest.approx((2 * ce0 + ce1) / 3, rel=1e-6)
    assert code_loss(logits[:0], codes[:0]).item() == 0.0


# --- codebook -------------------------------------------------------------------------------------

def test_code_assignment_is_the_nearest_codeword():
    book = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    v = torch.tensor([[0.1, -0.1], [0.9, 1.2], [-0.6, 1.5], [0.5, 0.5], [5.0, 5.0]])
    # (0.5, 0.5) is as far from codeword 0 as from 1: the lower index wins
    assert assign_codes(v, book).tolist() == [0, 1, 2, 0, 1]
    assert assign_codes(v, book, chunk=2).tolist() == [0, 1, 2, 0, 1]


def test_seeded_kmeans_is_deterministic_and_finds_clear_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    a = kmeans(x, 3, seed=7)
    b = kmeans(x, 3, seed=7)
    assert torch.equal(a, b)
    found = sorted(a.tolist())
    for got, want in zip(found, sorted(centres.tolist())):
        assert got == pytest.approx(want, abs=0.1)
    # fewer distinct vectors than codes: still runs
    assert kmeans(torch.ones(4, 2), 3, seed=0).shape == (3, 2)


def test_codebook_pairs_and_model_codebooks_are_deterministic():
    ids = torch.tensor([1, 2, 3])
    a, c = sample_pairs(ids, 100, seed=0)  # 9 pairs <= 100: all of them
    assert sorted(zip(a.tolist(), c.tolist())) == [(i, j) for i in (1, 2, 3) for j in (1, 2, 3)]
    a1, c1 = sample_pairs(torch.arange(1, 101), 50, seed=3)
    a2, c2 = sample_pairs(torch.arange(1, 101), 50, seed=3)
    assert len(a1) == 50 and torch.equal(a1, a2) and torch.equal(c1, c2)
    m1, m2 = _model(seed=0), _model(seed=5)  # different torch seeds, same code_seed
    assert torch.equal(m1.codebook_text, m2.codebook_text) and torch.equal(m1.codebook_image, m2.codebook_image)
    assert m1.codebook_text.shape == (6, 8)
    m3 = _model(code_seed=11)
    assert not torch.equal(m1.codebook_text, m3.codebook_text)


# --- the model's distillation terms ---------------------------------------------------------------

def test_pairs_are_first_occurrences_of_items_with_the_feature():
    m = _model(features=_features(missing={"text": [9]}))
    items = _batch()["items"]
    mask = m.pair_mask(items, "text")
    # row 0: items 1, 2, 3, 2(again), pad, pad -> positions 0, 1, 2; row 1: 7, 3, 9(no text), 10, 11
    node0 = torch.tensor([True, True, True, False, False, False])
    node1 = torch.tensor([True, True, False, True, True, False])
    assert torch.equal(mask[0], node0[:, None] & node0[None, :])
    assert torch.equal(mask[1], node1[:, None] & node1[None, :])
    assert m.pair_mask(items, "image")[1, 2, 2]  # item 9 has an image


def test_holistic_term_distils_the_original_features_into_the_projected_tables():
    f = _features(missing={"text": [9]})
    m = _model(features=f, codes=False).train()
    assert torch.equal(m.feat_text, f["text"].table) and torch.equal(m.feat_image, f["image"].table)
    b = _batch()
    items = b["items"]
    for step in range(2):  # the teacher stays the original features after the trainable tables move
        m.loss(b, _Train())
        for s in ("text", "image"):
            mask = m.pair_mask(items, s)
            teacher = pairwise_correlation(f[s].table[items], "cosine")
            student = pairwise_correlation(m.cor_project[s](m.modality_vectors(items)[s]), "cosine")
            expect = holistic_loss(student, teacher, mask, 1.5)
            assert m.loss_parts[f"holistic_{s}"] == pytest.approx(expect.item(), rel=1e-5), (step, s)
        with torch.no_grad():
            for s in ("text", "image"):
                m.modality[s].weight.mul_(-2.0).add_(0.3)


def test_code_term_equals_the_mean_over_all_ordered_pairs():
    m = _model(holistic=False).train()
    b = _batch()
    m.loss(b, _Train())
    items = b["items"]
    for s in ("text", "image"):
        mask = m.pair_mask(items, s)
        feats, book = getattr(m, f"feat_{s}"), getattr(m, f"codebook_{s}")
        mods = m.modality_vectors(items)[s]
        ces = []
        for bb, i, j in torch.nonzero(mask).tolist():  # every ordered pair, the diagonal included
            code = assign_codes(subspace_pair_correlation(feats[items[bb, i]][None], feats[items[bb, j]][None],
                                                          8, "cosine"), book)
            logits = m.code_head[s]((mods[bb, i] - mods[bb, j]).abs()[None])
            ces.append(torch.nn.functional.cross_entropy(logits, code).item())
        assert m.loss_parts[f"code_{s}"] == pytest.approx(sum(ces) / len(ces), rel=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pair_code_table_gives_the_codes_computed_per_batch(metric):
    """A small catalogue looks the teacher codes up in a table of every item pair: the same codes,
    loss and gradients as computing them for each pair of the batch."""
    from mmrec.trainers.methods.kdsr import _first_occurrence

    table = _model(metric=metric)
    batchwise = _model(metric=metric, pair_code_table_max_items=0)
    assert hasattr(table, "pair_codes_text") and table.pair_codes_text.shape == (N_ITEMS + 1, N_ITEMS + 1)
    assert not hasattr(batchwise, "pair_codes_text")
    items = _batch()["items"]
    first = _first_occurrence(items)
    for s in ("text", "image"):
        mask = table.pair_mask(items, s, first)
        (idx_a, codes_a, w_a), (idx_b, codes_b, w_b) = (m.code_targets(items, s, mask) for m in (table, batchwise))
        assert torch.equal(idx_a, idx_b) and torch.equal(codes_a, codes_b) and torch.equal(w_a, w_b)
        assert len(codes_a.unique()) > 1
    for m in (table, batchwise):
        m.loss(_batch(), _Train()).backward()
    for (n, p), (_, q) in zip(table.named_parameters(), batchwise.named_parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-7), n


def test_max_code_pairs_caps_the_pairs():
    m = _model(max_code_pairs=3)
    items = _batch()["items"]
    (b, i, j), codes, w = m.code_targets(items, "text", m.pair_mask(items, "text"))
    assert len(b) == len(codes) == len(w) == 3 and bool((i <= j).all())


# --- total loss and weights -----------------------------------------------------------------------

W = {"image_holistic_weight": 1.0, "image_code_weight": 2.0, "text_holistic_weight": 3.0, "text_code_weight": 5.0}


@pytest.mark.parametrize("bug", [False, True])
def test_loss_weight_wiring_and_the_released_code_bug(bug):
    m = _model(code_weight_bug=bug, **W).train()
    loss = m.loss(_batch(), _Train())
    p = m.loss_parts
    assert set(p) == {"ce", "holistic_text", "code_text", "holistic_image", "code_image"}
    if not bug:  # v_s -> image-holistic, v_c -> image-code, t_s -> text-holistic, t_c -> text-code
        expect = p["ce"] + 1 * p["holistic_image"] + 2 * p["code_image"] + 3 * p["holistic_text"] + 5 * p["code_text"]
    else:  # the code: image-code x t_s, text-holistic x v_c
        expect = p["ce"] + 1 * p["holistic_image"] + 3 * p["code_image"] + 2 * p["holistic_text"] + 5 * p["code_text"]
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    report = m.epoch_report()
    assert report["weight_code_image"] == (3.0 if bug else 2.0)
    assert report["weight_holistic_text"] == (2.0 if bug else 3.0)


def test_ablation_flags_remove_their_loss_parts():
    for flags, keys in [({}, {"ce", "holistic_text", "code_text", "holistic_image", "code_image"}),
                        ({"holistic": False}, {"ce", "code_text", "code_image"}),
                        ({"codes": False}, {"ce", "holistic_text", "holistic_image"}),
                        ({"holistic": False, "codes": False}, {"ce"})]:
        m = _model(**flags).train()
        loss = m.loss(_batch(), _Train())
        assert set(m.loss_parts) == keys, flags
        assert set(m.loss_weights()) == keys - {"ce"}
        if keys == {"ce"}:
            assert loss.item() == pytest.approx(m.loss_parts["ce"], rel=1e-6)
    off = _model(holistic=False, codes=False)
    assert not hasattr(off, "cor_project") and not hasattr(off, "code_head")
    assert not any(k.startswith("codebook") for k in off.state_dict())


def test_text_only_and_bce_and_both_backbones_train():
    b = _batch()
    b["negatives"] = torch.randint(1, N_ITEMS + 1, b["items"].shape)

    class _BCE:
        loss = "bce"

    for backbone in ("sasrec", "gru4rec"):
        for train in (_Train(), _BCE()):
            m = _model(features=_features(dims={"text": 16}), backbone=backbone).train()
            loss = m.loss(b, train)
            assert set(m.loss_parts) == {train.loss, "holistic_text", "code_text"}
            loss.backward()
            for p in (m.modality["text"].weight, m.item.weight, m.cor_project["text"][0].weight,
                      m.code_head["text"][0].weight):
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
            m.eval()
            s = m.score(m.query(b["items"], b["lengths"]), torch.arange(1, N_ITEMS + 1))
            assert s.shape == (2, N_ITEMS) and torch.isfinite(s).all()


def test_items_missing_a_feature_use_a_learned_vector_and_checkpoints_hold_no_features():
    m = _model(features=_features(missing={"text": [4]}))
    v = m.modality_vectors(torch.tensor([4, 5]))["text"]
    assert torch.equal(v[0], m.missing["text"]) and not torch.equal(v[1], m.missing["text"])
    sd = m.state_dict()
    assert "missing.text" in sd and "codebook_text" in sd
    assert not any(k.startswith(("feat_", "present_")) for k in sd)


def test_modality_tables_start_from_the_features():
    f = _features(dims={"text": 6}, missing={"text": [3]})
    m = _model(features=f, hidden=4, modality_scale=0.5, code_subspaces=2)
    w = m.modality["text"].weight.detach()
    present = f["text"].present
    assert w[present].square().mean().sqrt().item() == pytest.approx(0.5, rel=1e-5)
    assert not w[3].any() and not w[0].any()
    # the rank-4 SVD directions: the table reproduces the feature Gram matrix up to the rank-4 residual
    x = f["text"].table[present].double()
    u, sv, vt = torch.linalg.svd(x, full_matrices=False)
    z = x @ vt[:4].T
    scale = 0.5 / z.square().mean().sqrt()
    assert torch.allclose((w[present].double() @ w[present].double().T), (z @ z.T) * scale ** 2, atol=1e-4)
    # hidden larger than the feature dimension: extra columns start at zero
    wide = _model(features=f, hidden=8, code_subspaces=2).modality["text"].weight.detach()
    assert not wide[:, 6:].any() and wide[present, :6].abs().sum() > 0


# --- asynchronous learning rate -------------------------------------------------------------------

def test_asynchronous_learning_rate_schedule():
    lr = 1e-3
    m = _model()
    opt = torch.optim.Adam(m.param_groups(lr), lr=lr)
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["modality"]["params"]} == {id(m.modality[s].weight) for s in ("text", "image")}
    n_all = sum(1 for p in m.parameters() if p.requires_grad)
    assert len(groups["main"]["params"]) + len(groups["modality"]["params"]) == n_all
    assert groups["modality"]["lr"] == pytest.approx(lr / 4)  # before the first epoch: epoch 1's rate
    # step (default): lr / 2^(2 - #{milestones s in [5, 10] with e > s})
    for e in range(1, 16):
        m.on_epoch_start(e, opt)
        expect = lr / 4 if e <= 5 else lr / 2 if e <= 10 else lr
        assert groups["modality"]["lr"] == pytest.approx(expect), e
        assert groups["main"]["lr"] == lr
        assert m.epoch_report()["lr_modality"] == pytest.approx(expect)
    cfg = from_dict(KDSRConfig, {"async_schedule": "constant"})  # the released code: lr / gamma^|schedule|
    assert [modality_lr(lr, e, cfg) for e in (1, 6, 50)] == pytest.approx([lr / 4] * 3)
    cfg = from_dict(KDSRConfig, {"async_gamma": 10.0, "async_milestones": [1]})
    assert [modality_lr(lr, e, cfg) for e in (1, 2, 3)] == pytest.approx([lr / 10, lr, lr])
    off = _model(async_lr=False)
    opt = torch.optim.Adam(off.param_groups(lr), lr=lr)
    for e in (1, 3, 20):
        off.on_epoch_start(e, opt)
        assert all(g["lr"] == lr for g in opt.param_groups)


def test_config_errors():
    for bad, says in (({"tau": 0.0}, "model.tau must be positive"), ({"code_count": 1}, "model.code_count >= 2"),
                      ({"async_milestones": [10, 5]}, "async_milestones must be non-negative epochs in increasing order"),
                      ({"image_code_weight": -1.0}, "loss weights must be >= 0"),
                      ({"code_sample_pairs": 10}, "code_sample_pairs must be at least model.code_count"),
                      ({"max_code_pairs": 0}, "max_code_pairs must be positive")):
        with pytest.raises(ConfigError, match=says):
            from_dict(KDSRConfig, bad)
    with pytest.raises(ConfigError, match="code_subspaces=8 is more than the text feature dimension 4"):
        _model(features=_features(dims={"text": 4}))
    with pytest.raises(ConfigError, match="token sequences"):
        KDSR(KDSRConfig(), 3, 4, features={"text": FeatureTable("text", torch.zeros(4, 2, 8),
                                                                 torch.ones(4, dtype=torch.bool), {})})


# --- memory: nothing catalogue x catalogue --------------------------------------------------------

def _largest_tensors(fn):
    """Run ``fn`` and return the shapes of every tensor an ATen op produced (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
            return out

    with Record():
        fn()
    return shapes


def test_no_tensor_is_catalogue_by_catalogue():
    n = 5000
    feats = _features(n_items=n, dims={"text": 32, "image": 24})
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, n + 1, (8, 20), generator=g)
    batch = {"items": items, "targets": torch.randint(1, n + 1, (8, 20), generator=g),
             "lengths": torch.full((8,), 20)}

    def build_and_step():
        # beyond pair_code_table_max_items (the one n x n table, of uint8 codes, a smaller catalogue keeps)
        m = _model(features=feats, n_items=n, code_count=50, code_sample_pairs=20_000, pair_code_table_max_items=n)
        m.train()
        m.loss(batch, _Train()).backward()

    def too_big(shape):
        return sum(1 for s in shape if s >= n) >= 2 or math.prod(shape) >= n * n

    shapes = _largest_tensors(build_and_step)
    assert len(shapes) > 100 and max(math.prod(s) for s in shapes) >= n * 8  # it did record the step
    assert not [s for s in shapes if too_big(s)]
    # the recorder would notice a dense teacher
    dense = _largest_tensors(lambda: pairwise_correlation(feats["text"].table, "cosine"))
    assert any(too_big(s) for s in dense)


# --- through the shared loop ----------------------------------------------------------------------

def test_loop_logs_loss_parts_and_the_rising_modality_rate(tmp_path):
    from conftest import prepared_with_text

    from mmrec.runs.config import RunConfig
    from mmrec.trainers.loop import Trainer

    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(40)}
    ds, store = prepared_with_text(tmp_path, ring, 20, dim=16)
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "kdsr", "features": {"text": "text"},
                                "store": str(store),
                                "model": {"hidden": 16, "inner": 32, "backbone": "gru4rec", "async_milestones": [1, 2],
                                          "code_count": 8, "code_sample_pairs": 400},
                                "train": {"epochs": 3, "threads": 1, "batch_size": 32, "lr": 0.004}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_modality"] for r in rows] == pytest.approx([0.001, 0.002, 0.004])
    assert set(rows[0]["loss_parts"]) == {"ce", "holistic_text", "code_text"}
    assert rows[0]["weight_holistic_text"] == 4.0
    assert "ndcg@10" in res["test"]


# --- backbone=graph: the code's session graph, every prefix at once ------------------------------------

def _code_graph(prefix):
    """The session graph of one prefix by the released code's rules, written out: one node per
    distinct item; self-loops 1; for each consecutive pair u -> v (u != v): 2 on (u, v) and 3 on
    (v, u), or 4 on both when the opposite direction was already there."""
    adj = {}
    for it in prefix:
        adj[(it, it)] = 1
    for u, v in zip(prefix, prefix[1:]):
        if u == v or adj.get((u, v)) == 4:
            continue
        if adj.get((v, u)) == 2:
            adj[(u, v)] = adj[(v, u)] = 4
        else:
            adj[(u, v)], adj[(v, u)] = 2, 3
    return adj


SEQS = [[5, 3, 5, 7, 3, 3, 9, 0, 0], [4, 4, 2, 8, 2, 4, 1, 6, 2]]


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_prefix_relations_are_the_code_graph_of_each_prefix(lag):
    from mmrec.trainers.modules.sequence import prefix_relations, session_nodes

    items = torch.tensor(SEQS)
    rel, node = prefix_relations(items, lag), session_nodes(items)
    for b, seq in enumerate(SEQS):
        real = [x for x in seq if x]
        first = {}
        for pos, it in enumerate(seq):
            first.setdefault(it, pos)
        assert node[b].tolist()[:len(real)] == [first[it] for it in real]
        for t in range(len(seq)):
            if t >= len(real) or t - lag < 0:
                assert (rel[b, t] == 0).all(), (b, t)
                continue
            adj = _code_graph(real[:t + 1])
            src = real[t - lag]
            for j in range(len(seq)):
                it = seq[j]
                expect = adj.get((src, it), 0) if it and first[it] == j else 0  # columns are nodes only
                assert rel[b, t, j].item() == expect, (b, t, j)


def test_relational_gat_on_a_prefix_equals_the_layer_written_out():
    from mmrec.trainers.modules.sequence import (
        RelationalGAT,
        prefix_relations,
        session_nodes,
    )

    torch.manual_seed(0)
    gat = RelationalGAT(6, slope=0.1, dropout=0.0)
    items = torch.tensor(SEQS)
    x = torch.randn(2, 9, 6)
    node = session_nodes(items)
    out = gat(x, prefix_relations(items, 0), node)  # row t: the node of position t, prefix t
    W, A, S = gat.weight.detach(), gat.att.detach(), gat.scale.detach()
    for b, seq in enumerate(SEQS):
        real = [v for v in seq if v]
        first = {}
        for pos, it in enumerate(seq):
            first.setdefault(it, pos)
        for t in range(len(real)):
            adj = _code_graph(real[:t + 1])
            g = {it: x[b, first[it]] @ W for it in set(real[:t + 1])}
            gi = g[real[t]]
            logits = {it: torch.nn.functional.leaky_relu((gi * g[it]) @ A[r - 1], 0.1) * S[r - 1]
                      for (src, it), r in adj.items() if src == real[t]}
            z = torch.stack(list(logits.values()))
            expect = (torch.softmax(z, 0)[:, None] * torch.stack([g[it] for it in logits])).sum(0)
            assert torch.allclose(out[b, t], expect.detach(), atol=1e-5), (b, t)
        for t in range(len(real), len(seq)):
            assert (out[b, t] == 0).all()  # padding rows


def test_graph_backbone_is_causal_trains_and_reads_the_last_two_positions():
    from mmrec.trainers.modules.sequence import prefix_relations, session_nodes

    m = _model(backbone="graph", feature_dropout=0.0, graph_dropout=0.0).eval()
    assert m.encoder is None and m.cfg.last_n == 2
    items = torch.tensor([[1, 2, 3, 2, 5, 0], [6, 7, 6, 8, 9, 4]])
    lengths = torch.tensor([5, 6])
    with torch.no_grad():
        h = m.sequence_states(items, lengths)
        later = items.clone()
        later[1, 4:] = torch.tensor([11, 12])  # change the future of row 1 after position 3
        h2 = m.sequence_states(later, lengths)
        assert torch.allclose(h[1, :4], h2[1, :4], atol=1e-6) and not torch.allclose(h[1, 4:], h2[1, 4:])
        # a position's state is the sum of two fused items, the first position's of one
        g = m.graph(m.item(items), prefix_relations(items, 0), session_nodes(items))
        one = m.fuse(items[:, :1], {s: v[:, :1] for s, v in m.modality_vectors(items).items()}, graph=g[:, :1])
        assert torch.allclose(h[:, 0], one[:, 0], atol=1e-6)
        q = m.query(items, lengths)
        assert torch.allclose(q, h[torch.arange(2), lengths - 1], atol=1e-6)
    m.train()
    loss = m.loss(_batch(), _Train())
    loss.backward()
    for p in (m.graph.weight, m.graph.att, m.graph.scale, m.item.weight, m.modality["text"].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="last_n"):
        _model(backbone="graph", last_n=0)


@pytest.mark.parametrize("clamp,loss", [(False, "ce"), (True, "ce"), (False, "bce")])
def test_prefix_batches_compute_the_graph_only_where_the_target_is(clamp, loss):
    """train.windows=prefixes (one target per row, at its last position): the loss computes the
    graph states at that position only; loss and every gradient equal the computation over every
    position (dropout off, so both see the same numbers)."""
    from mmrec.trainers.methods.kdsr import _first_occurrence
    from mmrec.trainers.modules.losses import bce_sampled, ce_all_items

    items = torch.tensor([[1, 2, 3, 2, 5, 0], [6, 7, 6, 8, 9, 4], [3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 6, 1, 0])
    targets = torch.zeros_like(items)
    targets[0, 4], targets[1, 5], targets[2, 0] = 7, 11, 12  # row 3: no target (an empty window)
    negatives = torch.tensor([[13, 14, 15, 16, 17, 18]] * 4)
    batch = {"items": items, "targets": targets, "lengths": lengths, "negatives": negatives}

    class T:
        pass

    T.loss = loss
    grads = []
    for fast in (True, False):
        m = _model(backbone="graph", graph_dropout=0.0, last_n_clamp=clamp)
        m.train_exclusion = None
        if fast:
            rows_seen = []
            full = m.graph_states
            m.graph_states = lambda *a, rows=None, seen=rows_seen, full=full: seen.append(rows) or full(*a, rows=rows)
            total = m.loss(batch, T)
            assert len(rows_seen) == 1 and rows_seen[0].tolist() == [[4], [5], [0]]  # one position per row
        else:  # the same loss written out over every position
            mods = m.modality_vectors(items)
            h = m.sequence_states(items, lengths, mods)
            mask = targets > 0
            emb = m.item_embeddings()
            main = (ce_all_items(h[mask], targets[mask], emb) if loss == "ce"
                    else bce_sampled(h[mask], targets[mask], negatives[mask], emb))
            first = _first_occurrence(items)
            parts = {**m.holistic_terms(items, mods, first), **m.code_terms(items, mods, first)}
            total = main + sum(w * parts[k] for k, w in m.loss_weights().items())
        total.backward()
        grads.append((total.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (fast_loss, fast_g), (ref_loss, ref_g) = grads
    assert fast_loss == pytest.approx(ref_loss, rel=1e-6)
    assert fast_g.keys() == ref_g.keys() and "graph.weight" in fast_g
    for n in ref_g:
        assert torch.allclose(fast_g[n], ref_g[n], atol=1e-6, rtol=1e-5), n


def test_graph_backbone_overfits_the_ring_and_round_trips(tmp_path):
    from conftest import prepared_with_text
    from typer.testing import CliRunner

    from mmrec.cli import app
    from mmrec.runs.config import RunConfig
    from mmrec.trainers.loop import Trainer

    ring = {f"u{u:03d}": [str((u + k) % 20 + 1) for k in range(10)] for u in range(100)}
    ds, store = prepared_with_text(tmp_path, ring, 20, dim=16)
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "kdsr", "features": {"text": "text"}, "store": str(store),
                                "model": {"hidden": 32, "backbone": "graph", "feature_dropout": 0.0, "graph_dropout": 0.0,
                                          "code_count": 8, "code_sample_pairs": 400},
                                "train": {"epochs": 40, "lr": 0.01, "batch_size": 32, "threads": 1, "patience": 40}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    assert res["test"]["hr@5"] >= 0.9, res["test"]
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ndcg@10"] == pytest.approx(res["test"]["ndcg@10"], abs=1e-12)


def test_last_n_clamp_counts_the_first_state_again_as_the_code():
    """``last_n_clamp`` (the code's clamped ``last_sum`` gather): with last_n = 3, position 0 holds
    three times its own state, position 1 its own plus twice position 0's (in the graph of prefix
    1), later positions are unchanged."""
    items = torch.tensor([[1, 2, 3, 2, 5, 0], [6, 7, 6, 8, 9, 4]])
    lengths = torch.tensor([5, 6])
    states = {}
    for last_n, clamp in ((1, False), (2, False), (3, False), (3, True), (2, True)):
        m = _model(backbone="graph", graph_dropout=0.0, last_n=last_n, last_n_clamp=clamp).eval()
        with torch.no_grad():
            states[last_n, clamp] = m.sequence_states(items, lengths)
    h1, h2, h3, c3, c2 = (states[k] for k in ((1, False), (2, False), (3, False), (3, True), (2, True)))
    assert torch.allclose(c3[:, 0], 3 * h1[:, 0], atol=1e-6)
    assert torch.allclose(c3[:, 1], 2 * h2[:, 1] - h1[:, 1], atol=1e-6)
    assert torch.allclose(c3[:, 2:5], h3[:, 2:5], atol=1e-6)
    assert torch.allclose(c2[:, 0], 2 * h1[:, 0], atol=1e-6) and torch.allclose(c2[:, 1:5], h2[:, 1:5], atol=1e-6)
    assert not torch.allclose(c2[:, 0], h2[:, 0])
    one = torch.tensor([[4, 0, 0]])  # a one-item row, shorter than last_n: still counted twice
    m = _model(backbone="graph", graph_dropout=0.0, last_n_clamp=True).eval()
    ref = _model(backbone="graph", graph_dropout=0.0, last_n=1).eval()
    with torch.no_grad():
        assert torch.allclose(m.query(one, torch.tensor([1])), 2 * ref.query(one, torch.tensor([1])), atol=1e-6)


def test_modality_init_features_copies_the_features_in():
    feats = _features(dims={"text": 8, "image": 8}, missing={"text": [3]})
    m = _model(features=feats, modality_init="features")
    for s in ("text", "image"):
        table, present = feats[s].table, feats[s].present
        assert torch.equal(m.modality[s].weight[present], table[present])
        assert (m.modality[s].weight[~present] == 0).all()
    svd = _model(features=feats)
    assert not torch.allclose(svd.modality["image"].weight, m.modality["image"].weight)
    with pytest.raises(ConfigError, match="modality_init=features"):
        _model(modality_init="features")  # 16-d text, 12-d image, hidden 8


def test_asynchronous_rate_follows_a_loop_schedule_of_the_main_group():
    """The modality group's rate is the async factor times the main group's present rate: a decay
    already applied to the main group (as a chained StepLR does) carries over; the factor is left in
    the group as ``lr_factor``."""
    lr = 1e-3
    m = _model()
    opt = torch.optim.Adam(m.param_groups(lr), lr=lr)
    groups = {g["name"]: g for g in opt.param_groups}
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    m.on_epoch_start(1, opt)
    assert groups["modality"]["lr"] == pytest.approx(lr / 4) and groups["modality"]["lr_factor"] == 0.25
    opt.step()
    sched.step()  # both groups x 0.1
    m.on_epoch_start(6, opt)
    assert groups["main"]["lr"] == pytest.approx(lr * 0.1)
    assert groups["modality"]["lr"] == pytest.approx(lr * 0.1 / 2) and groups["modality"]["lr_factor"] == 0.5
    m.on_epoch_start(11, opt)
    assert groups["modality"]["lr"] == pytest.approx(lr * 0.1)
