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


# --- the experts as one batched product (bench/method_cost.py) -------------------------------------

def _loop_moe(moe: MoEAdaptor, x: torch.Tensor) -> torch.Tensor:
    """The formulation before the batched product: each expert module on ``x`` in a Python loop (its
    own dropout), stacked and mixed by the gates."""
    g = moe.gates(x)
    expert_out = torch.stack([e(x) for e in moe.experts], dim=-2)  # [..., K, out]
    return (g.unsqueeze(-1) * expert_out).sum(-2)


def _randomised_moe(expert: str, dropout: float, seed: int = 0) -> MoEAdaptor:
    torch.manual_seed(seed)
    moe = MoEAdaptor(7, 5, n_experts=4, dropout=dropout, noise=False, expert=expert)
    with torch.no_grad():
        for p in moe.parameters():
            p.add_(torch.randn(p.shape) * 0.3)  # centres, biases and gates away from zero
    return moe


def _loss_and_grads(moe: MoEAdaptor, x: torch.Tensor, fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    moe.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    w = torch.linspace(-1.0, 1.0, moe.out_dim)
    loss = (fn(xx) * w).pow(2).sum() + fn(xx).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
    grads["x"] = xx.grad.clone()
    return loss.detach(), grads


@pytest.mark.parametrize("expert", ["whitening", "linear"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batched_experts_equal_the_loop_without_dropout(expert, mode):
    """Dropout off (p = 0 in training; evaluation): the batched product gives the loop's output, loss
    and every gradient (experts' W, centres b or biases c, gates, the input), any leading shape."""
    moe = _randomised_moe(expert, dropout=0.0)
    moe.train(mode == "train")
    x = torch.randn(3, 6, 7)
    new_loss, new = _loss_and_grads(moe, x, moe)
    old_loss, old = _loss_and_grads(moe, x, lambda v: _loop_moe(moe, v))
    assert torch.allclose(new_loss, old_loss, atol=1e-6, rtol=1e-6)
    assert new.keys() == old.keys() and len(new) == 2 * moe.n_experts + 2  # + w_gate, x (no noise: no w_noise)
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name


@pytest.mark.parametrize("expert", ["whitening", "linear"])
def test_batched_experts_equal_the_loop_with_the_same_dropout_masks(expert, monkeypatch):
    """Dropout on, with the masks fixed: the batched call's K masks (one dropout call over K copies)
    given to the loop's K dropout calls in expert order give the same output and gradients."""
    moe = _randomised_moe(expert, dropout=0.25).train()
    x = torch.randn(9, 7)
    masks = torch.rand(moe.n_experts, 9, 7, generator=torch.Generator().manual_seed(3)) >= 0.25
    calls = []

    def fixed_dropout(inp, p=0.5, training=True, inplace=False):
        if inp.dim() == 3:  # the batched call: [K, N, in]
            return inp * masks / (1 - p)
        k = len(calls) % moe.n_experts  # the loop: expert k's call
        calls.append(k)
        return inp * masks[k] / (1 - p)

    monkeypatch.setattr(torch.nn.functional, "dropout", fixed_dropout)
    new_loss, new = _loss_and_grads(moe, x, moe)
    old_loss, old = _loss_and_grads(moe, x, lambda v: _loop_moe(moe, v))
    assert calls  # the loop went through the patched dropout
    assert torch.allclose(new_loss, old_loss, atol=1e-6, rtol=1e-6)
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name


def test_batched_expert_masks_keep_rate_and_independence():
    """Dropout on: each expert keeps an input element with probability 1 - p (scaled by 1 / (1 - p)),
    independently of the other experts, as K separate dropout calls: identity experts on all-one
    inputs show the masks."""
    p, k, n, d = 0.2, 4, 4000, 8
    moe = MoEAdaptor(d, d, n_experts=k, dropout=p).train()
    with torch.no_grad():
        for e in moe.experts:
            e.lin.weight.copy_(torch.eye(d))
            e.bias.zero_()
    torch.manual_seed(0)
    y = moe.expert_outputs(torch.ones(n, d))  # [K, N, d]: each expert's dropped input
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    kept = (y > 0).float().reshape(k, -1)
    # keep rate of each expert: 1 - p (sd sqrt(p (1 - p) / 32000) = 0.0022)
    assert torch.allclose(kept.mean(1), torch.full((k,), 1 - p), atol=0.01)
    # two experts keep the same element with probability (1 - p)^2: independent masks, not one shared
    for a in range(k):
        for b in range(a + 1, k):
            assert (kept[a] * kept[b]).mean().item() == pytest.approx((1 - p) ** 2, abs=0.01)
