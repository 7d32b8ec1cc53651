"""Projections from a frozen modality feature (PLM text vector, image vector, price code) into the
recommendation space: UniSRec's parametric whitening and its mixture-of-experts adaptor, which ANT
reuses per modality with "Gaussian routing".

For a feature x in R^{in_dim} and experts k = 1..K:

- whitening expert:  x~_k = (Dropout(x) - b_k) W_k,  b_k in R^{in_dim} (init 0), W_k in R^{in_dim x out_dim}
  without bias (init N(0, 0.02));
- gate:  training  g = softmax(x W_g + eps * (softplus(x W_n) + noise_eps)),  eps ~ N(0, I)
         eval      g = softmax(x W_g)
  W_g, W_n in R^{in_dim x K} are zero-initialised (uniform gates at the start); the gate reads the raw x,
  not the dropped-out one. This is a dense softmax over all experts, not a top-k.
- output:  v = sum_k g_k x~_k  in R^{out_dim}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WhiteningExpert(nn.Module):
    """Parametric whitening (UniSRec's ``PWLayer``): ``(Dropout(x) - b) W``.

    ``b`` (``in_dim``, init 0) is a learned centre, ``W`` a linear map without bias (init N(0, 0.02)).
    Accepts ``[..., in_dim]`` and returns ``[..., out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(in_dim))
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.normal_(self.lin.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.dropout(x) - self.bias)


class LinearExpert(nn.Module):
    """A plain affine expert on the dropped-out input, ``Dropout(x) W + c`` (ANT's price experts)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.dropout(x))


EXPERTS: dict[str, type[nn.Module]] = {"whitening": WhiteningExpert, "linear": LinearExpert}


class MoEAdaptor(nn.Module):
    """Mixture of whitening experts with a (noisy) softmax gate: ``v = sum_k g_k(x) expert_k(x)``.

    Gate logits are ``x W_g``; while training and with ``noise=True`` they get Gaussian noise
    ``eps * (softplus(x W_n) + noise_eps)``, eps ~ N(0, 1) (UniSRec's noisy gating = ANT's Gaussian
    routing, whose mean ``x W_g`` alone is used at evaluation). ``noise=False`` (or setting the
    attribute ``noise``) gives the clean gate in training too.

    Accepts ``[..., in_dim]`` with any leading shape and returns ``[..., out_dim]``; with
    ``return_gates=True`` it returns ``(v, g)`` where ``g`` is ``[..., n_experts]`` and sums to 1.
    ``expert="linear"`` uses affine experts (ANT's price modality) instead of whitening ones.
    """

    def __init__(self, in_dim: int, out_dim: int, n_experts: int = 8, dropout: float = 0.0,
                 noise: bool = True, noise_eps: float = 1e-2, expert: str = "whitening"):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, not {n_experts}")
        if expert not in EXPERTS:
            raise ValueError(f"unknown expert kind {expert!r}; expected one of {sorted(EXPERTS)}")
        self.in_dim, self.out_dim, self.n_experts = in_dim, out_dim, n_experts
        self.noise = noise
        self.noise_eps = noise_eps
        self.experts = nn.ModuleList(EXPERTS[expert](in_dim, out_dim, dropout) for _ in range(n_experts))
        self.w_gate = nn.Parameter(torch.zeros(in_dim, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, n_experts))

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """``softmax(x W_g [+ eps * (softplus(x W_n) + noise_eps)])`` over experts: ``[..., n_experts]``."""
        logits = x @ self.w_gate
        if self.training and self.noise:
            std = F.softplus(x @ self.w_noise) + self.noise_eps
            logits = logits + torch.randn_like(logits) * std
        return torch.softmax(logits, dim=-1)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on ``x`` ``[N, in_dim]``: ``[K, N, out_dim]``, as one batched product over the
        experts' stacked weights (the values of ``stack([e(x) for e in self.experts])``; the
        parameters stay the experts' own, so checkpoints and transfer are unchanged).

        Dropout: each expert drops its own mask, as K ``nn.Dropout`` calls do. Here the K masks are
        drawn by one dropout call over K copies of ``x``: every element of every copy is kept
        independently with probability 1 - p and scaled by 1 / (1 - p), so the masks have the same
        joint distribution (independent across experts, items and features); only the random stream
        differs (the loop drew expert 1's mask first, then expert 2's, ...). Without dropout (p = 0
        or evaluation) no copy is made: one product ``x [W_1 .. W_K]``. Whitening experts subtract
        their centre after the product, ``(x - b_k) W_k = x W_k - b_k W_k`` (one ``[K, out]`` term,
        not a centred copy of the inputs)."""
        k = self.n_experts
        weight = torch.stack([e.lin.weight for e in self.experts])  # [K, out, in]
        p = self.experts[0].dropout.p if self.training else 0.0
        if p > 0:
            xs = F.dropout(x.unsqueeze(0).expand(k, *x.shape), p, True)  # [K, N, in]: K independent masks
            y = torch.bmm(xs, weight.transpose(1, 2))
        else:
            y = (x @ weight.reshape(k * self.out_dim, self.in_dim).T).view(x.shape[0], k, self.out_dim).transpose(0, 1)
        if isinstance(self.experts[0], WhiteningExpert):  # (x - b_k) W_k = x W_k - b_k W_k
            return y - torch.einsum("ki,koi->ko", torch.stack([e.bias for e in self.experts]), weight)[:, None, :]
        return y + torch.stack([e.lin.bias for e in self.experts])[:, None, :]

    def forward(self, x: torch.Tensor, return_gates: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected inputs [..., {self.in_dim}], got {tuple(x.shape)}")
        g = self.gates(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_dim)
        y = self.expert_outputs(flat)  # [K, N, out]
        v = torch.einsum("nk,kno->no", g.reshape(-1, self.n_experts), y).reshape(*lead, self.out_dim)
        return (v, g) if return_gates else v
