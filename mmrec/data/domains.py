"""Single-domain views of a multi-domain prepared dataset (items with a catalogue ``domain``), for
comparing a cross-domain model with one model per domain on the same test cases.

- ``single_domain_dataset``: the events of one domain as a prepared dataset of its own (each user's
  domain-d events in time order, the same item ids, each event keeping its train / valid / test part),
  with ``source_positions.npy`` mapping its events to their positions in the merged dataset;
- ``domain_test_cases``: per domain, the merged dataset's test cases whose target is in that domain
  and whose user has an earlier event of it, which are exactly the test cases of the single-domain
  dataset (so every model is scored on the same cases).

Domain codes come from ``mmrec.trainers.methods.syncrec.item_domains`` (code c is ``names[c - 1]``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from mmrec.data.prepare import _stats
from mmrec.data.prepared import PreparedDataset


def within_domain_rank(data: PreparedDataset, codes: np.ndarray) -> np.ndarray:
    """For every event, how many earlier events of its user are in the same domain."""
    items = np.asarray(data.items)
    dom = codes[items]
    user_of = np.repeat(np.arange(data.n_users, dtype=np.int64), data.lengths)
    key = user_of * (int(codes.max()) + 1) + dom  # events grouped by (user, domain), time order kept
    order = np.argsort(key, kind="stable")
    k = key[order]
    first = np.r_[0, np.flatnonzero(np.diff(k)) + 1]
    run_start = np.repeat(first, np.diff(np.r_[first, len(k)]))
    out = np.empty(len(items), dtype=np.int64)
    out[order] = np.arange(len(k)) - run_start
    return out


def domain_test_cases(data: PreparedDataset, codes: np.ndarray, n_domains: int) -> dict[int, np.ndarray]:
    """Domain code -> the absolute positions of the test cases whose target is in that domain and
    whose user has an earlier event of it (in the order of ``data.eval_cases("test")``)."""
    cases = data.eval_cases("test")
    tdom = codes[np.asarray(data.items)[cases.pos]]
    has_history = within_domain_rank(data, codes)[cases.pos] >= 1
    return {c: cases.pos[(tdom == c) & has_history] for c in range(1, n_domains + 1)}


def single_domain_dataset(data: PreparedDataset, codes: np.ndarray, code: int, name: str, out: str | Path) -> Path:
    """Write the domain-``code`` part of ``data`` as a prepared dataset at ``out`` (once; a folder
    already there is kept) and return it. Written under a temporary name and renamed, so two
    processes deriving it at once both end with one complete folder."""
    out = Path(out)
    if (out / "dataset.json").exists():
        return out
    items = np.asarray(data.items)
    keep = codes[items] == code
    lengths = data.lengths
    user_of = np.repeat(np.arange(data.n_users, dtype=np.int64), lengths)
    pos = np.arange(len(items), dtype=np.int64) - np.repeat(data.offsets[:-1], lengths)
    counts = np.bincount(user_of[keep], minlength=data.n_users)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    split = np.stack([np.bincount(user_of[keep & (pos < np.repeat(data.split[:, j], lengths))],
                                  minlength=data.n_users) for j in (0, 1)], axis=1).astype(np.int64)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    times = np.asarray(data.times)[keep]
    np.save(tmp / "seq_items.npy", items[keep].astype(np.int32))
    np.save(tmp / "seq_times.npy", times.astype(np.float64))
    np.save(tmp / "seq_offsets.npy", offsets)
    np.save(tmp / "split.npy", split)
    np.save(tmp / "source_positions.npy", np.flatnonzero(keep).astype(np.int64))
    for f in data.root.glob("event_*.npy"):
        np.save(tmp / f.name, np.load(f)[keep])
    for f in ("items.parquet", "users.parquet"):
        shutil.copy(data.root / f, tmp / f)
    meta = dict(data.meta)
    meta["name"] = f"{data.name}-{name}"
    meta["stats"] = _stats(data.n_users, data.n_items, np.diff(offsets), split, times)
    meta["derived"] = {"from": str(data.root), "domain": name, "doc": "the events of one domain; each "
                       "event keeps its train / valid / test part (mmrec.data.domains)"}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process renamed its copy first: theirs is the same data
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "dataset.json").exists():
            raise
    return out
