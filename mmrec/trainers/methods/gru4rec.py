"""GRU4Rec (Hidasi et al., ICLR 2016) in its next-item form (as in RecBole): item embeddings,
input dropout, a GRU, and a linear map back to the embedding size; dot-product scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender
from mmrec.trainers.modules.sequence import GRUEncoder


@dataclass
class GRU4RecConfig:
    hidden: int = 64
    gru_hidden: int = 128
    layers: int = 1
    dropout: float = 0.3


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"
    Config = GRU4RecConfig

    def __init__(self, cfg: GRU4RecConfig, n_items: int, max_len: int):
        super().__init__(cfg, n_items, max_len)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        nn.init.xavier_normal_(self.item.weight)
        self.encoder = GRUEncoder(cfg.hidden, cfg.gru_hidden, cfg.layers, cfg.dropout)
        for name, p in self.encoder.gru.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(p)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self.item(items)

    def item_embeddings(self) -> torch.Tensor:
        return self.item.weight
