"""The prepared dataset on disk, and its loader.

Layout of a prepared dataset folder::

    dataset.json        statistics, the prepare config, every filter with rows dropped and why,
                        the split definition
    items.parquet       one row per internal item id 1..n_items: ``iid``, raw ``item_id`` and the
                        catalogue columns (text fields, images, price, domain); missing stays null
    users.parquet       one row per internal user id 0..n_users-1: ``uid``, raw ``user_id``
    seq_items.npy       int32   all events, grouped by user, time ordered (one flat array)
    seq_times.npy       float64 the events' timestamps
    seq_offsets.npy     int64   [n_users + 1]: user u's events are seq_items[offsets[u]:offsets[u+1]]
    split.npy           int64   [n_users, 2] = (a, b): positions 1..a-1 of a user's sequence are
                        training targets, a..b-1 validation targets, b..end test targets. A target at
                        position p is predicted from the events before p.
    event_<name>.npy    optional per-event columns aligned with seq_items (price, domain code)

Memory grows with the number of events, never with users x maximum length: every sequence window
is cut from the flat array when a batch is built. The arrays are memory-mapped on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mmrec.errors import DataError

FORMAT_VERSION = 1


@dataclass
class EvalCases:
    """Evaluation cases: predict ``seq_items[pos]`` of user ``user`` from the events before it."""

    user: np.ndarray  # int64 [n]
    pos: np.ndarray  # int64 [n], absolute index into the flat array

    def __len__(self) -> int:
        return len(self.user)


class PreparedDataset:
    """A prepared dataset folder (see the module docstring), memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise DataError(
                "not a prepared dataset (no dataset.json)",
                path=str(self.root),
                hint="run `mmrec data prepare` first, or pass the folder it wrote",
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"prepared with format version {self.meta.get('format_version')}, this mmrec reads {FORMAT_VERSION}",
                path=str(meta_path),
                hint="prepare the dataset again with this version of mmrec",
            )
        self.items = np.load(self.root / "seq_items.npy", mmap_mode="r")
        self.times = np.load(self.root / "seq_times.npy", mmap_mode="r")
        self.offsets = np.asarray(np.load(self.root / "seq_offsets.npy"))
        self.split = np.asarray(np.load(self.root / "split.npy"))
        self.n_users = int(self.meta["stats"]["n_users"])
        self.n_items = int(self.meta["stats"]["n_items"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def event(self, name: str) -> np.ndarray | None:
        p = self.root / f"event_{name}.npy"
        if not p.exists():
            return None
        arr = np.load(p, mmap_mode="r")
        keep = getattr(self, "_keep", None)  # a view without some events (without_training_events_of)
        return np.asarray(arr)[keep] if keep is not None else arr

    def item_table(self):
        return pq.read_table(self.root / "items.parquet")

    def user_table(self):
        return pq.read_table(self.root / "users.parquet")

    @cached_property
    def raw_item_ids(self) -> np.ndarray:
        """Raw item id of each internal id; index 0 (padding) is an empty string."""
        ids = self.item_table().column("item_id").to_pylist()
        return np.array([""] + ids, dtype=object)

    @cached_property
    def raw_user_ids(self) -> np.ndarray:
        return np.array(self.user_table().column("user_id").to_pylist(), dtype=object)

    def sequence(self, user: int) -> np.ndarray:
        return np.asarray(self.items[self.offsets[user] : self.offsets[user + 1]])

    def train_end(self) -> np.ndarray:
        """Absolute end (exclusive) of each user's training part in the flat array."""
        return self.offsets[:-1] + self.split[:, 0]

    def eval_cases(self, part: str) -> EvalCases:
        """The evaluation cases of ``part`` ('valid' or 'test').

        Targets with an empty history (position 0 of a sequence) are not evaluated.
        """
        if part not in ("valid", "test"):
            raise ValueError(f"part must be 'valid' or 'test', not {part!r}")
        start = self.offsets[:-1]
        lo, hi = (self.split[:, 0], self.split[:, 1]) if part == "valid" else (self.split[:, 1], self.lengths)
        lo = np.maximum(lo, 1)
        count = np.maximum(hi - lo, 0)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), count)
        # positions: start[u] + lo[u] + k for k in 0..count[u]-1, vectorised
        first = np.repeat(start + lo - np.concatenate([[0], np.cumsum(count)[:-1]]), count)
        pos = first + np.arange(int(count.sum()), dtype=np.int64)
        return EvalCases(users, pos)

    def without_training_events_of(self, held_out: np.ndarray) -> "PreparedDataset":
        """A view of this dataset in which the items of ``held_out`` (a bool mask over internal ids,
        ``[n_items + 1]``) never occur in any user's training part: those events are removed, the
        validation and test events stay. The cold-start protocol trains and evaluates on this view,
        so a held-out item is seen only as a validation or test target (or, in the test case's
        history, as the user's validation event). Arrays are rebuilt in memory; nothing on disk changes.
        """
        held_out = np.asarray(held_out, dtype=bool)
        if held_out.shape != (self.n_items + 1,):
            raise ValueError(f"held_out must be a mask of shape [{self.n_items + 1}], got {held_out.shape}")
        items = np.asarray(self.items)
        lengths = self.lengths
        user_of = np.repeat(np.arange(self.n_users, dtype=np.int64), lengths)
        pos = np.arange(len(items), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        in_train = pos < np.repeat(self.split[:, 0], lengths)
        keep = ~(in_train & held_out[items])
        dropped_train = np.bincount(user_of[~keep], minlength=self.n_users)
        view = object.__new__(type(self))
        view.root, view.meta = self.root, self.meta
        view.n_users, view.n_items = self.n_users, self.n_items
        view.items = items[keep]
        view.times = np.asarray(self.times)[keep]
        counts = np.bincount(user_of[keep], minlength=self.n_users)
        view.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        view.split = self.split - dropped_train[:, None]
        view.held_out = held_out
        view._keep = keep
        return view

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Training-part interaction count per internal item id (index 0 = padding = 0)."""
        ends = self.train_end()
        mask = np.zeros(len(self.items), dtype=bool)
        # mark training events: for each user, [start, start + a)
        starts = self.offsets[:-1]
        idx = _ranges(starts, ends)
        mask[idx] = True
        return np.bincount(np.asarray(self.items)[mask], minlength=self.n_items + 1)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair, vectorised."""
    lens = np.maximum(ends - starts, 0)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return shift + np.arange(total, dtype=np.int64)
