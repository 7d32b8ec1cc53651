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

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureConfig, present_modalities
from mmrec.trainers.modules.sequence import TransformerConfig, encode


@dataclass
class SASRecLFConfig(TransformerConfig, FeatureConfig):
    """``TransformerConfig`` (both streams' encoders) and ``FeatureConfig`` (fusion, adaptor, dropout)."""


class SASRecLF(SequentialRecommender):
    name = "sasrec_lf"
    Config = SASRecLFConfig
    modalities = ("text", "image", "price")
    row_encoder = "feat"

    def __init__(self, cfg: SASRecLFConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        modalities = present_modalities(self.name, self.features, self.modalities)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.id_encoder = cfg.encoder(max_len)
        self.feature_encoder = cfg.encoder(max_len)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.feat = cfg.feature_items(self.features, modalities, cfg.hidden)

    def _states(self, items: torch.Tensor, lengths: torch.Tensor, last: bool) -> torch.Tensor:
        return torch.cat([encode(self.id_encoder, self.item(items), lengths, last),
                          encode(self.feature_encoder, self.feat.lookup(items), lengths, last)], dim=-1)

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._states(items, lengths, last=False)

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._states(items, lengths, last=True)

    def item_embeddings(self) -> torch.Tensor:
        return torch.cat([self.item.weight, self.feat.table()], dim=-1)

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item(ids), self.feat.lookup(ids)], dim=-1)
