"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

Item-id embeddings plus learned positions go through causal Transformer blocks; the state at the
last position scores every item by a dot product with the item embeddings (the input table, or with
``model.output_embeddings=separate`` a table of its own, as gSASRec's code does by default). The block
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
from mmrec.trainers.modules.sequence import TransformerConfig


@dataclass
class SASRecConfig(TransformerConfig):
    """hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5 / 0.5, GELU (``TransformerConfig``);
    ``output_embeddings``: the items are scored against the input table ("shared", Kang's SASRec) or an
    output table of their own ("separate": gSASRec's ``reuse_item_embeddings=False``, its default)."""

    output_embeddings: Literal["shared", "separate"] = "shared"


class SASRec(SequentialRecommender):
    name = "sasrec"
    Config = SASRecConfig

    def __init__(self, cfg: SASRecConfig, n_items: int, max_len: int):
        super().__init__(cfg, n_items, max_len)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.out = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0) if cfg.output_embeddings == "separate" else None
        self.encoder = cfg.encoder(max_len)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
            if self.out is not None:
                self.out.weight[0].zero_()

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self.item(items)

    def item_embeddings(self) -> torch.Tensor:
        return (self.item if self.out is None else self.out).weight
