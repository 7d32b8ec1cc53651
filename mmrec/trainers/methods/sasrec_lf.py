"""SASRec with late feature fusion: two streams, combined scores.

An id stream (SASRec over id embeddings) and a feature stream (SASRec over the items' fused,
adapted features) are encoded separately; their scores are added:

    h_id = SASRec_id(e_id(i_1..L)),   h_f = SASRec_f(v(i_1..L)),   v(i) = fusion(W_m x_m(i))
    score(i | h) = <h_id, e_id(i)> + <h_f, v(i)>

Both streams are trained together on the summed score. The query is the concatenation
``[h_id; h_f]`` and the item table ``[e_id; v]``, so the shared loss and evaluator apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureItems
from mmrec.trainers.modules.sequence import TransformerEncoder


@dataclass
class SASRecLFConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    fusion: Literal["sum", "concat", "film", "gated", "sum_mlp", "concat_mlp", "film_mlp", "gated_mlp",
                    "coattention", "merged_attention"] = "sum"
    adaptor: Literal["linear", "mlp", "moe"] = "linear"
    feature_dropout: float = 0.1
    position: Literal["forward", "reverse"] = "reverse"
    init_std: float = 0.02


class SASRecLF(SequentialRecommender):
    name = "sasrec_lf"
    Config = SASRecLFConfig
    modalities = ("text", "image", "price")

    def __init__(self, cfg: SASRecLFConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        slots = [s for s in self.modalities if s in self.features]
        if not slots:
            raise ConfigError("sasrec_lf needs at least one feature slot: --features text=ENTRY (or image=, price=)")
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)

        def encoder() -> TransformerEncoder:
            return TransformerEncoder(cfg.hidden, cfg.layers, cfg.heads, cfg.inner, cfg.dropout,
                                      cfg.attn_dropout, max_len, position=cfg.position)

        self.id_encoder = encoder()
        self.feature_encoder = encoder()
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.feat = FeatureItems(self.features, slots, cfg.hidden, adaptor=cfg.adaptor, fusion=cfg.fusion,
                                 dropout=cfg.feature_dropout)

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.id_encoder(self.item(items), lengths),
                          self.feature_encoder(self.feat.lookup(items), lengths)], dim=-1)

    def item_embeddings(self) -> torch.Tensor:
        return torch.cat([self.item.weight, self.feat.table()], dim=-1)
