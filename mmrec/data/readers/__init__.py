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


# What each format's files look like, for the error about a folder that no reader recognises.
LAYOUTS: dict[str, str] = {
    "movielens": "ratings.dat + movies.dat (+ users.dat, posters/), or ratings.csv + movies.csv",
    "recbole": "<name>.inter (+ <name>.item, <name>.user)",
    "s3rec": "<Name>.txt + <Name>_item2attributes.json (or + datamaps.json)",
    "unisrec": "<Name>.train.inter + <Name>.valid.inter + <Name>.test.inter (+ <Name>.text, *.item2index)",
    "lcrec": "<Name>.inter.json + <Name>.item.json",
    "amazon-raw": "a reviews *.json[.gz] file (reviewerID, asin, overall, unixReviewTime) + meta_*.json[.gz]",
    "hm": "transactions_train*.csv + articles*.csv (+ customers*.csv, images/)",
    "table": "one CSV/TSV/Parquet file of interactions, given itself as -i FILE (-r user_col=... -r item_col=...)",
}

_SPLIT_INTER = (".train.inter", ".valid.inter", ".test.inter")
_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")


def detect_formats(path: str | Path) -> list[tuple[str, str]]:
    """Every format whose files ``path`` holds, each with the files that say so
    (``("s3rec", "Beauty.txt + Beauty_item2attributes.json")``); [] when none."""
    from mmrec.data.readers.amazon import s3rec_datasets

    p = Path(path).expanduser()
    if p.is_file():
        name = p.name
        if name.endswith(".inter"):
            return [("recbole", f"the .inter file {name}")]
        if name.endswith((".parquet", ".pq", ".csv", ".tsv", ".csv.gz", ".tsv.gz")):
            return [("table", f"the table file {name}")]
        if name.endswith(_JSON_SUFFIXES) and _looks_like_reviews(p):
            return [("amazon-raw", f"the reviews file {name}")]
        return []
    if not p.is_dir():
        return []
    names = sorted(c.name for c in p.iterdir() if c.is_file())
    found: list[tuple[str, str]] = []

    def joined(groups: list[list[str]]) -> str:
        return ", ".join(" + ".join(g) for g in groups)

    if "ratings.dat" in names:
        found.append(("movielens", " + ".join(n for n in ("ratings.dat", "movies.dat") if n in names)))
    elif "ratings.csv" in names and "movies.csv" in names:
        found.append(("movielens", "ratings.csv + movies.csv"))
    stems = sorted({n[: -len(s)] for n in names for s in _SPLIT_INTER if n.endswith(s)})
    if stems:
        found.append(("unisrec", joined([[f"{st}{s}" for s in _SPLIT_INTER if f"{st}{s}" in names]
                                         + ([f"{st}.text"] if f"{st}.text" in names else []) for st in stems])))
    plain = [n for n in names if n.endswith(".inter") and not n.endswith(_SPLIT_INTER)]
    if plain:
        found.append(("recbole", joined([[n] + [n[: -len(".inter")] + e for e in (".item", ".user")
                                                if n[: -len(".inter")] + e in names] for n in plain])))
    lc = [n[: -len(".inter.json")] for n in names if n.endswith(".inter.json")]
    lc = [st for st in lc if f"{st}.item.json" in names]
    if lc:
        found.append(("lcrec", joined([[f"{st}.inter.json", f"{st}.item.json"] for st in lc])))
    s3 = s3rec_datasets(p)
    if s3:
        found.append(("s3rec", joined(list(s3.values()))))
    elif "datamaps.json" in names:
        txts = sorted(names, key=lambda n: n == "sequential_data.txt")  # a <Name>.txt first
        txt = next((n for n in txts if n.endswith(".txt")), None)
        if txt is not None:
            found.append(("s3rec", f"{txt} + datamaps.json"))
    tx = [n for n in names if n.startswith("transactions") and ".csv" in n]
    art = [n for n in names if n.startswith("articles") and ".csv" in n]
    if tx and art:
        found.append(("hm", f"{tx[0]} + {art[0]}"))
    metas = [n for n in names if n.startswith("meta_") and n.endswith(_JSON_SUFFIXES)]
    if metas:
        reviews = [n for n in names if n.endswith(_JSON_SUFFIXES) and not n.startswith("meta_")
                   and not n.endswith((".inter.json", ".item.json", "_item2attributes.json"))
                   and n not in ("datamaps.json", "DERIVED_asin2attribute_names.json")]
        found.append(("amazon-raw", " + ".join(reviews[:1] + metas[:1])))
    return found


def detect_format(path: str | Path) -> str | None:
    """The format of ``path`` when exactly one reader recognises its files; None when none or several do."""
    found = detect_formats(path)
    return found[0][0] if len(found) == 1 else None


def choose_format(path: str | Path) -> tuple[str, str]:
    """(format, the files that show it) for ``path``, for a command run without ``--format``.

    Raises DataError when ``path`` does not exist, when several formats match (naming each with its
    files), or when none does (naming each format with the files it expects, and the subfolders that
    one of them recognises).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("no such file or folder", path=str(p), hint="give the downloaded dataset folder (or file) with -i")
    found = detect_formats(p)
    if len(found) == 1:
        return found[0]
    if found:
        listed = "; ".join(f"{fmt} ({files})" for fmt, files in found)
        raise DataError(f"the files here fit several formats: {listed}", path=str(p),
                        hint=f"pass -f to choose one (e.g. -f {found[0][0]}), or give a folder that holds one dataset")
    subs = []
    if p.is_dir():
        for sub in sorted(c for c in p.iterdir() if c.is_dir()):
            subs += [(sub, fmt, files) for fmt, files in detect_formats(sub)]
    if subs:
        listed = "; ".join(f"{sub} ({fmt}: {files})" for sub, fmt, files in subs)
        raise DataError(f"no reader recognises the files here, but its subfolders hold datasets: {listed}", path=str(p),
                        hint=f"give one of them with -i (e.g. -i {subs[0][0]})")
    what = "folder" if p.is_dir() else "file"
    expected = "".join(f"\n    {fmt:<11} {LAYOUTS[fmt]}" for fmt in READERS)
    raise DataError(f"no reader recognises this {what}; the formats and the files each expects:{expected}",
                    path=str(p), hint="pass -f FORMAT (and -r options) if the files are named otherwise, or check -i")


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


__all__ = ["LAYOUTS", "READERS", "Reader", "choose_format", "detect_format", "detect_formats", "read_dataset"]
