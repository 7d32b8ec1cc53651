"""Losses against hand-computed values: full softmax, sampled BCE, cosine CE, InfoNCE, debiased in-batch CE, soft CE, the chunked softmax."""

import math

import pytest
import torch

from mmrec.trainers.modules.losses import (
    bce_sampled,
    ce_all_items,
    ce_cosine,
    ce_in_batch_logpop,
    in_batch_logpop_logits,
    infonce_in_batch,
    log_sampling_prob,
    soft_ce,
)

HB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])



LOGP = torch.log(torch.tensor([1.0, 0.5, 0.3, 0.2]))



EMB = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])



S3 = [[1.0, 1.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]



P3 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])



H3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])



def nll(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], written out."""
    return -math.log(math.exp(logits[label]) / sum(math.exp(z) for z in logits))



def test_ce_cosine_hand_computed():
    h = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: [1, 0], [0, 1]
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [3.0, 4.0]])  # items: [1,0], [0,1], [.6,.8]
    targets = torch.tensor([1, 3])
    t = 0.5
    expect = (nll([1 / t, 0 / t, 0.6 / t], 0) + nll([0 / t, 1 / t, 0.8 / t], 2)) / 2
    assert ce_cosine(h, targets, emb, temperature=t).item() == pytest.approx(expect, rel=1e-6)
    # scaling a state or an item does not change a cosine loss
    assert ce_cosine(7 * h, targets, 3 * emb, temperature=t).item() == pytest.approx(expect, rel=1e-6)
    # excluded items are not classes
    exclude = torch.tensor([False, False, True, False])
    expect_ex = (nll([1 / t, 0.6 / t], 0) + nll([0 / t, 0.8 / t], 1)) / 2
    assert ce_cosine(h, targets, emb, t, exclude=exclude).item() == pytest.approx(expect_ex, rel=1e-6)



def test_infonce_hand_computed():
    expect = (nll(S3[0], 0) + nll(S3[1], 1) + nll(S3[2], 2)) / 3
    assert infonce_in_batch(H3, P3, temperature=1.0, normalize=False).item() == pytest.approx(expect, rel=1e-6)
    t = 0.5
    expect_t = sum(nll([z / t for z in S3[i]], i) for i in range(3)) / 3
    assert infonce_in_batch(H3, P3, temperature=t, normalize=False).item() == pytest.approx(expect_t, rel=1e-6)
    # normalised (the default): h = [1, 0], [0, 1]; p = [1, 0], [1, 1] / sqrt 2
    h, p = torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    expect_n = (nll([10.0, 10 * r], 0) + nll([0.0, 10 * r], 1)) / 2
    assert infonce_in_batch(h, p, temperature=0.1).item() == pytest.approx(expect_n, rel=1e-5)



def test_infonce_same_target_masking():
    targets = torch.tensor([5, 7, 5])  # rows 0 and 2 share a target
    # -inf: row 0 loses column 2, row 2 loses column 0, row 1 keeps all
    expect = (nll([1.0, 1.0], 0) + nll(S3[1], 1) + nll([2.0, 3.0], 1)) / 3
    got = infonce_in_batch(H3, P3, 1.0, target_ids=targets, normalize=False)
    assert got.item() == pytest.approx(expect, rel=1e-6)
    assert expect == pytest.approx((math.log(2) + nll(S3[1], 1) + nll([2.0, 3.0], 1)) / 3)
    # UniSRec's code: the masked logit becomes 0 and still adds exp(0) = 1 to the denominator
    expect0 = (nll([1.0, 1.0, 0.0], 0) + nll(S3[1], 1) + nll([0.0, 2.0, 3.0], 2)) / 3
    got0 = infonce_in_batch(H3, P3, 1.0, target_ids=targets, normalize=False, mask_value=0.0)
    assert got0.item() == pytest.approx(expect0, rel=1e-6)
    # distinct targets mask nothing
    plain = infonce_in_batch(H3, P3, 1.0, normalize=False)
    assert infonce_in_batch(H3, P3, 1.0, target_ids=torch.tensor([1, 2, 3]), normalize=False).item() == plain.item()



def test_log_sampling_prob():
    got = log_sampling_prob(torch.tensor([7, 5, 3, 2]))  # the padding count is ignored
    assert got.tolist() == pytest.approx([0.0, math.log(0.5), math.log(0.3), math.log(0.2)])
    sq = log_sampling_prob(torch.tensor([0.0, 1.0, 3.0]), power=2.0)  # 1, 9 over 10
    assert sq.tolist() == pytest.approx([0.0, math.log(0.1), math.log(0.9)])



def test_ce_in_batch_logpop_hand_computed():
    lp = [math.log(0.5), math.log(0.3), math.log(0.2)]
    # distinct targets [1, 2, 3]: z_ij = h_i . e_{t_j} - log p_{t_j}
    dots = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [2.0, 1.0, 3.0]]
    z = [[dots[i][j] - lp[j] for j in range(3)] for i in range(3)]
    expect = sum(nll(z[i], i) for i in range(3)) / 3
    got = ce_in_batch_logpop(HB, torch.tensor([1, 2, 3]), EMB, LOGP)
    assert got.item() == pytest.approx(expect, rel=1e-6)
    # without the correction the value differs (popular items are no longer discounted)
    assert ce_in_batch_logpop(HB, torch.tensor([1, 2, 3]), EMB, torch.zeros(4)).item() == pytest.approx(
        sum(nll(dots[i], i) for i in range(3)) / 3, rel=1e-6)



def test_ce_in_batch_logpop_same_target_masking():
    targets = torch.tensor([1, 2, 1])  # rows 0 and 2 share item 1
    lp = [math.log(0.5), math.log(0.3), math.log(0.5)]  # log p of the candidates t_j
    dots = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [2.0, 1.0, 2.0]]
    z = [[dots[i][j] - lp[j] for j in range(3)] for i in range(3)]
    # row 0 drops column 2, row 2 drops column 0, row 1 keeps everything (both item-1 modalities)
    expect = (nll(z[0][:2], 0) + nll(z[1], 1) + nll(z[2][1:], 1)) / 3
    got = ce_in_batch_logpop(HB, targets, EMB, LOGP)
    assert got.item() == pytest.approx(expect, rel=1e-6)
    unmasked = (nll(z[0], 0) + nll(z[1], 1) + nll(z[2], 2)) / 3
    assert got.item() != pytest.approx(unmasked, rel=1e-3)
    logits = in_batch_logpop_logits(HB, targets, EMB, LOGP)
    assert torch.isinf(logits[0, 2]) and torch.isinf(logits[2, 0]) and torch.isfinite(logits.diagonal()).all()
    # extra excluded pairs (e.g. row 1's history holds item 1); the diagonal is never excluded
    pairs = torch.tensor([[True, False, False], [True, True, False], [False, False, False]])
    got_ex = ce_in_batch_logpop(HB, targets, EMB, LOGP, exclude_pairs=pairs)
    assert got_ex.item() == pytest.approx((nll(z[0][:2], 0) + nll(z[1][1:], 0) + nll(z[2][1:], 1)) / 3, rel=1e-6)



def test_soft_ce_hand_computed():
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert soft_ce(student, teacher).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    r = math.sqrt(3.0)  # at T = 2: softmax([0, log 3 / 2]) = [1, sqrt 3] / (1 + sqrt 3)
    expect = -(0.5 * math.log(1 / (1 + r)) + 0.5 * math.log(r / (1 + r))) * 4
    assert soft_ce(student, teacher, temperature=2.0).item() == pytest.approx(expect, rel=1e-6)
    # a candidate masked in both is ignored, and the gradients stay finite
    s = torch.tensor([[0.0, math.log(3.0), float("-inf")]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0, float("-inf")]], requires_grad=True)
    loss = soft_ce(s, t, temperature=2.0, detach_teacher=False)
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    t2 = torch.zeros(1, 2, requires_grad=True)
    soft_ce(student.requires_grad_(), t2).backward()
    assert t2.grad is None  # the teacher is detached by default



@pytest.mark.parametrize("loss_fn", [
    lambda h, e: ce_cosine(h, torch.tensor([1, 3, 1]), e, 0.1),
    lambda h, e: infonce_in_batch(h, e[[1, 3, 1]], 0.1, target_ids=torch.tensor([1, 3, 1])),
    lambda h, e: ce_in_batch_logpop(h, torch.tensor([1, 3, 1]), e, LOGP),
])
def test_loss_gradients_flow(loss_fn):
    torch.manual_seed(0)
    h = torch.randn(3, 2, requires_grad=True)
    emb = torch.randn(4, 2, requires_grad=True)
    loss = loss_fn(h, emb)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    assert torch.isfinite(emb.grad).all() and emb.grad[1:].abs().sum() > 0



@pytest.mark.parametrize("temperature,with_exclude", [(1.0, False), (0.07, True)])
def test_chunked_cross_entropy_equals_the_whole_softmax(temperature, with_exclude):
    """Above max_logits the loss is computed in row chunks by a custom backward: the loss and the
    gradients of the states and of the item table equal those of the plain computation."""
    from mmrec.trainers.modules.losses import ce_all_items

    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, requires_grad=True)
    emb = torch.randn(51, 8, generator=g, requires_grad=True)
    targets = torch.randint(1, 51, (37,), generator=g)
    exclude = None
    if with_exclude:
        exclude = torch.zeros(51, dtype=torch.bool)
        exclude[[3, 9, 40]] = True
        targets[targets == 3] = 4
        targets[targets == 9] = 10
        targets[targets == 40] = 41
    whole = ce_all_items(h, targets, emb, temperature, exclude)
    gh, ge = torch.autograd.grad(whole, (h, emb))
    chunked = ce_all_items(h, targets, emb, temperature, exclude, max_logits=7 * 50)  # 7 rows a chunk
    ch, ce = torch.autograd.grad(chunked, (h, emb))
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-5)
    assert torch.allclose(ch, gh, rtol=1e-4, atol=1e-5) and torch.allclose(ce, ge, rtol=1e-4, atol=1e-5)
    assert not ce[0].any()  # the padding row is no class
    if with_exclude:
        assert not ce[[3, 9, 40]].any()  # excluded items get no gradient



def test_ce_loss_hand_computed():
    h = torch.tensor([[1.0, 0.0]])
    emb = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # row 0 = padding, never a class
    # logits over items 1..3: [1, 0, -1]; target item 2 -> -log(e^0 / (e^1 + e^0 + e^-1))
    expect = -math.log(1 / (math.e + 1 + 1 / math.e))
    assert ce_all_items(h, torch.tensor([2]), emb).item() == pytest.approx(expect, rel=1e-6)
    assert ce_all_items(h, torch.tensor([2]), emb, temperature=0.5).item() == pytest.approx(
        -math.log(1 / (math.e ** 2 + 1 + math.e ** -2)), rel=1e-6)



def test_bce_loss_hand_computed():
    h = torch.tensor([[1.0, 0.0]])
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    # pos item 1: logit 2 -> -log sigmoid(2); neg item 2: logit -1 -> -log(1 - sigmoid(-1))
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expect = -math.log(sig(2)) - math.log(1 - sig(-1))
    assert bce_sampled(h, torch.tensor([1]), torch.tensor([2]), emb).item() == pytest.approx(expect, rel=1e-6)
