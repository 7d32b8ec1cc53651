"""MMSR (ID-agnostic multi-modal sequential recommendation; MMSR23/MMSR).

Items have no id embedding: an item is its text and image, each mapped into the recommender's
space and fused at the item level (MMSR's "early" fusion), and a sequence backbone reads the fused
item vectors:

    v_t(i) = W_t x_text(i),  v_v(i) = W_v x_image(i)         (missing modality: a learned vector)
    v(i)   = fusion(v_t(i), v_v(i))                           sum | concat | film | gated | *_mlp |
                                                              coattention | merged_attention
    h      = backbone(v(i_1), ..., v(i_L))                    sasrec | gru4rec | nextitnet
    score(i | h) = <h_L, v(i)>

Trained, as the paper, with BCE and one sampled negative per position (``train.loss=bce``), or with
softmax cross-entropy over all items (``ce``).

**Difference from the paper.** MMSR fine-tunes the top blocks of its text and image encoders end to
end. mmrec's second stage reads frozen features from the store, so here the encoders are frozen and
only a trainable projection (``model.adaptor``: linear, mlp or moe) sits on the features. Because
items are built from features only, a cold item (never trained on) still gets a vector: MMSR can
rank it.

**Fusion.** ``merged_attention`` is the default because it is MMSR's. Its block ends in a LayerNorm; with
that LayerNorm's gain at 1 (``model.fusion_gain=1``, MMSR's code) and ``train.loss=ce``, MMSR sat on a
long plateau on MovieLens-1M (item vectors nearly parallel). The gain now starts at 1/sqrt(hidden), so
fused items start near unit norm like the other fusions' (docs/results.md has both runs);
``bench/item_geometry.py RUN`` shows whether a run's item vectors collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureConfig, present_slots
from mmrec.trainers.modules.sequence import TransformerConfig, build_backbone

@dataclass
class MMSRConfig(TransformerConfig, FeatureConfig):
    """``TransformerConfig`` (used by the sasrec backbone; ``layers``, ``dropout`` by all three),
    ``FeatureConfig``, and the backbone."""

    fusion: Literal["sum", "concat", "film", "gated", "sum_mlp", "concat_mlp", "film_mlp", "gated_mlp",
                    "coattention", "merged_attention"] = "merged_attention"  # MMSR's default
    backbone: Literal["sasrec", "gru4rec", "nextitnet"] = "sasrec"


class MMSR(SequentialRecommender):
    name = "mmsr"
    Config = MMSRConfig
    uses_item_ids = False
    modalities = ("text", "image", "price")
    required_modalities = ()  # any of the slots; with one, there is nothing to fuse

    def __init__(self, cfg: MMSRConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        slots = present_slots(self.name, self.features, self.modalities)
        self.items = cfg.feature_items(self.features, slots, cfg.hidden)
        self.encoder = build_backbone(cfg.backbone, cfg.hidden, max_len, layers=cfg.layers, heads=cfg.heads,
                                      inner=cfg.inner, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                                      position=cfg.position)
        init_weights(self.encoder, cfg.init_std)  # the feature adaptors keep their own initialisation

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self.items.lookup(items)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.table()
