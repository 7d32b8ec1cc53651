"""Item representations from frozen features: the block every feature-based method shares.

``FeatureItemEncoder`` holds the stored feature tables of an item catalogue (one per modality: text, image,
price) as non-persistent buffers (they are reloaded from the feature store, never written into
checkpoints) and maps them into the recommender's space:

    v_m(i) = adaptor_m(x_m(i))            if item i has a feature for modality m
           = missing_m                    otherwise (a learned vector: never a silent zero)
    v(i)   = fusion(v_1(i), ..., v_M(i))

``adaptor`` is ``linear`` (a trainable projection, MMSR with frozen encoders), ``moe`` (UniSRec/ANT's
parametric whitening experts with a Gaussian-routed gate) or ``mlp``. ``table()`` gives
``[n_items + 1, d]`` for every item (row 0, padding, is zero); ``lookup(ids)`` gives the rows of
some ids without computing the others.

Three options, off by default (MMSR's presets turn them on):

- ``modality_norm``: each stored feature goes through a LayerNorm without learned gain or bias before
  its adaptor, ``v_m(i) = adaptor_m(LN(x_m(i)))`` (per token for token features). MMSR's encoders
  (RoBERTa, ViT-MAE) end in a LayerNorm, so the code's projections read normalised tokens; stored
  features need not be (EfficientNet-Lite0's pooled vectors are about 6x the norm of MiniLM's, which
  then dominate the fusion). A gain and bias there would be redundant before a linear adaptor.
- ``input_dropout``: the dropout on the stored features before each adaptor; None (default): ``dropout``,
  which also sets the fusion's dropouts. MMSR's code has none there (its projections read the
  encoders' states directly): 0 with the fusion's dropout kept.
- ``tokens``: features stored as token sequences ``[n_items + 1, T, D]`` (``--pooling tokens``; pooled
  ``[n_items + 1, D]`` tables count as one token) are adapted token by token and fused by
  ``merged_attention`` over all tokens of all modalities (``AttentionFusion.fuse_tokens``), MMSR's
  code. A token is valid when its feature row is not all zero (padding) and the item has the
  modality; an item without it has one valid token, the missing vector. With one modality there is no
  fusion: the item is the mean of its valid adapted tokens (the code's text-only tower).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
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

    def feature_items(self, features: dict[str, Any], modalities: list[str], d: int) -> FeatureItemEncoder:
        """The ``FeatureItemEncoder`` of ``modalities`` these settings describe (adaptor, fusion and its gain, dropout)."""
        return FeatureItemEncoder(features, modalities, d, adaptor=self.adaptor, fusion=self.fusion,
                            fusion_gain=self.fusion_gain, dropout=self.feature_dropout)


def present_modalities(method: str, features: dict[str, Any], accepted: tuple[str, ...]) -> list[str]:
    """The accepted modalities that have features, in the method's order; an error if there are none."""
    modalities = [s for s in accepted if s in features]
    if not modalities:
        example = ",".join(f"{s}=ENTRY" for s in accepted[:2])
        raise ConfigError(f"{method} builds items from features: give --features {example} (at least one of "
                          f"{', '.join(accepted)})")
    return modalities


def state_versions(*modules: nn.Module | None) -> tuple[int, ...]:
    """The in-place version counters of every parameter and buffer of ``modules``: they change when
    an optimiser step, ``load_state_dict`` or any in-place write touches one, so a table computed
    from them can be kept while they are unchanged."""
    tensors = itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules if m is not None)
    return tuple(t._version for t in tensors)


def make_adaptor(kind: str, in_dim: int, out_dim: int, *, dropout: float = 0.0, n_experts: int = 8) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    if kind == "mlp":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    if kind == "moe":
        from mmrec.trainers.modules.adaptors import MoEAdaptor

        return MoEAdaptor(in_dim, out_dim, n_experts, dropout)
    raise ConfigError(f"unknown adaptor {kind!r}; use linear, mlp or moe")


class FeatureItemEncoder(nn.Module):
    """Item vectors ``[*, d]`` from the stored features of ``modalities`` (see the module docstring)."""

    def __init__(self, features: dict[str, Any], modalities: tuple[str, ...] | list[str], d: int, *,
                 adaptor: str = "linear", fusion: str = "sum", dropout: float = 0.0, n_experts: int = 8,
                 layer_norm: bool = False, fusion_gain: float | None = None, modality_norm: bool = False,
                 tokens: bool = False, fusion_heads: int = 1, fusion_act: str = "relu",
                 fusion_type_embedding: bool = True, item_chunk: int = 4096, input_dropout: float | None = None):
        super().__init__()
        if not modalities:
            raise ConfigError("no feature modalities to build items from")
        self.modalities = list(modalities)
        self.tokens = tokens
        self.item_chunk = item_chunk
        if tokens and len(self.modalities) > 1 and fusion != "merged_attention":
            raise ConfigError(f"token features are fused by merged_attention only (MMSR's code), not {fusion!r}: "
                              "set model.fusion=merged_attention or read pooled features")
        self.adaptors = nn.ModuleDict()
        self.missing = nn.ParameterDict()
        self.modality_norms = nn.ModuleDict()
        for s in self.modalities:
            f = features[s]
            table = f.table.float()
            if table.dim() != 2 and not tokens:
                raise ConfigError(f"the {s} features are token sequences {list(f.table.shape[1:])}; this method "
                                  "reads one vector per item: extract with --pooling cls/mean/pooled")
            present = f.present.bool()
            if tokens:
                if table.dim() == 2:
                    table = table[:, None, :]
                if table.dim() != 3:
                    raise ConfigError(f"the {s} features have shape {list(f.table.shape)}: expected [items, D] "
                                      "or [items, T, D]")
                valid = (table != 0).any(-1) & present[:, None]
                valid[:, 0] = True  # the first token always takes part (the missing vector if absent)
                self.register_buffer(f"valid_{s}", valid, persistent=False)
            self.register_buffer(f"feat_{s}", table, persistent=False)
            self.register_buffer(f"present_{s}", present, persistent=False)
            if modality_norm:
                self.modality_norms[s] = nn.LayerNorm(table.shape[-1], elementwise_affine=False)
            self.adaptors[s] = make_adaptor(adaptor, f.dim, d, dropout=dropout if input_dropout is None else input_dropout,
                                            n_experts=n_experts)
            self.missing[s] = nn.Parameter(torch.randn(d) * 0.02)
        self.norm = nn.LayerNorm(d) if layer_norm else nn.Identity()
        if fusion_gain is not None and not fusion_gain > 0:
            raise ConfigError(f"model.fusion_gain must be positive (or unset: 1/sqrt(hidden)), got {fusion_gain}")
        if len(self.modalities) > 1:
            from mmrec.trainers.modules.fusion import build_fusion

            self.fusion = build_fusion(fusion, d, len(self.modalities), dropout, heads=fusion_heads,
                                       out_gain=fusion_gain, act=fusion_act, type_embedding=fusion_type_embedding)
        else:
            self.fusion = None
        self.d = d
        self._kept: torch.Tensor | None = None  # the table of one step (one_table) or one evaluation
        self._kept_versions: tuple[int, ...] = ()  # state_versions when it was computed
        self._one_table = False
        self._step_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # one_table(ids): (rows, position of each id)

    def train(self, mode: bool = True) -> FeatureItemEncoder:
        self._kept = None  # a table kept for an evaluation is not reused after the mode changes
        return super().train(mode)

    def _keeps_table(self) -> bool:
        """Inside ``one_table``, or evaluating without autograd: ``table()`` is computed once and
        ``lookup`` reads its rows."""
        return self._one_table or (not self.training and not torch.is_grad_enabled())

    @contextlib.contextmanager
    def one_table(self, ids: torch.Tensor | None = None) -> Iterator[None]:
        """Inside the block (a method's training step), ``table()`` is computed at its first call and
        kept, and ``lookup(ids)`` reads its rows: the catalogue is adapted and fused once per step,
        not once for the candidates and again for every position of the batch. Without dropout the
        values and gradients are those of one computation per use. With ``dropout``, each item's
        vector holds one draw of its dropout mask per step, shared by its occurrences in the step
        (inputs and candidate); each occurrence's draw has the distribution it had when drawn per use.
        Outside training, without autograd (evaluation), the table is kept the same way until the
        mode changes or a parameter or feature table is written (``state_versions``).

        ``ids`` (any shape; every item id the step reads, e.g. ``step_item_ids``): only the rows of
        those items are computed, once, and ``lookup`` reads them (a sampled loss reads a few thousand
        rows of a catalogue of a million); ``table()`` is then refused, and so is a ``lookup`` of an id
        outside ``ids``. Values, gradients and the one-draw-per-item dropout are those of the whole
        table's rows. With as many distinct ids as items, the whole table is computed instead."""
        self._one_table, self._kept, self._step_rows = True, None, None
        try:
            if ids is not None:
                n = self._n_rows()
                u = torch.unique(ids.reshape(-1))
                if u.numel() < n:
                    pos = torch.full((n,), -1, dtype=torch.long, device=u.device)
                    pos[u] = torch.arange(u.numel(), device=u.device)
                    self._step_rows = (self._combine(u), pos)
            yield
        finally:
            self._one_table, self._kept, self._step_rows = False, None, None

    def _n_rows(self) -> int:
        return getattr(self, f"feat_{self.modalities[0]}").shape[0]

    def _adapt(self, s: str, x: torch.Tensor) -> torch.Tensor:
        if s in self.modality_norms:
            x = self.modality_norms[s](x)
        return self.norm(self.adaptors[s](x))

    def _modality(self, s: str, ids: torch.Tensor | None) -> torch.Tensor:
        if self.tokens:
            tok, valid = self._modality_tokens(s, ids)
            w = valid.to(tok.dtype).unsqueeze(-1)
            return (tok * w).sum(-2) / w.sum(-2).clamp(min=1.0)
        x = getattr(self, f"feat_{s}")
        present = getattr(self, f"present_{s}")
        if ids is not None:
            x, present = x[ids], present[ids]
        v = self._adapt(s, x)
        return torch.where(present.unsqueeze(-1), v, self.missing[s].to(v.dtype))

    def _modality_tokens(self, s: str, ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted tokens ``[*, T, d]`` of modality ``s`` and their validity ``[*, T]`` (``tokens`` only);
        an item without the modality: the missing vector as its first (only valid) token."""
        x, present, valid = (getattr(self, f"{k}_{s}") for k in ("feat", "present", "valid"))
        if ids is not None:
            x, present, valid = x[ids], present[ids], valid[ids]
        v = self._adapt(s, x)
        first = torch.zeros(v.shape[-2], dtype=torch.bool, device=v.device)
        first[0] = True
        absent = (~present)[..., None, None] & first[:, None]
        return torch.where(absent, self.missing[s].to(v.dtype), v), valid

    def _fused(self, ids: torch.Tensor | None) -> torch.Tensor:
        if not self.tokens:
            parts = [self._modality(s, ids) for s in self.modalities]
            return parts[0] if self.fusion is None else self.fusion(parts)
        if self.fusion is None:
            return self._modality(self.modalities[0], ids)
        toks, valid = zip(*(self._modality_tokens(s, ids) for s in self.modalities))
        lead = toks[0].shape[:-2]
        flat = [t.reshape(-1, *t.shape[-2:]) for t in toks]
        keep = [v.reshape(-1, v.shape[-1]) for v in valid]
        return self.fusion.fuse_tokens(flat, keep).reshape(*lead, self.d)

    def _combine(self, ids: torch.Tensor | None) -> torch.Tensor:
        if self.tokens and (ids is None or ids.numel() > self.item_chunk):  # in chunks (token sequences are large)
            flat = (torch.arange(self._n_rows(), device=self.missing[self.modalities[0]].device) if ids is None
                    else ids.reshape(-1))
            out = torch.cat([self._fused(flat[a:a + self.item_chunk]) for a in range(0, flat.numel(), self.item_chunk)])
            if ids is not None:
                out = out.reshape(*ids.shape, self.d)
        else:
            out = self._fused(ids)
        pad = (ids == 0) if ids is not None else torch.arange(out.shape[0], device=out.device) == 0
        return out.masked_fill(pad.unsqueeze(-1), 0.0)

    def table(self) -> torch.Tensor:
        """``[n_items + 1, d]``; row 0 (padding) is zero. Computed once per ``one_table`` block or
        per evaluation (``_keeps_table``)."""
        if self._step_rows is not None:
            raise RuntimeError("FeatureItemEncoder.table() inside one_table(ids): the step computed the rows of "
                               "its ids only; read them with lookup(ids), or enter one_table() without ids")
        if self._kept is not None and self._kept_versions == state_versions(self):
            return self._kept
        out = self._combine(None)
        if self._keeps_table():
            self._kept, self._kept_versions = out, state_versions(self)
        return out

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` of any shape -> ``[*ids.shape, d]``; padding (0) is zero. Rows of the kept table
        where there is one (``one_table``, evaluation), else computed for ``ids`` only."""
        if self._step_rows is not None:
            rows, pos = self._step_rows
            at = pos[ids]
            if bool((at < 0).any()):
                raise RuntimeError(f"FeatureItemEncoder.lookup: item ids {ids[at < 0].unique()[:5].tolist()} are not "
                                   "among the ids given to one_table(ids); pass every id the step reads")
            return rows[at]
        if self._kept is None and not self._keeps_table():
            return self._combine(ids)
        return self.table()[ids]

    def modality_vectors(self, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each modality's adapted vectors before fusion (for methods that keep modalities apart; with
        ``tokens``, the mean of each item's valid adapted tokens)."""
        return {s: self._modality(s, ids) for s in self.modalities}
