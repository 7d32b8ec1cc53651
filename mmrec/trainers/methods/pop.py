"""Popularity baseline: one learned score per item, the same for every user.

Trained with the shared losses, the score converges to the item's log-popularity under ``ce``.
Any sequential method that does not beat it has learned nothing about order or taste.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender


@dataclass
class PopConfig:
    pass


class Pop(SequentialRecommender):
    name = "pop"
    Config = PopConfig

    def __init__(self, cfg: PopConfig, n_items: int, max_len: int):
        super().__init__(cfg, n_items, max_len)
        self.bias = nn.Parameter(torch.zeros(n_items + 1, 1))

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.ones(items.shape + (1,), device=items.device)

    def item_embeddings(self) -> torch.Tensor:
        return self.bias
