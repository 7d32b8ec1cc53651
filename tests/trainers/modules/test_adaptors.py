"""Whitening and the mixture-of-experts adaptor, against values computed by hand."""

import math

import pytest
import torch

from mmrec.trainers.modules.adaptors import MoEAdaptor, WhiteningExpert


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



def close(t: torch.Tensor, expect: list, atol: float = 1e-6) -> bool:
    return torch.allclose(t, torch.tensor(expect, dtype=t.dtype), atol=atol, rtol=1e-6)



E = math.e



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
