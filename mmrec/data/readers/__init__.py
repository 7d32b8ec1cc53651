"""Dataset readers: each turns one public (or user) layout into a ``RawDataset``.

    from mmrec.data.readers import read_dataset
    raw = read_dataset("movielens", "data/ml-1m")

Formats (each module's docstring describes the exact layout and options):

    movielens   GroupLens MovieLens folders (ratings.dat / movies.dat / users.dat, posters/)  movielens.py
    recbole     RecBole atomic files (<name>.inter / .item / .user)                           recbole.py
    s3rec       Amazon, S3-Rec layout (<Name>.txt, _item2attributes.json, datamaps.json)       amazon.py
    unisrec     Amazon, UniSRec layout (<Name>.train/.valid/.test.inter, .text, *2index)      amazon.py
    lcrec       Amazon, LC-Rec JSON (<Name>.inter.json, <Name>.item.json)                     amazon.py
    amazon-raw  Amazon review + meta JSON lines, 2014 or 2018 style, plain or .gz             amazon.py
    hm          H&M Kaggle CSVs (transactions_train, articles, customers, images/)            hm.py
    table       any CSV/Parquet interactions file with a column mapping (+ an items file)     generic.py

Every reader has the signature ``read_<format>(path, **options) -> RawDataset``; an unknown option
raises ConfigError listing the valid ones, malformed data raises DataError naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmrec.data.readers.amazon import read_amazon_raw, read_lcrec, read_s3rec, read_unisrec
from mmrec.data.readers.generic import read_table
from mmrec.data.readers.hm import read_hm
from mmrec.data.readers.movielens import read_movielens
from mmrec.data.readers.recbole import read_recbole
from mmrec.data.schema import RawDataset
from mmrec.errors import ConfigError, DataError

Reader = Callable[..., RawDataset]

READERS: dict[str, Reader] = {
    "movielens": read_movielens,
    "recbole": read_recbole,
    "s3rec": read_s3rec,
    "unisrec": read_unisrec,
    "lcrec": read_lcrec,
    "amazon-raw": read_amazon_raw,
    "hm": read_hm,
    "table": read_table,
}


def read_dataset(format: str, path: str | Path, **options: Any) -> RawDataset:  # noqa: A002 - the config key
    """Read ``path`` with the reader registered for ``format``."""
    reader = READERS.get(format)
    if reader is None:
        raise ConfigError(f"unknown dataset format {format!r}; known formats: {', '.join(sorted(READERS))}")
    try:
        return reader(path, **options)
    except (UnicodeDecodeError, pa.ArrowInvalid, json.JSONDecodeError, csv.Error) as e:
        # the readers name the file for the damage they expect; this is the net for the rest
        raise DataError(f"cannot read the {format} dataset: {type(e).__name__}: {e}", path=str(path),
                        hint="one of its files is damaged, cut or not UTF-8: re-download it") from None


def detect_format(path: str | Path) -> str | None:
    """Best-effort guess of the format of ``path``; None when unsure."""
    p = Path(path).expanduser()
    if p.is_file():
        name = p.name
        if name.endswith(".inter"):
            return "recbole"
        if name.endswith((".parquet", ".pq", ".csv", ".tsv", ".csv.gz", ".tsv.gz")):
            return "table"
        if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")) and _looks_like_reviews(p):
            return "amazon-raw"
        return None
    if not p.is_dir():
        return None
    names = {c.name for c in p.iterdir()}

    def has(suffix: str) -> bool:
        return any(n.endswith(suffix) for n in names)

    if "ratings.dat" in names or ("ratings.csv" in names and "movies.csv" in names):
        return "movielens"
    if has(".test.inter") or has(".train.inter"):
        return "unisrec"
    if has(".inter"):
        return "recbole"
    if has(".inter.json") and has(".item.json"):
        return "lcrec"
    if has("_item2attributes.json") or ("datamaps.json" in names and has(".txt")):
        return "s3rec"
    if any(n.startswith("transactions") and ".csv" in n for n in names) and any(n.startswith("articles") for n in names):
        return "hm"
    if any(n.startswith("meta_") for n in names):
        return "amazon-raw"
    return None


def _looks_like_reviews(path: Path) -> bool:
    import gzip

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            first = fh.readline()
        rec = json.loads(first)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(rec, dict) and "asin" in rec and ("reviewerID" in rec or "overall" in rec)


__all__ = ["READERS", "read_dataset", "detect_format", "Reader"]
