"""Fusion of several modality vectors of the same size into one (MMSR's item-level fusion modules).

Every module takes the modality vectors ``x_1..x_n`` as a list/tuple or a dict (dict order = modality
order), each ``[..., d]`` with the same shape (item tables ``[N, d]``, sequences ``[B, L, d]``, ...), and
returns ``[..., d]``:

==================== =====================================================================================
``sum``              ``x_1 + ... + x_n``
``concat``           ``W [x_1; ...; x_n] + c``
``film``             ``gamma(x_c) * x_1 + beta(x_c)`` with ``x_c = [x_2; ...; x_n]`` and gamma, beta affine:
                     the first modality is modulated by the others (FiLM; MMSR: text modulates image)
``gated``            ``sum_m w_m * x_m`` with ``w = softmax_m(W [x_1; ...; x_n] + c)`` per dimension; with
                     two modalities ``w_1 = sigmoid(a_1 - a_2)``, i.e. ``g * x_1 + (1 - g) * x_2``
``<kind>_mlp``       the fused vector ``f`` through ``W_2 Dropout(ReLU(W_1 f + c_1)) + c_2``
``coattention``      modalities as tokens (+ a learned modality embedding); each token attends to the
                     *other* tokens only (cross-attention, weights shared by all directions), residual +
                     LayerNorm, a ReLU FFN with residual + LayerNorm, then the sum over modalities
``merged_attention`` the same tokens in one self-attention block where every token sees every token
                     (single-stream transformer), then the mean over modalities
==================== =====================================================================================

The attention kinds end in a LayerNorm, whose output has norm ``sqrt(d)`` with PyTorch's gain of 1 (6.3
after the mean over two tokens at d = 64, against 1-2 for ``sum`` and ``concat``). ``out_gain`` starts that
gain at ``1/sqrt(d)`` by default, so fused items start near unit norm like the other fusions'; with a
gain of 1 (``out_gain=1.0``, MMSR's code) and softmax cross-entropy over all items, MMSR sat on a long
plateau on MovieLens-1M, every item vector nearly parallel (docs/results.md).

Differences from MMSR's code, on purpose: the inputs are already projected to d by the caller (no LN and
per-modality projection inside ``sum``/``concat``), the MLP is 2 layers ending with a linear map, and the
attention kinds see one vector per modality (token sequences are pooled before). With one token per
modality, ``coattention`` with two modalities attends to a single key, so its attention weights are 1.

``merged_attention`` also takes token sequences (``AttentionFusion.fuse_tokens``: each modality's tokens
``[N, T_m, d]`` with a validity mask, all concatenated into one sequence, padding tokens masked as keys,
then the mean over the valid tokens), which is MMSR's code (``model/modeling.py`` ``MergedAttention``).
The code's block is BERT's: GELU FFN, 12 heads at d = 768, and token-type embeddings that are computed
but never added (``act="gelu"``, ``heads=12``, ``type_embedding=False`` reproduce it; the defaults keep
mmrec's ReLU, one head and an added modality embedding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mmrec.trainers.modules.sequence import FeedForward, SelfAttention

Modalities = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]

BASE_KINDS = ("sum", "concat", "film", "gated")
ATTENTION_KINDS = ("coattention", "merged_attention")  # the kinds with an output gain (AttentionFusion)
FUSION_KINDS = BASE_KINDS + tuple(f"{k}_mlp" for k in BASE_KINDS) + ATTENTION_KINDS


class Fusion(nn.Module):
    """Base class: checks the inputs and hands ``fuse`` a list of ``n_modalities`` tensors ``[..., d]``."""

    min_modalities = 1

    def __init__(self, d: int, n_modalities: int):
        super().__init__()
        if n_modalities < self.min_modalities:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_modalities} modalities, "
                             f"got {n_modalities}")
        self.d = d
        self.n_modalities = n_modalities

    def _inputs(self, xs: Modalities) -> list[torch.Tensor]:
        xs = list(xs.values()) if isinstance(xs, Mapping) else list(xs)
        if len(xs) != self.n_modalities:
            raise ValueError(f"expected {self.n_modalities} modality tensors, got {len(xs)}")
        shape = xs[0].shape
        if shape[-1] != self.d or any(x.shape != shape for x in xs):
            raise ValueError(f"modality tensors must all be [..., {self.d}] with the same shape, "
                             f"got {[tuple(x.shape) for x in xs]}")
        return xs

    def forward(self, xs: Modalities) -> torch.Tensor:
        return self.fuse(self._inputs(xs))

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class SumFusion(Fusion):
    """``x_1 + ... + x_n``."""

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(xs, 0).sum(0)


class ConcatFusion(Fusion):
    """``W [x_1; ...; x_n] + c`` with ``W`` in R^{d x n d}."""

    def __init__(self, d: int, n_modalities: int):
        super().__init__(d, n_modalities)
        self.proj = nn.Linear(n_modalities * d, d)

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.proj(torch.cat(xs, -1))


class FiLMFusion(Fusion):
    """``gamma(x_c) * x_1 + beta(x_c)``, ``x_c = [x_2; ...; x_n]``, gamma and beta affine maps to d."""

    min_modalities = 2

    def __init__(self, d: int, n_modalities: int):
        super().__init__(d, n_modalities)
        self.gamma = nn.Linear((n_modalities - 1) * d, d)
        self.beta = nn.Linear((n_modalities - 1) * d, d)

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        cond = torch.cat(xs[1:], -1)
        return self.gamma(cond) * xs[0] + self.beta(cond)


class GatedFusion(Fusion):
    """``sum_m w_m * x_m``, ``w = softmax over m of (W [x_1; ...; x_n] + c)`` reshaped to ``[..., n, d]``.

    A convex, per-dimension mix of the modalities; for two modalities the weight of the first is the
    sigmoid gate ``g = sigmoid(a_1 - a_2)`` and the output ``g * x_1 + (1 - g) * x_2``.
    """

    def __init__(self, d: int, n_modalities: int):
        super().__init__(d, n_modalities)
        self.gate = nn.Linear(n_modalities * d, n_modalities * d)

    def weights(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Mixing weights ``[..., n, d]`` (sum to 1 over the modality axis)."""
        logits = self.gate(torch.cat(xs, -1))
        return torch.softmax(logits.unflatten(-1, (self.n_modalities, self.d)), dim=-2)

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return (self.weights(xs) * torch.stack(xs, -2)).sum(-2)


class MLPFusion(Fusion):
    """A fusion followed by a 2-layer MLP: ``W_2 Dropout(ReLU(W_1 f + c_1)) + c_2``, ``f = inner(xs)``."""

    def __init__(self, inner: Fusion, dropout: float = 0.0):
        super().__init__(inner.d, inner.n_modalities)
        self.inner = inner
        self.mlp = nn.Sequential(nn.Linear(inner.d, inner.d), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(inner.d, inner.d))

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.inner.fuse(xs))


class AttentionFusion(Fusion):
    """Modalities as tokens ``x_m + type_m`` in one post-LN transformer block, then pooled.

    ``cross=True`` (``coattention``): token m attends to the other tokens only, output = sum over m.
    ``cross=False`` (``merged_attention``): every token attends to all tokens, output = mean over m.
    ``out_gain``: the initial gain of the block's last LayerNorm (None: ``1/sqrt(d)``; 1.0: PyTorch's
    and MMSR's code; see the module docstring).
    """

    def __init__(self, d: int, n_modalities: int, dropout: float = 0.0, heads: int = 1, cross: bool = False,
                 inner: int | None = None, out_gain: float | None = None, act: str = "relu",
                 type_embedding: bool = True):
        super().__init__(d, n_modalities)
        if cross and n_modalities < 2:
            raise ValueError(f"coattention needs at least 2 modalities, got {n_modalities}")
        if out_gain is not None and not out_gain > 0:
            raise ValueError(f"out_gain must be positive (or None for 1/sqrt(d)), got {out_gain}")
        if act not in ("relu", "gelu"):
            raise ValueError(f"act must be 'relu' or 'gelu', not {act!r}")
        self.cross = cross
        # a learned modality embedding added to each token; MMSR's code computes one and never adds it
        self.type_emb = nn.Embedding(n_modalities, d) if type_embedding else None
        if self.type_emb is not None:
            nn.init.normal_(self.type_emb.weight, 0.0, 0.02)
        self.attn = SelfAttention(d, heads, dropout, dropout)
        self.ffn = FeedForward(d, inner or 4 * d, dropout, act=act)
        nn.init.constant_(self.ffn.norm.weight, d ** -0.5 if out_gain is None else out_gain)
        mask = ~torch.eye(n_modalities, dtype=torch.bool) if cross else None  # True = may attend
        self.register_buffer("mask", mask, persistent=False)

    def fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack(xs, -2)  # [..., n, d]
        lead = tokens.shape[:-2]
        h = tokens.reshape(-1, self.n_modalities, self.d)
        if self.type_emb is not None:
            h = h + self.type_emb.weight
        h = self.ffn(self.attn(h, self.mask, False))
        h = h.sum(-2) if self.cross else h.mean(-2)
        return h.reshape(*lead, self.d)

    def fuse_tokens(self, xs: Sequence[torch.Tensor], valid: Sequence[torch.Tensor]) -> torch.Tensor:
        """``merged_attention`` over token sequences: ``xs[m]`` ``[N, T_m, d]`` (modality m's tokens),
        ``valid[m]`` ``[N, T_m]`` bool (False: a padding token, never attended to and left out of the
        mean). All tokens form one sequence in one self-attention block; the output ``[N, d]`` is the
        mean of the block's outputs over the valid tokens (MMSR's ``MergedAttention``). Each row needs
        at least one valid token."""
        if self.cross:
            raise ValueError("token sequences are supported by merged_attention only, not coattention")
        if len(xs) != self.n_modalities or len(valid) != self.n_modalities:
            raise ValueError(f"expected {self.n_modalities} token tensors and masks, got {len(xs)} and {len(valid)}")
        parts = []
        for m, x in enumerate(xs):
            if x.dim() != 3 or x.shape[-1] != self.d or valid[m].shape != x.shape[:2]:
                raise ValueError(f"modality {m}: tokens must be [N, T, {self.d}] with a [N, T] mask, got "
                                 f"{tuple(x.shape)} and {tuple(valid[m].shape)}")
            parts.append(x if self.type_emb is None else x + self.type_emb.weight[m])
        h = torch.cat(parts, 1)
        keep = torch.cat([v.bool() for v in valid], 1)  # [N, S]
        h = self.ffn(self.attn(h, keep[:, None, None, :], False))
        w = keep.to(h.dtype).unsqueeze(-1)
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


def build_fusion(kind: str, d: int, n_modalities: int, dropout: float = 0.0, heads: int = 1,
                 out_gain: float | None = None, act: str = "relu", type_embedding: bool = True) -> Fusion:
    """The fusion module ``kind`` (one of ``FUSION_KINDS``) for ``n_modalities`` vectors of size ``d``;
    ``out_gain``, ``act`` (the FFN's activation) and ``type_embedding`` (whether the modality embedding is
    added) are the attention kinds' (``AttentionFusion``), unused by the others."""
    base = kind[:-len("_mlp")] if kind.endswith("_mlp") else kind
    if kind not in FUSION_KINDS:
        raise ValueError(f"unknown fusion kind {kind!r}; expected one of: {', '.join(FUSION_KINDS)}")
    if kind in ATTENTION_KINDS:
        return AttentionFusion(d, n_modalities, dropout, heads, cross=kind == "coattention", out_gain=out_gain,
                               act=act, type_embedding=type_embedding)
    fusion: Fusion = {"sum": SumFusion, "concat": ConcatFusion, "film": FiLMFusion, "gated": GatedFusion}[base](
        d, n_modalities)
    return MLPFusion(fusion, dropout) if kind.endswith("_mlp") else fusion
