"""The two tables every reader produces, and the small report that travels with them.

Interactions (a ``pyarrow.Table``), one row per event:

    user_id    string   raw user id, as in the source file
    item_id    string   raw item id, as in the source file
    timestamp  float64  seconds since the epoch, or the position in the user's sequence when the
                        source has no time (then ``RawDataset.time_is_order`` is True)
    price      float64  optional, the price paid (H&M); null when unknown
    domain     string   optional, the domain of the event (cross-domain data)
    rating     float64  optional

The row order of the table is the order of the source file; prepare uses it to break ties between
events with the same timestamp (see ``mmrec.data.prepare``).

Catalogue (``Catalogue``, wrapping a ``pyarrow.Table``), one row per item:

    item_id    string         unique
    title      string         optional
    <text fields>             string columns named in ``Catalogue.text_fields`` (e.g. categories, brand)
    images     list<string>   image paths (absolute, or relative to ``Catalogue.image_root``); may be empty
    price      float64        null when unknown
    domain     string         null when unknown

A missing value stays missing (null): readers never fill in a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

INTERACTION_FIELDS = {
    "user_id": pa.string(),
    "item_id": pa.string(),
    "timestamp": pa.float64(),
    "price": pa.float64(),
    "domain": pa.string(),
    "rating": pa.float64(),
}
REQUIRED_INTERACTION_FIELDS = ("user_id", "item_id", "timestamp")

CATALOGUE_FIXED_FIELDS = {
    "item_id": pa.string(),
    "title": pa.string(),
    "images": pa.list_(pa.string()),
    "price": pa.float64(),
    "domain": pa.string(),
}


def make_interactions(columns: dict[str, Any]) -> pa.Table:
    """Build an interactions table from column data, casting to the schema above.

    Only known fields are accepted; ``user_id``, ``item_id`` and ``timestamp`` are required.
    """
    unknown = set(columns) - set(INTERACTION_FIELDS)
    if unknown:
        raise ValueError(f"unknown interaction fields {sorted(unknown)}; known: {list(INTERACTION_FIELDS)}")
    missing = [f for f in REQUIRED_INTERACTION_FIELDS if f not in columns]
    if missing:
        raise ValueError(f"interactions need fields {missing}")
    arrays, names = [], []
    for name, typ in INTERACTION_FIELDS.items():
        if name in columns:
            col = columns[name]
            arr = col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col, from_pandas=True)
            arrays.append(arr.cast(typ))
            names.append(name)
    return pa.table(arrays, names=names)


@dataclass
class Catalogue:
    """Items with their side information. ``table`` follows the module docstring's schema."""

    table: pa.Table
    text_fields: list[str] = field(default_factory=list)
    image_root: str | None = None

    @staticmethod
    def build(
        item_id: Any,
        *,
        title: Any = None,
        text: dict[str, Any] | None = None,
        images: Any = None,
        price: Any = None,
        domain: Any = None,
        image_root: str | Path | None = None,
    ) -> "Catalogue":
        """Build a catalogue from columns; absent optional columns become all-null."""
        ids = pa.array(item_id, from_pandas=True).cast(pa.string())
        n = len(ids)

        def col(values: Any, typ: pa.DataType) -> pa.Array:
            if values is None:
                return pa.nulls(n, typ)
            arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, from_pandas=True)
            return arr.cast(typ)

        arrays = [ids, col(title, pa.string())]
        names = ["item_id", "title"]
        text = text or {}
        for name, values in text.items():
            if name in CATALOGUE_FIXED_FIELDS:
                raise ValueError(f"text field name {name!r} clashes with a fixed catalogue column")
            arrays.append(col(values, pa.string()))
            names.append(name)
        arrays += [
            col(images, pa.list_(pa.string())),
            col(price, pa.float64()),
            col(domain, pa.string()),
        ]
        names += ["images", "price", "domain"]
        cat = Catalogue(pa.table(arrays, names=names), list(text), str(image_root) if image_root else None)
        cat.check_unique()
        return cat

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def item_ids(self) -> list[str]:
        return self.table.column("item_id").to_pylist()

    def check_unique(self) -> None:
        import pyarrow.compute as pc

        ids = self.table.column("item_id")
        if pc.count_distinct(ids).as_py() != len(ids):
            counts = pc.value_counts(ids)
            dup = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:5]
            raise ValueError(f"catalogue has duplicate item ids, e.g. {dup}")
        if ids.null_count:
            raise ValueError("catalogue has items with a null item_id")


@dataclass
class ReadReport:
    """What a reader (or prepare) dropped or noticed, with counts and reasons."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: str, rows: int, why: str, **extra: Any) -> None:
        self.entries.append({"step": step, "rows": int(rows), "why": why, **extra})

    def to_list(self) -> list[dict[str, Any]]:
        return list(self.entries)


@dataclass
class RawDataset:
    """What a reader returns: interactions, an optional catalogue and user table, and a report."""

    name: str
    interactions: pa.Table
    catalogue: Catalogue | None = None
    users: pa.Table | None = None
    time_is_order: bool = False
    report: ReadReport = field(default_factory=ReadReport)
    source: dict[str, Any] = field(default_factory=dict)
