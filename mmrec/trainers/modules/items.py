"""Item representations from frozen features: the block every feature-based method shares.

``FeatureItems`` holds the stored feature tables of an item catalogue (one per slot: text, image,
price) as non-persistent buffers (they are reloaded from the feature store, never written into
checkpoints) and maps them into the recommender's space:

    v_m(i) = adaptor_m(x_m(i))            if item i has a feature for slot m
           = missing_m                    otherwise (a learned vector: never a silent zero)
    v(i)   = fusion(v_1(i), ..., v_M(i))

``adaptor`` is ``linear`` (a trainable projection, MMSR with frozen encoders), ``moe`` (UniSRec/ANT's
parametric whitening experts with a Gaussian-routed gate) or ``mlp``. ``table()`` gives
``[n_items + 1, d]`` for every item (row 0, padding, is zero); ``lookup(ids)`` gives the rows of
some ids without computing the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mmrec.errors import ConfigError


@dataclass
class FeatureConfig:
    """Settings of the feature side that feature-based methods share (inherited by their configs)."""

    fusion: Literal["sum", "concat", "film", "gated", "sum_mlp", "concat_mlp", "film_mlp", "gated_mlp",
                    "coattention", "merged_attention"] = "sum"
    adaptor: Literal["linear", "mlp", "moe"] = "linear"
    feature_dropout: float = 0.1
    # initial gain of the attention fusions' last LayerNorm (coattention, merged_attention; unused by the
    # others): None = 1/sqrt(hidden), fused items start near unit norm like the other fusions'; 1.0 = MMSR's
    # code, which sat on a plateau with cross-entropy over all items on ml-1m (docs/results.md)
    fusion_gain: float | None = None

    def feature_items(self, features: dict[str, Any], slots: list[str], d: int) -> FeatureItems:
        """The ``FeatureItems`` of ``slots`` these settings describe (adaptor, fusion and its gain, dropout)."""
        return FeatureItems(features, slots, d, adaptor=self.adaptor, fusion=self.fusion,
                            fusion_gain=self.fusion_gain, dropout=self.feature_dropout)


def present_slots(method: str, features: dict[str, Any], accepted: tuple[str, ...]) -> list[str]:
    """The accepted slots that have features, in the method's order; an error if there are none."""
    slots = [s for s in accepted if s in features]
    if not slots:
        example = ",".join(f"{s}=ENTRY" for s in accepted[:2])
        raise ConfigError(f"{method} builds items from features: give --features {example} (at least one of "
                          f"{', '.join(accepted)})")
    return slots


def make_adaptor(kind: str, in_dim: int, out_dim: int, *, dropout: float = 0.0, n_experts: int = 8) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    if kind == "mlp":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    if kind == "moe":
        from mmrec.trainers.modules.adaptors import MoEAdaptor

        return MoEAdaptor(in_dim, out_dim, n_experts, dropout)
    raise ConfigError(f"unknown adaptor {kind!r}; use linear, mlp or moe")


class FeatureItems(nn.Module):
    """Item vectors ``[*, d]`` from the stored features of ``slots`` (see the module docstring)."""

    def __init__(self, features: dict[str, Any], slots: tuple[str, ...] | list[str], d: int, *,
                 adaptor: str = "linear", fusion: str = "sum", dropout: float = 0.0, n_experts: int = 8,
                 layer_norm: bool = False, fusion_gain: float | None = None):
        super().__init__()
        if not slots:
            raise ConfigError("no feature slots to build items from")
        self.slots = list(slots)
        self.adaptors = nn.ModuleDict()
        self.missing = nn.ParameterDict()
        for s in self.slots:
            f = features[s]
            if f.table.dim() != 2:
                raise ConfigError(f"the {s} features are token sequences {list(f.table.shape[1:])}; this method "
                                  "reads one vector per item: extract with --pooling cls/mean/pooled")
            self.register_buffer(f"feat_{s}", f.table.float(), persistent=False)
            self.register_buffer(f"present_{s}", f.present.bool(), persistent=False)
            self.adaptors[s] = make_adaptor(adaptor, f.dim, d, dropout=dropout, n_experts=n_experts)
            self.missing[s] = nn.Parameter(torch.randn(d) * 0.02)
        self.norm = nn.LayerNorm(d) if layer_norm else nn.Identity()
        if fusion_gain is not None and not fusion_gain > 0:
            raise ConfigError(f"model.fusion_gain must be positive (or unset: 1/sqrt(hidden)), got {fusion_gain}")
        if len(self.slots) > 1:
            from mmrec.trainers.modules.fusion import build_fusion

            self.fusion = build_fusion(fusion, d, len(self.slots), dropout, out_gain=fusion_gain)
        else:
            self.fusion = None
        self.d = d

    def _slot(self, s: str, ids: torch.Tensor | None) -> torch.Tensor:
        x = getattr(self, f"feat_{s}")
        present = getattr(self, f"present_{s}")
        if ids is not None:
            x, present = x[ids], present[ids]
        v = self.norm(self.adaptors[s](x))
        return torch.where(present.unsqueeze(-1), v, self.missing[s].to(v.dtype))

    def _combine(self, ids: torch.Tensor | None) -> torch.Tensor:
        parts = [self._slot(s, ids) for s in self.slots]
        out = parts[0] if self.fusion is None else self.fusion(parts)
        pad = (ids == 0) if ids is not None else torch.arange(out.shape[0], device=out.device) == 0
        return out.masked_fill(pad.unsqueeze(-1), 0.0)

    def table(self) -> torch.Tensor:
        """``[n_items + 1, d]``; row 0 (padding) is zero."""
        return self._combine(None)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` of any shape -> ``[*ids.shape, d]``; padding (0) is zero."""
        return self._combine(ids)

    def modality_vectors(self, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each slot's adapted vectors before fusion (for methods that keep modalities apart)."""
        return {s: self._slot(s, ids) for s in self.slots}
