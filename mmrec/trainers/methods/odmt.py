"""ODMT (Ji et al., ACM MM 2023; xyliugo/ODMT): Online Distillation-enhanced Multi-modal Transformer.

Each item is a token sequence built from frozen features (text tokens, image tokens and one ID
token). An ID-aware multi-modal transformer (IMT) mixes them with an *asymmetric* attention mask, and
three late-fused sub-networks (ID, text, image), each its own SASRec, score the next item. They are
trained with a debiased in-batch cross-entropy each, plus online distillation between them.

Items (IMT). For item i with text tokens ``x^t_{i,1..T}``, image tokens ``x^v_{i,1..V}`` (token 0 is
the [CLS] / class token; pooled ``[N, D]`` features are one token, T = 1):

    tokens(i) = [ P_t x^t_{i,1..T} | P_v x^v_{i,1..V} | E_id(i) ]            P_m: Linear(D_m -> d)
    H(i)      = IMT(dropout(tokens(i)), mask)                             2 post-LN blocks, ReLU
    mask[q, k] = k is not padding  and  not (q is a modality token and k is the ID token)

so modality tokens never see the ID token, the ID token sees all (``imt_attention_mask``;
``model.mask=False``: everyone sees every non-padding token). Token rows that are all zeros (text
positions past the end of a title) are padding keys; an item without a modality has that modality's
first token replaced by a learned "missing" vector. The three item vectors are

    e^id(i) = g_id(H(i)[ID]),  e^t(i) = g_t(H(i)[first text token]),  e^v(i) = g_v(H(i)[first image token])

with ``g_m`` = Linear(d, d) -> LeakyReLU -> Linear(d, d).

ID embeddings (``model.id_init``). ``mean`` (ODMT's ``init=1``): E_id(i) = mean over the modalities m
item i has of ``P_m x^m_{i,0}``, the projected class tokens, with the projections as initialised;
``text`` / ``image`` (``init=3`` / ``init=2``): that modality's projected class token only;
``random`` (``init=0``): N(0, init_std). Items with none of the chosen features get N(0, init_std).

Sub-networks. ``h^m = SASRec_m(e^m(i_1), ..., e^m(i_L))`` for m in {id, text, image} (a sub-network
whose modality has no features is absent), ``s^m(j) = <h^m_L, e^m(j)>``.

Loss (``train.loss=ce``: for ODMT this is the debiased in-batch cross-entropy, not a softmax over all
items). For a position n (row b, target t_n), the candidates are the targets t_j of every position of
the batch (with ``model.first_item_candidates`` also each row's first input item, as the code):

    z^m_{nj} = <h^m_n, e^m(t_j)> - log p(t_j),     p(i) = count(i) / sum_k count(k)   (training counts)

with z_{nj} = -inf for j != n when t_j == t_n (the label again). With ``model.in_batch_mask=window``
(ODMT's ``unused_item_mask``) also when t_j occurs in row b's window (its inputs or targets; rows of
the same user share one history). ``CE^m = -mean_n log softmax_j(z^m_n)_n``.

Online distillation (``model.distill``): with ``z^ens = mean_m z^m`` and
``KD_T(T -> S) = -mean_n sum_j softmax(z^T_n / T)_j log softmax(z^S_n / T)_j * T^2``:

    L = sum_m CE^m + w(e) [ KD(z^id -> z^t) + KD(z^id -> z^v) + KD(z^ens -> z^id) ]
    w(e) = exp(-5 (1 - min(e, a) / a)^2) for a = model.rampup >= 1 (e = epoch, from 1), else w = a

The ID network teaches the text and image networks; the ensemble teaches the ID network. Teachers are
detached by default; ``model.detach_teacher=False`` lets gradients reach the teacher logits, as the
released code does.

Inference (``model.inference``): ``ensemble`` scores ``(s^id + s^t + s^v) / M`` (plain dot products,
no popularity correction, as the code); ``id``, ``text`` or ``image`` scores with that sub-network
alone. It is implemented by concatenation: ``query = [w_m h^m]_m`` and the item table ``[e^m]_m``, so
``<query, item> = sum_m w_m s^m``.

Defaults and their source: d_inner = 4d, 2 layers, 2 heads, dropout 0.1, ReLU, LayerNorm eps 1e-6
for both the IMT and the SASRecs (ODMT's code); ``temperature`` 0.3 and ``rampup`` 20 epochs are the
Arts settings of ``run_arts.py`` (H&M 0.5 / 60, Office 0.4 / 40, KS 0.5 / 50); ``id_init=mean``
(Arts, Office, H&M). ``hidden`` stays at mmrec's 64 (the code uses 768).

**Differences from the code** (bench/side_by_side_odmt.py compares mmrec with the code's flags against
xyliugo/ODMT@3d2ba25 to 1e-5: IMT states, item vectors, sequence states, logits, every loss term,
every gradient, 20 AdamW steps; docs/fidelity/odmt.md). Each default below has a flag for the code's
behaviour; ``--preset code`` sets them all.
- ``id_dim=0``: the ID table is d-dimensional and enters the IMT directly, its initialisation
  averaging the class tokens after each modality's own projection (which works when text and image
  dimensions differ). ``id_dim=D`` is the code's layout: a D-dimensional table (768 in the code)
  holding the raw averaged [CLS] tokens, then a Linear ``id_proj`` (same forward at the start; the
  optimiser then moves a different parametrisation).
- ``first_item_candidates=false``: in-batch candidates are the batch's *targets*; ``true`` adds each
  row's first input item, as the code's candidates are all B x (S + 1) item slots of the batch.
  Masked logits are -inf, not -1e4 (the same softmax in float32).
- ``candidates=items`` (default) has one column per distinct candidate item with log(count) added to
  its logit, the same losses and gradients as the code's one column per slot (``positions``) at
  K <= min(N, n_items) columns: on ml-1m (256 x 50 positions, 3,416 items) a quarter of the logits
  or fewer.
- ``attn_bias=true``: the attention's Q/K/V and output projections have biases (mmrec's shared
  ``SelfAttention``); the code's have none (``false``).
- ``detach_teacher=true``: teachers are detached; the code lets gradients reach them (``false``).
- ``in_batch_mask`` defaults to ``label``: the code's ``window`` mask never uses a user's own items as
  negatives, which is only consistent with an evaluation that masks the history (ODMT evaluates with
  history items at -inf). Under mmrec's default ``eval.history_mask=none`` it leaves the model free to
  rank the items just consumed on top (on the ring of the overfit test, valid HR@5 falls from 0.95 to
  0.5 while the training loss goes to 0). ``window`` with ``eval.history_mask=whole`` reproduces ODMT.
- The item popularity comes from the loop (``item_popularity``, training counts); without it (a model
  used outside the loop) the in-batch target counts are used.
- The IMT padding mask applies to every modality (all-zero token rows); the code masks text only
  (its image tokens are never padding, so the two agree on its inputs).
- Optimiser and clipping are the loop's settings (``train.optimizer``, ``train.weight_decay``,
  ``train.grad_clip``; the code: AdamW lr 1e-4, weight decay 0.1 on every parameter, clip 5, fp16
  autocast).
- Not reproduced: with ``init=2``/``3`` (the code's KS runs) ``id_encoder.weight.data`` is a view of
  the image/text feature table, so each optimiser step also rewrites that modality's class token.

Cold items: the text and image sub-networks build items from features only, so the ensemble (and
``inference=text|image``) can rank items never seen in training; ``inference=id`` relies on the
per-item ID embedding learned from interactions, so it is reported as not ranking unseen items.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import present_modalities
from mmrec.trainers.modules.losses import (
    candidate_mask,
    in_batch_multiplicity,
    in_batch_pair_mask,
    log_sampling_prob,
    soft_ce,
)
from mmrec.trainers.modules.sequence import (
    SelfAttention,
    TransformerBlock,
    TransformerConfig,
    TransformerEncoder,
    encode,
)

LN_EPS = 1e-6  # ODMT's LayerNorm epsilon (IMT and user encoders)


class InBatch(NamedTuple):
    """``ODMT.batch_logits``: ``logits`` ``{m: [N, K]}``, the N ``targets``, each row's ``label`` column,
    and ``log_multiplicity`` ``[N, K]`` (how many per-position columns a column stands for; None when
    the columns are the positions)."""

    logits: dict[str, torch.Tensor]
    targets: torch.Tensor
    label: torch.Tensor
    log_multiplicity: torch.Tensor | None


# a masked in-batch column inside ``ODMT.loss``: finite, so that 0 x it is 0, and so far below any
# logit that its softmax weight is exactly 0 in float32 (also after the division by the temperature)
_MASKED = -1.0e9


class _Columns(NamedTuple):
    """The in-batch logits' shared parts (``ODMT._in_batch``): ``h`` ``{m: [N, d]}`` the sub-networks'
    states at the N target positions; ``emb`` ``{m: [K, d]}`` the K candidate columns' item vectors;
    ``bias`` ``[K]`` ``-log p`` of each column's item (0 without ``debias``); ``targets`` ``[N]`` item
    ids; ``label`` ``[N]`` each row's column; ``log_mult`` ``[N, K]`` or None (see ``InBatch``);
    ``mask`` ``[N, K]`` bool, True where a column is not a negative of the row (never the label)."""

    h: dict[str, torch.Tensor]
    emb: dict[str, torch.Tensor]
    bias: torch.Tensor
    targets: torch.Tensor
    label: torch.Tensor
    log_mult: torch.Tensor | None
    mask: torch.Tensor


@dataclass
class ODMTConfig(TransformerConfig):
    """``TransformerConfig`` (the three SASRec sub-networks; ``inner``, ``dropout``, ``attn_dropout``
    and ``act`` also serve the IMT) and ODMT's own settings."""

    dropout: float = 0.1
    attn_dropout: float = 0.1
    act: Literal["gelu", "relu"] = "relu"
    imt_layers: int = 2
    imt_heads: int = 2
    mask: bool = True  # the asymmetric IMT mask (modality tokens cannot see the ID token)
    id_init: Literal["mean", "text", "image", "random"] = "mean"
    debias: bool = True  # subtract log p(item) from the in-batch logits during training
    # which in-batch candidates are not negatives of a row: "label" only the other in-batch columns holding the
    # label item; "window" (ODMT's code) also every item of the row's window (its user's inputs and
    # targets), which suits an evaluation that masks the history (eval.history_mask=whole, as ODMT)
    in_batch_mask: Literal["label", "window"] = "label"
    # "items": one column per distinct target item, with its count added to the logit (the same loss
    # and gradients as "positions", the code's one column per target position, at K x N logits
    # instead of N x N; N = B x L positions, K <= min(N, n_items))
    candidates: Literal["items", "positions"] = "items"
    distill: bool = True
    temperature: float = 0.3
    rampup: float = 20.0  # a >= 1: sigmoid ramp-up over a epochs; 0 <= a < 1: a constant weight a
    detach_teacher: bool = True  # False reproduces the released code
    # the first input item of every row is an in-batch candidate too (a negative of the other rows):
    # the code's candidates are all B x (S + 1) item slots of the batch, inputs and targets
    first_item_candidates: bool = False
    # biases on the attention's Q/K/V and output projections (IMT and the three SASRecs); the code's
    # MultiHeadedAttention has none (False)
    attn_bias: bool = True
    # 0: the ID table is hidden-dimensional and enters the IMT directly; > 0 (the code: 768): a table of
    # this dimension, initialised from the raw (unprojected) class tokens, then a Linear(id_dim, hidden)
    # ``id_proj``; with id_init mean/text/image the chosen features must have this dimension
    id_dim: int = 0
    inference: Literal["ensemble", "id", "text", "image"] = "ensemble"
    item_chunk: int = 4096  # items per IMT pass when the whole item table is built (evaluation)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("model.temperature must be positive")
        if self.rampup < 0:
            raise ConfigError("model.rampup must be >= 0 (epochs of ramp-up, or a constant weight below 1)")
        if self.imt_layers < 1 or self.imt_heads < 1 or self.item_chunk < 1:
            raise ConfigError("model.imt_layers, model.imt_heads and model.item_chunk must be positive")
        if self.id_dim < 0:
            raise ConfigError("model.id_dim must be >= 0 (0: a hidden-dimensional ID table without id_proj)")


def imt_attention_mask(token_valid: torch.Tensor, asymmetric: bool = True) -> torch.Tensor:
    """The IMT attention mask, ``[B, 1, S, S]`` bool, True where query ``q`` (row) may attend to key
    ``k`` (column). ``token_valid``: ``[B, S]`` bool, False for padding tokens; the last token is the
    ID token, the others are modality tokens. Padding keys are blocked for every query; with
    ``asymmetric`` the ID key is also blocked for every modality query (the ID query sees all)."""
    b, s = token_valid.shape
    allow = token_valid[:, None, None, :].expand(b, 1, s, s).clone()
    if asymmetric:
        allow[:, :, :-1, -1] = False
    return allow


def distill_weight(epoch: int, rampup: float) -> float:
    """ODMT's distillation weight at ``epoch`` (from 1): ``exp(-5 (1 - min(e, a) / a)^2)`` for a ramp
    of ``a = rampup >= 1`` epochs, the constant ``rampup`` otherwise."""
    if rampup < 1:
        return float(rampup)
    phase = 1.0 - min(max(float(epoch), 0.0), rampup) / rampup
    return math.exp(-5.0 * phase * phase)


class IMT(nn.Module):
    """The ID-aware multi-modal transformer: dropout on the tokens, then post-LN blocks under
    ``imt_attention_mask``."""

    def __init__(self, hidden: int, layers: int, heads: int, inner: int, dropout: float, attn_dropout: float,
                 act: str, asymmetric: bool):
        super().__init__()
        self.asymmetric = asymmetric
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, heads, inner, dropout, attn_dropout, act, LN_EPS) for _ in range(layers)
        )

    def forward(self, tokens: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
        mask = imt_attention_mask(token_valid, self.asymmetric)
        h = self.dropout(tokens)
        for block in self.blocks:
            h = block(h, mask, False)
        return h


def _drop_attention_biases(module: nn.Module) -> None:
    """``model.attn_bias=False``: the Q/K/V and output projections of every attention in ``module``
    lose their bias parameters (a zero buffer takes each one's place, so the shared code runs as is)."""
    for m in module.modules():
        if isinstance(m, SelfAttention):
            for lin in (m.qkv, m.out):
                zero = torch.zeros_like(lin.bias.detach())
                del lin.bias
                lin.register_buffer("bias", zero, persistent=False)


def _head(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d))


class ODMT(SequentialRecommender):
    name = "odmt"
    Config = ODMTConfig
    modalities = ("text", "image")
    required_modalities = ()  # text, image or both: a sub-network without features is absent
    losses = ("ce",)  # the debiased in-batch cross-entropy (module docstring)

    def __init__(self, cfg: ODMTConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        self.used_modalities = present_modalities(self.name, self.features, self.modalities)
        self.subnets = ["id", *self.used_modalities]
        if cfg.inference not in ("ensemble", *self.subnets):
            raise ConfigError(f"model.inference={cfg.inference}: there is no {cfg.inference} sub-network without "
                              f"{cfg.inference} features; use one of ensemble, {', '.join(self.subnets)}")
        if cfg.id_init in ("text", "image") and cfg.id_init not in self.used_modalities:
            raise ConfigError(f"model.id_init={cfg.id_init} needs {cfg.id_init} features; use mean or random")
        d = cfg.hidden
        self.n_tokens: dict[str, int] = {}
        for s in self.used_modalities:
            table = self.features[s].table.float()
            if table.dim() == 2:  # pooled features: one token
                table = table[:, None, :]
            if table.dim() != 3 or table.shape[0] != n_items + 1:
                raise ConfigError(f"odmt: {s} features of shape {list(table.shape)} do not fit {n_items} items")
            present = self.features[s].present.bool()
            valid = (table != 0).any(-1) & present[:, None]
            valid[:, 0] = True  # the first token always takes part (a "missing" vector if absent)
            self.register_buffer(f"feat_{s}", table, persistent=False)
            self.register_buffer(f"present_{s}", present, persistent=False)
            self.register_buffer(f"valid_{s}", valid, persistent=False)
            self.n_tokens[s] = int(table.shape[1])
        self.proj = nn.ModuleDict({s: nn.Linear(self.features[s].dim, d) for s in self.used_modalities})
        self.missing = nn.ParameterDict({s: nn.Parameter(torch.randn(d) * cfg.init_std) for s in self.used_modalities})
        if cfg.id_dim and cfg.id_init != "random":
            wrong = [f"{s} ({self.features[s].dim})" for s in self._id_init_modalities()
                     if self.features[s].dim != cfg.id_dim]
            if wrong:
                raise ConfigError(f"model.id_dim={cfg.id_dim} with id_init={cfg.id_init} copies the raw class tokens, "
                                  f"but these features have another dimension: {', '.join(wrong)}; set "
                                  f"model.id_dim to it, or id_init=random, or id_dim=0")
        self.id_emb = nn.Embedding(n_items + 1, cfg.id_dim or d, padding_idx=0)
        self.id_proj = nn.Linear(cfg.id_dim, d) if cfg.id_dim else None
        self.imt = IMT(d, cfg.imt_layers, cfg.imt_heads, cfg.inner, cfg.dropout, cfg.attn_dropout, cfg.act, cfg.mask)
        self.heads = nn.ModuleDict({m: _head(d) for m in self.subnets})
        self.encoders = nn.ModuleDict({
            m: TransformerEncoder(d, cfg.layers, cfg.heads, cfg.inner, cfg.dropout, cfg.attn_dropout, max_len,
                                  cfg.act, eps=LN_EPS, position=cfg.position)
            for m in self.subnets
        })
        # BERT-style init for the transformers; projections and heads keep PyTorch's default (as ODMT)
        init_weights(self.imt, cfg.init_std)
        init_weights(self.encoders, cfg.init_std)
        if not cfg.attn_bias:
            _drop_attention_biases(self.imt)
            _drop_attention_biases(self.encoders)
        self._init_ids()
        self._epoch = 1
        self._log_pop: torch.Tensor | None = None
        self._log_pop_src: torch.Tensor | None = None

    # -- ID embeddings -------------------------------------------------------------------------------
    @torch.no_grad()
    def projected_class_tokens(self, modality: str) -> torch.Tensor:
        """``P_m x^m_{i,0}`` for every item, ``[n_items + 1, d]`` (the current projection)."""
        return self.proj[modality](getattr(self, f"feat_{modality}")[:, 0])

    def _id_init_modalities(self) -> list[str]:
        return {"mean": self.used_modalities, "text": ["text"], "image": ["image"], "random": []}[self.cfg.id_init]

    @torch.no_grad()
    def _init_ids(self) -> None:
        w = self.id_emb.weight
        nn.init.normal_(w, 0.0, self.cfg.init_std)
        total = torch.zeros_like(w)
        count = torch.zeros(w.shape[0], 1, device=w.device)
        for s in self._id_init_modalities():
            has = getattr(self, f"present_{s}")[:, None].float()
            # id_dim > 0 (the code): the raw class tokens, projected later by id_proj
            cls = getattr(self, f"feat_{s}")[:, 0] if self.cfg.id_dim else self.projected_class_tokens(s)
            total += cls * has
            count += has
        known = count[:, 0] > 0
        w[known] = total[known] / count[known]
        w[0].zero_()

    # -- items ---------------------------------------------------------------------------------------
    def item_vectors(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each sub-network's item vectors ``e^m`` for the ids ``[U]`` (no padding id): ``{m: [U, d]}``."""
        toks, valid = [], []
        for s in self.used_modalities:
            p = self.proj[s](getattr(self, f"feat_{s}")[ids])  # [U, T, d]
            has = getattr(self, f"present_{s}")[ids]
            first = torch.where(has[:, None], p[:, 0], self.missing[s].to(p.dtype))
            toks.append(torch.cat([first[:, None], p[:, 1:]], dim=1))
            valid.append(getattr(self, f"valid_{s}")[ids])
        e_id = self.id_emb(ids)
        if self.id_proj is not None:
            e_id = self.id_proj(e_id)
        toks.append(e_id[:, None].to(toks[0].dtype))
        valid.append(torch.ones(len(ids), 1, dtype=torch.bool, device=ids.device))
        h = self.imt(torch.cat(toks, dim=1), torch.cat(valid, dim=1))
        out = {"id": self.heads["id"](h[:, -1])}
        at = 0
        for s in self.used_modalities:
            out[s] = self.heads[s](h[:, at])
            at += self.n_tokens[s]
        return out

    def subnet_tables(self) -> dict[str, torch.Tensor]:
        """``{m: [n_items + 1, d]}`` over all items (row 0, padding, is zero), built in chunks."""
        n = self.n_items
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in self.subnets}
        dev = self.id_emb.weight.device
        for lo in range(1, n + 1, self.cfg.item_chunk):
            ids = torch.arange(lo, min(n + 1, lo + self.cfg.item_chunk), device=dev)
            for m, v in self.item_vectors(ids).items():
                parts[m].append(v)
        return {m: torch.cat([torch.zeros_like(v[0][:1]), *v]) for m, v in parts.items()}

    def _batch_tables(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sorted unique ids of a batch (``uniq[0] == 0``) and ``{m: [len(uniq), d]}`` (row 0 zero)."""
        uniq = torch.unique(torch.cat([ids.reshape(-1), ids.new_zeros(1)]))
        vec = self.item_vectors(uniq[1:])
        return uniq, {m: torch.cat([torch.zeros_like(v[:1]), v]) for m, v in vec.items()}

    # -- sequences -----------------------------------------------------------------------------------
    def inference_weights(self) -> dict[str, float]:
        if self.cfg.inference == "ensemble":
            return {m: 1.0 / len(self.subnets) for m in self.subnets}
        return {m: float(m == self.cfg.inference) for m in self.subnets}

    @property
    def ranks_unseen_items(self) -> bool:  # type: ignore[override]
        return self.cfg.inference != "id"

    def eval_variants(self) -> tuple[str, ...]:
        """Each sub-network alone (reported beside the ensemble in ``results.json``)."""
        return tuple(self.subnets) if self.cfg.inference == "ensemble" else ()

    @contextlib.contextmanager
    def eval_variant(self, name: str) -> Iterator[None]:
        if name not in self.subnets:
            raise ConfigError(f"ODMT has no {name!r} sub-network; it has {', '.join(self.subnets)}")
        before = self.cfg.inference
        self.cfg.inference = name
        self._eval_table = None
        try:
            yield
        finally:
            self.cfg.inference = before
            self._eval_table = None

    def subnet_states(self, items: torch.Tensor, lengths: torch.Tensor,
                      subnets: list[str] | None = None, last: bool = False) -> dict[str, torch.Tensor]:
        """``{m: h^m [B, L, d]}`` for the sub-networks ``subnets`` (default: all); with ``last``, each
        row's last real position only, ``[B, d]`` (each encoder's last block run there alone)."""
        subnets = subnets if subnets is not None else self.subnets
        if self.training:
            uniq, tables = self._batch_tables(items)
            local = torch.searchsorted(uniq, items.contiguous())
        else:
            full = self.scoring_table().split(self.cfg.hidden, dim=-1)
            tables = dict(zip(self.subnets, full))
            local = items
        return {m: encode(self.encoders[m], tables[m][local], lengths, last) for m in subnets}

    def _weighted_states(self, items: torch.Tensor, lengths: torch.Tensor, last: bool) -> torch.Tensor:
        w = self.inference_weights()
        used = [m for m in self.subnets if w[m] != 0]
        h = self.subnet_states(items, lengths, used, last)
        ref = h[used[0]]
        return torch.cat([h[m] * w[m] if m in h else torch.zeros_like(ref) for m in self.subnets], dim=-1)

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[w_m h^m]_m`` concatenated, ``[B, L, M d]`` (``w`` from ``model.inference``)."""
        return self._weighted_states(items, lengths, last=False)

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``sequence_states`` at each row's last real position, ``[B, M d]``, without running the
        encoders' last blocks at the other positions."""
        return self._weighted_states(items, lengths, last=True)

    def item_embeddings(self) -> torch.Tensor:
        """``[e^m]_m`` concatenated, ``[n_items + 1, M d]``."""
        t = self.subnet_tables()
        return torch.cat([t[m] for m in self.subnets], dim=-1)

    # -- training ------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        self._epoch = epoch

    def current_distill_weight(self) -> float:
        """The distillation weight of the current epoch (set by ``on_epoch_start``; 1 before it)."""
        return distill_weight(self._epoch, self.cfg.rampup)

    def epoch_report(self) -> dict[str, Any]:
        return {"distill_weight": self.current_distill_weight() if self.cfg.distill else 0.0}

    def _global_log_pop(self) -> torch.Tensor | None:
        pop = self.item_popularity
        if pop is None:
            return None
        if self._log_pop is None or self._log_pop_src is not pop:
            counts = pop.clone()
            counts[1:] = counts[1:].clamp(min=1)  # an item in a batch has been seen; never log 0
            self._log_pop, self._log_pop_src = log_sampling_prob(counts), pop
        return self._log_pop

    def _in_batch(self, batch: dict[str, torch.Tensor]) -> _Columns:
        """What every sub-network's in-batch logits share (see ``_Columns``): the target positions'
        states, the candidate columns, their -log p bias, the labels, the multiplicities and the mask."""
        items, targets, lengths = batch["items"], batch["targets"], batch["lengths"]
        b, l = items.shape
        uniq, tables = self._batch_tables(torch.cat([items, targets], dim=1))
        loc_items = torch.searchsorted(uniq, items.contiguous())
        loc_targets = torch.searchsorted(uniq, targets.contiguous())
        pos = targets > 0
        tgt, tloc = targets[pos], loc_targets[pos]
        row = torch.arange(b, device=items.device)[:, None].expand(b, l)[pos]
        by_item = self.cfg.candidates == "items"
        # the candidate slots: the N targets, then (first_item_candidates) each row's first input item
        extra = items[:, 0][items[:, 0] > 0] if self.cfg.first_item_candidates else tgt[:0]
        slots = torch.cat([tgt, extra])
        n = len(tgt)
        arange_n = torch.arange(n, device=items.device)
        if by_item:
            cand, inverse = torch.unique(slots, return_inverse=True)
            label = inverse[:n]
            cloc = torch.searchsorted(uniq, cand)
            if len(extra):  # a column stands for its slots among targets and first items
                log_mult = torch.bincount(inverse, minlength=len(cand)).float().log()[None, :].repeat(n, 1)
                log_mult[arange_n, label] = 0.0
            else:
                log_mult = in_batch_multiplicity(label, len(cand))
        else:
            cand, cloc, label, log_mult = slots, torch.searchsorted(uniq, slots), arange_n, None
        exclude = torch.zeros(n, len(cand), dtype=torch.bool, device=items.device)
        if len(extra) and not by_item:  # a first item that is row n's label item is not a negative of row n
            exclude = cand[None, :] == tgt[:, None]
        if self.cfg.in_batch_mask == "window":
            # candidates that occur in the window of row n's user are not negatives (the label excepted)
            owner = batch.get("user", torch.arange(b, device=items.device)).long()
            span = self.n_items + 1
            seq = torch.cat([items, targets], dim=1)
            seq_keys = (owner[:, None] * span + seq)[seq > 0]
            member = torch.isin(owner[:, None] * span + cand[None, :], seq_keys)  # [B, K]
            exclude = exclude | member[row]
        if self.train_exclusion is not None:
            exclude = exclude | self.train_exclusion[cand][None, :]
        if not self.cfg.debias:
            log_pop = torch.zeros(len(uniq), device=items.device)
        else:
            glob = self._global_log_pop()
            if glob is not None:
                log_pop = glob.to(items.device)[uniq]
            else:  # in-batch target counts
                counts = torch.bincount(tloc, minlength=len(uniq)).float()
                log_pop = torch.where(counts > 0, (counts / max(len(tloc), 1)).log(), torch.zeros_like(counts))
        # the masks of candidate_logpop_logits / in_batch_logpop_logits
        mask = candidate_mask(exclude, label) if by_item or len(extra) else in_batch_pair_mask(tloc, exclude)
        h = {m: self.encoders[m](tables[m][loc_items], lengths)[pos] for m in self.subnets}
        return _Columns(h, {m: t[cloc] for m, t in tables.items()}, -log_pop[cloc].float(), tgt, label, log_mult, mask)

    def batch_logits(self, batch: dict[str, torch.Tensor]) -> InBatch:
        """Each sub-network's debiased in-batch logits over the N target positions of the batch:
        ``{m: [N, K]}`` with K = N (``candidates=positions``: column j is position j's target, row n's
        label is column n; ``first_item_candidates`` appends one column per row's first input item)
        or the K distinct candidate items (``candidates=items``, with their multiplicities; see
        ``InBatch``). Masked columns are -inf. (Training computes its loss from the same columns in
        fewer passes: ``loss``.)"""
        c = self._in_batch(batch)
        logits = {m: ((c.h[m] @ c.emb[m].T).float() + c.bias[None, :]).masked_fill(c.mask, float("-inf"))
                  for m in self.subnets}
        return InBatch(logits, c.targets, c.label, c.log_mult)

    def distillation_terms(self, logits: dict[str, torch.Tensor],
                           log_multiplicity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{kd_id_text, kd_id_image, kd_ens_id}`` (those whose sub-networks exist)."""
        cfg = self.cfg
        out = {}
        for s in self.used_modalities:
            out[f"kd_id_{s}"] = soft_ce(logits[s], logits["id"], cfg.temperature, cfg.detach_teacher, log_multiplicity)
        ens = torch.stack([logits[m] for m in self.subnets]).mean(0)
        out["kd_ens_id"] = soft_ce(logits["id"], ens, cfg.temperature, cfg.detach_teacher, log_multiplicity)
        return out

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        """``sum_m CE_m + w(epoch) * (kd_id_text + kd_id_image + kd_ens_id)``: the values of
        ``batch_logits`` with ``F.cross_entropy`` and ``distillation_terms`` (tests compare losses and
        gradients), computed in fewer passes over the [N, K] logits, which are most of a step: the
        bias (-log p, log m and the mask) is built once for all sub-networks and enters each through
        ``addmm``; masked columns hold a finite ``_MASKED`` instead of -inf (their softmax weight is
        exactly 0 all the same, and 0 x ``_MASKED`` needs no isfinite pass); the distillation reads
        the sub-networks' tempered log-softmaxes once each, its teachers' distributions as their exp."""
        c = self._in_batch(batch)
        n = len(c.targets)
        if n == 0:
            self._loss_parts = {}
            return self.id_emb.weight.sum() * 0.0
        cfg = self.cfg
        bias = c.bias[None, :].expand(n, -1)
        if c.log_mult is not None:
            bias = bias + c.log_mult  # the per-position layout's cross-entropy: column k counts m times
        bias = bias.masked_fill(c.mask, _MASKED)
        if torch.is_autocast_enabled(bias.device.type):  # the product in low precision, the bias added in fp32
            a = {m: (c.h[m] @ c.emb[m].T).float() + bias for m in self.subnets}  # z + log m
        else:
            a = {m: torch.addmm(bias, c.h[m].float(), c.emb[m].float().T) for m in self.subnets}
        rows = torch.arange(n, device=c.label.device)
        parts = {f"ce_{m}": -torch.log_softmax(z, dim=-1)[rows, c.label].mean() for m, z in a.items()}
        total = sum(parts.values())
        if cfg.distill:
            w = self.current_distill_weight()
            kd = self._distillation_from_shifted(a, c.log_mult)
            total = total + w * sum(kd.values())
            parts.update(kd)
            parts["distill_weight"] = torch.tensor(w)
        self._loss_parts = {k: float(v.detach()) for k, v in parts.items()}
        return total

    def _distillation_from_shifted(self, a: dict[str, torch.Tensor],
                                   log_mult: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``distillation_terms`` from ``a_m = z_m + log m`` (masked columns ``_MASKED``): ``soft_ce``
        reads ``z / T + log m = a / T + (1 - 1/T) log m`` for student and teacher; the ensemble
        teacher ``mean_m(z_m) / T + log m`` is the mean of those; each term is
        ``T^2 mean_i sum_j q_ij (log m_ij - log p_ij)`` with q the teacher's softmax."""
        cfg = self.cfg
        t = cfg.temperature
        if log_mult is None:
            s = {m: z / t for m, z in a.items()}
        else:
            shift = log_mult * (1.0 - 1.0 / t)
            s = {m: torch.add(shift, z, alpha=1.0 / t) for m, z in a.items()}
        logp = {m: torch.log_softmax(v, dim=-1) for m, v in s.items()}

        def term(student: str, teacher_logp: torch.Tensor) -> torch.Tensor:
            q = (teacher_logp.detach() if cfg.detach_teacher else teacher_logp).exp()
            gap = -logp[student] if log_mult is None else log_mult - logp[student]
            return (q * gap).sum(-1).mean() * t ** 2

        out = {f"kd_id_{m}": term(m, logp["id"]) for m in self.used_modalities}
        ens = torch.stack([s[m] for m in self.subnets]).mean(0)
        out["kd_ens_id"] = term("id", torch.log_softmax(ens, dim=-1))
        return out
