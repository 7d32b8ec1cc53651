"""SASRec with early feature fusion (the usual "SASRec + features" baseline).

Each item is its id embedding plus its adapted features, at the input and at the output alike:

    v(i) = e_id(i) + fusion(W_m x_m(i) for each feature modality m)
    h    = SASRec(v(i_1), ..., v(i_L)),     score(i | h) = <h_L, v(i)>

A cold item (never trained on) keeps its initial id embedding but gets its feature part, so it can
be ranked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureConfig, present_modalities
from mmrec.trainers.modules.sequence import TransformerConfig


@dataclass
class SASRecEFConfig(TransformerConfig, FeatureConfig):
    """``TransformerConfig`` (the SASRec encoder) and ``FeatureConfig`` (fusion, adaptor, dropout)."""


class SASRecEF(SequentialRecommender):
    name = "sasrec_ef"
    Config = SASRecEFConfig
    modalities = ("text", "image", "price")
    required_modalities = ()
    row_encoder = "feat"

    def __init__(self, cfg: SASRecEFConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        modalities = present_modalities(self.name, self.features, self.modalities)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.encoder = cfg.encoder(max_len)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.feat = cfg.feature_items(self.features, modalities, cfg.hidden)

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self.item(items) + self.feat.lookup(items)

    def item_embeddings(self) -> torch.Tensor:
        return self.item.weight + self.feat.table()

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item(ids) + self.feat.lookup(ids)
