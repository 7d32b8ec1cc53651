"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

Item-id embeddings plus learned positions go through causal Transformer blocks; the state at the
last position scores every item by a dot product with the (shared) item embeddings. The block
layout follows the widely reproduced implementations (S3-Rec's and RecBole's): post-LayerNorm
blocks, GELU, LayerNorm and dropout on the input, no sqrt(d) scaling of embeddings. Trained with
``train.loss=bce`` (one sampled negative per position, the paper) or ``ce`` (softmax over all items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.sequence import TransformerEncoder


@dataclass
class SASRecConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    act: Literal["gelu", "relu"] = "gelu"
    init_std: float = 0.02
    # "reverse": the most recent item always has the last position (left padding, as Kang's and
    # S3-Rec's code); "forward": positions count from the oldest item (RecBole).
    position: Literal["forward", "reverse"] = "reverse"


class SASRec(SequentialRecommender):
    name = "sasrec"
    Config = SASRecConfig

    def __init__(self, cfg: SASRecConfig, n_items: int, max_len: int):
        super().__init__(cfg, n_items, max_len)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.encoder = TransformerEncoder(cfg.hidden, cfg.layers, cfg.heads, cfg.inner, cfg.dropout,
                                          cfg.attn_dropout, max_len, cfg.act,
                                          position=cfg.position)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.item(items), lengths)

    def item_embeddings(self) -> torch.Tensor:
        return self.item.weight
