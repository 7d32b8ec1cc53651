"""Evaluation: full ranking over every item (default) or over seeded, saved sampled negatives.

Protocol, as recorded in every ``results.json``:

- A case is one target event; its history is every earlier event of the user (the model sees the
  last ``max_len`` of them).
- ``mode=full`` scores every item 1..n_items (never the padding id 0), in chunks of
  ``item_chunk`` items so a large catalogue fits in memory; only the rank of the target is kept.
  On a CPU the scores are computed in cache-sized tiles (at most 8,192 items by a few hundred
  users); the ranks do not depend on the chunk or tile sizes.
- ``history_mask``: ``none`` ranks every item; ``input`` excludes the items of the model's input
  window; ``whole`` excludes every item of the user's history. The target itself is never
  excluded (a repeated item stays a reachable target).
- Rank (0-based) = number of items scoring strictly higher than the target, plus ties resolved by
  ``ties``: ``pessimistic`` (default: the target ranks below every item with an equal score, so a
  model that gives everything the same score gets no credit), ``optimistic`` (above them),
  ``random`` (a seeded uniform position among them).
- ``mode=sampled``: the target competes with ``negatives`` items drawn (uniformly or by training
  popularity) from items the user never interacted with, from a seed; the drawn ids are saved in
  the run folder and reused by later evaluations of the run.
- With several processes (``accelerate launch``), the ranking is split: process r ranks every
  N-th case from r (against the same seeded negatives in sampled mode), and the ranks are gathered
  back in the cases' order, so every process has the whole part's ranks (and the same metrics) for
  1/N of the work. Random ties (whose draws follow the order of the cases) are ranked whole by
  every process.
- HR@K (= Recall@K with one target) = mean[rank < K]; NDCG@K = mean[rank < K] / log2(rank + 2);
  MRR@K = mean[rank < K] / (rank + 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmrec.config import to_dict
from mmrec.data.prepared import EvalCases, PreparedDataset, _ranges
from mmrec.errors import ConfigError
from mmrec.trainers.batching import cut_windows


@dataclass
class EvalConfig:
    mode: Literal["full", "sampled"] = "full"
    negatives: int = 100
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    history_mask: Literal["none", "input", "whole"] = "none"
    ties: Literal["pessimistic", "optimistic", "random"] = "pessimistic"
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    batch_size: int = 1024
    item_chunk: int = 65536
    seed: int = 0

    def validate(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError("eval.ks must be positive integers, e.g. [5, 10, 20, 50]")
        if self.negatives < 1:
            raise ConfigError("eval.negatives must be at least 1")
        if self.batch_size < 1 or self.item_chunk < 1:
            raise ConfigError("eval.batch_size and eval.item_chunk must be positive")


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR, NDCG and MRR at each K from 0-based ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.mean()) if len(r) else 0.0
        out[f"ndcg@{k}"] = float((hit / np.log2(r + 2)).mean()) if len(r) else 0.0
        out[f"mrr@{k}"] = float((hit / (r + 1)).mean()) if len(r) else 0.0
    return out


def metrics_by_group(ranks: np.ndarray, groups: np.ndarray, names: list[str], ks: list[int]) -> dict[str, Any]:
    """``{name: {n_cases, metrics}}``: the metrics over the cases of each group (``groups`` ``[n]``
    holds codes 1..len(names), e.g. the domain of each case's target; code c is ``names[c - 1]``).
    A group without cases has ``n_cases`` 0 and no metrics."""
    ranks, groups = np.asarray(ranks), np.asarray(groups)
    out: dict[str, Any] = {}
    for c, name in enumerate(names, start=1):
        sel = groups == c
        n = int(sel.sum())
        out[name] = {"n_cases": n, **(metrics_from_ranks(ranks[sel], ks) if n else {})}
    return out


def rank_from_counts(greater: np.ndarray, equal: np.ndarray, ties: str, rng: np.random.Generator) -> np.ndarray:
    """0-based rank from the counts of items scoring above and equal to the target (target excluded)."""
    if ties == "pessimistic":
        return greater + equal
    if ties == "optimistic":
        return greater.copy()
    return greater + np.floor(rng.random(len(greater)) * (equal + 1)).astype(np.int64)


# score tiles on a CPU: about 4 MiB of float32 scores, at most 8,192 items wide (2 MiB of a 64-d item
# table), so the product's output and the items it reads stay in the last-level cache for the count
# (bench/eval_speed.py; at 440k items, 1,024 users: 5.9 s untiled, 1.9 s in 128 x 8,192 tiles)
_TILE_ELEMENTS = 1 << 20
_TILE_MIN_ROWS = 16
_CPU_MAX_CHUNK = 8192


def _score_range(model: torch.nn.Module, q: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Scores of items ``lo..hi-1``: the model's ``score_range`` (a table slice) where it has one, else
    its ``score`` on the ids (any object with ``query`` and ``score`` can be evaluated)."""
    if hasattr(model, "score_range"):
        return model.score_range(q, lo, hi)
    return model.score(q, torch.arange(lo, hi, device=q.device))


class Evaluator:
    """Ranks the targets of a dataset part with a model; see the module docstring for the protocol."""

    def __init__(self, data: PreparedDataset, cfg: EvalConfig, max_len: int, device: torch.device,
                 run_dir: str | Path | None = None, *, rank: int = 0, world: int = 1,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """``rank`` / ``world`` / ``gather``: this process's index, the number of processes, and their
        all-gather (``Accelerator.gather``: each process's ``[m]`` tensor -> ``[world * m]``, in rank
        order), which every process calls in the same order; with ``world`` > 1 the ranking is split."""
        self.data, self.cfg, self.max_len, self.device = data, cfg, max_len, device
        self.run_dir = Path(run_dir) if run_dir else None
        self._negatives: dict[str, np.ndarray] = {}
        if world > 1 and gather is None:
            raise ValueError("Evaluator: world > 1 needs the processes' gather")
        self.rank, self.world, self.gather = rank, world, gather

    def protocol(self) -> dict[str, Any]:
        p = to_dict(self.cfg)
        p["max_len"] = self.max_len
        if self.cfg.mode == "sampled" and self.run_dir:
            p["negatives_files"] = {k: f"negatives_{k}.npy" for k in ("valid", "test")}
        return p

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str, cases: EvalCases | None = None,
                 return_ranks: bool = False) -> dict[str, Any]:
        cases = cases if cases is not None else self.data.eval_cases(part)
        was_training = model.training
        model.eval()
        try:
            if self.world > 1 and self.cfg.ties != "random":
                ranks = self._rank_split(model, cases, part)
            elif self.cfg.mode == "full":
                ranks = self._rank_full(model, cases)
            else:
                ranks = self._rank_sampled(model, cases, part)
        finally:
            model.train(was_training)
        out: dict[str, Any] = {"n_cases": len(cases), **metrics_from_ranks(ranks, self.cfg.ks)}
        if return_ranks:
            out["ranks"] = ranks
        return out

    # -- helpers ---------------------------------------------------------------------------------
    def _inputs(self, cases: EvalCases, idx: np.ndarray):
        start = self.data.offsets[cases.user[idx]]
        pos = cases.pos[idx]
        items, lengths = cut_windows(self.data.items, start, pos, self.max_len)
        items = items[:, :max(int(lengths.max()), 1)]  # right padding: trailing columns are all padding
        targets = np.asarray(self.data.items)[pos].astype(np.int64)
        return start, pos, items, lengths, targets

    def _history_pairs(self, start: np.ndarray, pos: np.ndarray, items: np.ndarray, lengths: np.ndarray,
                       targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs to exclude from the ranking, never the row's own target."""
        if self.cfg.history_mask == "none":
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.cfg.history_mask == "input":
            rows, cols = np.nonzero(np.arange(items.shape[1])[None, :] < lengths[:, None])
            hist = items[rows, cols]
        else:
            lens = pos - start
            rows = np.repeat(np.arange(len(pos)), lens)
            hist = np.asarray(self.data.items)[_ranges(start, pos)].astype(np.int64)
        keep = hist != targets[rows]
        return rows[keep], hist[keep]

    def _batches(self, cases: EvalCases) -> list[np.ndarray]:
        """Case indices per batch. With several item chunks, cases are grouped by the chunk of their
        target so the target's own score comes from the same computation as its competitors'."""
        n = len(cases)
        bs = self.cfg.batch_size
        chunk = self._chunk()
        # cases of similar history length share a batch, so batches trim well (results do not
        # depend on the order)
        hist = np.minimum(cases.pos - self.data.offsets[cases.user], self.max_len)
        if self.data.n_items <= chunk or self.cfg.mode == "sampled":
            order = np.argsort(hist, kind="stable")
            return [order[i:i + bs] for i in range(0, n, bs)]
        targets = np.asarray(self.data.items)[cases.pos]
        order = np.lexsort((hist, (targets - 1) // chunk))
        group = (targets[order] - 1) // chunk
        out = []
        for g in np.unique(group):
            members = order[group == g]
            out += [members[i:i + bs] for i in range(0, len(members), bs)]
        return out

    def _chunk(self) -> int:
        """Items scored per product: ``eval.item_chunk``, and on a CPU at most ``_CPU_MAX_CHUNK``."""
        return min(self.cfg.item_chunk, _CPU_MAX_CHUNK) if self.device.type == "cpu" else self.cfg.item_chunk

    def _rank_full(self, model: torch.nn.Module, cases: EvalCases) -> np.ndarray:
        n_items, chunk, dev = self.data.n_items, self._chunk(), self.device
        ranks = np.zeros(len(cases), dtype=np.int64)
        rng = np.random.default_rng(self.cfg.seed)
        n_chunks = -(-n_items // chunk)
        # users of a batch are scored in row blocks whose score tile (rows x chunk columns) stays in
        # a CPU's last-level cache: writing and re-reading a [1024, n_items] matrix from memory cost
        # twice the time of the same work in tiles on Beauty (bench/eval_speed.py)
        rows = max(_TILE_MIN_ROWS, _TILE_ELEMENTS // min(chunk, n_items)) if dev.type == "cpu" else self.cfg.batch_size
        for idx in self._batches(cases):
            start, pos, items, lengths, targets = self._inputs(cases, idx)
            q_all = model.query(torch.as_tensor(items, device=dev), torch.as_tensor(lengths, device=dev))
            h_rows_all, h_items_all = self._history_pairs(start, pos, items, lengths, targets)
            first = int((targets[0] - 1) // chunk)  # every target of the batch is in this chunk
            order = [first] + [c for c in range(n_chunks) if c != first]
            ge = np.zeros(len(idx), np.int64)
            greater = np.zeros(len(idx), np.int64)
            for r0 in range(0, len(idx), rows):
                r1 = min(r0 + rows, len(idx))
                in_block = (h_rows_all >= r0) & (h_rows_all < r1)
                h_rows, h_items = h_rows_all[in_block] - r0, h_items_all[in_block]
                ge[r0:r1], greater[r0:r1] = self._count_block(model, q_all[r0:r1], targets[r0:r1], order,
                                                              h_rows, h_items)
            ranks[idx] = rank_from_counts(greater, ge - greater, self.cfg.ties, rng)
        return ranks

    def _rank_split(self, model: torch.nn.Module, cases: EvalCases, part: str) -> np.ndarray:
        """The ranks of every ``world``-th case from ``rank`` (full or sampled), gathered from every
        process back into the cases' order."""
        n, r, w = len(cases), self.rank, self.world
        mine = np.arange(r, n, w)
        if self.cfg.mode == "full":
            local = self._rank_full(model, type(cases)(cases.user[mine], cases.pos[mine]))
        else:
            local = self._rank_sampled(model, cases, part, subset=mine)
        m = -(-n // w)
        buf = torch.full((m,), -1, dtype=torch.long, device=self.device)
        buf[:len(local)] = torch.as_tensor(local, device=self.device)
        every = self.gather(buf).cpu().numpy().reshape(w, m)
        ranks = np.empty(n, dtype=np.int64)
        for k in range(w):
            ranks[k::w] = every[k, :len(range(k, n, w))]
        return ranks

    def _count_block(self, model: torch.nn.Module, q: torch.Tensor, targets: np.ndarray, order: list[int],
                     h_rows: np.ndarray, h_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts of items scoring >= and > the target (target excluded) for the queries ``q``,
        over the item chunks in ``order`` (the first holds every target)."""
        n_items, chunk, dev = self.data.n_items, self._chunk(), self.device
        b = len(targets)
        tscore = None
        # counts of items scoring >= and (unless ties are pessimistic, which needs only >=) > the
        # target; int32 sums of the comparisons: 4x faster than two int64 sums on a CPU
        at_least = torch.zeros(b, dtype=torch.int32, device=dev)
        above = torch.zeros(b, dtype=torch.int32, device=dev) if self.cfg.ties != "pessimistic" else None
        for c in order:
            lo, hi = 1 + c * chunk, min(n_items, (c + 1) * chunk) + 1
            s = _score_range(model, q, lo, hi).float()
            sel = (h_items >= lo) & (h_items < hi)
            if sel.any():
                s[torch.as_tensor(h_rows[sel], device=dev), torch.as_tensor(h_items[sel] - lo, device=dev)] = -torch.inf
            if tscore is None:
                tscore = s[torch.arange(b, device=dev), torch.as_tensor(targets - lo, device=dev)].clone()
            t = tscore[:, None]
            at_least += (s >= t).sum(1, dtype=torch.int32)
            if above is not None:
                above += (s > t).sum(1, dtype=torch.int32)
        ge = at_least.cpu().numpy().astype(np.int64) - 1  # the target itself
        return ge, (ge if above is None else above.cpu().numpy().astype(np.int64))

    def negatives_for(self, cases: EvalCases, part: str) -> np.ndarray:
        """Seeded sampled negatives for ``part`` (loaded from the run folder when saved before)."""
        if part in self._negatives:
            return self._negatives[part]
        path = self.run_dir / f"negatives_{part}.npy" if self.run_dir else None
        if path is not None and path.exists():
            neg = np.load(path)
            if neg.shape != (len(cases), self.cfg.negatives):
                raise ConfigError(f"{path} holds negatives of shape {neg.shape}, expected "
                                  f"{(len(cases), self.cfg.negatives)}; delete it to draw new ones")
        else:
            neg = self._draw_negatives(cases, part)  # every process draws the same (seeded)
            if path is not None and self.rank == 0:  # written whole by one process, so none reads half a file
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                with open(tmp, "wb") as f:
                    np.save(f, neg)
                os.replace(tmp, path)
        self._negatives[part] = neg
        return neg

    def _draw_negatives(self, cases: EvalCases, part: str) -> np.ndarray:
        d = self.data
        n = d.n_items
        if self.cfg.negatives > n - 1:
            raise ConfigError(f"eval.negatives={self.cfg.negatives} but the catalogue has only {n} items")
        rng = np.random.default_rng([self.cfg.seed, 0 if part == "valid" else 1])
        u = np.repeat(np.arange(d.n_users, dtype=np.int64), d.lengths)
        keys = np.unique(u * (n + 1) + np.asarray(d.items))  # every item of every user
        avail = n - np.bincount(keys // (n + 1), minlength=d.n_users)
        short = np.flatnonzero(avail[cases.user] < self.cfg.negatives)
        if len(short):
            u0 = int(cases.user[short[0]])
            raise ConfigError(
                f"eval.negatives={self.cfg.negatives}, but {len(short)} evaluation case(s) belong to users who "
                f"interacted with all but {int(avail[u0])} items (e.g. user {d.raw_user_ids[u0]!r}); "
                "lower eval.negatives or use eval.mode=full")
        if self.cfg.negative_sampling == "popularity":
            p = d.item_popularity[1:].astype(np.float64) + 1e-12
            p /= p.sum()
            draw = lambda size: rng.choice(np.arange(1, n + 1), size=size, p=p)  # noqa: E731
        else:
            draw = lambda size: rng.integers(1, n + 1, size=size)  # noqa: E731
        shape = (len(cases), self.cfg.negatives)
        neg = draw(shape)
        users = np.broadcast_to(cases.user[:, None], shape)
        for _ in range(100):
            k = users * (n + 1) + neg
            hit = keys[np.minimum(np.searchsorted(keys, k), len(keys) - 1)] == k
            # duplicates within a row are also redrawn
            srt = np.sort(neg, axis=1)
            dup_rows = (np.diff(srt, axis=1) == 0).any(axis=1)
            if dup_rows.any():
                for r in np.flatnonzero(dup_rows):
                    _, first = np.unique(neg[r], return_index=True)
                    m = np.ones(shape[1], bool)
                    m[first] = False
                    hit[r] |= m
            if not hit.any():
                break
            neg[hit] = draw(int(hit.sum()))
        else:
            raise ConfigError("could not draw distinct negatives for every case in 100 rounds; "
                              "lower eval.negatives")
        return neg.astype(np.int64)

    def _rank_sampled(self, model: torch.nn.Module, cases: EvalCases, part: str,
                      subset: np.ndarray | None = None) -> np.ndarray:
        """Ranks against the part's sampled negatives; ``subset``: of these cases only (their rows of
        the negatives drawn for all of them)."""
        neg = self.negatives_for(cases, part)
        if subset is not None:
            cases, neg = type(cases)(cases.user[subset], cases.pos[subset]), neg[subset]
        dev = self.device
        ranks = np.zeros(len(cases), dtype=np.int64)
        rng = np.random.default_rng(self.cfg.seed)
        for idx in self._batches(cases):
            _, _, items, lengths, targets = self._inputs(cases, idx)
            q = model.query(torch.as_tensor(items, device=dev), torch.as_tensor(lengths, device=dev))
            cand = torch.as_tensor(np.concatenate([targets[:, None], neg[idx]], axis=1), device=dev)
            s = model.score(q, cand).float()
            t = s[:, :1]
            greater = (s[:, 1:] > t).sum(1).cpu().numpy()
            equal = (s[:, 1:] == t).sum(1).cpu().numpy()
            ranks[idx] = rank_from_counts(greater, equal, self.cfg.ties, rng)
        return ranks
