"""Shared blocks for the multi-modal methods: whitening / MoE adaptor, fusion kinds, contrastive and
debiased losses, each against values computed by hand."""

import math

import pytest
import torch

from mmrec.trainers.modules.adaptors import MoEAdaptor, WhiteningExpert
from mmrec.trainers.modules.fusion import FUSION_KINDS, build_fusion
from mmrec.trainers.modules.losses import (
    ce_cosine,
    ce_in_batch_logpop,
    in_batch_logpop_logits,
    infonce_in_batch,
    log_sampling_prob,
    soft_ce,
)

E = math.e


def nll(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], written out."""
    return -math.log(math.exp(logits[label]) / sum(math.exp(z) for z in logits))


def close(t: torch.Tensor, expect: list, atol: float = 1e-6) -> bool:
    return torch.allclose(t, torch.tensor(expect, dtype=t.dtype), atol=atol, rtol=1e-6)


# --- whitening and MoE adaptor ----------------------------------------------------------------------


def test_whitening_is_centre_then_project():
    pw = WhiteningExpert(3, 2, dropout=0.5).eval()
    with torch.no_grad():
        pw.bias.copy_(torch.tensor([1.0, 1.0, 1.0]))
        # W (in x out) = [[1, 0], [0, 1], [1, -1]]; nn.Linear stores its transpose
        pw.lin.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # x - b = [[0, 1, 2], [3, 4, 5]] -> [[0 + 2, 1 - 2], [3 + 5, 4 - 5]]
    assert pw(x).tolist() == [[2.0, -1.0], [8.0, -1.0]]
    # dropout acts on x before centring: with p = 1 every input is 0 and the output is -b W
    pw_drop = WhiteningExpert(3, 2, dropout=1.0).train()
    pw_drop.load_state_dict(pw.state_dict())
    assert pw_drop(x).tolist() == [[-2.0, 0.0], [-2.0, 0.0]]


def hand_moe(dropout: float = 0.0, noise: bool = True) -> MoEAdaptor:
    """2 -> 2 with two experts: e_1(x) = x, e_2(x) = 2 (x - 1); gate logits = x; noise weights non-zero."""
    moe = MoEAdaptor(2, 2, n_experts=2, dropout=dropout, noise=noise)
    with torch.no_grad():
        moe.experts[0].bias.zero_()
        moe.experts[0].lin.weight.copy_(torch.eye(2))
        moe.experts[1].bias.fill_(1.0)
        moe.experts[1].lin.weight.copy_(2 * torch.eye(2))
        moe.w_gate.copy_(torch.eye(2))
        moe.w_noise.fill_(0.3)
    return moe


def test_moe_eval_is_softmax_weighted_sum_of_experts():
    moe = hand_moe().eval()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out, gates = moe(x, return_gates=True)
    # x = [1, 0]: g = softmax(1, 0) = [e, 1] / (e + 1); e_1 = [1, 0], e_2 = [0, -2]
    # x = [0, 2]: g = softmax(0, 2) = [1, e^2] / (1 + e^2); e_1 = [0, 2], e_2 = [-2, 2]
    expect = [[E / (E + 1), -2 / (E + 1)], [-2 * E ** 2 / (1 + E ** 2), 2.0]]
    assert close(out, expect)
    assert close(gates, [[E / (E + 1), 1 / (E + 1)], [1 / (1 + E ** 2), E ** 2 / (1 + E ** 2)]])


def test_moe_any_leading_shape():
    torch.manual_seed(0)
    moe = MoEAdaptor(6, 4, n_experts=3, dropout=0.2).eval()
    with torch.no_grad():
        moe.w_gate.normal_()
    x = torch.randn(2, 5, 6)
    out, gates = moe(x, return_gates=True)
    assert out.shape == (2, 5, 4) and gates.shape == (2, 5, 3)
    assert torch.allclose(out.reshape(10, 4), moe(x.reshape(10, 6)), atol=1e-6)
    assert torch.allclose(out[1, 3], moe(x[1, 3]), atol=1e-6)  # a single vector
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        moe(torch.randn(3, 5))


def test_moe_noise_only_in_training():
    moe = hand_moe()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    moe.train()
    torch.manual_seed(1)
    a, ga = moe(x, return_gates=True)
    torch.manual_seed(2)
    b, gb = moe(x, return_gates=True)
    assert not torch.allclose(a, b) and not torch.allclose(ga, gb)
    assert torch.allclose(ga.sum(-1), torch.ones(3)) and torch.allclose(gb.sum(-1), torch.ones(3))
    moe.eval()
    torch.manual_seed(1)
    c, gc = moe(x, return_gates=True)
    torch.manual_seed(2)
    d = moe(x)
    assert torch.equal(c, d)
    assert torch.allclose(gc, torch.softmax(x @ torch.eye(2), -1)) and torch.allclose(gc.sum(-1), torch.ones(3))
    # without noise, training (dropout 0) equals evaluation
    moe.train()
    moe.noise = False
    assert torch.allclose(moe(x), c)
    assert torch.allclose(hand_moe(noise=False).train()(x), c)


def test_moe_gate_reads_raw_input_and_starts_uniform():
    moe = hand_moe(dropout=1.0, noise=False).train()  # the experts see zeros, the gate does not
    x = torch.tensor([[1.0, 0.0]])
    out, gates = moe(x, return_gates=True)
    assert close(gates, [[E / (E + 1), 1 / (E + 1)]])
    # e_1(0) = 0, e_2(0) = 2 (0 - 1) = [-2, -2]
    assert close(out, [[-2 / (E + 1), -2 / (E + 1)]])
    fresh = MoEAdaptor(5, 3, n_experts=4).train()
    _, g = fresh(torch.randn(7, 5), return_gates=True)
    assert torch.allclose(fresh.gates(torch.randn(7, 5)).sum(-1), torch.ones(7))
    assert torch.allclose(fresh.eval()(torch.randn(7, 5), return_gates=True)[1], torch.full((7, 4), 0.25))


def test_moe_gradients_reach_experts_and_gates():
    torch.manual_seed(0)
    moe = MoEAdaptor(4, 3, n_experts=2, dropout=0.1).train()
    x = torch.randn(6, 4, requires_grad=True)
    moe(x).pow(2).sum().backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert moe.w_gate.grad.abs().sum() > 0 and moe.w_noise.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_moe_linear_experts_and_bad_kind():
    moe = MoEAdaptor(3, 2, n_experts=2, expert="linear").eval()
    assert moe.experts[0].lin.bias is not None and moe(torch.randn(4, 3)).shape == (4, 2)
    with pytest.raises(ValueError, match="whitening"):
        MoEAdaptor(3, 2, expert="mlp")


# --- fusion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FUSION_KINDS)
@pytest.mark.parametrize("shape", [(3, 4, 8), (5, 8)])
def test_fusion_shapes_and_gradients(kind, shape):
    torch.manual_seed(0)
    fusion = build_fusion(kind, 8, 2, dropout=0.1, heads=2)
    xs = {"text": torch.randn(*shape, requires_grad=True), "image": torch.randn(*shape, requires_grad=True)}
    out = fusion(xs)
    assert out.shape == shape
    out.pow(2).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs.values())
    fusion.eval()
    # a list works like a dict, and sequences are fused position by position
    flat = [x.detach().reshape(-1, 8) for x in xs.values()]
    assert torch.allclose(fusion([x.detach() for x in xs.values()]).reshape(-1, 8), fusion(flat), atol=1e-5)


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_fusion_three_modalities(kind):
    fusion = build_fusion(kind, 4, 3).eval()
    assert fusion([torch.randn(2, 3, 4) for _ in range(3)]).shape == (2, 3, 4)


def test_sum_fusion_is_elementwise_sum():
    xs = [torch.randn(2, 3, 4) for _ in range(3)]
    assert torch.equal(build_fusion("sum", 4, 3)(xs), xs[0] + xs[1] + xs[2])


def test_concat_fusion_hand_set():
    f = build_fusion("concat", 2, 2)
    with torch.no_grad():
        f.proj.weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 2.0]]))  # [I | 2I]
        f.proj.bias.copy_(torch.tensor([0.0, 1.0]))
    out = f([torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])])
    assert out.tolist() == [[1.0 + 6.0, 2.0 - 2.0 + 1.0]]


def test_film_fusion_hand_set():
    f = build_fusion("film", 2, 2)
    with torch.no_grad():
        f.gamma.weight.copy_(torch.eye(2))
        f.gamma.bias.copy_(torch.tensor([0.0, 1.0]))
        f.beta.weight.zero_()
        f.beta.bias.copy_(torch.tensor([0.5, -0.5]))
    x_a, x_b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    # gamma(x_b) = [3, -1 + 1] = [3, 0]; beta = [0.5, -0.5]; out = gamma * x_a + beta
    assert f({"image": x_a, "text": x_b}).tolist() == [[3.0 * 1.0 + 0.5, 0.0 * 2.0 - 0.5]]
    # the first modality is the modulated one
    assert f([x_b, x_a]).tolist() == [[1.0 * 3.0 + 0.5, 3.0 * -1.0 - 0.5]]


def test_gated_fusion_is_a_sigmoid_mix():
    f = build_fusion("gated", 2, 2)
    with torch.no_grad():
        f.gate.weight.zero_()
        f.gate.bias.copy_(torch.tensor([1.0, -2.0, 0.0, 0.0]))  # logits [[1, -2], [0, 0]] for (modality, dim)
    x1, x2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    g = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))]  # sigmoid(a_1 - a_2) per dimension
    expect = [[g[0] * 1.0 + (1 - g[0]) * 3.0, g[1] * 2.0 + (1 - g[1]) * -1.0]]
    assert close(f([x1, x2]), expect)
    # a convex mix: identical inputs come back unchanged whatever the gate
    torch.manual_seed(0)
    f3 = build_fusion("gated", 4, 3)
    x = torch.randn(5, 4)
    assert torch.allclose(f3([x, x, x]), x, atol=1e-6)


def test_mlp_variant_applies_two_layers_after_fusion():
    f = build_fusion("sum_mlp", 2, 2, dropout=0.5).eval()
    with torch.no_grad():
        f.mlp[0].weight.copy_(torch.eye(2))
        f.mlp[0].bias.copy_(torch.tensor([0.0, -10.0]))
        f.mlp[3].weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        f.mlp[3].bias.zero_()
    # sum = [4, 1]; ReLU([4, -9]) = [4, 0]; W_2 [4, 0] = [8, 4]
    assert f([torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])]).tolist() == [[8.0, 4.0]]


def test_coattention_attends_only_to_the_other_modality():
    torch.manual_seed(0)
    co = build_fusion("coattention", 4, 2).eval()
    merged = build_fusion("merged_attention", 4, 2).eval()
    xs = [torch.randn(3, 4), torch.randn(3, 4)]
    a, m = co(xs), merged(xs)
    with torch.no_grad():  # new queries and keys
        co.attn.qkv.weight[:8].normal_()
        merged.attn.qkv.weight[:8].normal_()
    # each token has a single key (the other modality), so its attention weight is 1 whatever q and k
    assert torch.allclose(co(xs), a, atol=1e-6)
    assert not torch.allclose(merged(xs), m, atol=1e-4)


def test_attention_fusion_output_gain():
    """The attention kinds end in a LayerNorm (bias 0 at the start): with one token its output has norm
    gain * sqrt(d) exactly; by default gain = 1/sqrt(d) (norm 1), out_gain=1.0 gives sqrt(d) = 4 at d = 16
    (MMSR's code). coattention sums two such tokens (norm <= 2 by default)."""
    torch.manual_seed(0)
    x = torch.randn(5, 16) * 10
    norms = lambda f, xs: f(xs).norm(dim=-1)  # noqa: E731
    assert torch.allclose(norms(build_fusion("merged_attention", 16, 1).eval(), [x]), torch.ones(5), atol=1e-4)
    code = build_fusion("merged_attention", 16, 1, out_gain=1.0).eval()
    assert torch.allclose(norms(code, [x]), torch.full((5,), 4.0), atol=1e-4)
    assert torch.allclose(norms(build_fusion("merged_attention", 16, 1, out_gain=0.5).eval(), [x]),
                          torch.full((5,), 2.0), atol=1e-4)
    co = build_fusion("coattention", 16, 2).eval()
    assert co.ffn.norm.weight.tolist() == [0.25] * 16
    assert (norms(co, [x, -x]) <= 2.0 + 1e-4).all()
    assert build_fusion("sum", 16, 2, out_gain=3.0)([x, x]).allclose(2 * x)  # unused by the other kinds
    with pytest.raises(ValueError, match="out_gain must be positive"):
        build_fusion("merged_attention", 16, 2, out_gain=0.0)


def test_fusion_errors():
    with pytest.raises(ValueError, match="unknown fusion kind 'average'.*sum, concat, film, gated, sum_mlp"):
        build_fusion("average", 4, 2)
    with pytest.raises(ValueError, match="merged_attention"):
        build_fusion("film_dnn", 4, 2)
    with pytest.raises(ValueError, match="at least 2"):
        build_fusion("film", 4, 1)
    with pytest.raises(ValueError, match="at least 2"):
        build_fusion("coattention", 4, 1)
    f = build_fusion("sum", 4, 2)
    with pytest.raises(ValueError, match="expected 2"):
        f([torch.randn(3, 4)])
    with pytest.raises(ValueError, match="same shape"):
        f([torch.randn(3, 4), torch.randn(2, 4)])


# --- losses -----------------------------------------------------------------------------------------


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


H3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
P3 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
# s = H3 @ P3.T: rows [1, 1, 1], [0, 1, 2], [1, 2, 3]; labels on the diagonal
S3 = [[1.0, 1.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]


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


# items: pad [0, 0], e_1 = [1, 0], e_2 = [0, 1], e_3 = [1, 1]; sampling probabilities 0.5, 0.3, 0.2
EMB = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
LOGP = torch.log(torch.tensor([1.0, 0.5, 0.3, 0.2]))
HB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])


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
    # row 0 drops column 2, row 2 drops column 0, row 1 keeps everything (both item-1 slots)
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
