"""FDSA (Zhang et al., IJCAI 2019): feature-level deeper self-attention.

Two self-attention streams over the same sequence: one over item id embeddings, one over the
items' features. The features of an item (one vector per modality, each adapted to ``hidden``) are
pooled by vanilla attention over the modalities (``a_m = softmax_m(w^T tanh(W v_m))``, ``f = sum_m a_m
v_m``), as FDSA pools an item's attributes. The two final states are concatenated and mapped back:

    o = W_o [SA_item(e_id(i_1..L))_L ; SA_feature(f(i_1..L))_L],    score(i | o) = <o, e_id(i)>

Items are scored by id embeddings only (as the paper and RecBole), so FDSA cannot rank an item it
never trained on: its cold-start figures are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureConfig, FeatureItemEncoder, present_modalities
from mmrec.trainers.modules.sequence import TransformerConfig, encode


@dataclass
class FDSAConfig(TransformerConfig, FeatureConfig):
    """``TransformerConfig`` (both streams) and ``FeatureConfig`` (``fusion`` is unused: FDSA pools the
    modalities by vanilla attention)."""


class FDSA(SequentialRecommender):
    name = "fdsa"
    Config = FDSAConfig
    modalities = ("text", "image", "price")
    ranks_unseen_items = False

    def __init__(self, cfg: FDSAConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        self.used_modalities = present_modalities(self.name, self.features, self.modalities)
        d = cfg.hidden
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.item_encoder = cfg.encoder(max_len)
        self.feature_encoder = cfg.encoder(max_len)
        self.attn_proj = nn.Linear(d, d)
        self.attn_vec = nn.Linear(d, 1, bias=False)
        self.out = nn.Linear(2 * d, d)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.feat = FeatureItemEncoder(self.features, self.used_modalities, d, adaptor=cfg.adaptor, dropout=cfg.feature_dropout)

    def pooled_features(self, items: torch.Tensor) -> torch.Tensor:
        """Vanilla attention over an item's modality vectors: ``[*items.shape, d]``."""
        vectors = self.feat.modality_vectors(items)
        v = torch.stack([vectors[s] for s in self.used_modalities], dim=-2)  # [..., M, d]
        a = torch.softmax(self.attn_vec(torch.tanh(self.attn_proj(v))), dim=-2)  # [..., M, 1]
        return (a * v).sum(-2)

    def _states(self, items: torch.Tensor, lengths: torch.Tensor, last: bool) -> torch.Tensor:
        h_item = encode(self.item_encoder, self.item(items), lengths, last)
        h_feat = encode(self.feature_encoder, self.pooled_features(items), lengths, last)
        return self.out(torch.cat([h_item, h_feat], dim=-1))  # position-wise, so it commutes with "last"

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._states(items, lengths, last=False)

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._states(items, lengths, last=True)

    def item_embeddings(self) -> torch.Tensor:
        return self.item.weight
