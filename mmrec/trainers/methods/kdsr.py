"""KDSR (Hu, Liu, Li, Kan; "Lightweight Modality Adaptation to Sequential Recommendation via
Correlation Supervision", ECIR 2024, arXiv 2401.07257; HoldenHu/KDSR).

Items carry trainable *modality embeddings* ``M^m`` (one table per feature modality m in {text, image},
initialised from the stored features) besides their ID embedding ``E``. Training a sequential
recommender moves ``M^m`` away from what the frozen encoder knew ("modality forgetting"); KDSR
distils correlations of the *original* features ``F^m`` (the teacher) into ``M^m`` (the student),
and updates ``M^m`` with a slower, rising learning rate.

Items and sequences (the paper's representation learning module, Sec. 3.2; the code's modality gate):

    M^m_v  = M^m[v]                 if item v has an m feature, else a learned missing_m (never a zero)
    x_v    = dropout( sum_c softmax_c(g(c)) c ),   c in {E_v, M^text_v, M^image_v}
    g      = Linear(d, d) -> ReLU -> Linear(d, 1)  (shared by the candidates)
    h      = backbone(x_{v_1}, ..., x_{v_L})       sasrec | gru4rec | nextitnet (``build_backbone``)

or, with ``backbone=graph`` (the code's session graph), no sequence encoder: the prefix
``v_1..v_t`` is a graph with one node per distinct item, an edge u -> v where v directly follows u,
relation types self / out / in / both (``prefix_relations``); a relational GAT over the id
embeddings gives each node a state ``G_t(v)`` (``RelationalGAT``), which joins the gate candidates,
and the position's state sums the last ``last_n`` (2) fused items (the code's ``last_sum``):

    x_{v,t} = dropout( sum_c softmax_c(g(c)) c ),  c in {E_v, G_t(v), M^text_v, M^image_v}
    h_t     = sum_{s = t - last_n + 1 .. t, s >= 1} x_{v_s, t}
              (``last_n_clamp=true``, the code: s < 1 is read as s = 1, so a prefix shorter than
              ``last_n`` counts its first item's state more than once)
    score(i | h) = <h_L, E_i>   (``score_with=id``, the code)   or <h_L, x_i> (``score_with=fused``)

``M^m`` starts as the rank-d truncated SVD of the features (``x V_d``, V_d the top right singular
vectors of the uncentred present rows, so ``M M^T`` is the best rank-d approximation of the teacher
dot products), rescaled so its entries have root-mean-square ``modality_scale``; columns beyond the
feature dimension start at zero (``modality_init=svd``). ``modality_init=features`` (the code, whose
features are already d = 128-dimensional) copies the features in as they are; it needs the feature
dimension to equal ``hidden``.

Correlation score ``cor`` (``model.metric``; Sec. 3.3.1 "xi"): cosine, dot, euclidean (L2 distance),
manhattan (L1 distance), the same function for teacher and student, as the code.

Pairs. For each row b of the batch, the node mask ``n_b,i`` is True at a real position i whose item
has an m feature and does not occur earlier in the row (the code's session graph keeps each item
once); ``C_b,ij = n_b,i n_b,j`` (the diagonal included, as the code).

Holistic correlation distillation (Sec. 3.3.1, Eq. 4-5; the code's ``calculate_teach_cor_loss``):

    T^m_b,ij = cor(F^m_i, F^m_j)                     teacher, from the frozen features of the batch
    S^m_b,ij = cor(P^m_i, P^m_j),  P^m = Lin_2(Lin_1(M^m))   two linear maps, no activation
    L_hol^m  = mean_b sqrt( sum_ij C_b,ij [ ((S_b,ij - T_b,ij) / tau)^2 + 1e-8 ] )

i.e. the code's masked Frobenius norm ``|| C * sqrt((S/tau - C*T/tau)^2 + 1e-8) ||_F`` (not a KL
divergence), averaged over the rows that have a pair.

Dissected correlation codes (Sec. 3.3.2, Eq. 6-8; ``teacher_generate_cor_code``,
``student_predict_corcodes_logits``):

    r^m_ij = [cor(F^m_i[s], F^m_j[s])]_{s=1..D}     D = ``code_subspaces`` sub-vectors (8)
    c^m_ij = argmin_k || r^m_ij - mu_k ||^2          codebook mu_1..K (K = ``code_count``, 50)
    logits = Lin_{d->K}(ReLU(Lin_{d->d}(|M^m_i - M^m_j|)))
    L_code^m = weighted mean over the pairs (b, i <= j) with C_b,ij of CE(logits, c^m_ij),
               weight 2 off the diagonal and 1 on it

which equals the code's mean over all ordered pairs (both are symmetric in i, j) at half the cost.
The codebook is k-means (k-means++ start, at most ``code_kmeans_iters`` Lloyd iterations, seeded by
``code_seed``: deterministic) on ``code_sample_pairs`` item pairs drawn uniformly from the items with
a feature (all pairs when there are fewer), fitted when the model is built. It is a persistent
buffer, so a resumed run keeps its codebook.

Total loss (Sec. 3.4, Eq. 9; ``model_process`` / ``train_and_test``):

    L = L_rec + w_hol^image L_hol^image + w_code^image L_code^image + w_hol^text L_hol^text + w_code^text L_code^text

``L_rec`` is ``train.loss`` (ce over all items, or bce). ``loss_parts`` holds the unweighted terms
(``ce``/``bce``, ``holistic_text``, ``code_text``, ...); ``loss_weights()`` the effective weights.

Asynchronous learning rate (Sec. 3.4 "asynchronous learning step"; ``use_AT``): the modality tables
``M^m`` are an optimiser group of their own (``param_groups``) with the rate, at epoch e (1-based,
as the loop counts), ``milestones`` = ``async_milestones``, gamma = ``async_gamma``:

    step (default, the paper: raised over epochs)    lr_M(e) = lr / gamma^(|milestones| - #{s : e > s})
    constant (the released code)                      lr_M(e) = lr / gamma^|milestones|

With the code's ``schedule: [5, 10]`` and gamma 2: lr/4 for epochs 1-5, lr/2 for 6-10, lr from 11
on (``constant``: lr/4 throughout). ``async_lr=false``: lr. Set by ``on_epoch_start`` as that factor
times the main group's present rate (so a loop-level decay, as the code's StepLR, applies to both
groups, as in the code); logged as ``lr_modality`` in metrics.jsonl.

**Memory.** The code stores dense N x N teacher matrices (float64 scores and int64 codes per
modality: 32 N^2 bytes, 2.3 GB for Beauty's 12k items, 320 GB for 100k). Here the teacher scores
and codes are computed per batch from the batch's own feature rows ([B, L, L] and [B, L, L, D]);
the only catalogue-sized tensors are the feature tables and embeddings (N x dim). See
``bench/kdsr_memory.py``.

**Differences from the released code** (and the flags that restore it where it matters; the
comparison, tensor by tensor, is ``bench/side_by_side_kdsr.py``, its table and every setting in
docs/fidelity/kdsr.md, the settings as data in ``mmrec/trainers/presets/kdsr.py``):

- Backbone: the code runs only the session-graph relational GAT with ``last_sum`` pooling (its
  SASRec and GRU4Rec classes are not wired in); the default here is SASRec over the gate-fused items
  (the paper reports several backbones), and ``backbone=graph`` is the code's. For the graph, the
  code builds one graph per training prefix; here every prefix of a row is scored at once
  (``prefix_relations`` gives each position's relations within its own prefix), which is the same
  set of samples and the same states at O(L^2) per row (``train.windows=prefixes`` makes each prefix
  a row of its own, as the code's samples; then the distillation terms are also per prefix, as the
  code's). Differences in the graph path: dropout on the attention weights (the code drops attention
  logits, where a dropped -9e15 becomes 0 and un-masks an absent edge, padding nodes included: not
  reproducible draw for draw, no flag); the code's ``dropout_output`` drops each node's fused vector
  once, here each position's (the same node at the last two positions gets two masks); a prefix
  shorter than ``last_n`` sums its states once (the code's clamped gather counts the first position
  again: ``last_n_clamp=true``). Both keep the last ``max_len`` (50) items of a history (the code in
  its preprocessing, ``seq[:-i][-max_length:]``).
- Loss weights: the code multiplies the image-code loss by ``t_s_weight`` and the text-holistic loss
  by ``v_c_weight`` (effective image 4 / 4, text 0.5 / 0.5). Default here is the evident intent
  (image-holistic 4, image-code 0.5, text-holistic 4, text-code 0.5); ``code_weight_bug=true``
  reproduces the code's wiring.
- Asynchronous rate: the code's rate is constant (``async_schedule=constant``); the default follows
  the paper's description and raises it at the milestones (``step``).
- Teacher features are the stored features as extracted (e.g. 384-d text, 256-d image); the code
  first reduces both to 128-d with a sigmoid autoencoder. The trainable tables are initialised by
  truncated SVD (the code copies the autoencoder output in: ``modality_init=features``). Items
  without a feature use a learned missing vector and take no part in that modality's distillation
  (the code uses zero rows).
- Sub-vectors: ``torch.tensor_split`` (near-equal parts when the dimension is not a multiple of
  ``code_subspaces``; ``np.split`` would fail). Codebook: seeded k-means on a sample of pairs, not
  ``MiniBatchKMeans`` on all N^2 pairs; the ``vq``/faiss alternative is not provided.
- Holistic loss rows without any pair (no item with the feature) are left out of the mean.
- ``max_code_pairs`` (default: no limit) can cap the pairs of the code loss per batch (a uniform
  sample) to bound memory; the code uses all of them.
- Training settings (StepLR, 100 epochs, patience, ``last_n``) are the loop's, not the code's.
  ``feature_dropout`` (dropout on the fused items) defaults to mmrec's 0.1; the code's
  ``dropout_output`` is 0.4 (its GNN path has no other input dropout). The learned missing vectors
  train at the full rate (only the tables M^m are in the slow group).
- ``score_with=fused`` (not in the code) scores items by their fused vector, so items never seen in
  training can be ranked; with the default ``id``, as the code, they cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import present_modalities
from mmrec.trainers.modules.losses import next_item_loss
from mmrec.trainers.modules.sequence import (
    RelationalGAT,
    TransformerConfig,
    build_backbone,
    prefix_relations,
    session_nodes,
)

METRICS = ("cosine", "dot", "euclidean", "manhattan")


@dataclass
class KDSRConfig(TransformerConfig):
    """``TransformerConfig`` (the sasrec backbone; ``layers`` and ``dropout`` serve all backbones)
    and KDSR's settings (module docstring)."""

    backbone: Literal["sasrec", "gru4rec", "nextitnet", "graph"] = "sasrec"
    # backbone=graph (the code's session-graph RGAT with last_sum pooling; module docstring)
    last_n: int = 2
    # True: the code's clamped last_sum gather (a prefix shorter than last_n repeats its first state)
    last_n_clamp: bool = False
    graph_slope: float = 0.1
    graph_dropout: float = 0.2
    score_with: Literal["id", "fused"] = "id"
    feature_dropout: float = 0.1  # dropout on the gate-fused item vectors (the code's dropout_output 0.4)
    modality_scale: float = 0.5  # RMS of the initial modality tables (the code's sigmoid-AE features ~0.5)
    # svd: rank-d truncated SVD of the features at RMS modality_scale; features: the features copied in
    # as they are (the code; feature dimension == hidden)
    modality_init: Literal["svd", "features"] = "svd"
    metric: Literal["cosine", "dot", "euclidean", "manhattan"] = "cosine"
    # holistic correlation distillation
    holistic: bool = True
    tau: float = 1.5
    # dissected correlation codes
    codes: bool = True
    code_subspaces: int = 8
    code_count: int = 50
    code_sample_pairs: int = 100_000
    code_seed: int = 2023
    code_kmeans_iters: int = 30
    max_code_pairs: int | None = None
    pair_code_table_max_items: int = 8192  # up to this catalogue size, every item pair's code is computed once
    # loss weights (the code's v_s, v_c, t_s, t_c)
    image_holistic_weight: float = 4.0
    image_code_weight: float = 0.5
    text_holistic_weight: float = 4.0
    text_code_weight: float = 0.5
    code_weight_bug: bool = False  # True: the released code's wiring (module docstring)
    # asynchronous learning rate of the modality tables
    async_lr: bool = True
    async_gamma: float = 2.0
    async_milestones: list[int] = field(default_factory=lambda: [5, 10])
    async_schedule: Literal["step", "constant"] = "step"

    def validate(self) -> None:
        if self.tau <= 0:
            raise ConfigError("model.tau must be positive")
        if self.code_subspaces < 1 or self.code_count < 2 or self.code_kmeans_iters < 1:
            raise ConfigError("model.code_subspaces must be >= 1, model.code_count >= 2, model.code_kmeans_iters >= 1")
        if self.code_sample_pairs < self.code_count:
            raise ConfigError("model.code_sample_pairs must be at least model.code_count")
        if self.max_code_pairs is not None and self.max_code_pairs < 1:
            raise ConfigError("model.max_code_pairs must be positive (or null: every pair)")
        weights = (self.image_holistic_weight, self.image_code_weight, self.text_holistic_weight, self.text_code_weight)
        if min(weights) < 0:
            raise ConfigError("the KDSR loss weights must be >= 0")
        if self.async_gamma <= 0:
            raise ConfigError("model.async_gamma must be positive")
        if any(m < 0 for m in self.async_milestones) or list(self.async_milestones) != sorted(self.async_milestones):
            raise ConfigError("model.async_milestones must be non-negative epochs in increasing order")
        if self.modality_scale <= 0:
            raise ConfigError("model.modality_scale must be positive")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ConfigError("model.feature_dropout must be in [0, 1)")
        if self.last_n < 1:
            raise ConfigError("model.last_n must be at least 1 (the positions summed by the graph backbone)")
        if not 0.0 <= self.graph_dropout < 1.0:
            raise ConfigError("model.graph_dropout must be in [0, 1)")


# --- correlation scores ---------------------------------------------------------------------------

def pair_correlation(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """``cor(x_k, y_k)`` row by row: ``[..., D]`` x ``[..., D]`` -> ``[...]``.

    cosine: x.y / (|x| |y|) (0 for a zero vector); dot: x.y; euclidean: |x - y|_2; manhattan: |x - y|_1.
    """
    if metric == "cosine":
        return F.cosine_similarity(x, y, dim=-1, eps=1e-8)
    if metric == "dot":
        return (x * y).sum(-1)
    if metric == "euclidean":
        return torch.linalg.vector_norm(x - y, dim=-1)
    if metric == "manhattan":
        return (x - y).abs().sum(-1)
    raise ConfigError(f"unknown correlation metric {metric!r}; use one of {', '.join(METRICS)}")


def pairwise_correlation(x: torch.Tensor, metric: str) -> torch.Tensor:
    """``cor(x_i, x_j)`` for every pair within each set: ``[..., L, D]`` -> ``[..., L, L]`` (the same
    values as ``pair_correlation``)."""
    if metric == "cosine":
        n = F.normalize(x, dim=-1, eps=1e-8)
        return n @ n.transpose(-1, -2)
    if metric == "dot":
        return x @ x.transpose(-1, -2)
    if metric in ("euclidean", "manhattan"):
        lead, (l, d) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(-1, l, d)
        p = 2.0 if metric == "euclidean" else 1.0
        out = torch.cdist(flat, flat, p=p, compute_mode="donot_use_mm_for_euclid_dist")
        return out.reshape(*lead, l, l)
    raise ConfigError(f"unknown correlation metric {metric!r}; use one of {', '.join(METRICS)}")


def subspace_pair_correlation(x: torch.Tensor, y: torch.Tensor, n_sub: int, metric: str) -> torch.Tensor:
    """The dissected correlation vector: ``[P, D]`` x ``[P, D]`` -> ``[P, n_sub]``, entry s is
    ``cor`` of the s-th sub-vectors (``torch.tensor_split`` of the feature dimension)."""
    return torch.stack([pair_correlation(a, b, metric)
                        for a, b in zip(torch.tensor_split(x, n_sub, -1), torch.tensor_split(y, n_sub, -1))], -1)


def subspace_pairwise_correlation(x: torch.Tensor, n_sub: int, metric: str) -> torch.Tensor:
    """``[..., L, D]`` -> ``[..., L, L, n_sub]``: the dissected vector of every pair within each set."""
    return torch.stack([pairwise_correlation(a, metric) for a in torch.tensor_split(x, n_sub, -1)], -1)


# --- losses ---------------------------------------------------------------------------------------

def holistic_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """KDSR's holistic distillation loss ``mean_b sqrt(sum_ij C_bij [((S_bij - T_bij) / tau)^2 + 1e-8])``.

    ``student``, ``teacher``: ``[B, L, L]``; ``mask`` ``C``: bool ``[B, L, L]``. Masked pairs do not
    contribute; rows without any pair are left out of the mean (0 when there is no pair at all).
    """
    c = mask.to(student.dtype)
    diff = (student - teacher.to(student.dtype)) / tau
    sums = (c * (diff.square() + 1e-8)).sum((-2, -1))
    has = mask.flatten(1).any(-1)
    if not bool(has.any()):
        return student.sum() * 0.0
    return sums[has].sqrt().mean()


def code_loss(logits: torch.Tensor, codes: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the predicted code logits ``[P, K]`` against the teacher codes ``[P]``,
    averaged with ``weight`` ``[P]`` (default: plain mean); 0 when there is no pair."""
    if len(codes) == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), codes, reduction="none")
    if weight is None:
        return ce.mean()
    weight = weight.to(ce.dtype)
    return (ce * weight).sum() / weight.sum()


# --- codebook -------------------------------------------------------------------------------------

def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[N, K]``."""
    return ((x * x).sum(-1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(-1)[None, :]).clamp_min_(0.0)


def assign_codes(vectors: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """The nearest codeword (squared Euclidean; the lowest index on ties) of each vector ``[P, D]``
    in ``codebook`` ``[K, D]`` -> ``[P]`` long."""
    vectors = vectors.to(codebook.dtype)
    if len(vectors) == 0:
        return torch.zeros(0, dtype=torch.long, device=vectors.device)
    return torch.cat([_sq_dist(v, codebook).argmin(-1) for v in vectors.split(chunk)])


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 100, tol: float = 1e-4) -> torch.Tensor:
    """Deterministic k-means on ``x`` ``[N, D]``: k-means++ start drawn with a generator seeded by
    ``seed``, then Lloyd iterations until the assignment stops changing or the centroids move less
    than ``tol`` times the mean per-dimension variance of ``x`` (summed squared shift, as
    scikit-learn), at most ``iters``. An empty cluster keeps its centroid. Computed in float64 on the
    CPU; returns float32 ``[k, D]``."""
    x = x.detach().to("cpu", torch.float64)
    n = len(x)
    if n == 0:
        raise ConfigError("k-means needs at least one vector")
    g = torch.Generator().manual_seed(int(seed))
    centres = torch.empty(k, x.shape[1], dtype=torch.float64)
    centres[0] = x[torch.randint(n, (1,), generator=g)]
    d2 = _sq_dist(x, centres[:1])[:, 0]
    for j in range(1, k):
        total = d2.sum()
        if total > 0:
            idx = torch.multinomial(d2 / total, 1, generator=g)
        else:  # fewer distinct vectors than codes
            idx = torch.randint(n, (1,), generator=g)
        centres[j] = x[idx]
        d2 = torch.minimum(d2, _sq_dist(x, centres[j:j + 1])[:, 0])
    threshold = tol * float(x.var(0, unbiased=False).mean()) if n > 1 else 0.0
    assign = None
    for _ in range(iters):
        new = assign_codes(x, centres)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        before = centres.clone()
        centres[filled] = sums[filled] / counts[filled, None]
        if float((centres - before).square().sum()) <= threshold:
            break
    return centres.float()


def sample_pairs(candidates: torch.Tensor, n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item pairs ``(a, c)`` for fitting the codebook: every ordered pair of ``candidates`` when there
    are at most ``n_pairs`` of them, else ``n_pairs`` pairs drawn uniformly (with replacement) with a
    generator seeded by ``seed``."""
    n = len(candidates)
    if n * n <= n_pairs:
        a, c = torch.meshgrid(candidates, candidates, indexing="ij")
        return a.reshape(-1), c.reshape(-1)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(n, (2, n_pairs), generator=g)
    return candidates[idx[0]], candidates[idx[1]]


def fit_codebook(features: torch.Tensor, present: torch.Tensor, cfg: KDSRConfig, chunk: int = 8192) -> torch.Tensor:
    """The dissected-correlation codebook ``[code_count, code_subspaces]`` of one modality: k-means on
    the dissected vectors of ``code_sample_pairs`` pairs of items that have the feature."""
    ids = torch.nonzero(present.cpu()).flatten()
    a, c = sample_pairs(ids, cfg.code_sample_pairs, cfg.code_seed)
    feats = features.detach().cpu().float()
    vec = torch.cat([subspace_pair_correlation(feats[a[i:i + chunk]], feats[c[i:i + chunk]], cfg.code_subspaces,
                                               cfg.metric) for i in range(0, len(a), chunk)])
    return kmeans(vec, cfg.code_count, cfg.code_seed, cfg.code_kmeans_iters)


def item_pair_codes(features: torch.Tensor, codebook: torch.Tensor, n_sub: int, metric: str,
                    chunk: int = 256) -> torch.Tensor:
    """The teacher code of every item pair ``[N, N]`` (uint8, int16 beyond 256 codes): ``assign_codes`` of the dissected
    vector of rows u and v of ``features`` ``[N, D]``, computed by ``subspace_pairwise_correlation``
    as the batch path does. The teacher codes depend on the two items only, so a catalogue small
    enough (``KDSRConfig.pair_code_table_max_items``) looks them up instead of recomputing them for
    every pair of every batch."""
    feats = features.detach().float()
    n = len(feats)
    dtype = torch.uint8 if len(codebook) <= 256 else torch.int16
    out = torch.empty(n, n, dtype=dtype, device=feats.device)
    subs = torch.tensor_split(feats, n_sub, -1)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        if metric == "cosine":
            vec = torch.stack([F.normalize(a[lo:hi], dim=-1, eps=1e-8) @ F.normalize(a, dim=-1, eps=1e-8).T
                               for a in subs], -1)
        else:
            vec = torch.stack([pair_correlation(a[lo:hi, None, :], a[None, :, :], metric) for a in subs], -1)
        out[lo:hi] = assign_codes(vec.reshape(-1, n_sub), codebook).view(hi - lo, n).to(dtype)
    return out


# --- initialisation and the asynchronous rate -----------------------------------------------------

def svd_init(features: torch.Tensor, present: torch.Tensor, d: int, scale: float) -> torch.Tensor:
    """``[n_items + 1, d]``: the rows with a feature projected on the top ``min(d, D)`` right singular
    vectors of the (uncentred) present rows, rescaled to entry RMS ``scale``; other rows and extra
    columns are zero. Signs are fixed (the largest loading of each vector is positive)."""
    x = features.detach().cpu().float()
    out = torch.zeros(x.shape[0], d)
    rows = x[present.cpu()]
    if len(rows) == 0:
        return out
    gram = (rows.T @ rows).double()
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    r = min(d, x.shape[1])
    v = evecs[:, -r:].flip(-1)
    sign = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    v = (v * torch.where(sign == 0, torch.ones_like(sign), sign)).float()
    z = rows @ v
    rms = z.square().mean().sqrt()
    if rms > 0:
        z = z * (scale / rms)
    out[present.cpu(), :r] = z
    return out


def modality_lr(lr: float, epoch: int, cfg: KDSRConfig) -> float:
    """The learning rate of the modality tables at ``epoch`` (1-based; module docstring)."""
    if not cfg.async_lr:
        return lr
    n = len(cfg.async_milestones)
    if cfg.async_schedule == "constant":
        return lr / cfg.async_gamma ** n
    passed = sum(1 for s in cfg.async_milestones if epoch > s)
    return lr / cfg.async_gamma ** (n - passed)


def _first_occurrence(items: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: position j is real and its item does not occur at an earlier position."""
    return (items > 0) & (session_nodes(items) == torch.arange(items.shape[1], device=items.device))


class KDSR(SequentialRecommender):
    name = "kdsr"
    Config = KDSRConfig
    modalities = ("text", "image")
    required_modalities = ()  # text, image or both

    def __init__(self, cfg: KDSRConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        self.used_modalities = present_modalities(self.name, self.features, self.modalities)
        d = cfg.hidden
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.modality = nn.ModuleDict({s: nn.Embedding(n_items + 1, d) for s in self.used_modalities})
        self.missing = nn.ParameterDict({s: nn.Parameter(torch.randn(d) * cfg.init_std) for s in self.used_modalities})
        self.gate = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        self.dropout = nn.Dropout(cfg.feature_dropout)
        if cfg.backbone == "graph":
            self.encoder = None
            self.graph = RelationalGAT(d, cfg.graph_slope, cfg.graph_dropout)
        else:
            self.encoder = build_backbone(cfg.backbone, d, max_len, layers=cfg.layers, heads=cfg.heads,
                                          inner=cfg.inner, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                                          act=cfg.act, position=cfg.position)
        if cfg.holistic:  # P^m = Lin_2(Lin_1(M^m))
            self.cor_project = nn.ModuleDict({s: nn.Sequential(nn.Linear(d, d), nn.Linear(d, d)) for s in self.used_modalities})
        if cfg.codes:
            self.code_head = nn.ModuleDict({s: nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.code_count))
                                            for s in self.used_modalities})
        init_weights(self, cfg.init_std)  # as the code: N(0, 0.02) everywhere, then the tables from features
        if cfg.backbone == "graph":
            self.graph.reset_parameters()  # the code's RGAT keeps its own uniform initialisation
        for s in self.used_modalities:
            f = self.features[s]
            if f.table.dim() != 2:
                raise ConfigError(f"the {s} features are token sequences {list(f.table.shape[1:])}; kdsr reads one "
                                  "vector per item: extract with --pooling cls/mean/pooled")
            if f.table.shape[0] != n_items + 1:
                raise ConfigError(f"kdsr: {s} features of shape {list(f.table.shape)} do not fit {n_items} items")
            present = f.present.bool().clone()
            present[0] = False
            if not bool(present.any()):
                raise ConfigError(f"kdsr: no item has a {s} feature")
            if cfg.codes and f.dim < cfg.code_subspaces:
                raise ConfigError(f"model.code_subspaces={cfg.code_subspaces} is more than the {s} feature "
                                  f"dimension {f.dim}")
            self.register_buffer(f"feat_{s}", f.table.float(), persistent=False)
            self.register_buffer(f"present_{s}", present, persistent=False)
            with torch.no_grad():
                if cfg.modality_init == "features":
                    if f.dim != d:
                        raise ConfigError(f"model.modality_init=features copies the {s} features into the {s} table: "
                                          f"their dimension {f.dim} must equal model.hidden={d} (or use svd)")
                    self.modality[s].weight.copy_(torch.where(present[:, None], f.table.float(), 0.0))
                else:
                    self.modality[s].weight.copy_(svd_init(f.table, present, d, cfg.modality_scale))
            if cfg.codes:
                self.register_buffer(f"codebook_{s}", fit_codebook(f.table, present, cfg))
                if n_items + 1 <= cfg.pair_code_table_max_items:
                    self.register_buffer(f"pair_codes_{s}", item_pair_codes(
                        f.table, getattr(self, f"codebook_{s}"), cfg.code_subspaces, cfg.metric), persistent=False)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self._epoch = 1

    # -- items ---------------------------------------------------------------------------------------
    @property
    def ranks_unseen_items(self) -> bool:  # type: ignore[override]
        return self.cfg.score_with == "fused"

    def modality_vectors(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{m: M^m_v}`` for ``ids`` of any shape (the missing vector where v has no m feature)."""
        out = {}
        for s in self.used_modalities:
            v = self.modality[s](ids)
            has = getattr(self, f"present_{s}")[ids]
            out[s] = torch.where(has.unsqueeze(-1), v, self.missing[s].to(v.dtype))
        return out

    def fuse(self, ids: torch.Tensor, mods: dict[str, torch.Tensor] | None = None,
             graph: torch.Tensor | None = None) -> torch.Tensor:
        """The gate-fused item vectors ``x_v`` ``[*ids.shape, d]`` (padding, id 0, is zero); ``graph``
        (the RGAT state of each item) is one more gate candidate, as in the code."""
        mods = self.modality_vectors(ids) if mods is None else mods
        extra = [] if graph is None else [graph]
        cand = torch.stack([self.item(ids), *extra, *(mods[s] for s in self.used_modalities)], dim=-2)  # [..., C, d]
        w = torch.softmax(self.gate(cand).squeeze(-1), dim=-1)
        x = self.dropout((w.unsqueeze(-1) * cand).sum(-2))
        return x.masked_fill((ids == 0).unsqueeze(-1), 0.0)

    def graph_states(self, items: torch.Tensor, mods: dict[str, torch.Tensor] | None = None,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """``backbone=graph``: the state at position t is the sum, over the last ``last_n`` positions
        s = t, t-1, ... of the prefix, of the gate-fused vector of the item at s, whose graph candidate
        is its RGAT state in the session graph of ``items[:t + 1]`` (every prefix is a training sample
        of the code; here all prefixes of a row at once, so position t sees only positions <= t).
        ``last_n_clamp``: a position s < 0 reads position 0 (the code's clamped gather), in the graph of
        the same prefix. ``rows`` ``[B, T]``: compute only these positions of each row (``[B, T, d]``;
        the same values as those positions of the full ``[B, L, d]``, without the work for the others:
        a prefix sample reads one position)."""
        mods = self.modality_vectors(items) if mods is None else mods
        b, l = items.shape
        if rows is None:
            rows = torch.arange(l, device=items.device).expand(b, l)
        node = session_nodes(items)
        e = self.item(items)  # node j's features: the id embedding at its first-occurrence position j
        h = torch.zeros(b, rows.shape[1], self.cfg.hidden, device=e.device, dtype=e.dtype)
        clamp = self.cfg.last_n_clamp
        rels: dict[int, torch.Tensor] = {}

        def relations(lag: int) -> torch.Tensor:  # prefix_relations' rows at ``rows``
            if lag not in rels:
                rels[lag] = prefix_relations(items, lag).gather(1, rows[:, :, None].expand(-1, -1, l))
            return rels[lag]

        def at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x[b, pos[b, t]]
            return x.gather(1, pos[:, :, None].expand(-1, -1, x.shape[-1]))

        for lag in range(self.cfg.last_n if clamp else min(self.cfg.last_n, l)):
            src = (rows - lag).clamp(min=0)
            rel = relations(lag)
            if clamp and lag > 0:  # rows t < lag: the node of position 0 in the graph of prefix t
                for t0 in range(min(lag, l)):
                    rel = torch.where((rows == t0)[:, :, None], relations(t0), rel)
            g = self.graph(e, rel, node.gather(1, src))
            ids = items.gather(1, src)
            if not clamp:
                ids = torch.where(rows >= lag, ids, 0)
            x = self.fuse(ids, {s: at(v, src) for s, v in mods.items()}, graph=g)
            h = h + x  # fuse() zeroes padding and the positions before the start
        return h

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            return super().query(items, lengths)
        return self.graph_states(items, rows=(lengths - 1).clamp(min=0)[:, None])[:, 0]

    def item_embeddings(self) -> torch.Tensor:
        if self.cfg.score_with == "id":
            return self.item.weight
        return self.fuse(torch.arange(self.n_items + 1, device=self.item.weight.device))

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor,
                        mods: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.encoder is None:
            return self.graph_states(items, mods)
        return self.encoder(self.fuse(items, mods), lengths)

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor | None:
        return None if self.encoder is None else self.fuse(items)  # None: the graph backbone

    # -- distillation --------------------------------------------------------------------------------
    def pair_mask(self, items: torch.Tensor, modality: str, first: torch.Tensor | None = None) -> torch.Tensor:
        """``C`` ``[B, L, L]``: both positions are first occurrences of items with a ``modality`` feature."""
        first = _first_occurrence(items) if first is None else first
        node = first & getattr(self, f"present_{modality}")[items]
        return node[:, :, None] & node[:, None, :]

    def holistic_terms(self, items: torch.Tensor, mods: dict[str, torch.Tensor],
                       first: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for s in self.used_modalities:
            mask = self.pair_mask(items, s, first)
            with torch.no_grad(), torch.autocast(items.device.type, enabled=False):
                teacher = pairwise_correlation(getattr(self, f"feat_{s}")[items], self.cfg.metric)
            student = pairwise_correlation(self.cor_project[s](mods[s]).float(), self.cfg.metric)
            out[f"holistic_{s}"] = holistic_loss(student, teacher, mask, self.cfg.tau)
        return out

    def code_targets(self, items: torch.Tensor, modality: str, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The code-loss pairs of a batch: indices ``(b, i, j)`` with ``i <= j`` under ``mask`` (a
        uniform sample of ``max_code_pairs`` when set), their teacher codes and weights (2 off the
        diagonal, 1 on it)."""
        upper = torch.ones(mask.shape[-1], mask.shape[-1], dtype=torch.bool, device=mask.device).triu()
        b, i, j = torch.nonzero(mask & upper[None], as_tuple=True)
        cap = self.cfg.max_code_pairs
        if cap is not None and len(b) > cap:
            keep = torch.randperm(len(b), device=b.device)[:cap]
            b, i, j = b[keep], i[keep], j[keep]
        pair_codes = getattr(self, f"pair_codes_{modality}", None)
        if pair_codes is not None:  # the teacher codes of every item pair, computed once
            codes = pair_codes[items[b, i], items[b, j]].long()
        else:
            with torch.no_grad(), torch.autocast(items.device.type, enabled=False):
                feats = getattr(self, f"feat_{modality}")[items]  # [B, L, D]
                vec = subspace_pairwise_correlation(feats, self.cfg.code_subspaces, self.cfg.metric)[b, i, j]
                codes = assign_codes(vec, getattr(self, f"codebook_{modality}"))
        weight = torch.where(i == j, 1.0, 2.0)
        return torch.stack([b, i, j]), codes, weight

    def code_terms(self, items: torch.Tensor, mods: dict[str, torch.Tensor],
                   first: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for s in self.used_modalities:
            (b, i, j), codes, weight = self.code_targets(items, s, self.pair_mask(items, s, first))
            m = mods[s]
            logits = self.code_head[s]((m[b, i] - m[b, j]).abs())
            out[f"code_{s}"] = code_loss(logits, codes, weight)
        return out

    def loss_weights(self) -> dict[str, float]:
        """The weight of each distillation term present (after ``code_weight_bug``)."""
        c = self.cfg
        w = {"holistic_image": c.image_holistic_weight, "code_image": c.image_code_weight,
             "holistic_text": c.text_holistic_weight, "code_text": c.text_code_weight}
        if c.code_weight_bug:  # the released code: image-code x t_s, text-holistic x v_c
            w["code_image"], w["holistic_text"] = c.text_holistic_weight, c.image_code_weight
        kinds = [k for k, on in (("holistic", c.holistic), ("code", c.codes)) if on]
        return {f"{k}_{s}": w[f"{k}_{s}"] for s in self.used_modalities for k in kinds}

    # -- training ------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        items, targets = batch["items"], batch["targets"]
        mods = self.modality_vectors(items)
        mask = targets > 0
        neg = batch.get("negatives")
        if self.encoder is None and targets.shape[1] > 1 and int(mask.sum(1).max()) <= 1:
            # one target per row (train.windows=prefixes): the graph states at that position only
            keep = mask.any(1)
            pos = mask[keep].int().argmax(1, keepdim=True)
            h = self.graph_states(items[keep], {s: v[keep] for s, v in mods.items()}, rows=pos)
            targets, mask = targets[keep].gather(1, pos), torch.ones_like(pos, dtype=torch.bool)
            if neg is not None:
                neg = neg[keep].gather(1, pos.view(pos.shape + (1,) * (neg.dim() - 2)).expand(-1, -1, *neg.shape[2:]))
        else:
            h = self.sequence_states(items, batch["lengths"], mods)
        emb = self.item_embeddings()
        main = next_item_loss(h[mask], targets[mask], emb, train_cfg, batch, None if neg is None else neg[mask],
                              exclude=self.train_exclusion if self.training else None)
        parts: dict[str, torch.Tensor] = {train_cfg.loss: main}
        first = _first_occurrence(items)
        if self.cfg.holistic:
            parts.update(self.holistic_terms(items, mods, first))
        if self.cfg.codes:
            parts.update(self.code_terms(items, mods, first))
        total = main
        for k, w in self.loss_weights().items():
            total = total + w * parts[k]
        self._loss_parts = {k: float(v.detach()) for k, v in parts.items()}
        return total

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Two groups: ``modality`` (the tables M^m, at ``modality_lr``) and ``main`` (the rest)."""
        slow = [t.weight for t in self.modality.values()]
        ids = {id(p) for p in slow}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "name": "main"},
                {"params": slow, "name": "modality", "lr": modality_lr(lr, self._epoch, self.cfg), "base_lr": lr}]

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Sets the modality group's rate to ``modality_lr``'s factor times the main group's present
        rate, so a decay the loop's schedule already applied to the main group (a chained scheduler)
        carries over; the factor is also left in the group as ``lr_factor`` for a loop schedule that
        recomputes each group's rate in closed form from its initial rate."""
        self._epoch = epoch
        main = next((g for g in optimizer.param_groups if g.get("name") == "main"), None)
        for g in optimizer.param_groups:
            if g.get("name") == "modality":
                factor = modality_lr(1.0, epoch, self.cfg)
                g["lr"] = factor * (g["base_lr"] if main is None else main["lr"])
                g["lr_factor"] = factor
                self._modality_lr = g["lr"]

    def epoch_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if getattr(self, "_modality_lr", None) is not None:
            out["lr_modality"] = self._modality_lr
        out.update({f"weight_{k}": v for k, v in self.loss_weights().items()})
        return out
