"""SASRec with early feature fusion (the usual "SASRec + features" baseline).

Each item is its id embedding plus its adapted features, at the input and at the output alike:

    v(i) = e_id(i) + fusion(W_m x_m(i) for each feature slot m)
    h    = SASRec(v(i_1), ..., v(i_L)),     score(i | h) = <h_L, v(i)>

A cold item (never trained on) keeps its initial id embedding but gets its feature part, so it can
be ranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureItems
from mmrec.trainers.modules.sequence import TransformerEncoder


@dataclass
class SASRecEFConfig:
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


class SASRecEF(SequentialRecommender):
    name = "sasrec_ef"
    Config = SASRecEFConfig
    modalities = ("text", "image", "price")
    required_modalities = ()

    def __init__(self, cfg: SASRecEFConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        slots = [s for s in self.modalities if s in self.features]
        if not slots:
            from mmrec.errors import ConfigError

            raise ConfigError("sasrec_ef needs at least one feature slot: --features text=ENTRY (or image=, price=)")
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.encoder = TransformerEncoder(cfg.hidden, cfg.layers, cfg.heads, cfg.inner, cfg.dropout,
                                          cfg.attn_dropout, max_len, position=cfg.position)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.feat = FeatureItems(self.features, slots, cfg.hidden, adaptor=cfg.adaptor, fusion=cfg.fusion,
                                 dropout=cfg.feature_dropout)

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.item(items) + self.feat.lookup(items), lengths)

    def item_embeddings(self) -> torch.Tensor:
        return self.item.weight + self.feat.table()
