"""Large-catalogue losses against hand-computed values: the sampled softmax with its log-Q terms,
gSASRec's generalised BCE, the shared negative draws, the one dispatcher every method calls, and the
messages for bad settings."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.runs.config import TrainConfig
from mmrec.trainers.batching import SharedNegatives
from mmrec.trainers.modules.losses import (
    bce_sampled,
    ce_all_items,
    gbce,
    gbce_beta,
    next_item_loss,
    sampled_ce,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# row 0 = padding; items 1..3
EMB = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
H = torch.tensor([[1.0, 0.0], [0.0, 2.0]])


def _lse(*z):
    m = max(z)
    return m + math.log(sum(math.exp(x - m) for x in z))


def _softplus(x):
    return math.log1p(math.exp(x))


def test_sampled_ce_by_hand_with_log_q_and_the_target_masked_among_the_negatives():
    targets = torch.tensor([1, 2])
    cand = torch.tensor([2, 3, 1])  # item 1 is row 0's target: masked there, a negative for row 1
    q = {1: 0.5, 2: 0.25, 3: 1.5}  # expected counts among the draws
    log_q = torch.log(torch.tensor([1.0, q[1], q[2], q[3]]))
    # row 0: h = (1, 0): s(1) = 1, s(2) = 0, s(3) = 1
    z_t0 = 1 - math.log(q[1])
    row0 = _lse(z_t0, 0 - math.log(q[2]), 1 - math.log(q[3])) - z_t0
    # row 1: h = (0, 2): s(2) = 2, s(3) = 2, s(1) = 0
    z_t1 = 2 - math.log(q[2])
    row1 = _lse(z_t1, 2 - math.log(q[3]), 0 - math.log(q[1])) - z_t1
    rows = sampled_ce(H, targets, EMB, cand, log_q, reduction="none")
    assert rows.tolist() == pytest.approx([row0, row1], rel=1e-6)
    assert sampled_ce(H, targets, EMB, cand, log_q).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # temperature divides the raw logits, before the correction
    z = 1 / 0.5 - math.log(q[1])
    expect = _lse(z, 0 / 0.5 - math.log(q[2]), 1 / 0.5 - math.log(q[3])) - z
    assert sampled_ce(H[:1], targets[:1], EMB, cand, log_q, temperature=0.5).item() == pytest.approx(expect, rel=1e-6)
    # the correction matters: without it row 0 is another number
    assert sampled_ce(H[:1], targets[:1], EMB, cand).item() == pytest.approx(_lse(1, 0, 1) - 1, rel=1e-6)
    # on the negatives only (train.sampled_correction=negatives): the targets' logits uncorrected
    neg0 = _lse(1, 0 - math.log(q[2]), 1 - math.log(q[3])) - 1
    neg1 = _lse(2, 2 - math.log(q[3]), 0 - math.log(q[1])) - 2
    assert sampled_ce(H, targets, EMB, cand, log_q, reduction="none", correct_target=False).tolist() == \
        pytest.approx([neg0, neg1], rel=1e-6)


def test_groups_of_rows_each_take_their_own_draw():
    """candidates [G, K]: the rows in G contiguous groups (torch.tensor_split), group g against draw g."""
    targets = torch.tensor([1, 2])
    cand = torch.tensor([[2, 3], [3, 1]])
    row0 = _lse(1, 0, 1) - 1  # h = (1, 0) against 2 and 3: s = 0, 1; target 1: s = 1
    row1 = _lse(2, 2, 0) - 2  # h = (0, 2) against 3 and 1: s = 2, 0; target 2: s = 2
    assert sampled_ce(H, targets, EMB, cand, reduction="none").tolist() == pytest.approx([row0, row1], rel=1e-6)
    assert sampled_ce(H, targets, EMB, cand).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # three rows in two groups: rows 0 and 1 share the first draw, row 2 takes the second
    h3, t3 = torch.cat([H, H[:1]]), torch.tensor([1, 2, 1])
    got = sampled_ce(h3, t3, EMB, cand, reduction="none")
    first = sampled_ce(H, targets, EMB, cand[0], reduction="none")
    # row 2: h = (1, 0), target 1 against 3 (s = 1) and 1, its own target, masked out: log 2
    assert got.tolist() == pytest.approx([*first.tolist(), _lse(1, 1) - 1], rel=1e-6)
    # one group is the shared draw
    assert torch.equal(sampled_ce(H, targets, EMB, cand[:1], reduction="none"),
                       sampled_ce(H, targets, EMB, cand[0], reduction="none"))


def test_a_uniform_correction_on_the_negatives_only_counts_each_for_m_over_k_items():
    """Uniform K of m: on every logit the correction is a constant (the loss of a softmax over the
    K + 1 candidates); on the negatives only, each negative's exp is scaled by m / K."""
    g = torch.Generator().manual_seed(4)
    emb, h = torch.randn(11, 3, generator=g), torch.randn(6, 3, generator=g)
    tgt, cand = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([7, 8, 9, 10])  # no accidental hits
    neg = SharedNegatives(10, 4)
    log_q = torch.from_numpy(neg.log_q)
    s_t, s_n = (h * emb[tgt]).sum(-1), h @ emb[cand].T
    plain = torch.logsumexp(torch.cat([s_t[:, None], s_n], 1), 1) - s_t
    scaled = torch.logsumexp(torch.cat([s_t[:, None], s_n + math.log(10 / 4)], 1), 1) - s_t
    assert sampled_ce(h, tgt, emb, cand, log_q, reduction="none").tolist() == pytest.approx(plain.tolist(), rel=1e-5)
    got = sampled_ce(h, tgt, emb, cand, log_q, reduction="none", correct_target=False)
    assert got.tolist() == pytest.approx(scaled.tolist(), rel=1e-5)
    assert (got > plain).all()  # the target competes with more mass: a larger loss


def test_sampled_ce_over_every_item_uniform_is_the_full_softmax_with_equal_gradients():
    g = torch.Generator().manual_seed(0)
    n = 9
    emb = torch.randn(n + 1, 5, generator=g)
    h = torch.randn(7, 5, generator=g)
    targets = torch.randint(1, n + 1, (7,), generator=g)
    cand = torch.randperm(n, generator=g) + 1  # every item once, the target among them (masked)
    full = ce_all_items(h, targets, emb)
    for log_q in (None, torch.full((n + 1,), math.log(n / n))):  # uniform: one constant (here 0) for every item
        hs, es = h.clone().requires_grad_(), emb.clone().requires_grad_()
        hf, ef = h.clone().requires_grad_(), emb.clone().requires_grad_()
        a = sampled_ce(hs, targets, es, cand, log_q)
        b = ce_all_items(hf, targets, ef)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(full.item(), rel=1e-6)
        assert torch.allclose(hs.grad, hf.grad, atol=1e-6) and torch.allclose(es.grad, ef.grad, atol=1e-6)
    # a uniform correction of log(K/m) for every candidate (the target too) changes nothing
    shifted = sampled_ce(h, targets, emb, cand, torch.full((n + 1,), math.log(4 / 9)))
    assert shifted.item() == pytest.approx(full.item(), rel=1e-6)


def _sampled_ce_autograd(h, targets, emb, cand, log_q, temperature):
    """The loss written with autograd's own ops (what ``sampled_ce``'s hand-written backward replaces)."""
    pos = (h * emb[targets]).sum(-1) / temperature - log_q[targets]
    neg = (h @ emb[cand].T) / temperature - log_q[cand][None, :]
    neg = neg.masked_fill(cand[None, :] == targets[:, None], float("-inf"))
    return torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos


@pytest.mark.parametrize("temperature", [1.0, 0.07])
def test_sampled_ce_backward_equals_autograds(temperature):
    """Losses and gradients of h and the item table equal autograd's on the same expression, with
    a candidate drawn twice, targets among the candidates (several rows, once twice) and per-row
    weights on the losses (``reduction="none"``, as SyNCRec's per-domain weights)."""
    g = torch.Generator().manual_seed(5)
    n, d = 15, 6
    emb0 = torch.randn(n + 1, d, generator=g) * 0.5
    h0 = torch.randn(11, d, generator=g) * 0.5
    targets = torch.tensor([3, 5, 5, 1, 9, 2, 3, 14, 7, 7, 11])
    cand = torch.tensor([5, 9, 2, 5, 12, 4, 8, 15])  # 5 twice: row 1 and 2 mask two columns
    log_q = torch.log(torch.rand(n + 1, generator=g) + 0.1)
    w = torch.rand(11, generator=g)
    out = []
    for fn in (lambda *a: sampled_ce(*a, reduction="none"), _sampled_ce_autograd):
        h, emb = h0.clone().requires_grad_(), emb0.clone().requires_grad_()
        rows = fn(h, targets, emb, cand, log_q, temperature)
        (rows * w).sum().backward()
        out.append((rows.detach(), h.grad, emb.grad))
    (ra, ha, ea), (rb, hb, eb) = out
    assert torch.allclose(ra, rb, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ha, hb, rtol=1e-4, atol=1e-6) and torch.allclose(ea, eb, rtol=1e-4, atol=1e-6)


def test_gbce_by_hand_from_the_papers_beta():
    h, pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([1]), torch.tensor([[2, 3]])  # s+ = 1, s- = 0, 1
    n_items, t, k = 5, 0.5, 2
    alpha = k / (n_items - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)  # the paper's form: 0.75 here
    assert gbce_beta(k, n_items, t) == pytest.approx(beta) and beta == pytest.approx(0.75)
    expect = (beta * _softplus(-1.0) + _softplus(0.0) + _softplus(1.0)) / (k + 1)
    assert gbce(h, pos, neg, EMB, t, n_items=n_items).item() == pytest.approx(expect, rel=1e-6)
    assert gbce_beta(k, n_items, 1.0) == pytest.approx(alpha)  # t = 1: beta = alpha


def test_gbce_at_t0_is_bce():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(11, 4, generator=g)
    h = torch.randn(6, 4, generator=g)
    pos = torch.randint(1, 11, (6,), generator=g)
    neg = torch.randint(1, 11, (6, 3), generator=g)
    assert gbce_beta(3, 10, 0.0) == 1.0
    logits = torch.cat([(h * emb[pos]).sum(-1, keepdim=True), torch.einsum("nd,nkd->nk", h, emb[neg])], 1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    paper_bce = F.binary_cross_entropy_with_logits(logits, labels)  # the mean over the k + 1 terms
    assert gbce(h, pos, neg, emb, 0.0).item() == pytest.approx(paper_bce.item(), rel=1e-6)
    # with one negative: half of mmrec's bce (which weighs the positive and the negatives' mean 1 each)
    assert gbce(h, pos, neg[:, 0], emb, 0.0).item() == pytest.approx(bce_sampled(h, pos, neg[:, 0], emb).item() / 2,
                                                                     rel=1e-6)
    # t > 0 lowers the positive's weight: a smaller loss for the same scores
    assert gbce(h, pos, neg, emb, 0.75).item() < paper_bce.item()


@pytest.mark.parametrize("loss", ["bce", "gbce"])
def test_pair_logits_routes_agree_in_losses_and_gradients(loss, monkeypatch):
    """The table route (score every item, gather) and the gather route give one loss and one gradient,
    also when the table route works in several row blocks (a block of 40 logits here: 4 rows of 10)."""
    import mmrec.trainers.modules.losses as L

    g = torch.Generator().manual_seed(3)
    emb0 = torch.randn(10, 4, generator=g)
    h0 = torch.randn(9, 4, generator=g)
    pos = torch.randint(1, 10, (9,), generator=g)
    neg = torch.randint(1, 10, (9, 3), generator=g)
    fn = (lambda h, e: bce_sampled(h, pos, neg, e)) if loss == "bce" else (lambda h, e: gbce(h, pos, neg, e, 0.75))
    out = {}
    monkeypatch.setattr(L, "TABLE_ROUTE_CHUNK", 40)
    for route in ("gather", "table"):
        monkeypatch.setattr(L, "TABLE_ROUTE_ROWS_PER_COLUMN", 0 if route == "gather" else 10)
        h, e = h0.clone().requires_grad_(True), emb0.clone().requires_grad_(True)
        value = fn(h, e)
        value.backward()
        out[route] = (value.detach(), h.grad, e.grad)
    for a, b in zip(out["gather"], out["table"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    ids = torch.cat([pos[:, None], neg], 1)
    by_hand = torch.stack([torch.stack([h0[n] @ emb0[i] for i in row]) for n, row in enumerate(ids)])
    assert torch.allclose(L.pair_logits(h0, ids, emb0, "table"), by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="route 'rows' is not one of auto, gather, table"):
        L.pair_logits(h0, ids, emb0, "rows")


def test_pair_logits_auto_route_by_table_rows_per_column(monkeypatch):
    """auto: the table route up to TABLE_ROUTE_ROWS_PER_COLUMN x c rows, the gather route above it, and
    always for an ItemRows table (computed by rows)."""
    import mmrec.trainers.base as B
    import mmrec.trainers.modules.losses as L

    monkeypatch.setattr(L, "TABLE_ROUTE_ROWS_PER_COLUMN", 2)
    table = torch.randn(8, 4)
    assert L.pair_route(table, 4) == "table" and L.pair_route(table, 3) == "gather"
    assert L.pair_route(torch.randn(9, 4), 4) == "gather"
    assert L.pair_route(B.ItemRows(lambda u: table[u], 8), 4) == "gather"


def _tc(loss, **kw):
    return SimpleNamespace(loss=loss, gbce_t=kw.get("t", 0.75))


def test_the_dispatcher_picks_each_loss():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(8, 4, generator=g)
    h = torch.randn(5, 4, generator=g)
    tgt = torch.randint(1, 8, (5,), generator=g)
    neg = torch.randint(1, 8, (5, 2), generator=g)
    exclude = torch.zeros(8, dtype=torch.bool)
    exclude[3] = True
    assert torch.equal(next_item_loss(h, tgt, emb, _tc("ce"), {}, exclude=exclude), ce_all_items(h, tgt, emb, exclude=exclude))
    rows = next_item_loss(h, tgt, emb, _tc("ce"), {}, exclude=exclude, reduction="none")
    assert rows.shape == (5,) and rows.mean().item() == pytest.approx(ce_all_items(h, tgt, emb, exclude=exclude).item(), rel=1e-6)
    assert next_item_loss(h, tgt, emb, None, {}).item() == pytest.approx(ce_all_items(h, tgt, emb).item())  # None: ce
    assert torch.equal(next_item_loss(h, tgt, emb, _tc("bce"), {}, neg), bce_sampled(h, tgt, neg, emb))
    assert next_item_loss(h, tgt, emb, _tc("bce"), {}, neg, reduction="none").mean().item() == pytest.approx(
        bce_sampled(h, tgt, neg, emb).item(), rel=1e-6)
    assert torch.equal(next_item_loss(h, tgt, emb, _tc("gbce", t=0.3), {}, neg), gbce(h, tgt, neg, emb, 0.3))
    batch = {"sampled_items": torch.tensor([1, 2, 5]), "sampled_log_q": torch.linspace(-2, 0, 8)}
    assert torch.equal(next_item_loss(h, tgt, emb, _tc("sampled_ce"), batch),
                       sampled_ce(h, tgt, emb, batch["sampled_items"], batch["sampled_log_q"]))
    on_negatives = SimpleNamespace(loss="sampled_ce", sampled_correction="negatives")
    assert torch.equal(next_item_loss(h, tgt, emb, on_negatives, batch),
                       sampled_ce(h, tgt, emb, batch["sampled_items"], batch["sampled_log_q"], correct_target=False))
    with pytest.raises(ConfigError, match="needs sampled negatives per position"):
        next_item_loss(h, tgt, emb, _tc("gbce"), {})
    with pytest.raises(ConfigError, match="needs the step's shared negatives"):
        next_item_loss(h, tgt, emb, _tc("sampled_ce"), {})
    with pytest.raises(ConfigError, match="use one of ce, bce, sampled_ce, gbce"):
        next_item_loss(h, tgt, emb, _tc("bpr"), {})


# --------------------------------------------------------------------------- the shared draws


def test_uniform_draws_are_distinct_allowed_items_with_log_k_over_m():
    exclude = np.zeros(11, dtype=bool)
    exclude[[2, 7]] = True  # held-out items: never drawn
    s = SharedNegatives(10, 4, "uniform", exclude=exclude)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        d = s.draw(rng)
        assert len(d) == 4 and len(set(d.tolist())) == 4
        seen |= set(d.tolist())
    assert seen == {1, 3, 4, 5, 6, 8, 9, 10}
    assert s.log_q[[1, 10]].tolist() == pytest.approx([math.log(4 / 8)] * 2) and s.log_q[[0, 2, 7]].tolist() == [0, 0, 0]


def test_popularity_draws_follow_the_counts_to_a_power_and_skip_unseen_items():
    counts = np.array([0, 6, 0, 2, 1, 1])  # item 2 never in training: never drawn
    s = SharedNegatives(5, 3, "popularity", counts=counts, power=0.5)
    w = np.sqrt(np.array([6, 2, 1, 1.0]))
    p = w / w.sum()
    assert s.log_q[[1, 3, 4, 5]].tolist() == pytest.approx(np.log(3 * p).tolist(), rel=1e-6)
    assert s.log_q[2] == 0.0
    draws = np.concatenate([s.draw(np.random.default_rng([0, i])) for i in range(4000)])
    freq = np.bincount(draws, minlength=6) / len(draws)
    assert freq[2] == 0 and freq[0] == 0
    assert freq[[1, 3, 4, 5]].tolist() == pytest.approx(p.tolist(), abs=0.01)
    assert set(SharedNegatives(5, 3, "popularity", counts=counts, power=0.0).ids.tolist()) == {1, 3, 4, 5}


@pytest.mark.parametrize("dist", ["uniform", "popularity"])
def test_the_log_q_correction_makes_the_sampled_sum_unbiased(dist):
    """sum_k exp(s(n_k) - log Q(n_k)) over a step's draws averages to sum_j exp(s_j) over every item:
    what the corrected softmax estimates (it would be off by K without the K in Q)."""
    n = 30
    s = np.random.default_rng(3).normal(size=n + 1)
    counts = np.arange(n + 1) % 7 + 1
    counts[0] = 0
    sh = SharedNegatives(n, 5, dist, counts=counts)
    rng = np.random.default_rng(4)
    est = np.mean([np.exp(s[d] - sh.log_q[d]).sum() for d in (sh.draw(rng) for _ in range(20000))])
    assert est == pytest.approx(np.exp(s[1:]).sum(), rel=0.02)


# --------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("train,message", [
    ({"loss": "sampled_ce", "sampled_negatives": 0}, "train.sampled_negatives must be >= 1"),
    ({"loss": "gbce", "negatives": 0}, "train.negatives must be >= 1 with train.loss=gbce"),
    ({"loss": "gbce", "gbce_t": 1.5}, r"train.gbce_t must be in \[0, 1\]"),
    ({"loss": "gbce", "gbce_t": -0.1}, r"train.gbce_t must be in \[0, 1\]"),
    ({"loss": "sampled_ce", "sampled_power": -1.0}, "train.sampled_power must be a finite number >= 0"),
    ({"loss": "sampled_ce", "sampled_groups": 0}, "train.sampled_groups must be >= 1"),
    ({"loss": "sampled_ce", "sampled_distribution": "zipf"}, "sampled_distribution"),
    ({"loss": "sampled_ce", "sampled_correction": "target"}, r"sampled_correction: 'target' is not one of \['all', 'negatives'\]"),
    ({"loss": "softmax"}, "train.loss"),
])
def test_bad_settings_say_what_to_do(train, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, train, prefix="train.")


def test_a_draw_of_as_many_items_as_there_are_is_refused():
    with pytest.raises(ConfigError, match=r"train.sampled_negatives=10 must be at least 1 and below the 10 items .*train.loss=ce"):
        SharedNegatives(10, 10)
    exclude = np.zeros(11, dtype=bool)
    exclude[1:4] = True
    with pytest.raises(ConfigError, match="below the 7 items a uniform draw can take"):
        SharedNegatives(10, 7, exclude=exclude)
    with pytest.raises(ConfigError, match="below the 2 items a popularity draw"):
        SharedNegatives(4, 2, "popularity", counts=np.array([0, 3, 0, 1, 0]))
    with pytest.raises(ConfigError, match="needs the items' training counts"):
        SharedNegatives(4, 2, "popularity")
