"""Merge prepared datasets into one, for pre-training on several datasets at once (UniSRec, ANT).

``merge_prepared({"office": "data/office", "beauty": "data/beauty"}, "data/pretrain")`` writes a
prepared dataset whose users and items are those of the parts, with raw ids prefixed by the part's
name (``"office:B00..."``), so no two parts share an item. Internal ids follow the parts in the
given order (the first part's items first); each user keeps their sequence, split and timestamps.
``items.parquet`` holds the union of the parts' catalogue columns (absent columns are null), the
image paths made absolute, and ``domain`` set to the part's name where the part had none. Per-event
columns (``event_*.npy``) are kept when every part has them.

Features extracted for the parts are combined the same way by ``mmrec features merge``
(``mmrec.features.store.merge_entries``), whose ids carry the same prefixes, so a merged dataset
and a merged store align.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.data.prepared import FORMAT_VERSION, PreparedDataset
from mmrec.errors import ConfigError


def _check_name(name: str) -> None:
    if not name or ":" in name or "/" in name:
        raise ConfigError(f"part name {name!r} must be non-empty and contain no ':' or '/'")


def merge_prepared(parts: dict[str, str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Write the merged dataset (module docstring) to ``out`` and return its path."""
    if len(parts) < 2:
        raise ConfigError("merge needs at least two prepared datasets (name=folder)")
    t0 = time.perf_counter()
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a prepared dataset; pass --overwrite to replace it")
    datas = {}
    for name, path in parts.items():
        _check_name(name)
        datas[name] = PreparedDataset(path)
    items, times, offsets, splits, users, tables, events = [], [], [0], [], [], [], {}
    item_base = 0
    event_names = None
    for name, d in datas.items():
        items.append(np.asarray(d.items, dtype=np.int64) + item_base)  # 1..n shifted; no padding in events
        times.append(np.asarray(d.times, dtype=np.float64))
        offsets.extend((np.asarray(d.offsets[1:]) + offsets[-1]).tolist())
        splits.append(np.asarray(d.split))
        users.extend(f"{name}:{u}" for u in d.raw_user_ids)
        t = d.item_table()
        root = (d.meta.get("catalogue") or {}).get("image_root")
        t = t.set_column(t.column_names.index("item_id"), "item_id",
                         pc.binary_join_element_wise(pa.scalar(f"{name}:"), t["item_id"], ""))
        if "images" in t.column_names and root:
            fixed = [[p if p is None or os.path.isabs(p) else os.path.join(root, p) for p in (row or [])]
                     for row in t["images"].to_pylist()]
            t = t.set_column(t.column_names.index("images"), "images", pa.array(fixed, pa.list_(pa.string())))
        dom = pa.array([name] * t.num_rows, pa.string())
        if "domain" in t.column_names:
            t = t.set_column(t.column_names.index("domain"), "domain", pc.coalesce(t["domain"].cast(pa.string()), dom))
        else:
            t = t.append_column("domain", dom)
        t = t.drop(["iid"]) if "iid" in t.column_names else t
        tables.append(t)
        names = {p.name[len("event_"):-len(".npy")] for p in Path(d.root).glob("event_*.npy")}
        event_names = names if event_names is None else event_names & names
        item_base += d.n_items
    for ev in sorted(event_names or []):
        events[ev] = np.concatenate([np.asarray(d.event(ev)) for d in datas.values()])
    catalogue = pa.concat_tables(tables, promote_options="default")
    catalogue = pa.table({"iid": pa.array(np.arange(1, item_base + 1, dtype=np.int64)),
                          **{c: catalogue[c] for c in catalogue.column_names}})
    seq_items = np.concatenate(items).astype(np.int32)
    seq_times = np.concatenate(times)
    offsets_arr = np.asarray(offsets, dtype=np.int64)
    split = np.concatenate(splits).astype(np.int64)
    lengths = np.diff(offsets_arr)
    n_users = len(users)
    stats = {
        "n_users": n_users, "n_items": item_base, "n_interactions": int(len(seq_items)),
        "density": float(len(seq_items) / max(n_users * item_base, 1)),
        "seq_len_mean": float(lengths.mean()), "seq_len_median": float(np.median(lengths)),
        "seq_len_max": int(lengths.max()),
        "train_targets": int(np.maximum(split[:, 0] - 1, 0).sum()),
        "valid_targets": int((split[:, 1] - np.maximum(split[:, 0], 1)).clip(min=0).sum()),
        "test_targets": int((lengths - np.maximum(split[:, 1], 1)).clip(min=0).sum()),
        "time_min": float(seq_times.min()) if len(seq_times) else None,
        "time_max": float(seq_times.max()) if len(seq_times) else None,
    }
    text_fields: list[str] = []
    for d in datas.values():
        for f in (d.meta.get("catalogue") or {}).get("text_fields") or []:
            if f not in text_fields:
                text_fields.append(f)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": "+".join(parts),
        "source": "merge",
        "merged_from": [{"name": n, "path": str(Path(p).resolve()), "n_users": datas[n].n_users,
                         "n_items": datas[n].n_items, "item_ids": "prefixed with '<name>:'"} for n, p in parts.items()],
        "time_is_order": any(d.meta.get("time_is_order") for d in datas.values()),
        "interactions_read": int(len(seq_items)),
        "filters": [],
        "split": {"kind": "kept from each part", "parts": {n: d.meta.get("split") for n, d in datas.items()}},
        "stats": stats,
        "catalogue": {"items_in_catalogue": item_base, "text_fields": text_fields, "image_root": None,
                      "items_without_catalogue_row": 0},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".merge-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    np.save(tmp / "seq_items.npy", seq_items)
    np.save(tmp / "seq_times.npy", seq_times)
    np.save(tmp / "seq_offsets.npy", offsets_arr)
    np.save(tmp / "split.npy", split)
    for ev, arr in events.items():
        np.save(tmp / f"event_{ev}.npy", arr)
    pq.write_table(catalogue, tmp / "items.parquet")
    pq.write_table(pa.table({"uid": np.arange(n_users, dtype=np.int64), "user_id": pa.array(users, pa.string())}),
                   tmp / "users.parquet")
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out
