"""SyNCRec (Park et al., SIGIR 2024; cpark88/SyNCRec): single- and cross-domain cooperation.

"Pacer and Runner: Cooperative Learning Framework between Single- and Cross-Domain Sequential
Recommendation". A user's events of every domain form one cross-domain sequence (time order); its
single-domain sequences are derived from it. One network learns the cross-domain task (CDSR: the
next item of the merged sequence) and one single-domain task per domain (SDSR), compares their
losses per domain (the negative-transfer gap) and down-weights the cross-domain loss of the domains
where the merged history hurts.

Domains. Each item has one domain: the catalogue column ``domain`` of the prepared dataset
(``items.parquet``; e.g. the MovieLens reader's ``domain: first`` genre, the H&M reader's
``domain_field: product_group_name``, or the part name of ``mmrec data merge``). Domains are coded
1..D in alphabetical order (0 = padding); items with a null domain form the domain ``(none)``; a
dataset without domains is one domain ``all`` (SyNCRec then trains one SDSR task on the same
sequence as the CDSR task). ``model.top_domains = N`` keeps the N domains with the most items and
merges the others into ``(other)``. The map item -> domain is built from the dataset when the model
is created (``dataset_kwargs``), kept as a buffer in the checkpoint, and used on the batch's item
and target ids, so batches carry no extra column.

Embeddings. ``e_t = LN(E_item(x_t) + E_dom(dom(x_t)) + P_t)``, dropout (``domain_embedding``: the
domain term, the code's type embedding). Shared by every task; scoring uses ``E_item``.

Inputs of the tasks. CDSR: the window of the merged sequence. SDSR of domain d
(``single_input``): ``compact`` (default, the paper's figure) the user's domain-d items of the window
in order, as their own sequence (its positions counted as for any window); the SDSR state for a
merged position t is the state at the last domain-d item at or before t, and its targets are the
merged targets in domain d (the next item when it is in d). Targets whose window has no earlier
domain-d item have no SDSR state. The D domain sequences of a window partition its items, so they
are packed one after the other into one row of the window's width and run in one pass with a
block-diagonal causal mask (``pack_by_domain``): the same states as D separate padded rows, with
D times fewer positions. ``inplace`` (the code): the merged window with the other domains' items
replaced by padding at their positions, every position kept (one row per domain).

ACMoE (asymmetric cooperative mixture of experts). K = ``experts`` experts, each its own stack of
``layers`` causal Transformer blocks; ``floor(cross_ratio K)`` are cross-domain experts, the others
single-domain experts (at least one of each; 5 and 0.8 give 4 + 1, the paper's j = 0.2 K). Task tau
(the D SDSR tasks and the CDSR task) has its own gate and tower:

    g_tau(t)  = [ a softmax(e_t W^s_tau + n^s) , (1 - a) softmax(e_t W^c_tau + n^c) ]   (SDSR tasks)
              = [ (1 - a) softmax(e_t W^s_tau + n^s) , a softmax(e_t W^c_tau + n^c) ]   (CDSR task)
    h_tau(t)  = Tower_tau( sum_k g_tau,k(t) Expert_k(e)_t ),     Tower = FFN + residual LayerNorm

with a = ``gate_share`` (0.8) and, in training with ``gate_noise``, the noise
``n = eps * (softplus(e_t W^n_tau) + 1e-3)``, eps ~ N(0, 1). Stop-gradient (``stop_gradient``, the
paper's SG and the code's ``cross_detach = single_detach = y``): in the SDSR tasks the cross experts'
outputs are detached, in the CDSR task the single experts' outputs are, so the SDSR losses update
only the single experts and the CDSR loss only the cross experts through the expert outputs (gates,
towers and embeddings learn from both). The model scores with the CDSR task:
``query = h_CDSR(last position)``, ``score = <query, E_item(i)>``.

Losses. Per target position t with target y_t, the ranking loss l(h, y_t) is ``train.loss``: ``bce``
(the paper: -log s(h.e_y) - log(1 - s(h.e_neg)), one sampled negative) or ``ce`` (softmax over every
item). T_d = the positions whose target is in domain d and have an SDSR state.

    L_single = mean_{t in T} l(h^S_{d(t)}(t), y_t),              T = union of the T_d
    phi_d    = 1/B sum_{t in T_d} [ l(h^S_d(t), y_t) - l(h^C(t), y_t) ]             (ntg_gap=sum, detached)
             = mean_{t in T_d} l(h^S_d(t), y_t) - mean_{t in T_d} l(h^C(t), y_t)    (ntg_gap=mean)
    s_d     <- m s_d + (1 - m) phi_d   for the domains present in the batch     (m = ntg_momentum)
    w        = softmax(s / ntg_temperature)                                        (lc_ntg; else 1/D)
    L_cross  = mean_t  D w_{d(t)} l(h^C(t), y_t)      over every target position of the batch
    L        = L_single + L_cross + mim_weight * L_MI                               (L_MI if sc_mim)

phi_d is the negative-transfer gap of domain d, the paper's NTG (Sec. 4.3, phi_pi(d) = L^pi_d(X_d) -
L^pi_d(X)): positive when the merged history predicts the domain's items better than its own
history. The paper's L^pi_d is the pairwise ranking loss *summed over the time steps* of a sequence,
so ``ntg_gap=sum`` (default) sums each row's domain-d differences and averages over the B rows (the
batch's estimate of the per-sequence gap); ``mean`` is the code's estimator (``cross_entropy``, a
mean over the batch's domain-d targets) and mmrec's before ``ntg_gap`` existed. The mean difference
is small (|phi| <= 0.03 on H&M: weights 0.197-0.203 at temperature 1, LC-NTG inert); the sum scales
with the number of a domain's targets per sequence (weights 0.03-0.50 there). ``ntg_scope=domain``
(an mmrec option) scores both heads on domain d's items only (ce: softmax over them; bce: the
negative redrawn among them) for the gap alone: the SDSR head of d only ever predicts d's items, so
against the full catalogue it knows the target's domain and the CDSR head does not, and the gap is
negative in every domain by construction. ``s`` starts at 0 (uniform weights), is a buffer (saved
with the checkpoint, so a resumed run continues it), and the weights are constants for the
gradient. ``D w_d`` has mean 1 over the domains, so L_cross is the plain mean loss when the gaps are
equal. ``loss_reduction=code``: the code's scale instead, L_single = sum_t l^S / (D 1000),
L_cross = sum_t w_d(t) l^C / 1000 (and the code SC-MIM estimator's sum over B x max_len).

SC-MIM (``sc_mim``; ``mim_estimator``): a term that raises the mutual information of the pairs
(h^C(t), h^S(t)) of the same target, with W = Linear(d, d) (no bias; ``mim_bias``: the code's
bias). ``infonce`` (default, the paper's Sec. 4.4: an InfoNCE bound whose negatives are other users'
single-domain representations) with the bilinear critic ``f(c, s) = <W c, s> / mim_temperature``:

    L_MI = mean_{t in T} -log( exp f(h^C(t), h^S(t)) / sum_{u in N(t)} exp f(h^C(t), h^S(u)) )

``mim_negatives=users`` (default): N(t) = t and the paired positions of domain d(t) in the batch's
*other* rows (each row is one user's window); ``batch`` (mmrec's estimator before the setting):
every paired position of d(t), the row's own included, those with the same target item excepted.
A domain with more than ``mim_group`` pairs is split into random groups of at most ``mim_group``
(bounds the memory of the scores and the log N scale of the loss). The paper writes the bound per
user; mmrec applies it at every paired time step. ``code`` (the released code's estimator, a
BPR-like score with a double sigmoid):

    L_MI = mean_{t in T} -log s( s(<W h^C(t), h^S(t)>) - s(<W h^C(t), E_item(x')>) )

where x' is the input item at the same position of another row (a random permutation of the rows).
``mim_pair=input`` pairs h^C(t) with the SDSR state of the current *input* item's domain at every
target position and takes x' as far from the other row's end as t is from its own (the code's
left padding). docs/results.md ("SC-MIM estimators") measured ``infonce`` (then the ``batch``
negatives) slowing learning on a synthetic ring against ``code``.

Cost. A training step runs every expert over two rows per user (the packed single-domain row and
the merged one; ``inplace``: D + 1 rows), and each SDSR gate and tower only at the positions whose
state a loss reads. With the stop-gradient, an expert runs without autograd on the rows whose output
is detached (the cross experts on the SDSR rows, the single experts on the CDSR rows), which keeps
the activation memory near one row per expert (``bench/syncrec_packing.py`` times packed against
one padded row per domain; docs/benchmarks.md). Evaluation runs the CDSR task only (K expert passes).

Per-epoch report (metrics.jsonl): ``ntg_gap`` {domain: mean phi_d over the epoch's batches},
``ntg_weight`` {domain: w_d at the end of the epoch}, ``ntg_targets`` {domain: number of paired
targets}. The loop's ``results.json`` has ``valid_domains`` / ``test_domains``: the metrics over
the cases whose target is in each domain (``evaluation_domains``).

Defaults and their source: 5 experts, cross_ratio 0.8, gate_share 0.8, 2 layers, dropout 0.5, GELU,
FFN 4d (the code's ``train.sh`` / argparse); hidden 64, heads 2, ``position=reverse`` are mmrec's
(the code: hidden 512, 1 head, left padding). ntg_momentum 0.9, ntg_temperature 1, mim_weight 1 and
mim_temperature 1 are this implementation's constants (the code: s <- alpha s + beta phi with random
fixed alpha, beta; temperature 1; SC-MIM weight 1). Presets: ``mmrec presets syncrec``.

**Differences from the code.**
- Independent experts, gates and towers. The released code fills its expert, tower and gate lists
  with one module instance repeated, so every "expert" shares parameters; ``shared_experts=True``
  reproduces that (one expert module called K times, one gate and one tower for every task): the
  "shared experts" ablation.
- Gates read the current position's embedding e_t; the code's gate reads the whole flattened
  left-padded input sequence (B x L d), which needs a fixed length and lets every position's gate see
  later items of the window (``gate_input=sequence`` reproduces it). The gate noise is applied in
  training only (the code: also at evaluation, ``gate_noise_eval``), so evaluation is deterministic.
- Each expert is a stack of blocks over the shared embedding (the code's S3-Rec ``Encoder``); the
  tower is mmrec's ``FeedForward`` (the code's ``Intermediate``).
- SDSR inputs are compacted by default (the paper); ``single_input=inplace`` is the code's masking.
- LC-NTG: a moving average with fixed constants instead of ``s <- alpha s + beta phi`` with alpha,
  beta ``nn.Linear(1, 1)`` scalars that never receive a gradient (their random init is kept, so the
  sign of beta, hence of the correction, is random in the code); s does not keep an autograd history.
- LC-NTG's gap is the paper's per-sequence sum (``ntg_gap=mean``: the code's mean difference).
- Losses are means over target positions (the code: sums divided by 1000, which depends on the batch
  size); the CDSR domain weights are D w_d (mean 1) instead of w_d on sums (``loss_reduction=code``).
- SC-MIM is the paper's InfoNCE (``mim_estimator=code``: the code's estimator, not InfoNCE). With
  ``code``: averaged over the paired targets (the code averages over every position, padding
  included: ``loss_reduction=code``), with h^S the SDSR state of the *target's* domain (the code: the
  current input item's domain, ``mim_pair=input``), W without a bias (``mim_bias``).
- bench/side_by_side_syncrec.py reproduces the code to 1e-5 with ``shared_experts single_input=inplace
  gate_input=sequence gate_noise_eval loss_reduction=code ntg_gap=mean mim_estimator=code mim_bias
  mim_pair=input`` (docs/fidelity/syncrec.md; the code's LC-NTG scalars alpha, beta set to 0.9, 0.1).
- No item-id restriction: the SDSR tasks rank every item of the catalogue, as the CDSR task.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.losses import next_item_loss, same_target_mask
from mmrec.trainers.modules.sequence import (FeedForward, TransformerBlock, TransformerConfig, TransformerEncoder,
                                            blocks_last, gather_last)

NO_DOMAIN = "(none)"
OTHER_DOMAINS = "(other)"
SINGLE_DOMAIN = "all"


@dataclass
class SyNCRecConfig(TransformerConfig):
    """``TransformerConfig`` (shared embeddings and each expert's blocks) and SyNCRec's own settings
    (module docstring)."""

    experts: int = 5
    cross_ratio: float = 0.8  # floor(cross_ratio * experts) cross-domain experts, the rest single-domain
    gate_share: float = 0.8  # gate mass of a task on its own group of experts
    gate_noise: bool = True  # noisy gates in training
    # what a gate reads: "position" (mmrec) the embedding e_t of the position it mixes; "sequence" (the
    # code, modules.py PatitionedGating on models.py's `sequence_emb.view(B, -1)`) the whole window
    # left-padded to max_len and flattened (B x max_len d, Linear layers with biases): one gate per
    # row, which sees every item of the window. Needs single_input=inplace and position=reverse.
    gate_input: Literal["position", "sequence"] = "position"
    gate_noise_eval: bool = False  # True: the gate noise also at evaluation (the code's PatitionedGating)
    stop_gradient: bool = True  # SDSR losses update single experts only, the CDSR loss cross experts only
    shared_experts: bool = False  # True: one expert / gate / tower module for all (the released code)
    single_input: Literal["compact", "inplace"] = "compact"
    domain_embedding: bool = True
    top_domains: int = 0  # > 0: keep the N domains with the most items, merge the rest into "(other)"
    # "mean": mmrec's losses are means over target positions (the CDSR domain weights D w_d, mean 1);
    # "code": the released code's scale (models.py pretrain_seq): L_single = sum_t l^S / (D 1000),
    # L_cross = sum_t w_d l^C / 1000, and the code SC-MIM estimator's sum over B x max_len positions
    loss_reduction: Literal["mean", "code"] = "mean"
    lc_ntg: bool = True
    # LC-NTG's gap phi_d (module docstring). "sum" (default): the paper's NTG, Sec. 4.3,
    # phi_pi(d) = L^pi_d(X_d) - L^pi_d(X) with each L the pairwise ranking loss *summed over the time
    # steps* of a sequence: per row, the SDSR minus the CDSR losses of its domain-d targets, summed,
    # averaged over the batch's rows. "mean": the difference of the mean losses over the batch's
    # domain-d targets (the code's `cross_entropy`, models.py; mmrec's estimator before this setting).
    ntg_gap: Literal["sum", "mean"] = "sum"
    # the losses the gap compares: "all" both heads as trained (every item for ce, the sampled
    # negative for bce: the paper's L^pi_d and the code's); "domain" both heads scored on domain d's
    # items only (ce: softmax over domain d's items; bce: the negative redrawn among d's items), so the
    # SDSR head (which only ever predicts d) is not favoured by knowing the target's domain. mmrec's option.
    ntg_scope: Literal["all", "domain"] = "all"
    ntg_momentum: float = 0.9
    ntg_temperature: float = 1.0
    sc_mim: bool = True
    mim_weight: float = 1.0
    # "infonce" (default): the paper's SC-MIM (Sec. 4.4), an InfoNCE bound with the bilinear critic
    # <W h^C, h^S> / mim_temperature; "code": the released code's double-sigmoid BPR score
    # (models.py masked_item_prediction and pretrain_seq's `mip` part)
    mim_estimator: Literal["code", "infonce"] = "infonce"
    # InfoNCE's negatives: "users" (default, the paper's): the SDSR states of the same domain of the
    # batch's *other* rows (users); "batch": every other paired position of the domain, the row's own
    # included, those with the same target item excepted (mmrec's estimator before this setting)
    mim_negatives: Literal["users", "batch"] = "users"
    mim_temperature: float = 1.0
    mim_group: int = 1024  # InfoNCE: a domain's pairs are split into random groups of at most this many
    mim_bias: bool = False  # True: W has a bias (the code's `mip_norm` nn.Linear(d, d))
    # which SDSR state h^C(t) is paired with: "target": the target's domain (mmrec); "input": the
    # current input item's domain, at every target position (the code's `sequence_encoder_output_single`),
    # with the code estimator's x' counted from the window's end (the code's left padding)
    mim_pair: Literal["target", "input"] = "target"

    def validate(self) -> None:
        if self.experts < 2:
            raise ConfigError("model.experts must be at least 2 (one single-domain and one cross-domain expert)")
        n_cross = int(np.floor(self.cross_ratio * self.experts + 1e-9))
        if not 1 <= n_cross <= self.experts - 1:
            raise ConfigError(f"model.cross_ratio={self.cross_ratio} with {self.experts} experts gives {n_cross} "
                              "cross-domain experts; there must be at least one cross and one single expert")
        if not 0.0 <= self.gate_share <= 1.0:
            raise ConfigError("model.gate_share must be in [0, 1]")
        if not 0.0 <= self.ntg_momentum < 1.0:
            raise ConfigError("model.ntg_momentum must be in [0, 1)")
        if self.ntg_temperature <= 0 or self.mim_temperature <= 0:
            raise ConfigError("model.ntg_temperature and model.mim_temperature must be positive")
        if self.top_domains < 0 or self.mim_weight < 0:
            raise ConfigError("model.top_domains and model.mim_weight must be >= 0")
        if self.mim_group < 2:
            raise ConfigError("model.mim_group must be at least 2 (a positive and a negative)")
        if self.gate_input == "sequence" and (self.single_input != "inplace" or self.position != "reverse"):
            raise ConfigError("model.gate_input=sequence reads the left-padded window (the code's layout): "
                              "it needs model.single_input=inplace and model.position=reverse")

    @property
    def n_cross(self) -> int:
        return int(np.floor(self.cross_ratio * self.experts + 1e-9))


def item_domains(data: Any, top_domains: int = 0) -> tuple[np.ndarray, list[str]]:
    """The domain code of every item id (``[n_items + 1]`` int64, 0 for the padding id) and the
    domain names (code c is ``names[c - 1]``), from the ``domain`` column of the prepared dataset's
    ``items.parquet`` (module docstring)."""
    n = int(data.n_items)
    table = data.item_table()
    raw: list[str | None] = table.column("domain").to_pylist() if "domain" in table.column_names else [None] * n
    iid = table.column("iid").to_numpy() if "iid" in table.column_names else np.arange(1, n + 1)
    if all(v is None for v in raw):
        codes = np.ones(n + 1, dtype=np.int64)
        codes[0] = 0
        return codes, [SINGLE_DOMAIN]
    names = [NO_DOMAIN if v is None or not str(v).strip() else str(v).strip() for v in raw]
    if top_domains > 0:
        counts: dict[str, int] = {}
        for v in names:
            counts[v] = counts.get(v, 0) + 1
        keep = set(sorted(counts, key=lambda v: (-counts[v], v))[:top_domains])
        names = [v if v in keep else OTHER_DOMAINS for v in names]
    vocab = sorted(set(names))
    index = {v: i + 1 for i, v in enumerate(vocab)}
    codes = np.zeros(n + 1, dtype=np.int64)
    codes[np.asarray(iid, dtype=np.int64)] = [index[v] for v in names]
    return codes, vocab


@dataclass
class PackedDomains:
    """A batch's single-domain sequences packed into one row per user (``pack_by_domain``)."""

    items: torch.Tensor  # [B, L]: domain 1's items of the row in order, then domain 2's, ..., then padding
    segment: torch.Tensor  # [B, L]: the domain code of each packed position (0 on padding)
    index: torch.Tensor  # [B, L]: the position's index in its own domain sequence (0 = oldest)
    seg_len: torch.Tensor  # [B, L]: the length of the position's domain sequence
    offset: torch.Tensor  # [B, D]: where domain d's sequence starts in the packed row
    lengths: torch.Tensor  # [B, D]: the length of domain d's sequence
    last: torch.Tensor  # [D, B, L]: for merged position t, the index in domain d's sequence of the last
    #                     domain-d item at or before t (-1 when there is none)

    def attention_mask(self) -> torch.Tensor:
        """``[B, 1, L, L]`` (True = may attend): causal within each domain sequence, nothing across."""
        l = self.segment.shape[1]
        causal = torch.ones(l, l, dtype=torch.bool, device=self.segment.device).tril()
        return ((self.segment[:, :, None] == self.segment[:, None, :]) & causal)[:, None]


def pack_by_domain(items: torch.Tensor, item_domain: torch.Tensor, n_domains: int) -> PackedDomains:
    """Each row's items of each domain as their own sequence, the D sequences packed one after the
    other into one row of the same width (they partition the row's items, so they fit).

    ``items`` ``[B, L]`` (right-padded). With the block-diagonal causal mask of
    ``PackedDomains.attention_mask`` and per-sequence positions, one pass over ``[B, L]`` gives every
    single-domain sequence's states: D times fewer positions than one padded row per domain."""
    b, l = items.shape
    dom = item_domain[items]  # [B, L], 0 on padding
    key = torch.where(dom > 0, dom, torch.full_like(dom, n_domains + 1))  # padding last
    key_sorted, order = torch.sort(key, dim=1, stable=True)  # stable: time order within a domain
    counts = F.one_hot(key, n_domains + 2).sum(1)  # [B, D + 2]; column 0 unused
    start = counts.cumsum(1) - counts  # exclusive prefix sum: where each key's run starts
    index = torch.arange(l, device=items.device)[None, :] - start.gather(1, key_sorted)
    member = dom[None] == torch.arange(1, n_domains + 1, device=items.device)[:, None, None]  # [D, B, L]
    return PackedDomains(
        items=items.gather(1, order),
        segment=torch.where(key_sorted <= n_domains, key_sorted, torch.zeros_like(key_sorted)),
        index=index,
        seg_len=counts.gather(1, key_sorted),
        offset=start[:, 1:n_domains + 1],
        lengths=counts[:, 1:n_domains + 1],
        last=member.long().cumsum(-1) - 1,
    )


def ntg_update(state: torch.Tensor, gaps: torch.Tensor, present: torch.Tensor, momentum: float) -> torch.Tensor:
    """LC-NTG's moving average: ``s_d <- m s_d + (1 - m) phi_d`` for the domains ``present``."""
    return torch.where(present, momentum * state + (1.0 - momentum) * gaps, state)


def ntg_weights(state: torch.Tensor, temperature: float) -> torch.Tensor:
    """LC-NTG's domain weights ``softmax(s / T)``."""
    return torch.softmax(state / temperature, dim=-1)


def infonce_per_group(c: torch.Tensor, s: torch.Tensor, group: torch.Tensor, temperature: float = 1.0,
                      target_ids: torch.Tensor | None = None, owner: torch.Tensor | None = None) -> torch.Tensor:
    """``-log exp(<c_i, s_i>/T) / sum_{j: group_j = group_i} exp(<c_i, s_j>/T)`` per row ``i`` (``[N]``):
    InfoNCE with the other rows of the same group as the negatives (one softmax per group). With
    ``target_ids`` ``[N]``, rows j != i with the same target as row i are not negatives (left out);
    with ``owner`` ``[N]`` (the user, i.e. batch row, of each pair), rows j != i of the same owner are
    not negatives either: only other users' states are (the paper's SC-MIM)."""
    out = torch.zeros(len(c), device=c.device)
    for g in torch.unique(group):
        idx = (group == g).nonzero(as_tuple=True)[0]
        logits = (c[idx] @ s[idx].T).float() / temperature
        if target_ids is not None:
            logits = logits.masked_fill(same_target_mask(target_ids[idx]), float("-inf"))
        if owner is not None:
            o = owner[idx]
            same = (o[:, None] == o[None, :]) & ~torch.eye(len(idx), dtype=torch.bool, device=c.device)
            logits = logits.masked_fill(same, float("-inf"))
        out = out.index_put((idx,), F.cross_entropy(logits, torch.arange(len(idx), device=c.device), reduction="none"))
    return out


def chunk_groups(group: torch.Tensor, size: int) -> torch.Tensor:
    """Split each group of rows into random chunks of at most ``size`` rows: a new group id per row."""
    n = len(group)
    perm = torch.randperm(n, device=group.device)
    g = group[perm]
    order = torch.argsort(g, stable=True)  # rows of a group together, in random order
    gs = g[order]
    start = torch.ones_like(gs, dtype=torch.bool)
    start[1:] = gs[1:] != gs[:-1]
    first = torch.cummax(torch.where(start, torch.arange(n, device=group.device), torch.zeros_like(gs)), 0).values
    rank = torch.arange(n, device=group.device) - first
    out = torch.empty_like(group)
    out[perm[order]] = gs * (n + 1) + rank // size
    return out


def code_mim(c: torch.Tensor, s: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The released code's SC-MIM term per row (``[N]``): ``-log s(s(<c, s>) - s(<c, other>))``."""
    p = torch.sigmoid((c * s).sum(-1))
    n = torch.sigmoid((c * other).sum(-1))
    return -F.logsigmoid(p - n)


class Expert(nn.Module):
    """One expert: ``layers`` causal post-LN Transformer blocks over the shared embeddings."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.hidden, cfg.heads, cfg.inner, cfg.dropout, cfg.attn_dropout, cfg.act)
            for _ in range(cfg.layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (``[B, 1, L, L]``, True = may attend) replaces the causal mask."""
        for block in self.blocks:
            x = block(x, mask, True)
        return x

    def last(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``forward`` (causal, right padding) at each row's last real position only ``[B, d]``: the
        last block's queries and feed-forward at that position alone."""
        return blocks_last(self.blocks, x, lengths)


class PartitionedGate(nn.Module):
    """One task's gate: softmax over the single experts and over the cross experts, scaled by the
    task's shares (module docstring); noisy in training."""

    def __init__(self, hidden: int, n_single: int, n_cross: int, bias: bool = False):
        super().__init__()
        self.single = nn.Linear(hidden, n_single, bias=bias)
        self.cross = nn.Linear(hidden, n_cross, bias=bias)
        self.single_noise = nn.Linear(hidden, n_single, bias=bias)
        self.cross_noise = nn.Linear(hidden, n_cross, bias=bias)

    def forward(self, e: torch.Tensor, single_share: float, noise: bool) -> torch.Tensor:
        zs, zc = self.single(e), self.cross(e)
        if noise:
            zs = zs + torch.randn_like(zs) * (F.softplus(self.single_noise(e)) + 1e-3)
            zc = zc + torch.randn_like(zc) * (F.softplus(self.cross_noise(e)) + 1e-3)
        return torch.cat([single_share * torch.softmax(zs, -1), (1.0 - single_share) * torch.softmax(zc, -1)], -1)


class SyNCRec(SequentialRecommender):
    name = "syncrec"
    Config = SyNCRecConfig
    losses = ("ce", "bce", "sampled_ce", "gbce")

    @classmethod
    def dataset_kwargs(cls, cfg: SyNCRecConfig, data: Any, store: str | None = None) -> dict[str, Any]:
        """Constructor arguments taken from the dataset (called by ``build_model``): the item domains."""
        codes, names = item_domains(data, cfg.top_domains)
        return {"item_domain": codes, "domain_names": names}

    def __init__(self, cfg: SyNCRecConfig, n_items: int, max_len: int, features=None,
                 item_domain: np.ndarray | torch.Tensor | None = None, domain_names: list[str] | None = None):
        super().__init__(cfg, n_items, max_len, features)
        if item_domain is None:  # no dataset given: one domain
            item_domain = np.r_[0, np.ones(n_items, dtype=np.int64)]
            domain_names = [SINGLE_DOMAIN]
        item_domain = torch.as_tensor(np.asarray(item_domain), dtype=torch.long)
        if item_domain.shape != (n_items + 1,):
            raise ConfigError(f"syncrec: item domains of shape {list(item_domain.shape)} do not fit {n_items} items")
        n_dom = int(item_domain.max())
        self.domain_names = list(domain_names) if domain_names is not None else [f"d{i}" for i in range(1, n_dom + 1)]
        if len(self.domain_names) < n_dom or (n_items and int(item_domain[1:].min()) < 1):
            raise ConfigError("syncrec: every item needs a domain code in 1..len(domain_names)")
        self.n_domains = len(self.domain_names)
        self.register_buffer("item_domain", item_domain)
        # LC-NTG's moving average of the gaps (saved with the checkpoint, so a resumed run continues it)
        self.register_buffer("ntg_state", torch.zeros(self.n_domains))
        d = cfg.hidden
        self.n_cross = cfg.n_cross
        self.n_single = cfg.experts - self.n_cross
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.domain = nn.Embedding(self.n_domains + 1, d, padding_idx=0) if cfg.domain_embedding else None
        # positions + LayerNorm + dropout on the input (a TransformerEncoder without blocks)
        self.embed = TransformerEncoder(d, 0, cfg.heads, cfg.inner, cfg.dropout, cfg.attn_dropout, max_len, cfg.act,
                                        position=cfg.position)
        n_mod = 1 if cfg.shared_experts else cfg.experts
        n_task = 1 if cfg.shared_experts else self.n_domains + 1
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(n_mod))
        seq_gate = cfg.gate_input == "sequence"  # the code's gate: the flattened window, with biases
        self.gates = nn.ModuleList(PartitionedGate(max_len * d if seq_gate else d, self.n_single, self.n_cross, seq_gate)
                                   for _ in range(n_task))
        self.towers = nn.ModuleList(FeedForward(d, cfg.inner, cfg.dropout, cfg.act) for _ in range(n_task))
        self.mim = nn.Linear(d, d, bias=cfg.mim_bias)
        init_weights(self, cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()
            if self.domain is not None:
                self.domain.weight[0].zero_()
        self._reset_epoch_stats()

    # -- structure -----------------------------------------------------------------------------------
    def expert(self, k: int) -> Expert:
        """Expert k (0..n_single-1 are single-domain, the rest cross-domain); with ``shared_experts``
        every k is the same module, as in the released code."""
        return self.experts[0 if self.cfg.shared_experts else k]

    def is_single_expert(self, k: int) -> bool:
        return k < self.n_single

    def task_index(self, domain: int | None) -> int:
        """Gate/tower index: SDSR task of domain code ``domain`` (1..D) -> domain - 1; CDSR (None) -> D."""
        if self.cfg.shared_experts:
            return 0
        return self.n_domains if domain is None else domain - 1

    def evaluation_domains(self) -> tuple[np.ndarray, list[str]]:
        """Item domain codes and names, for the per-domain metrics of ``results.json``."""
        return self.item_domain.cpu().numpy(), list(self.domain_names)

    # -- forward -------------------------------------------------------------------------------------
    def embeddings(self, items: torch.Tensor, lengths: torch.Tensor | None,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.item(items)
        if self.domain is not None:
            x = x + self.domain(self.item_domain[items])
        return self.embed(x, lengths, positions)

    def window_embeddings(self, items: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedded rows ``[B, L, d]`` and the gates' input: None with ``gate_input=position``
        (each gate reads its position's embedding); with ``sequence``, ``[B, max_len d]``: the row
        left-padded to ``max_len`` and embedded with positions 0..max_len-1 (the code's layout:
        padding slots are ``LN(E_item[0] + E_dom[0] + P_j)``), flattened. The rows' embeddings are
        then read back from it (the values of ``embeddings`` with ``position=reverse``, one dropout draw)."""
        if self.cfg.gate_input != "sequence":
            return self.embeddings(items, lengths), None
        b, l = items.shape
        big = self.max_len
        if l > big:
            raise ConfigError(f"syncrec: windows of {l} items are longer than max_len={big}")
        shift = (big - lengths.clamp(max=big))[:, None]
        src = torch.arange(big, device=items.device)[None, :] - shift  # the right-padded index of left slot j
        left = torch.where(src >= 0, items.gather(1, src.clamp(0, l - 1)), torch.zeros_like(src))
        e_left = self.embeddings(left, None, torch.arange(big, device=items.device).expand(b, big))
        back = (torch.arange(l, device=items.device)[None, :] + shift) % big  # left slot of right index i
        e = e_left.gather(1, back[..., None].expand(-1, -1, e_left.shape[-1]))
        return e, e_left.reshape(b, -1)

    def gate(self, x: torch.Tensor, domain: int | None) -> torch.Tensor:
        """The gate values of the SDSR task of ``domain`` (or CDSR: None) on the gate input ``x``."""
        single_share = self.cfg.gate_share if domain is not None else 1.0 - self.cfg.gate_share
        noise = self.cfg.gate_noise and (self.training or self.cfg.gate_noise_eval)
        return self.gates[self.task_index(domain)](x, single_share, noise)

    def mixture(self, e: torch.Tensor | None, outs: list[torch.Tensor], domain: int | None,
                g: torch.Tensor | None = None) -> torch.Tensor:
        """Task output ``Tower(sum_k g_k Expert_k)`` for the SDSR task of ``domain`` (or CDSR: None),
        with the stop-gradient on the other group's experts; the gate values ``g`` (broadcasting
        against ``outs``' leading dimensions), or the gate on the positions' embeddings ``e``."""
        if g is None:
            g = self.gate(e, domain)
        mix = 0.0
        for k, h in enumerate(outs):
            own = self.is_single_expert(k) == (domain is not None)
            if self.cfg.stop_gradient and not own:
                h = h.detach()
            mix = mix + g[..., k:k + 1] * h
        return self.towers[self.task_index(domain)](mix)

    def expert_outputs(self, single: torch.Tensor | None, cross: torch.Tensor,
                       single_mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every expert on the embedded SDSR rows ``single`` (attention ``single_mask``, or causal
        when None; None: no SDSR rows) and on the CDSR rows ``cross`` (causal). With the
        stop-gradient an expert runs without autograd on the rows whose output is detached anyway
        (the cross experts on the SDSR rows, the single experts on the CDSR rows): the same values
        and gradients, less activation memory and time."""
        detach = self.cfg.stop_gradient and torch.is_grad_enabled()
        outs_single: list[torch.Tensor] = []
        outs_cross: list[torch.Tensor] = []
        for k in range(self.cfg.experts):
            expert = self.expert(k)
            own_single = self.is_single_expert(k)
            if single is not None:
                with torch.no_grad() if detach and not own_single else contextlib.nullcontext():
                    outs_single.append(expert(single, single_mask))
            with torch.no_grad() if detach and own_single else contextlib.nullcontext():
                outs_cross.append(expert(cross))
        return outs_single, outs_cross

    def cross_states(self, e: torch.Tensor, flat: torch.Tensor | None, outs: list[torch.Tensor]) -> torch.Tensor:
        """The CDSR task's states ``[B, L, d]`` from the experts' outputs on the merged rows."""
        if flat is None:
            return self.mixture(e, outs, None)
        return self.mixture(None, outs, None, self.gate(flat[:, None, :], None))  # one gate per row

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The CDSR task's states ``[B, L, d]`` (used for scoring)."""
        e, flat = self.window_embeddings(items, lengths)
        return self.cross_states(e, flat, self.expert_outputs(None, e)[1])

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The CDSR state at each row's last real position ``[B, d]`` (what scores the next item): the
        values of ``sequence_states`` there, with each expert's last block (its queries, output
        projection and feed-forward) run at that position only. With gate noise at evaluation
        (``gate_noise_eval``) the gate draws its noise over the whole window as ``sequence_states`` does."""
        if self.training or (self.cfg.gate_noise and self.cfg.gate_noise_eval):
            return gather_last(self.sequence_states(items, lengths), lengths)
        e, flat = self.window_embeddings(items, lengths)
        outs = [self.expert(k).last(e, lengths) for k in range(self.cfg.experts)]
        g = self.gate(gather_last(e, lengths) if flat is None else flat, None)
        return self.mixture(None, outs, None, g)

    def item_embeddings(self) -> torch.Tensor:
        return self.item.weight

    def single_states(self, e: torch.Tensor, flat: torch.Tensor | None, outs: list[torch.Tensor],
                      domain: torch.Tensor, select: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                      like: torch.Tensor) -> torch.Tensor:
        """``[select.sum(), d]``: for each target where ``select``, the SDSR task of ``domain`` (its
        code) at position (``row``, ``col``) of the SDSR rows; each task only where its state is read.
        With the sequence gate, the rows of domain d are ``(d - 1) B .. d B - 1`` (inplace)."""
        b = like.shape[0]
        out = like.new_zeros(int(select.sum()), like.shape[-1])
        for d in range(1, self.n_domains + 1):
            sel = select & (domain == d)
            if not sel.any():
                continue
            r, c = row[sel], col[sel]
            if flat is None:
                g = self.gate(e[r, c], d)
            else:
                g = self.gate(flat[(d - 1) * b:d * b], d)[r - (d - 1) * b]
            h = self.mixture(None, [o[r, c] for o in outs], d, g)
            out[sel[select]] = h.to(out.dtype)
        return out

    def task_states(self, items: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Both tasks on a batch of windows, at its target positions.

        Returns ``cross`` ``[N, d]`` (h^C at every target position, row-major), ``target`` ``[N]``,
        ``target_domain`` ``[N]`` (codes 1..D), ``paired`` ``[N]`` bool (the target has an SDSR state),
        ``single`` ``[P, d]`` (h^S of the target's domain at the paired positions) and ``position``
        ``[N, 2]`` (row, column of each target), the batch's ``items`` and ``lengths``; with SC-MIM
        and ``mim_pair=input``, ``input_domain`` ``[N]`` and ``single_input`` ``[N, d]`` (h^S of the
        input item's domain at every target position)."""
        b, l = items.shape
        D = self.n_domains
        pos = targets > 0
        rows, cols = pos.nonzero(as_tuple=True)
        tgt = targets[rows, cols]
        tdom = self.item_domain[tgt]
        e_cross, flat_cross = self.window_embeddings(items, lengths)
        flat_single = None
        if self.cfg.single_input == "compact":
            # the D single-domain sequences of a row packed into one row (block-diagonal causal mask)
            pk = pack_by_domain(items, self.item_domain, D)
            e_single = self.embeddings(pk.items, None, self.embed.token_positions(pk.index, pk.seg_len))
            mask = pk.attention_mask()

            def locate(dom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                idx = pk.last[dom - 1, rows, cols]
                return idx >= 0, rows, pk.offset[rows, dom - 1] + idx
        else:  # inplace: one merged-width row per domain, the other domains' items replaced by padding
            dom = self.item_domain[items]
            codes = torch.arange(1, D + 1, device=items.device)[:, None, None]
            seqs = torch.where(dom[None] == codes, items[None], torch.zeros_like(items)[None])
            e_single, flat_single = self.window_embeddings(seqs.reshape(D * b, l), lengths.repeat(D))
            mask = None

            def locate(dom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                return torch.ones_like(dom, dtype=torch.bool), (dom - 1) * b + rows, cols
        outs_single, outs_cross = self.expert_outputs(e_single, e_cross, mask)
        cross = self.cross_states(e_cross, flat_cross, outs_cross)  # [B, L, d]
        paired, s_row, s_col = locate(tdom)
        single = self.single_states(e_single, flat_single, outs_single, tdom, paired, s_row, s_col, cross)
        out = {"cross": cross[rows, cols], "target": tgt, "target_domain": tdom, "paired": paired,
               "single": single, "position": torch.stack([rows, cols], -1), "items": items, "lengths": lengths}
        if self.cfg.sc_mim and self.cfg.mim_pair == "input":
            idom = self.item_domain[items[rows, cols]]
            every, i_row, i_col = locate(idom)  # the input item is in its own domain: always a state
            out["input_domain"] = idom
            out["single_input"] = self.single_states(e_single, flat_single, outs_single, idom, every, i_row, i_col,
                                                     cross)
        return out

    # -- losses --------------------------------------------------------------------------------------
    def target_losses(self, h: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor | None,
                      kind: str, batch: dict[str, torch.Tensor] | None = None,
                      gbce_t: float = 0.75) -> torch.Tensor:
        """The ranking loss of each row (``[N]``) by ``train.loss`` (``next_item_loss``): ``ce`` over every
        item, ``bce`` / ``gbce`` with the sampled ``negatives`` (``[N]`` or ``[N, K]``), ``sampled_ce``
        over the step's shared negatives of ``batch``."""
        if kind not in ("ce", "bce") and self.cfg.ntg_scope == "domain":
            raise ConfigError(f"syncrec: model.ntg_scope=domain scores both heads on one domain's items with ce or "
                              f"bce only, not train.loss={kind}; use model.ntg_scope=all")
        return next_item_loss(h, target, self.item_embeddings(), SimpleNamespace(loss=kind, gbce_t=gbce_t),
                              batch or {}, negatives, exclude=self.train_exclusion if self.training else None,
                              reduction="none")

    def domain_items(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The item ids sorted by domain, where each domain's run starts, and its length (``[D]``)."""
        cached = getattr(self, "_domain_items", None)
        if cached is None or cached[0].device != self.item_domain.device:
            dom = self.item_domain[1:]
            order = torch.argsort(dom, stable=True) + 1
            count = torch.bincount(dom - 1, minlength=self.n_domains)
            cached = self._domain_items = (order, count.cumsum(0) - count, count)
        return cached

    def domain_losses(self, h: torch.Tensor, target: torch.Tensor, domain: torch.Tensor, kind: str) -> torch.Tensor:
        """The ranking loss of each row (``[N]``) with only the items of the target's ``domain`` as
        candidates (``ntg_scope=domain``): ``ce`` a softmax over the domain's items, ``bce`` one
        negative drawn uniformly among the domain's items."""
        emb = self.item_embeddings()
        if kind == "ce":
            logits = (h @ emb[1:].T).float()
            logits = logits.masked_fill(self.item_domain[1:][None, :] != domain[:, None], float("-inf"))
            return F.cross_entropy(logits, target - 1, reduction="none")
        order, start, count = self.domain_items()
        pick = start[domain - 1] + (torch.rand(len(domain), device=h.device) * count[domain - 1]).long()
        neg = order[pick.clamp(max=len(order) - 1)]
        return (F.softplus(-(h * emb[target]).sum(-1)) + F.softplus((h * emb[neg]).sum(-1))).float()

    def domain_gaps(self, l_single: torch.Tensor, l_cross_paired: torch.Tensor, domain: torch.Tensor,
                    rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi_d (``[D]``, detached), whether d had any paired target, and how many. ``rows`` None:
        mean SDSR loss - mean CDSR loss over the paired targets of domain d (``ntg_gap=mean``);
        else the sums over them divided by the batch's ``rows`` (``ntg_gap=sum``: per sequence, the
        losses summed over its time steps, averaged over the batch's sequences)."""
        D = self.n_domains
        idx = (domain - 1).long()
        count = torch.bincount(idx, minlength=D).float()
        s = torch.zeros(D, device=domain.device).index_add_(0, idx, l_single.detach().float())
        c = torch.zeros(D, device=domain.device).index_add_(0, idx, l_cross_paired.detach().float())
        present = count > 0
        denom = count.clamp(min=1) if rows is None else torch.full_like(count, float(max(rows, 1)))
        gap = torch.where(present, (s - c) / denom, torch.zeros_like(s))
        return gap, present, count

    def ntg_gaps(self, st: dict[str, torch.Tensor], l_single: torch.Tensor, l_cross: torch.Tensor, kind: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LC-NTG's gaps of the batch (``domain_gaps``) by ``ntg_gap`` and ``ntg_scope``."""
        paired = st["paired"]
        dom = st["target_domain"][paired]
        if self.cfg.ntg_scope == "domain":
            with torch.no_grad():
                tgt = st["target"][paired]
                l_single = self.domain_losses(st["single"], tgt, dom, kind)
                l_cross_p = self.domain_losses(st["cross"][paired], tgt, dom, kind)
        else:
            l_cross_p = l_cross[paired]
        rows = st["items"].shape[0] if self.cfg.ntg_gap == "sum" else None
        return self.domain_gaps(l_single, l_cross_p, dom, rows)

    def loss_terms(self, batch: dict[str, torch.Tensor], train_cfg: Any, update: bool = True) -> dict[str, torch.Tensor]:
        """``single``, ``cross`` and (with ``sc_mim``) ``mim``, each a scalar before its weight;
        ``update`` moves LC-NTG's average (once per training step)."""
        cfg = self.cfg
        st = self.task_states(batch["items"], batch["lengths"], batch["targets"])
        tgt, dom, paired = st["target"], st["target_domain"], st["paired"]
        if len(tgt) == 0:
            zero = self.item.weight.sum() * 0.0
            return {"single": zero, "cross": zero, **({"mim": zero} if cfg.sc_mim else {})}
        neg = None
        if train_cfg.loss in ("bce", "gbce"):
            r, c = st["position"].unbind(-1)
            neg = batch["negatives"][r, c]
        t = getattr(train_cfg, "gbce_t", 0.75)
        l_cross = self.target_losses(st["cross"], tgt, neg, train_cfg.loss, batch, t)
        l_single = self.target_losses(st["single"], tgt[paired], None if neg is None else neg[paired], train_cfg.loss,
                                      batch, t)
        gap, present, count = self.ntg_gaps(st, l_single, l_cross, train_cfg.loss)
        if update and self.training:
            with torch.no_grad():
                self.ntg_state.copy_(ntg_update(self.ntg_state, gap.to(self.ntg_state), present, cfg.ntg_momentum))
            self._gap_sum += gap.detach().cpu().double().numpy() * present.cpu().numpy()
            self._gap_batches += present.cpu().numpy().astype(np.int64)
            self._pair_count += count.cpu().numpy().astype(np.int64)
        w = self.domain_weights().to(l_cross.device)
        if cfg.loss_reduction == "code":  # models.py: sums / 1000, SDSR domains weighted 1 / D
            terms = {"single": l_single.sum() / (self.n_domains * 1000.0),
                     "cross": (w[dom - 1] * l_cross).sum() / 1000.0}
        else:
            terms = {
                "single": l_single.mean() if len(l_single) else l_cross.sum() * 0.0,
                "cross": (self.n_domains * w[dom - 1] * l_cross).mean(),
            }
        if cfg.sc_mim:
            has_pairs = cfg.mim_pair == "input" or bool(paired.any())
            terms["mim"] = self.mim_loss(st) if has_pairs else l_cross.sum() * 0.0
        return terms

    def domain_weights(self) -> torch.Tensor:
        """LC-NTG's weights w (``[D]``; uniform without ``lc_ntg``), constants for the gradient."""
        if not self.cfg.lc_ntg:
            return torch.full((self.n_domains,), 1.0 / self.n_domains, device=self.ntg_state.device)
        return ntg_weights(self.ntg_state.float(), self.cfg.ntg_temperature).detach()

    def mim_loss(self, st: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        if cfg.mim_pair == "input":
            sel = torch.ones_like(st["paired"])
            s, groups = st["single_input"], st["input_domain"]
        else:
            sel = st["paired"]
            s, groups = st["single"], st["target_domain"][sel]
        c = self.mim(st["cross"][sel])
        r, col = st["position"][sel].unbind(-1)
        if cfg.mim_estimator == "infonce":
            if len(groups) > cfg.mim_group:
                groups = chunk_groups(groups, cfg.mim_group)
            if cfg.mim_negatives == "users":  # the paper: other users' SDSR states of the domain
                return infonce_per_group(c, s, groups, cfg.mim_temperature, owner=r).mean()
            return infonce_per_group(c, s, groups, cfg.mim_temperature, st["target"][sel]).mean()
        items = st["items"]
        perm = torch.randperm(items.shape[0], device=items.device)
        if cfg.mim_pair == "input":  # the code's left padding: the other row's item as far from its end
            n = st["lengths"]
            oc = col + n[perm][r] - n[r]
            other_ids = torch.where(oc >= 0, items[perm][r, oc.clamp(min=0)], torch.zeros_like(oc))
        else:
            other_ids = items[perm][r, col]
        out = code_mim(c, s, self.item(other_ids))
        if cfg.loss_reduction == "code":  # models.py: the mean over every position of B x max_len
            return out.sum() / (items.shape[0] * self.max_len)
        return out.mean()

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        terms = self.loss_terms(batch, train_cfg)
        total = terms["single"] + terms["cross"]
        if "mim" in terms:
            total = total + self.cfg.mim_weight * terms["mim"]
        self._loss_parts = {k: float(v.detach()) for k, v in terms.items()}
        return total

    # -- reporting -----------------------------------------------------------------------------------
    def _reset_epoch_stats(self) -> None:
        self._gap_sum = np.zeros(self.n_domains)
        self._gap_batches = np.zeros(self.n_domains, dtype=np.int64)
        self._pair_count = np.zeros(self.n_domains, dtype=np.int64)

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        self._reset_epoch_stats()

    def epoch_report(self) -> dict[str, Any]:
        """Per domain: the epoch's mean negative-transfer gap, the LC-NTG weight at the end of the
        epoch and the number of paired targets (metrics.jsonl)."""
        w = self.domain_weights().cpu().numpy()
        names = self.domain_names
        gap = {n: (float(self._gap_sum[i] / self._gap_batches[i]) if self._gap_batches[i] else None)
               for i, n in enumerate(names)}
        return {"ntg_gap": gap, "ntg_weight": {n: float(w[i]) for i, n in enumerate(names)},
                "ntg_targets": {n: int(self._pair_count[i]) for i, n in enumerate(names)}}
