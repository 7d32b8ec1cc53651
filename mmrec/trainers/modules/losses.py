"""Next-item losses over the positions that have a target (target id 0 = no target)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ce_all_items(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                 temperature: float = 1.0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over every item: softmax of ``h @ item_emb[1:].T / temperature``.

    ``h``: [N, d] states at target positions; ``targets``: [N] ids in 1..n_items; ``item_emb``:
    [n_items + 1, d] with row 0 the padding item, which is not a class. ``exclude``: optional bool
    ``[n_items + 1]``; those items are not classes (held-out cold items).
    """
    logits = h @ item_emb[1:].T
    if temperature != 1.0:
        logits = logits / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude[1:], float("-inf"))
    return F.cross_entropy(logits.float(), targets - 1)


def bce_sampled(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """SASRec's loss: -log sigma(h.e_pos) - mean_k log(1 - sigma(h.e_neg_k)).

    ``h``: [N, d]; ``pos``: [N]; ``neg``: [N] or [N, K] sampled negative ids.
    """
    pos_logit = (h * item_emb[pos]).sum(-1)
    if neg.dim() == 1:
        neg = neg[:, None]
    neg_logit = torch.einsum("nd,nkd->nk", h, item_emb[neg])
    return (F.softplus(-pos_logit) + F.softplus(neg_logit).mean(-1)).mean()
