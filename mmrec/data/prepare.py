"""Prepare: from a reader's ``RawDataset`` to a prepared dataset folder (see ``prepared.py``).

Steps, in order, each recorded in ``dataset.json`` with the rows it dropped and why:

1. ``min_rating``: drop events rated below it (when the source has ratings).
2. Unknown items: events whose item is missing from the catalogue are dropped (``unknown_items:
   drop``, the default, counted), fatal (``error``) or kept with an empty catalogue row (``keep``).
3. ``dedup``: ``none`` keeps repeated events; ``consecutive`` drops an event that repeats the
   user's previous item; ``first`` keeps only a user's first event on each item.
   ``sample_users``: keep the events of N users drawn uniformly (seeded by ``sample_seed``) before
   the k-core, for quick experiments on a subset (none by default).
4. Iterative k-core: drop users with fewer than ``min_user_interactions`` and items with fewer
   than ``min_item_interactions`` events, repeated until both hold (or ``kcore_iterative: false``
   for one pass). A dataset emptied by a filter is an error that names the filter.
5. Time order: each user's events are sorted by timestamp; events with the same timestamp keep
   the order of the source file (a stable sort). This tie-break is part of the format contract.
6. ``max_seq_len``: keep only each user's last N events (none by default).
7. Ids: items get 1..n_items (0 is padding) in the order of their raw ids; users 0..n_users-1 in
   the order of their raw ids (numeric ids sort as numbers, others as strings).
8. Split: ``loo`` (leave-one-out: last event is test, second last valid), ``time`` (global time
   split at the ``time_split`` quantiles or timestamps), ``ratio`` (per user, the first
   ``ratios[0]`` share trains, the next ``ratios[1]`` validates, the rest tests).
9. Item text (``clean_text``, on by default): the title and the reader's text fields of the kept
   items are cleaned as the text recommenders' own preprocessing does (UniSRec's
   ``process_amazon.py`` unescapes HTML entities): HTML character references unescaped
   (``&amp;`` -> ``&``, ``&#8211;`` -> ``\u2013``, twice-escaped ``&amp;amp;`` too), HTML comments and
   tags removed (``<br>``, ``<b>``, ``<!-- ... -->``), whitespace runs collapsed to one space and
   trimmed; a value left empty becomes missing. ``dataset.json``'s ``text_cleaning`` records how
   many items' text changed, per field, with examples. ``image_urls`` and ``attribute_ids`` are
   not prose and are kept as read.
"""

from __future__ import annotations

import html
import html.entities
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.data.prepared import FORMAT_VERSION
from mmrec.data.schema import Catalogue, RawDataset
from mmrec.errors import ConfigError, DataError


@dataclass
class PrepareConfig:
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    kcore_iterative: bool = True
    min_rating: float | None = None
    unknown_items: Literal["drop", "error", "keep"] = "drop"
    dedup: Literal["none", "consecutive", "first"] = "none"
    max_seq_len: int | None = None
    sample_users: int | None = None
    sample_seed: int = 0
    split: Literal["loo", "time", "ratio"] = "loo"
    time_split: list[float] = field(default_factory=lambda: [0.8, 0.9])
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    # how a ratio split rounds: "train" (the first floor(ratios[0] * n) events train, the validation
    # part ends at floor((ratios[0] + ratios[1]) * n), the rest tests); "test" (the last
    # floor(ratios[2] * n) events test, the floor(ratios[1] * n) before them validate, the rest
    # trains: KDSR's code, whose test part is the last floor(0.2 n) events)
    ratio_rounding: Literal["train", "test"] = "train"
    # clean the items' text (HTML entities, tags, whitespace; step 9 above); false keeps it as read
    clean_text: bool = True

    def validate(self) -> None:
        if self.min_user_interactions < 1 or self.min_item_interactions < 1:
            raise ConfigError("min_user_interactions and min_item_interactions must be at least 1")
        if self.sample_users is not None and self.sample_users < 1:
            raise ConfigError("sample_users must be at least 1 (or unset to keep every user)")
        if self.max_seq_len is not None and self.max_seq_len < 3:
            raise ConfigError("max_seq_len must be at least 3 (train, valid and test need one event each)")
        if len(self.time_split) != 2 or not self.time_split[0] <= self.time_split[1]:
            raise ConfigError("time_split must be two increasing values: [valid_start, test_start]")
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
            raise ConfigError("ratios must be three non-negative shares that sum to 1, e.g. [0.8, 0.1, 0.1]")


class _Log:
    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def add(self, step: str, before: int, after: int, why: str, **extra: Any) -> None:
        self.filters.append({"step": step, "rows_before": before, "rows_after": after,
                             "rows_dropped": before - after, "why": why, **extra})


def _id_order(values: list[str]) -> np.ndarray:
    """Sort order for raw ids: numerically when all are integers, else as strings."""
    try:
        keys = np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        keys = np.array(values, dtype=object)
    return np.argsort(keys, kind="stable")


def _interactions_file(raw: RawDataset) -> str:
    """The file an interactions error is about: every reader lists its interactions file first in
    ``source["files"]``; else the path the reader was given."""
    files = list((raw.source.get("files") or {}).values())
    return str(files[0] if files else raw.source.get("path", raw.name))


def prepare(raw: RawDataset, out_dir: str | Path, config: PrepareConfig | None = None,
            *, overwrite: bool = False) -> Path:
    """Run the steps above on ``raw`` and write a prepared dataset folder at ``out_dir``."""
    cfg = config or PrepareConfig()
    out = Path(out_dir)
    if (out / "dataset.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a prepared dataset; pass --overwrite to replace it")
    t0 = time.perf_counter()
    log = _Log()
    table = raw.interactions
    n0 = table.num_rows
    if n0 == 0:
        raise DataError("the reader returned no interactions (the file is empty, or every row was dropped)",
                        path=_interactions_file(raw),
                        hint="check that this is the interactions file and that it is not cut")
    table = table.append_column("_row", pa.array(np.arange(n0, dtype=np.int64)))

    if cfg.min_rating is not None:
        if "rating" not in table.column_names:
            raise ConfigError("min_rating is set but this dataset has no ratings")
        keep = pc.fill_null(pc.greater_equal(table["rating"], cfg.min_rating), False)
        before = table.num_rows
        table = table.filter(keep)
        log.add("min_rating", before, table.num_rows, f"rating below {cfg.min_rating}")

    catalogue = raw.catalogue
    n_unknown = 0
    if catalogue is not None:
        known = pc.is_in(table["item_id"], value_set=catalogue.table["item_id"])
        n_unknown = int(len(known) - pc.sum(known).as_py()) if len(known) else 0
        if n_unknown:
            examples = pc.unique(table.filter(pc.invert(known))["item_id"]).to_pylist()[:5]
            if cfg.unknown_items == "error":
                raise DataError(
                    f"{n_unknown} interactions name items missing from the catalogue (e.g. {examples})",
                    path=_interactions_file(raw),
                    hint="set unknown_items=drop to drop them (they are counted in dataset.json), "
                         "or unknown_items=keep to keep them with empty side information",
                )
            if cfg.unknown_items == "drop":
                before = table.num_rows
                table = table.filter(known)
                log.add("unknown_items", before, table.num_rows, "item missing from the catalogue",
                        examples=examples)
            else:
                log.add("unknown_items", table.num_rows, table.num_rows,
                        "item missing from the catalogue: kept with empty side information",
                        kept=n_unknown, examples=examples)

    # integer codes for users and items (dictionary encoding keeps this vectorised)
    users_enc = pc.dictionary_encode(table["user_id"]).combine_chunks()
    items_enc = pc.dictionary_encode(table["item_id"]).combine_chunks()
    u = users_enc.indices.to_numpy().astype(np.int64)
    it = items_enc.indices.to_numpy().astype(np.int64)
    user_vocab = users_enc.dictionary.to_pylist()
    item_vocab = items_enc.dictionary.to_pylist()
    ts = table["timestamp"].to_numpy()
    if np.isnan(ts).any():
        bad = int(np.flatnonzero(np.isnan(ts))[0])
        raise DataError(f"{int(np.isnan(ts).sum())} interactions have no timestamp (first at source row "
                        f"{int(table['_row'][bad].as_py()) + 1})",
                        path=_interactions_file(raw),
                        hint="fix the timestamps, or use a reader option that orders events by file position")
    row = table["_row"].to_numpy()
    extra_cols = {c: table[c] for c in ("price", "domain") if c in table.column_names}

    # time order, stable on the source row
    order = np.lexsort((row, ts, u))
    u, it, ts, row = u[order], it[order], ts[order], row[order]
    sel = order

    if cfg.dedup != "none":
        before = len(u)
        if cfg.dedup == "consecutive":
            keep = np.ones(len(u), dtype=bool)
            keep[1:] = ~((u[1:] == u[:-1]) & (it[1:] == it[:-1]))
        else:  # first
            key = u * (len(item_vocab) + 1) + it
            _, first_idx = np.unique(key, return_index=True)
            keep = np.zeros(len(u), dtype=bool)
            keep[first_idx] = True
        u, it, ts, row, sel = u[keep], it[keep], ts[keep], row[keep], sel[keep]
        log.add("dedup", before, len(u), f"repeated events ({cfg.dedup})")

    if cfg.sample_users is not None:
        present = np.unique(u)
        before = len(u)
        if cfg.sample_users < len(present):
            chosen = np.random.default_rng(cfg.sample_seed).choice(present, cfg.sample_users, replace=False)
            keep = np.isin(u, chosen)
            u, it, ts, row, sel = u[keep], it[keep], ts[keep], row[keep], sel[keep]
        log.add("sample_users", before, len(u),
                f"events of users outside a uniform sample of {cfg.sample_users} (seed {cfg.sample_seed}) "
                f"of {len(present)}", users_kept=int(min(cfg.sample_users, len(present))))

    # iterative k-core
    rounds = 0
    while True:
        rounds += 1
        changed = False
        for who, vocab_n, k in (("user", len(user_vocab), cfg.min_user_interactions),
                                ("item", len(item_vocab), cfg.min_item_interactions)):
            if k <= 1:
                continue
            codes = u if who == "user" else it
            counts = np.bincount(codes, minlength=vocab_n)
            keep = counts[codes] >= k
            if not keep.all():
                before = len(u)
                u, it, ts, row, sel = u[keep], it[keep], ts[keep], row[keep], sel[keep]
                log.add(f"kcore_{who}", before, len(u), f"{who}s with fewer than {k} interactions",
                        round=rounds)
                changed = True
                if len(u) == 0:
                    raise DataError(
                        f"the {who} filter of the k-core (min_{who}_interactions={k}, round {rounds}) "
                        f"removed every interaction ({n0} read)",
                        path=str(raw.source.get("path", raw.name)),
                        hint=f"lower min_{who}_interactions (and min_user/item_interactions), "
                             "or check that the reader found the right files",
                    )
        if not changed or not cfg.kcore_iterative:
            break

    if cfg.max_seq_len is not None:
        # rank of each event from the end of its user's sequence
        starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
        lens = np.diff(np.r_[starts, len(u)])
        pos_from_end = np.repeat(starts + lens, lens) - np.arange(len(u)) - 1
        keep = pos_from_end < cfg.max_seq_len
        before = len(u)
        u, it, ts, row, sel = u[keep], it[keep], ts[keep], row[keep], sel[keep]
        log.add("max_seq_len", before, len(u), f"events older than each user's last {cfg.max_seq_len}")

    # final ids: compact and ordered by raw id
    used_users = np.unique(u)
    used_items = np.unique(it)
    uo = used_users[_id_order([user_vocab[i] for i in used_users])]
    io = used_items[_id_order([item_vocab[i] for i in used_items])]
    user_map = np.full(len(user_vocab), -1, dtype=np.int64)
    user_map[uo] = np.arange(len(uo))
    item_map = np.zeros(len(item_vocab), dtype=np.int64)
    item_map[io] = np.arange(1, len(io) + 1)
    new_u = user_map[u]
    new_i = item_map[it]
    order2 = np.lexsort((row, ts, new_u))  # users are contiguous, in id order; same within-user order
    new_u, new_i, ts, sel = new_u[order2], new_i[order2], ts[order2], sel[order2]
    n_users, n_items = len(uo), len(io)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(new_u, minlength=n_users))
    lengths = np.diff(offsets)

    split = _split(cfg, offsets, lengths, ts)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".prepare-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    np.save(tmp / "seq_items.npy", new_i.astype(np.int32))
    np.save(tmp / "seq_times.npy", ts.astype(np.float64))
    np.save(tmp / "seq_offsets.npy", offsets)
    np.save(tmp / "split.npy", split)
    if "price" in extra_cols:
        np.save(tmp / "event_price.npy", extra_cols["price"].take(pa.array(sel)).to_numpy(zero_copy_only=False)
                .astype(np.float64))
    item_raw = [item_vocab[i] for i in io]
    items_table = _items_table(catalogue, item_raw)
    text_cleaning: dict[str, Any] = {"enabled": cfg.clean_text}
    if cfg.clean_text and catalogue is not None:
        items_table, text_cleaning = clean_items_text(items_table, ["title", *catalogue.text_fields])
    pq.write_table(items_table, tmp / "items.parquet")
    pq.write_table(pa.table({"uid": np.arange(n_users, dtype=np.int64),
                             "user_id": pa.array([user_vocab[i] for i in uo], pa.string())}),
                   tmp / "users.parquet")

    stats = _stats(n_users, n_items, lengths, split, ts)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": raw.name,
        "source": raw.source,
        "time_is_order": raw.time_is_order,
        "config": _cfg_dict(cfg),
        "reader_report": raw.report.to_list(),
        "interactions_read": n0,
        "filters": log.filters,
        "kcore_rounds": rounds,
        "tie_break": "events with equal timestamps keep their order in the source file",
        "split": _split_doc(cfg, ts),
        "stats": stats,
        "catalogue": {
            "items_in_catalogue": len(catalogue) if catalogue is not None else None,
            "text_fields": catalogue.text_fields if catalogue is not None else [],
            # relative image paths in items.parquet are relative to this folder
            "image_root": str(Path(catalogue.image_root).resolve()) if catalogue is not None and catalogue.image_root else None,
            "items_without_catalogue_row": int(n_unknown) if cfg.unknown_items == "keep" else 0,
        },
        "text_cleaning": text_cleaning,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out


def _split(cfg: PrepareConfig, offsets: np.ndarray, lengths: np.ndarray, ts: np.ndarray) -> np.ndarray:
    n_users = len(lengths)
    split = np.zeros((n_users, 2), dtype=np.int64)
    if cfg.split == "loo":
        # users with fewer than 3 events only train
        short = lengths < 3
        split[:, 0] = np.where(short, lengths, lengths - 2)
        split[:, 1] = np.where(short, lengths, lengths - 1)
    elif cfg.split == "ratio" and cfg.ratio_rounding == "test":
        n_test = np.floor(lengths * cfg.ratios[2] + 1e-9).astype(np.int64)
        n_valid = np.floor(lengths * cfg.ratios[1] + 1e-9).astype(np.int64)
        b = lengths - n_test
        a = np.clip(b - n_valid, np.minimum(1, lengths), lengths)
        split[:, 0] = a
        split[:, 1] = np.clip(b, a, lengths)
    elif cfg.split == "ratio":
        a = np.floor(lengths * cfg.ratios[0] + 1e-9).astype(np.int64)
        b = np.floor(lengths * (cfg.ratios[0] + cfg.ratios[1]) + 1e-9).astype(np.int64)
        a = np.clip(a, np.minimum(1, lengths), lengths)
        split[:, 0] = a
        split[:, 1] = np.clip(b, a, lengths)
    else:
        t_valid, t_test = _time_bounds(cfg, ts)
        user_of = np.repeat(np.arange(n_users), lengths)
        split[:, 0] = np.bincount(user_of, weights=(ts < t_valid), minlength=n_users).astype(np.int64)
        split[:, 1] = np.bincount(user_of, weights=(ts < t_test), minlength=n_users).astype(np.int64)
    return split


def _time_bounds(cfg: PrepareConfig, ts: np.ndarray) -> tuple[float, float]:
    a, b = cfg.time_split
    if b <= 1.0:  # quantiles
        return float(np.quantile(ts, a)), float(np.quantile(ts, b))
    return float(a), float(b)


def _split_doc(cfg: PrepareConfig, ts: np.ndarray) -> dict[str, Any]:
    if cfg.split == "loo":
        return {"kind": "loo", "doc": "last event of each user is the test target, the one before it the "
                "validation target; users with fewer than 3 events only train"}
    if cfg.split == "ratio":
        return {"kind": "ratio", "ratios": cfg.ratios, "rounding": cfg.ratio_rounding,
                "doc": "per user, in time order: first share trains, next validates, rest tests; every "
                       "validation and test event is a case"}
    t_valid, t_test = _time_bounds(cfg, ts)
    return {"kind": "time", "valid_start": t_valid, "test_start": t_test,
            "doc": "events before valid_start train, before test_start validate, the rest test; "
                   "each target is predicted from all earlier events of its user"}


def _stats(n_users: int, n_items: int, lengths: np.ndarray, split: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
    n = int(lengths.sum())
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n,
        "density": n / max(1, n_users * n_items),
        "seq_len_mean": float(lengths.mean()) if n_users else 0.0,
        "seq_len_median": float(np.median(lengths)) if n_users else 0.0,
        "seq_len_max": int(lengths.max()) if n_users else 0,
        "train_targets": int(np.maximum(split[:, 0] - 1, 0).sum()),
        "valid_targets": int((split[:, 1] - np.maximum(split[:, 0], 1)).clip(min=0).sum()),
        "test_targets": int((lengths - np.maximum(split[:, 1], 1)).clip(min=0).sum()),
        "time_min": float(ts.min()) if n else None,
        "time_max": float(ts.max()) if n else None,
    }


def _items_table(catalogue: Catalogue | None, item_raw: list[str]) -> pa.Table:
    iid = pa.array(np.arange(1, len(item_raw) + 1, dtype=np.int64))
    raw = pa.array(item_raw, pa.string())
    if catalogue is None:
        return pa.table({"iid": iid, "item_id": raw})
    cat = catalogue.table
    idx = pc.index_in(raw, value_set=cat["item_id"])  # null where the item has no catalogue row
    cols = {"iid": iid, "item_id": raw}
    for name in cat.column_names:
        if name == "item_id":
            continue
        cols[name] = cat[name].combine_chunks().take(idx)
    return pa.table(cols)


# ---------------------------------------------------------------------------- item text (step 9)

TEXT_CLEANING_STEPS = [
    "HTML character references unescaped (&amp; -> &, &#8211; -> \u2013; twice-escaped ones too)",
    "HTML comments and tags removed (<br>, <b>...</b>, <!-- ... -->)",
    "whitespace runs collapsed to one space, ends trimmed; an empty result is missing",
]
NOT_PROSE_FIELDS = frozenset({"image_urls", "attribute_ids"})  # kept as read
_ENTITY_RE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_COMMENT_RE = re.compile(r"<!--(?:>|->|.*?-->)", re.DOTALL)
_TAG_RE = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>|<![^<>]*>")


def _entity(m: re.Match[str]) -> str:
    ref = m.group(0)
    if ref[1] == "#":
        return html.unescape(ref)
    # only a complete named reference: html.unescape would also read "&notit;" as "\u00acit;"
    return html.entities.html5.get(ref[1:], ref)


def clean_text_value(value: str | None) -> str | None:
    """One item text cleaned as step 9 describes; None for None or a value that cleans to nothing."""
    return _clean_steps(value)[0]


def _clean_steps(value: str | None) -> tuple[str | None, tuple[bool, bool, bool]]:
    """The cleaned value and which steps changed it (entities, tags, whitespace)."""
    if value is None:
        return None, (False, False, False)
    s = value
    for _ in range(3):  # "&amp;amp;" was escaped twice
        if "&" not in s:
            break
        unescaped = _ENTITY_RE.sub(_entity, s)
        if unescaped == s:
            break
        s = unescaped
    entities = s != value
    before_tags = s
    if "<" in s:
        s = _TAG_RE.sub(" ", _COMMENT_RE.sub(" ", s))
    tags = s != before_tags
    before_space = s
    s = " ".join(s.split())
    return (s or None), (entities, tags, s != before_space)


def clean_items_text(table: pa.Table, fields: list[str], examples: int = 3) -> tuple[pa.Table, dict[str, Any]]:
    """Clean the text ``fields`` of an items table (``clean_text_value``); returns the table and the
    record that ``dataset.json`` keeps as ``text_cleaning``."""
    changed_items: set[int] = set()
    per_field: dict[str, int] = {}
    emptied: dict[str, int] = {}
    shown: list[dict[str, Any]] = []
    by_step = {"entities": 0, "tags": 0, "whitespace": 0}  # values each step changed (one value may count in several)
    cleaned_fields = [f for f in dict.fromkeys(fields) if f in table.column_names and f not in NOT_PROSE_FIELDS]
    for name in cleaned_fields:
        values = table.column(name).to_pylist()
        results = [_clean_steps(v) for v in values]
        out = [r[0] for r in results]
        diff = [i for i, (a, b) in enumerate(zip(values, out)) if a != b]
        if not diff:
            continue
        per_field[name] = len(diff)
        for i in diff:
            for step, hit in zip(by_step, results[i][1]):
                by_step[step] += hit
        n_empty = sum(1 for i in diff if out[i] is None)
        if n_empty:
            emptied[name] = n_empty
        changed_items.update(diff)
        ids = table.column("item_id")
        for i in diff[: max(0, examples - len(shown))]:
            shown.append({"item_id": ids[i].as_py(), "field": name, "before": values[i][:200],
                          "after": None if out[i] is None else out[i][:200]})
        table = table.set_column(table.column_names.index(name), name, pa.array(out, pa.string()))
    record = {
        "enabled": True,
        "steps": TEXT_CLEANING_STEPS,
        "fields": cleaned_fields,
        "items_changed": len(changed_items),
        "values_changed": per_field,
        "values_emptied": emptied,
        "values_changed_by_step": by_step,
        "examples": shown,
        "doc": "prepare.clean_text=false keeps the text as the reader read it",
    }
    return table, record


def _cfg_dict(cfg: PrepareConfig) -> dict[str, Any]:
    from mmrec.config import to_dict

    return to_dict(cfg)
