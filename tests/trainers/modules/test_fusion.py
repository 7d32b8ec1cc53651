"""Fusion kinds: shapes, gradients, hand-set values, the attention fusions' output gain, errors."""

import math

import pytest
import torch

from mmrec.trainers.modules.fusion import FUSION_KINDS, build_fusion


def close(t: torch.Tensor, expect: list, atol: float = 1e-6) -> bool:
    return torch.allclose(t, torch.tensor(expect, dtype=t.dtype), atol=atol, rtol=1e-6)



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
