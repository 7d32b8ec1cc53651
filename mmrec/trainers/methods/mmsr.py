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

**The code's behaviour** (MMSR23/MMSR@63a6d51; ``docs/fidelity/mmsr.md``; ``--preset code``), each a
``model.*`` option whose default keeps mmrec's behaviour:

- ``feature_tokens`` (False): read token-sequence features and fuse all tokens of all modalities in
  ``merged_attention`` (the code's ``MergedAttention`` over RoBERTa's and ViT-MAE's token states),
  instead of one pooled vector per modality.
- ``modality_norm`` (False): a LayerNorm (no gain or bias) on each stored feature before its adaptor:
  the code's encoders end in a LayerNorm, so its projections read normalised tokens; stored features
  need not be (EfficientNet-Lite0's are about 6x the norm of MiniLM's and dominate the fusion).
- ``fusion_heads`` (1), ``fusion_act`` ("relu"), ``fusion_type_embedding`` (True): the fusion block's
  heads, FFN activation and added modality embedding; the code's block is bert-base's (12 heads, GELU)
  and its token-type embeddings are computed but never added (12, "gelu", False).
- ``attn_bias`` (True): biases on the SASRec backbone's query/key/value/output maps; the code's have
  none (False: they are zero buffers, never trained).
- ``backbone_eps`` (1e-12): the SASRec backbone's LayerNorm epsilon; the code's is 1e-6.
- ``adaptor_dropout`` (None: ``feature_dropout``): the dropout on the stored features before each
  adaptor; the code's projections read the encoders' states with no dropout (0), its only dropout on
  the item side being the fusion block's (``feature_dropout``).
- ``act`` now reaches the backbone (it was ignored: the backbone always used GELU); the code's FFN is ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureConfig, FeatureItemEncoder, present_modalities
from mmrec.trainers.modules.sequence import TransformerConfig, TransformerEncoder, build_backbone


def _zero_bias_buffer(lin: nn.Linear) -> None:
    """Replace ``lin``'s bias by a zero buffer: the map has no trainable bias (as a ``bias=False``
    Linear), while code that reads ``lin.bias`` (the fused q/k/v slices of ``SelfAttention.last``)
    still works."""
    zeros = torch.zeros_like(lin.bias.data)
    del lin.bias
    lin.register_buffer("bias", zeros)

@dataclass
class MMSRConfig(TransformerConfig, FeatureConfig):
    """``TransformerConfig`` (used by the sasrec backbone; ``layers``, ``dropout`` by all three),
    ``FeatureConfig``, and the backbone."""

    fusion: Literal["sum", "concat", "film", "gated", "sum_mlp", "concat_mlp", "film_mlp", "gated_mlp",
                    "coattention", "merged_attention"] = "merged_attention"  # MMSR's default
    backbone: Literal["sasrec", "gru4rec", "nextitnet"] = "sasrec"
    # the code's behaviour (module docstring; docs/fidelity/mmsr.md): defaults keep mmrec's
    feature_tokens: bool = False  # True: token features, merged_attention over all tokens (the code)
    modality_norm: bool = False  # True: LayerNorm (no affine) on each stored feature before its adaptor
    fusion_heads: int = 1  # the attention fusion's heads (the code: 12, bert-base's)
    fusion_act: Literal["relu", "gelu"] = "relu"  # the attention fusion's FFN (the code: gelu)
    fusion_type_embedding: bool = True  # add a modality embedding to the fusion's tokens (the code: False)
    attn_bias: bool = True  # sasrec backbone: biases on Q/K/V/output (the code: False)
    backbone_eps: float = 1e-12  # sasrec backbone: LayerNorm epsilon (the code: 1e-6)
    adaptor_dropout: float | None = None  # dropout on the features before the adaptors; None: feature_dropout (the code: 0)


class MMSR(SequentialRecommender):
    name = "mmsr"
    Config = MMSRConfig
    uses_item_ids = False
    modalities = ("text", "image", "price")
    required_modalities = ()  # any of the modalities; with one, there is nothing to fuse
    row_encoder = "items"

    def __init__(self, cfg: MMSRConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        modalities = present_modalities(self.name, self.features, self.modalities)
        if cfg.fusion_heads < 1 or cfg.hidden % cfg.fusion_heads:
            raise ConfigError(f"model.fusion_heads must divide model.hidden ({cfg.hidden}), got {cfg.fusion_heads}")
        self.items = FeatureItemEncoder(self.features, modalities, cfg.hidden, adaptor=cfg.adaptor, fusion=cfg.fusion,
                                        fusion_gain=cfg.fusion_gain, dropout=cfg.feature_dropout,
                                        input_dropout=cfg.adaptor_dropout,
                                        modality_norm=cfg.modality_norm, tokens=cfg.feature_tokens,
                                        fusion_heads=cfg.fusion_heads, fusion_act=cfg.fusion_act,
                                        fusion_type_embedding=cfg.fusion_type_embedding)
        if cfg.backbone == "sasrec":
            self.encoder = TransformerEncoder(cfg.hidden, cfg.layers, cfg.heads, cfg.inner, cfg.dropout,
                                              cfg.attn_dropout, max_len, cfg.act, eps=cfg.backbone_eps,
                                              position=cfg.position)
        else:
            self.encoder = build_backbone(cfg.backbone, cfg.hidden, max_len, layers=cfg.layers, heads=cfg.heads,
                                          inner=cfg.inner, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                                          act=cfg.act, position=cfg.position)
        init_weights(self.encoder, cfg.init_std)  # the feature adaptors keep their own initialisation
        if cfg.backbone == "sasrec" and not cfg.attn_bias:
            for block in self.encoder.blocks:
                for lin in (block.attn.qkv, block.attn.out):
                    _zero_bias_buffer(lin)

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self.items.lookup(items)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.table()

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.items.lookup(ids)

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        """The shared next-item loss with one item table per step (``FeatureItemEncoder.one_table``):
        the input items read the rows of the candidates' table, computed once (a sampled loss: the
        rows of the step's items only, ``row_encoder``)."""
        if self.sampled_rows(train_cfg):
            return super().loss(batch, train_cfg)
        with self.items.one_table():
            return super().loss(batch, train_cfg)
