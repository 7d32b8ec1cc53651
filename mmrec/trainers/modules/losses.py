"""Next-item losses over the positions that have a target (target id 0 = no target)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmrec.errors import ConfigError


class _ChunkedCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``h @ w.T`` computed ``chunk`` rows at a time, forward and
    backward, so the ``[N, V]`` logits never exist whole (memory ``chunk x V``, not ``N x V``)."""

    @staticmethod
    def forward(ctx, h, w, targets, exclude, chunk):  # type: ignore[override]
        wf = w.float()
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            logits = h[s:s + chunk].float() @ wf.T
            if exclude is not None:
                logits.masked_fill_(exclude, float("-inf"))
            lse[s:s + chunk] = torch.logsumexp(logits, dim=1)
        target_logit = (h.float() * wf[targets]).sum(-1)
        ctx.save_for_backward(h, w, targets, lse, exclude if exclude is not None else torch.zeros(0, dtype=torch.bool))
        ctx.chunk, ctx.has_exclude = chunk, exclude is not None
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, w, targets, lse, exclude = ctx.saved_tensors
        wf = w.float()
        scale = grad.float() / h.shape[0]
        gh = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for s in range(0, h.shape[0], ctx.chunk):
            hc = h[s:s + ctx.chunk].float()
            logits = hc @ wf.T
            if ctx.has_exclude:
                logits.masked_fill_(exclude, float("-inf"))
            p = torch.exp(logits - lse[s:s + ctx.chunk, None])  # softmax
            p[torch.arange(hc.shape[0], device=h.device), targets[s:s + ctx.chunk]] -= 1.0
            p *= scale
            gh[s:s + ctx.chunk] = p @ wf
            gw += p.T @ hc
        return gh.to(h.dtype), gw.to(w.dtype), None, None, None


def ce_all_items(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                 temperature: float = 1.0, exclude: torch.Tensor | None = None,
                 max_logits: int = 2**22) -> torch.Tensor:
    """Cross-entropy over every item: softmax of ``h @ item_emb[1:].T / temperature``.

    ``h``: [N, d] states at target positions; ``targets``: [N] ids in 1..n_items; ``item_emb``:
    [n_items + 1, d] with row 0 the padding item, which is not a class. ``exclude``: optional bool
    ``[n_items + 1]``; those items are not classes (held-out cold items). When ``N x n_items`` exceeds
    ``max_logits`` (4M, 16 MiB in float32), the loss and its gradients are computed in row chunks of
    ``max_logits / n_items`` (the same values; memory no longer grows with N x n_items). On the CPU
    this costs no time although the backward recomputes the logits: 256 x 50 positions over Beauty's
    12,101 items, one thread, 0.85-1.03x the seconds of one big softmax and 175 MiB instead of
    1,795 MiB (``bench/ce_memory.py``, docs/benchmarks.md).
    """
    n_items = item_emb.shape[0] - 1
    if h.shape[0] * n_items > max_logits:
        chunk = max(1, max_logits // max(n_items, 1))
        hs = h / temperature if temperature != 1.0 else h
        return _ChunkedCE.apply(hs, item_emb[1:], targets - 1, None if exclude is None else exclude[1:], chunk)
    logits = h @ item_emb[1:].T
    if temperature != 1.0:
        logits = logits / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude[1:], float("-inf"))
    return F.cross_entropy(logits.float(), targets - 1)


def bce_sampled(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, item_emb: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """SASRec's loss: -log sigma(h.e_pos) - mean_k log(1 - sigma(h.e_neg_k)).

    ``h``: [N, d]; ``pos``: [N]; ``neg``: [N] or [N, K] sampled negative ids. ``reduction="none"``:
    the loss of each row ``[N]`` (float32).
    """
    logits = target_and_negative_logits(h, pos, neg, item_emb)
    rows = F.softplus(-logits[:, 0]) + F.softplus(logits[:, 1:]).mean(-1)
    return rows.mean() if reduction == "mean" else rows.float()


# pair_logits scores the whole table and gathers when it has at most this many rows per column asked for:
# on a CPU the gather of [N, c, d] rows (and its backward, a scatter-add of N c rows) costs more than the
# [N, n] product up to about 80 rows a column. SASRec's whole training step with gbce, hidden 128, 128 x 50
# positions, one thread (bench/sampled_softmax.py --pair-negatives, docs/benchmarks.md): k = 256 table over
# gather 5.3x faster at 1,683 items, 4.1x at 3,417, 1.9x at 12,102 (47 rows a column), 0.67x at 40,000 (156);
# k = 16: 1.0x at 1,683 (99), 0.72x at 3,417 (201)
TABLE_ROUTE_ROWS_PER_COLUMN = 64
TABLE_ROUTE_CHUNK = 1 << 23  # elements of one [rows, n] block of the table route


def pair_route(item_emb: Any, columns: int) -> str:
    """``pair_logits``'s automatic route for ``columns`` ids a row: "table" for a tensor of at most
    ``TABLE_ROUTE_ROWS_PER_COLUMN`` x ``columns`` rows, else "gather" (always for an ``ItemRows`` table)."""
    small = isinstance(item_emb, torch.Tensor) and item_emb.shape[0] <= TABLE_ROUTE_ROWS_PER_COLUMN * columns
    return "table" if small else "gather"


def pair_logits(h: torch.Tensor, ids: torch.Tensor, item_emb: Any, route: str = "auto") -> torch.Tensor:
    """``logits[n, j] = h[n] . item_emb[ids[n, j]]`` (``h`` [N, d], ``ids`` [N, c]) -> [N, c], by one of
    two routes equal up to float rounding (and in their gradients):

    - ``gather``: the [N, c, d] rows, then a batched dot product;
    - ``table``: ``h @ item_emb.T`` for every item, then the c logits of each row gathered, in row blocks
      of at most ``TABLE_ROUTE_CHUNK`` logits (the [N, n] block is never kept for the backward).

    ``auto``: ``pair_route(item_emb, c)``.
    """
    if route == "auto":
        route = pair_route(item_emb, ids.shape[1])
    if route == "gather":
        return torch.einsum("nd,ncd->nc", h, item_emb[ids])
    if route != "table":
        raise ValueError(f"pair_logits: route {route!r} is not one of auto, gather, table")
    rows = max(1, TABLE_ROUTE_CHUNK // item_emb.shape[0])
    return torch.cat([(h_b @ item_emb.T).gather(1, i_b) for h_b, i_b in zip(h.split(rows), ids.split(rows))])


def target_and_negative_logits(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, item_emb: Any) -> torch.Tensor:
    """``[N, 1 + k]``: each row's target logit, then its k negatives' (``neg`` [N] or [N, k] ids), by
    ``pair_logits``' automatic route (what ``bce_sampled`` and ``gbce`` score)."""
    return pair_logits(h, torch.cat([pos[:, None], neg[:, None] if neg.dim() == 1 else neg], 1), item_emb)


def ce_cosine(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor, temperature: float = 0.07,
              exclude: torch.Tensor | None = None) -> torch.Tensor:
    """UniSRec's fine-tuning loss: cross-entropy over every item with cosine logits.

    ``loss = -mean_n log softmax_i(cos(h_n, e_i) / temperature)[targets_n]`` over items ``i = 1..n_items``,
    ``cos(a, b) = a.b / (|a| |b|)``. Shapes and ``exclude`` as in ``ce_all_items`` (row 0 of ``item_emb`` is
    padding and not a class; UniSRec's code keeps it in the softmax).
    """
    return ce_all_items(F.normalize(h, dim=-1), targets, F.normalize(item_emb, dim=-1), temperature, exclude)


def same_target_mask(target_ids: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` bool, True at ``(i, j)`` when ``j != i`` and ``target_ids[j] == target_ids[i]``."""
    same = target_ids[:, None] == target_ids[None, :]
    return same & ~torch.eye(len(target_ids), dtype=torch.bool, device=target_ids.device)


def infonce_in_batch(h: torch.Tensor, pos_emb: torch.Tensor, temperature: float = 0.07,
                     target_ids: torch.Tensor | None = None, normalize: bool = True,
                     mask_value: float = float("-inf")) -> torch.Tensor:
    """In-batch InfoNCE (UniSRec / ANT sequence-item and image-text losses).

    ``s_ij = h_i . p_j / temperature`` (``h``, ``p`` L2-normalised when ``normalize``), and
    ``loss = -mean_i log( exp(s_ii) / sum_j exp(s_ij) )``: row i's positive is ``pos_emb[i]``, the other
    rows are its negatives. With ``target_ids`` ([N]), the logits ``s_ij`` of the other rows j != i with
    the same target as row i are replaced by ``mask_value``: -inf removes them from the denominator
    (ANT uses -1e4), 0 reproduces UniSRec's code, where each still adds exp(0) = 1.
    ``h``, ``pos_emb``: [N, d].
    """
    if normalize:
        h, pos_emb = F.normalize(h, dim=-1), F.normalize(pos_emb, dim=-1)
    logits = (h @ pos_emb.T).float() / temperature
    if target_ids is not None:
        logits = logits.masked_fill(same_target_mask(target_ids), mask_value)
    return F.cross_entropy(logits, torch.arange(len(h), device=h.device))


def log_sampling_prob(counts: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """``log p_i`` with ``p_i = c_i^power / sum_j c_j^power`` from item counts ``[n_items + 1]`` (row 0 =
    padding, which gets ``log 1 = 0`` as in ODMT). Items never counted get ``log p = -inf``; give them
    a count of at least 1 if they can appear in a batch."""
    c = counts.double().pow(power)
    c[0] = 0.0
    logp = (c / c.sum()).log()
    logp[0] = 0.0
    return logp.float()


def in_batch_logpop_logits(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                           log_pop: torch.Tensor, exclude_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """ODMT's debiased in-batch logits ``[N, N]``: ``z_ij = h_i . e_{t_j} - log p_{t_j}``.

    Candidates are the batch's targets ``t_j``; the label of row i is column i. Columns j != i with
    ``t_j == t_i`` (the same item again) and the pairs in ``exclude_pairs`` ([N, N] bool, e.g. items of
    row i's history; its diagonal is ignored) are set to -inf, so they are not negatives.
    ``log_pop``: [n_items + 1] log sampling probabilities (``log_sampling_prob``).
    """
    logits = (h @ item_emb[targets].T).float() - log_pop[targets].float()[None, :]
    return logits.masked_fill(in_batch_pair_mask(targets, exclude_pairs), float("-inf"))


def in_batch_pair_mask(targets: torch.Tensor, exclude_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, N]`` bool, the columns of ``in_batch_logpop_logits`` that are not negatives of a row:
    other positions with the row's target item, and ``exclude_pairs`` off the diagonal."""
    mask = same_target_mask(targets)
    if exclude_pairs is not None:
        mask = mask | (exclude_pairs & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device))
    return mask


def candidate_mask(exclude: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` bool, the columns of ``candidate_logpop_logits`` that are not negatives of a row:
    ``exclude``, except each row's ``label`` column."""
    mask = exclude.clone()
    mask[torch.arange(len(label), device=label.device), label] = False
    return mask


def ce_in_batch_logpop(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor, log_pop: torch.Tensor,
                       exclude_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch cross-entropy with the log-popularity (logQ, sampled-softmax) correction (ODMT):

    ``loss = -mean_i log( exp(z_ii) / sum_{j not masked} exp(z_ij) )``, ``z_ij = h_i . e_{t_j} - log p_{t_j}``,
    where other rows with the same target (and ``exclude_pairs``) are masked; see
    ``in_batch_logpop_logits``. ``h``: [N, d]; ``targets``: [N] ids; ``item_emb``: [n_items + 1, d].
    The correction is for training only: score with plain ``h . e`` at inference.
    """
    logits = in_batch_logpop_logits(h, targets, item_emb, log_pop, exclude_pairs)
    return F.cross_entropy(logits, torch.arange(len(h), device=h.device))


def candidate_logpop_logits(h: torch.Tensor, candidates: torch.Tensor, label: torch.Tensor,
                            item_emb: torch.Tensor, log_pop: torch.Tensor,
                            exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``in_batch_logpop_logits`` over *distinct* candidate items: ``z_ik = h_i . e_{c_k} - log p_{c_k}``
    ``[N, K]``, row i's label in column ``label[i]``; ``exclude`` ([N, K] bool) entries other than the
    label are -inf. With the multiplicities of ``in_batch_multiplicity`` added, its softmax equals the
    per-position one of ``in_batch_logpop_logits`` (an item held by c positions is c equal columns
    there, ``c exp(z) = exp(z + log c)``) at K <= N columns instead of N."""
    logits = (h @ item_emb[candidates].T).float() - log_pop[candidates].float()[None, :]
    if exclude is not None:
        logits = logits.masked_fill(candidate_mask(exclude, label), float("-inf"))
    return logits


def in_batch_multiplicity(label: torch.Tensor, n_candidates: int) -> torch.Tensor:
    """``log m`` ``[N, K]``: how many in-batch columns of the per-position layout hold candidate k for
    row i: its count among the targets, except the row's own label, which is one column (the other
    positions holding the label item are masked there)."""
    counts = torch.bincount(label, minlength=n_candidates).float()
    log_m = counts.log()[None, :].repeat(len(label), 1)
    log_m[torch.arange(len(label), device=label.device), label] = 0.0
    return log_m


def soft_ce(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
            detach_teacher: bool = True, log_multiplicity: torch.Tensor | None = None) -> torch.Tensor:
    """Distillation loss (ODMT's ``kd_ce_loss``): ``-mean_i sum_j q_ij log p_ij * temperature^2`` with
    ``q = softmax(teacher / T)`` and ``p = softmax(student / T)`` row-wise. Entries that are -inf in both
    (masked candidates) contribute 0. ``detach_teacher=False`` lets gradients reach the teacher, as ODMT's
    code does.

    ``log_multiplicity`` (``log m_ij``, e.g. ``in_batch_multiplicity``): column j stands for m_ij equal
    columns; the value and gradients are those of the loss over the expanded columns,
    ``-sum_j q'_ij log p'_ij + sum_j q'_ij log m_ij`` with ``q' = softmax(teacher / T + log m)``.
    """
    if detach_teacher:
        teacher = teacher.detach()
    zt, zs = teacher.float() / temperature, student.float() / temperature
    if log_multiplicity is not None:
        zt, zs = zt + log_multiplicity, zs + log_multiplicity
    q = torch.softmax(zt, dim=-1)
    log_p = torch.log_softmax(zs, dim=-1)
    log_p = log_p.masked_fill(~torch.isfinite(log_p), 0.0)
    loss = -(q * log_p).sum(-1)
    if log_multiplicity is not None:
        loss = loss + (q * log_multiplicity).sum(-1)
    return loss.mean() * temperature ** 2


# --- large catalogues: a sampled softmax and gSASRec's generalised BCE, and the one dispatcher -----

NEXT_ITEM_LOSSES = ("ce", "bce", "sampled_ce", "gbce")


def loss_kind(train_cfg: Any) -> str:
    """``train_cfg.loss``; ``ce`` for no training settings (None, as some tests and benches call ``loss``)."""
    return "ce" if train_cfg is None else train_cfg.loss


class _SampledCE(torch.autograd.Function):
    """Each row's ``logsumexp([pos_i, z_i1 .. z_iK]) - pos_i`` with ``z_ik = h_i . w_k - neg_shift_k``
    (-inf at the hits ``(hit_rows, hit_cols)``) and ``pos_i = h_i . e_i - pos_shift_i``, in float32,
    with a hand-written backward: one ``[N, K]`` matrix of exponentials is kept from the forward and
    scaled once in the backward (autograd's own graph of the same expression makes about three times
    the passes over ``[N, K]``; ``tests/trainers/modules/test_sampled_losses.py`` compares both)."""

    @staticmethod
    def forward(ctx, h, w, e_t, pos_shift, neg_shift, hit_rows, hit_cols):  # type: ignore[override]
        hf = h.float()
        z = hf @ w.float().T
        z -= neg_shift[None, :]
        if hit_rows.numel():
            z[hit_rows, hit_cols] = float("-inf")
        pos = (hf * e_t.float()).sum(-1) - pos_shift
        m = torch.maximum(z.amax(1), pos) if z.shape[1] else pos
        z.sub_(m[:, None]).exp_()
        e_pos = torch.exp(pos - m)
        total = z.sum(1) + e_pos
        ctx.save_for_backward(h, w, e_t, z, total, e_pos)
        return m + total.log() - pos

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, w, e_t, z, total, e_pos = ctx.saved_tensors
        g = grad.float()
        p = z * (g / total)[:, None]  # d loss_i / d z_ik = g_i softmax_ik
        c = g * (e_pos / total - 1.0)  # d loss_i / d pos_i
        hf, ef = h.float(), e_t.float()
        gh = p @ w.float() + c[:, None] * ef
        gw = p.T @ hf
        ge = c[:, None] * hf
        return gh.to(h.dtype), gw.to(w.dtype), ge.to(e_t.dtype), None, None, None, None


def _hits(targets: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) where ``candidates[column] == targets[row]``, by a sort and binary search
    (``O(N log K)``, not a comparison of every row with every candidate); a candidate drawn several
    times is every one of its columns."""
    sc, order = torch.sort(candidates)
    lo = torch.searchsorted(sc, targets)
    cnt = torch.searchsorted(sc, targets, right=True) - lo
    rows = torch.repeat_interleave(torch.arange(len(targets), device=targets.device), cnt)
    first = torch.repeat_interleave(lo, cnt)
    offset = torch.arange(len(rows), device=targets.device) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
    return rows, order[first + offset]


def sampled_ce(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor, candidates: torch.Tensor,
               log_q: torch.Tensor | None = None, temperature: float = 1.0, reduction: str = "mean",
               correct_target: bool = True) -> torch.Tensor:
    """Sampled softmax over each row's target and K negatives shared by every row, with the log-Q
    correction (Yi et al., RecSys 2019; TensorFlow's ``sampled_softmax_loss``, which also corrects the
    true class and removes accidental hits):

        z_i(c) = h_i . e_c / temperature - log Q(c)        for c = t_i and c = n_1 .. n_K
        loss_i = -log( exp(z_i(t_i)) / (exp(z_i(t_i)) + sum_{k: n_k != t_i} exp(z_i(n_k))) )

    A negative equal to the row's target is masked out (-inf). ``Q(c)``: the expected number of times
    item c is among the K draws (``SharedNegatives``: K/m for K distinct uniform draws among m items,
    K p_c for K popularity draws with replacement), so ``sum_k exp(h . e_{n_k}) / Q(n_k)`` is an
    unbiased estimate of the softmax's sum over every item. ``log_q``: ``[n_items + 1]`` table of
    ``log Q`` by item id (None: no correction; a uniform draw's correction is one constant, which
    changes nothing). ``h``: [N, d]; ``targets``: [N] ids; ``item_emb``: [n_items + 1, d];
    ``candidates``: [K] ids, or [G, K]: G draws, the rows split into G contiguous groups
    (``torch.tensor_split``), group g scored against draw g (``train.sampled_groups``).
    ``reduction="none"``: the loss of each row ``[N]`` (float32).

    ``correct_target=False`` (``train.sampled_correction=negatives``) leaves the target's logit
    uncorrected, ``z_i(t_i) = h_i . e_t / temperature``: the denominator is then the target's term plus
    the estimate of the sum over the *other* items, so the loss estimates the full softmax's. Corrected
    as above (TensorFlow's form), a uniform draw's correction is a constant and the target competes
    with K items only (e.g. 1,024 of 12,101: its probability, the loss and its gradients are those of a
    softmax over 1,025 items); uncorrected, each negative counts for m / K items.
    """
    if candidates.dim() == 2:  # G draws: the rows in G contiguous groups, each scored against its own draw
        rows = torch.cat([sampled_ce(h_g, t_g, item_emb, c, log_q, temperature, "none", correct_target)
                          for h_g, t_g, c in zip(torch.tensor_split(h, len(candidates)),
                                                 torch.tensor_split(targets, len(candidates)), candidates)])
        return rows.mean() if reduction == "mean" else rows
    if temperature != 1.0:
        h = h / temperature
    neg_shift = torch.zeros(len(candidates), device=h.device) if log_q is None else log_q[candidates].float()
    pos_shift = (log_q[targets].float() if log_q is not None and correct_target
                 else torch.zeros(len(targets), device=h.device))
    hit_rows, hit_cols = _hits(targets, candidates)
    rows = _SampledCE.apply(h, item_emb[candidates], item_emb[targets], pos_shift, neg_shift, hit_rows, hit_cols)
    return rows.mean() if reduction == "mean" else rows


def gbce_beta(k: int, n_items: int, t: float) -> float:
    """gSASRec's exponent on the positive's probability (Petrov & Macdonald, RecSys 2023):
    ``beta = alpha (t (1 - 1/alpha) + 1/alpha)`` with the sampling rate ``alpha = k / (n_items - 1)``
    and calibration ``t`` in [0, 1], written as the equal ``1 - t (1 - alpha)``: 1 at t = 0 (BCE),
    alpha at t = 1."""
    alpha = k / (n_items - 1)
    return 1.0 - t * (1.0 - alpha)


def gbce(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, item_emb: torch.Tensor, t: float,
         n_items: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023) with k sampled negatives per
    row (its code, asash/gSASRec-pytorch ``gbce.py``, averages the same k + 1 terms):

        loss_i = -1/(k+1) ( log sigma(s_i+)^beta + sum_k log(1 - sigma(s_ik)) )
               =  1/(k+1) ( beta softplus(-s_i+) + sum_k softplus(s_ik) )

    ``s = h . e``, ``beta = gbce_beta(k, n_items, t)``. At t = 0 (beta = 1) it is the paper's BCE, the
    mean over the k + 1 terms (mmrec's ``bce`` weighs the positive 1 and the mean over the negatives
    1: at k = 1 that is twice this). ``h``: [N, d]; ``pos``: [N]; ``neg``: [N] or [N, k] ids;
    ``n_items``: the catalogue size (default ``item_emb``'s rows - 1). ``reduction="none"``: each row's loss.
    """
    logits = target_and_negative_logits(h, pos, neg, item_emb).float()
    k = logits.shape[1] - 1
    beta = gbce_beta(k, item_emb.shape[0] - 1 if n_items is None else n_items, t)
    rows = (beta * F.softplus(-logits[:, 0]) + F.softplus(logits[:, 1:]).sum(-1)) / (k + 1)
    return rows.mean() if reduction == "mean" else rows


def next_item_loss(h: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor, train_cfg: Any,
                   batch: dict[str, torch.Tensor], negatives: torch.Tensor | None = None, *,
                   exclude: torch.Tensor | None = None, temperature: float = 1.0,
                   reduction: str = "mean") -> torch.Tensor:
    """Every method's main next-item loss, chosen by ``train_cfg.loss``:

    - ``ce``: softmax over every item (``ce_all_items``; ``exclude`` [n_items + 1] bool: not classes);
    - ``bce``: SASRec's BCE with the rows' ``negatives`` ([N] or [N, k], ``train.negatives`` per
      position, drawn by the loop; ``bce_sampled``);
    - ``sampled_ce``: softmax over the target and the K negatives the loop drew for the whole step
      (``batch["sampled_items"]`` [K], or [G, K] for G groups of rows, ``batch["sampled_log_q"]``
      [n_items + 1]; ``sampled_ce``);
      the loop never draws excluded items;
    - ``gbce``: gSASRec's generalised BCE with the rows' ``negatives`` and ``train_cfg.gbce_t``.

    ``h``: [N, d] states at target positions; ``targets``: [N] ids; ``item_emb``: [n_items + 1, d];
    logits are divided by ``temperature``. ``reduction="none"``: the loss of each row ``[N]`` (float32).
    ``train_cfg`` None: ``ce``.
    """
    kind = loss_kind(train_cfg)
    if kind == "ce":
        if reduction == "mean":
            return ce_all_items(h, targets, item_emb, temperature, exclude)
        logits = h @ item_emb[1:].T
        if temperature != 1.0:
            logits = logits / temperature
        if exclude is not None:
            logits = logits.masked_fill(exclude[1:], float("-inf"))
        return F.cross_entropy(logits.float(), targets - 1, reduction="none")
    if kind == "sampled_ce":
        if "sampled_items" not in batch:
            raise ConfigError("train.loss=sampled_ce needs the step's shared negatives (batch['sampled_items'] and "
                              "batch['sampled_log_q']), which the training loop draws; outside it, draw them with "
                              "mmrec.trainers.batching.SharedNegatives")
        return sampled_ce(h, targets, item_emb, batch["sampled_items"], batch.get("sampled_log_q"), temperature,
                          reduction, correct_target=getattr(train_cfg, "sampled_correction", "all") == "all")
    if kind in ("bce", "gbce"):
        if negatives is None:
            raise ConfigError(f"train.loss={kind} needs sampled negatives per position in the batch "
                              "(batch['negatives'], which the training loop draws: train.negatives per position)")
        if temperature != 1.0:
            h = h / temperature
        if kind == "bce":
            return bce_sampled(h, targets, negatives, item_emb, reduction)
        return gbce(h, targets, negatives, item_emb, train_cfg.gbce_t, n_items=len(item_emb) - 1, reduction=reduction)
    raise ConfigError(f"train.loss={kind!r} is not a next-item loss; use one of {', '.join(NEXT_ITEM_LOSSES)}")
