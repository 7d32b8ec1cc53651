"""Amazon review data in four layouts: ``s3rec``, ``unisrec``, ``lcrec`` and ``amazon-raw``.

Amazon sources have no usable time in the preprocessed layouts: there, each user's items are in time
order and the timestamp is the position in the sequence (0, 1, 2, ...), with ``time_is_order`` True.
Empty strings in the side information are read as missing (null).

Format ``s3rec`` (the S3-Rec / CIKM'20 preprocessing; ``path`` is the folder)::

    <Name>.txt                        one line per user: "uid iid iid ..." in time order, ids from 1
    <Name>_item2attributes.json       optional: {"iid": [attribute id, ...]}
    datamaps.json                     optional: {"id2item": {iid: ASIN}, "id2user": {uid: reviewerID},
                                      "id2attribute": {...}, "attributeid2num": {...}, ...}
    DERIVED_asin2attribute_names.json optional: {ASIN: [brand and category names]}

  A ``sequential_data.txt`` beside ``<Name>.txt`` (same sequences) is ignored; it is read only when it is
  the only sequence file. Item and user ids are the ASINs / reviewer ids of ``datamaps.json`` when it is
  there, else the numbers as written. The catalogue has one row per item (all of ``id2item``, else the
  items of the sequences and of item2attributes), title null, and the text fields
    ``attributes``     attribute names joined with ", ": from the DERIVED file, or from
                       ``id2attribute`` only when its ``attributeid2num`` counts agree with
                       item2attributes (in the public Beauty and Sports files they do not: the ids in
                       item2attributes are numbered differently, so names decoded that way would be wrong
                       and are not produced; the report says so)
    ``attribute_ids``  the item2attributes ids, space-separated (present whenever that file is)
  Brand and categories cannot be told apart in these files, so there are no separate fields for them.

  Options: ``name`` (the <Name> of the files), ``sequences`` (file name of the sequence file).

Format ``unisrec`` (UniSRec / RecBole atomic files with history lists; ``path`` is the folder)::

    <Name>.train.inter, <Name>.valid.inter, <Name>.test.inter
        header "user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token"; each row is a history
        (space-separated item indices, at most the last N items) and the next item
    <Name>.text        "item_id:token<TAB>text:token_seq": ASIN -> text
    <Name>.item2index  "ASIN<TAB>index" ;  <Name>.user2index  "reviewerID<TAB>index"

  Each user's full sequence is rebuilt by chaining the user's rows (each row's history plus target is
  the window that the next row's history continues), which recovers items older than the truncated
  history of the test row. When the rows do not chain, the longest row (test, else valid, else train)
  is used and the report says so. Indices are mapped back to ASINs and reviewer ids with the
  ``*2index`` files. Catalogue: the items of ``<Name>.text``, title null, text field ``text``.

  Options: ``name``.

Format ``lcrec`` (LC-Rec JSON; ``path`` is the folder)::

    <Name>.inter.json   {"user": [item index, ...]} in time order
    <Name>.item.json    {"item index": {"title": ..., "description": ..., "brand": ..., "categories": ...}}

  Item ids are the indices as strings. Catalogue: ``title``, text fields ``description``, ``brand``,
  ``categories`` (and any other string field found in every item). Options: ``name``.

Format ``amazon-raw`` (the JSON-lines files from the Amazon review datasets, plain or ``.gz``)::

    reviews   one JSON object per line with reviewerID, asin, overall, unixReviewTime
    meta      one object per line with asin, title, brand, and
                2018: category (list), description (list or string), price ("$12.99"),
                      imageURL / imageURLHighRes (lists)
                2014: Python dict literals with categories (list of lists), description, price
                      (number), imUrl

  ``path`` is the reviews file, or a folder holding one reviews file and one ``meta_*`` file.
  Interactions: user_id = reviewerID, item_id = asin, timestamp = unixReviewTime, rating = overall.
  Catalogue: every meta row (the first of duplicated asins); ``title``; text fields ``brand``,
  ``categories`` (names joined with ", "; 2014 paths flattened without repeats), ``description``
  (list items joined with " "), ``image_urls`` (the URLs joined with "|"; high-resolution ones when
  given; nothing is downloaded); ``price`` parsed from "$1,234.56" (anything else, e.g. a price range,
  becomes null and is counted in the report); ``images`` are ``<asin>.jpg`` files of ``images_dir``
  when that option is given, else empty.

  Options: ``reviews``, ``meta`` (paths, relative to ``path`` when it is a folder), ``images_dir``,
  ``on_bad_line`` ("error": a malformed line raises DataError with file and line; "skip": such lines
  are dropped and counted in the report), ``name``.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from mmrec.data.readers._common import (
    as_path,
    check_choice,
    check_options,
    clean_text,
    join_text,
    list_images,
    none_if_blank,
    open_text,
    parse_price,
    positions_within_groups,
    require_dir,
    require_file,
    resolve_option_path,
    several_datasets,
)
from mmrec.data.schema import Catalogue, RawDataset, ReadReport, make_interactions
from mmrec.errors import ConfigError, DataError

S3REC_OPTIONS: dict[str, Any] = {"name": None, "sequences": None}
UNISREC_OPTIONS: dict[str, Any] = {"name": None}
LCREC_OPTIONS: dict[str, Any] = {"name": None}
RAW_OPTIONS: dict[str, Any] = {"reviews": None, "meta": None, "images_dir": None, "on_bad_line": "error", "name": None}


def _load_json(path: Path) -> Any:
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path=str(path), line=e.lineno, hint="fix the file") from None


def _sequence_interactions(users: list[str], items: list[str]) -> pa.Table:
    """Interactions from flattened (user, item) pairs in sequence order; timestamps are positions."""
    user_arr = pa.array(users, pa.string())
    return make_interactions(
        {"user_id": user_arr, "item_id": pa.array(items, pa.string()), "timestamp": pa.array(positions_within_groups(user_arr))}
    )


def _empty_images(n: int) -> list[list[str]]:
    return [[] for _ in range(n)]


# =========================================================================== s3rec


def read_s3rec(path: str | Path, **options: Any) -> RawDataset:
    """Read the S3-Rec layout (see the module docstring)."""
    opts = check_options("s3rec", options, S3REC_OPTIONS)
    folder = require_dir(as_path(path), "s3rec", "a folder with <Name>.txt (uid iid iid ...)")
    report = ReadReport()
    seq_path, name = _s3rec_sequences(folder, opts["name"], opts["sequences"])

    maps_path = folder / "datamaps.json"
    maps: dict[str, Any] = _load_json(maps_path) if maps_path.is_file() else {}
    id2item: dict[str, str] | None = maps.get("id2item")
    id2user: dict[str, str] | None = maps.get("id2user")

    users: list[str] = []
    items: list[str] = []
    seen_users: set[str] = set()
    repeated = 0
    with open_text(seq_path) as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if not all(p.isdigit() for p in parts):
                bad = next(p for p in parts if not p.isdigit())
                raise DataError(
                    f"ids must be integers, got {bad!r}", path=str(seq_path), line=lineno, hint="each line is 'uid iid iid ...'"
                )
            if len(parts) < 2:
                raise DataError("a user line without items", path=str(seq_path), line=lineno, hint="each line is 'uid iid iid ...'")
            uid = parts[0]
            if id2user is not None:
                if uid not in id2user:
                    raise DataError(
                        f"user id {uid} is not in datamaps.json id2user", path=str(seq_path), line=lineno, hint="use the datamaps.json of the same preprocessing"
                    )
                uid = id2user[uid]
            if uid in seen_users:
                repeated += 1
            seen_users.add(uid)
            for iid in parts[1:]:
                if id2item is not None:
                    if iid not in id2item:
                        raise DataError(
                            f"item id {iid} is not in datamaps.json id2item",
                            path=str(seq_path),
                            line=lineno,
                            hint="use the datamaps.json of the same preprocessing",
                        )
                    iid = id2item[iid]
                users.append(uid)
                items.append(iid)
    if repeated:
        report.add("read", repeated, f"{seq_path.name}: users with more than one line (their lines are joined in file order)")
    if not users:
        raise DataError("no sequences in the file (it is empty)", path=str(seq_path),
                        hint="each line is 'uid iid iid ...'; re-download the dataset")
    interactions = _sequence_interactions(users, items)

    # catalogue
    attr_path = folder / f"{name}_item2attributes.json"
    item2attr: dict[str, list[int]] | None = _load_json(attr_path) if attr_path.is_file() else None
    if id2item is not None:
        num_ids = sorted(id2item, key=_num_key)
    else:
        ids_set = {i for i in items}
        if item2attr is not None:
            ids_set |= set(item2attr)
        num_ids = sorted(ids_set, key=_num_key)
    item_ids = [id2item[i] for i in num_ids] if id2item is not None else num_ids

    text: dict[str, list[str | None]] = {}
    names_path = folder / "DERIVED_asin2attribute_names.json"
    if names_path.is_file() and id2item is not None:
        asin2names: dict[str, list[str]] = _load_json(names_path)
        text["attributes"] = [join_text(asin2names.get(a)) for a in item_ids]
        missing = sum(1 for a in item_ids if a not in asin2names)
        if missing:
            report.add("read", missing, f"items without attribute names in {names_path.name} (attributes null)", file=str(names_path))
    elif item2attr is not None and "id2attribute" in maps:
        if _attribute_maps_agree(item2attr, maps):
            id2attr = maps["id2attribute"]
            text["attributes"] = [
                join_text(id2attr.get(str(a)) for a in item2attr.get(i, [])) if i in item2attr else None for i in num_ids
            ]
        else:
            report.add(
                "read",
                0,
                "datamaps.json id2attribute does not match the attribute ids of "
                f"{attr_path.name} (its attributeid2num counts disagree): attribute names not decoded, "
                "only attribute_ids kept",
                file=str(maps_path),
            )
    elif names_path.is_file():
        report.add("read", 0, f"{names_path.name} is keyed by ASIN but there is no datamaps.json to map ids: not used")
    if item2attr is not None:
        text["attribute_ids"] = [
            " ".join(str(a) for a in item2attr[i]) if i in item2attr and item2attr[i] else None for i in num_ids
        ]
        missing = sum(1 for i in num_ids if i not in item2attr)
        if missing:
            report.add("read", missing, f"items without a row in {attr_path.name}", file=str(attr_path))
    catalogue = Catalogue.build(item_ids, text=text, images=_empty_images(len(item_ids)))

    files = {"sequences": str(seq_path)}
    for key, p in (("datamaps", maps_path), ("item2attributes", attr_path), ("attribute_names", names_path)):
        if p.is_file():
            files[key] = str(p)
    return RawDataset(
        name=opts["name"] or name,
        interactions=interactions,
        catalogue=catalogue,
        time_is_order=True,
        report=report,
        source={"format": "s3rec", "path": str(folder), "files": files},
    )


def _num_key(s: str) -> tuple[int, int | str]:
    return (0, int(s)) if s.isdigit() else (1, s)


def _s3rec_sequences(folder: Path, name: str | None, sequences: str | None) -> tuple[Path, str]:
    if sequences:
        p = require_file(resolve_option_path(sequences, folder), "sequence file")
        stem = p.stem
        return p, name or stem
    if name:
        p = require_file(folder / f"{name}.txt", f"{name}.txt", "check option 'name'")
        return p, name
    datasets = s3rec_datasets(folder)
    if len(datasets) == 1:
        stem = next(iter(datasets))
        return folder / f"{stem}.txt", stem
    if len(datasets) > 1:
        raise several_datasets("s3rec", folder, datasets)
    txts = sorted(p for p in folder.glob("*.txt") if p.name != "sequential_data.txt")
    if len(txts) == 1:
        return txts[0], txts[0].stem
    if len(txts) > 1:
        raise several_datasets("s3rec", folder, {p.stem: [p.name] for p in txts})
    if (folder / "sequential_data.txt").is_file():
        return folder / "sequential_data.txt", folder.resolve().name
    raise DataError("no <Name>.txt sequence file in the folder", path=str(folder), hint="expected lines 'uid iid iid ...'")


def s3rec_datasets(folder: Path) -> dict[str, list[str]]:
    """The S3-Rec datasets in ``folder``: each ``<Name>`` that has both ``<Name>.txt`` and
    ``<Name>_item2attributes.json``, with those two file names."""
    out: dict[str, list[str]] = {}
    for a in sorted(folder.glob("*_item2attributes.json")):
        stem = a.name[: -len("_item2attributes.json")]
        if (folder / f"{stem}.txt").is_file():
            out[stem] = [f"{stem}.txt", a.name]
    return out


def _attribute_maps_agree(item2attr: dict[str, list[int]], maps: dict[str, Any]) -> bool:
    """True when datamaps' attributeid2num equals the attribute counts of item2attributes."""
    counts = maps.get("attributeid2num")
    if not counts:
        return False
    used = Counter(a for v in item2attr.values() for a in v)
    if any(str(a) not in maps["id2attribute"] for a in used):
        return False
    return all(int(counts.get(str(a), -1)) == n for a, n in used.items())


# =========================================================================== unisrec


def read_unisrec(path: str | Path, **options: Any) -> RawDataset:
    """Read UniSRec atomic files (see the module docstring)."""
    opts = check_options("unisrec", options, UNISREC_OPTIONS)
    folder = require_dir(as_path(path), "unisrec", "a folder with <Name>.train.inter, .valid.inter, .test.inter, .text")
    report = ReadReport()
    name = opts["name"]
    if name is None:
        found = sorted(folder.glob("*.test.inter")) or sorted(folder.glob("*.train.inter"))
        stems = sorted({p.name.split(".")[0] for p in found})
        if not stems:
            raise DataError("no <Name>.train/.valid/.test.inter files in the folder", path=str(folder), hint="check the path")
        if len(stems) > 1:
            raise several_datasets("unisrec", folder, {st: sorted(p.name for p in folder.glob(f"{st}.*.inter")) for st in stems})
        name = stems[0]

    rows: dict[str, list[tuple[list[str], str, int]]] = defaultdict(list)  # user -> [(history, target, split rank)]
    user_order: list[str] = []
    files: dict[str, str] = {}
    for rank, split in enumerate(("train", "valid", "test")):
        p = folder / f"{name}.{split}.inter"
        if not p.is_file():
            continue
        files[split] = str(p)
        for lineno, user, hist, target in _read_history_inter(p):
            if user not in rows:
                user_order.append(user)
            rows[user].append((hist, target, rank))
    if not files:
        raise DataError(f"no {name}.train/.valid/.test.inter files", path=str(folder), hint="check option 'name'")

    max_hist = max((len(h) for r in rows.values() for h, _, _ in r), default=0)
    sequences: dict[str, list[str]] = {}
    broken = 0
    for user in user_order:
        seq, ok = _chain(rows[user], max_hist)
        sequences[user] = seq
        broken += not ok
    if broken:
        report.add("read", broken, "users whose rows do not chain into one sequence: used their longest row")

    item_map = _index_map(folder / f"{name}.item2index", report)
    user_map = _index_map(folder / f"{name}.user2index", report)
    for key, m in (("item2index", item_map), ("user2index", user_map)):
        if m is not None:
            files[key] = str(folder / f"{name}.{key}")
    users_out: list[str] = []
    items_out: list[str] = []
    for user in user_order:
        uid = user_map.get(user, user) if user_map is not None else user
        for it in sequences[user]:
            users_out.append(uid)
            items_out.append(item_map.get(it, it) if item_map is not None else it)
    if user_map is not None:
        unmapped = sum(1 for u in user_order if u not in user_map)
        if unmapped:
            report.add("read", unmapped, f"user indices missing from {name}.user2index (kept as indices)")
    if item_map is not None:
        unmapped_items = len({i for s in sequences.values() for i in s} - set(item_map))
        if unmapped_items:
            report.add("read", unmapped_items, f"item indices missing from {name}.item2index (kept as indices)")
    interactions = _sequence_interactions(users_out, items_out)

    catalogue = None
    text_path = folder / f"{name}.text"
    if text_path.is_file():
        files["text"] = str(text_path)
        ids, texts = _read_text_file(text_path, report)
        catalogue = Catalogue.build(ids, text={"text": texts}, images=_empty_images(len(ids)))
        if item_map is not None:
            no_text = len(set(item_map.values()) - set(ids))
            if no_text:
                report.add("read", no_text, f"items of {name}.item2index without a row in {text_path.name}")
    else:
        report.add("read", 0, f"no {text_path.name}: no catalogue")
    return RawDataset(
        name=name,
        interactions=interactions,
        catalogue=catalogue,
        time_is_order=True,
        report=report,
        source={"format": "unisrec", "path": str(folder), "files": files},
    )


def _read_history_inter(path: Path) -> Iterator[tuple[int, str, list[str], str]]:
    with open_text(path) as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        names = [h.split(":")[0] for h in header]
        try:
            iu, ih, it = names.index("user_id"), names.index("item_id_list"), names.index("item_id")
        except ValueError:
            raise DataError(
                f"header must have user_id, item_id_list and item_id fields, has {', '.join(header)}",
                path=str(path),
                line=1,
                hint="expected 'user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token'",
            ) from None
        for lineno, line in enumerate(fh, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != len(names):
                raise DataError(
                    f"expected {len(names)} tab-separated fields, found {len(parts)}",
                    path=str(path),
                    line=lineno,
                    hint="fix or delete this line",
                )
            user, target = parts[iu].strip(), parts[it].strip()
            if not user or not target:
                raise DataError("empty user_id or item_id", path=str(path), line=lineno, hint="fix or delete this line")
            yield lineno, user, parts[ih].split(), target


def _chain(rows: list[tuple[list[str], str, int]], max_hist: int) -> tuple[list[str], bool]:
    """Rebuild one user's sequence from (history, target) rows; False when they do not chain."""
    ordered = sorted(rows, key=lambda r: (len(r[0]), r[2]))
    start_hist, start_target, _ = ordered[0]
    seq = start_hist + [start_target]
    pending: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for hist, target, _ in ordered[1:]:
        pending[tuple(hist)].append(target)
    left = len(ordered) - 1
    while left:
        key = tuple(seq[-max_hist:]) if max_hist else tuple(seq)
        nxt = pending.get(key)
        if not nxt:
            break
        seq.append(nxt.pop(0))
        left -= 1
    if left == 0:
        return seq, True
    longest = max(rows, key=lambda r: (len(r[0]), r[2]))
    return longest[0] + [longest[1]], False


def _index_map(path: Path, report: ReadReport) -> dict[str, str] | None:
    """index -> raw id from a '<raw id><TAB><index>' file."""
    if not path.is_file():
        report.add("read", 0, f"no {path.name}: ids kept as indices")
        return None
    out: dict[str, str] = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(
                    f"expected '<raw id><TAB><index>', found {len(parts)} fields", path=str(path), line=lineno, hint="fix or delete this line"
                )
            raw, idx = parts[0].strip(), parts[1].strip()
            if idx in out and out[idx] != raw:
                raise DataError(f"index {idx} is given twice", path=str(path), line=lineno, hint="each index must name one id")
            out[idx] = raw
    return out


def _read_text_file(path: Path, report: ReadReport) -> tuple[list[str], list[str | None]]:
    ids: list[str] = []
    texts: list[str | None] = []
    seen: set[str] = set()
    dup = 0
    with open_text(path) as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        if len(header) != 2 or not header[0].startswith("item_id"):
            raise DataError(
                f"expected the header 'item_id:token<TAB>text:token_seq', got {header}", path=str(path), line=1, hint="check the file"
            )
        for lineno, line in enumerate(fh, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            item, sep, text = line.partition("\t")
            if not sep or not item.strip():
                raise DataError("expected '<item id><TAB><text>'", path=str(path), line=lineno, hint="fix or delete this line")
            item = item.strip()
            if item in seen:
                dup += 1
                continue
            seen.add(item)
            ids.append(item)
            texts.append(none_if_blank(text.strip()))
    if dup:
        report.add("read", dup, f"duplicate item ids in {path.name}: kept the first", file=str(path))
    return ids, texts


# =========================================================================== lcrec


def read_lcrec(path: str | Path, **options: Any) -> RawDataset:
    """Read the LC-Rec JSON layout (see the module docstring)."""
    opts = check_options("lcrec", options, LCREC_OPTIONS)
    folder = require_dir(as_path(path), "lcrec", "a folder with <Name>.inter.json and <Name>.item.json")
    report = ReadReport()
    name = opts["name"]
    if name is None:
        stems = sorted(p.name[: -len(".inter.json")] for p in folder.glob("*.inter.json"))
        if not stems:
            raise DataError("no <Name>.inter.json in the folder", path=str(folder), hint="check the path")
        if len(stems) > 1:
            raise several_datasets("lcrec", folder, {st: [f"{st}.inter.json"] for st in stems})
        name = stems[0]
    inter_path = require_file(folder / f"{name}.inter.json", f"{name}.inter.json", "check option 'name'")
    inter = _load_json(inter_path)
    if not isinstance(inter, dict):
        raise DataError("expected a JSON object {user: [item, ...]}", path=str(inter_path), hint="check the file")
    users: list[str] = []
    items: list[str] = []
    for user, seq in inter.items():
        if not isinstance(seq, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in seq):
            raise DataError(
                f"user {user!r}: expected a list of item indices", path=str(inter_path), hint="the file maps each user to [item, ...]"
            )
        for i in seq:
            users.append(str(user))
            items.append(str(i))
    interactions = _sequence_interactions(users, items)

    files = {"inter": str(inter_path)}
    catalogue = None
    item_path = folder / f"{name}.item.json"
    if item_path.is_file():
        files["item"] = str(item_path)
        meta = _load_json(item_path)
        if not isinstance(meta, dict):
            raise DataError("expected a JSON object {item: {title, ...}}", path=str(item_path), hint="check the file")
        ids = [str(k) for k in meta]
        records = list(meta.values())
        if not all(isinstance(r, dict) for r in records):
            raise DataError("every item must be an object {title, description, brand, categories}", path=str(item_path), hint="check the file")
        keys: list[str] = ["description", "brand", "categories"]
        for r in records:
            for k, v in r.items():
                if k not in keys and k != "title" and isinstance(v, str):
                    keys.append(k)
        extra = [k for k in keys[3:] if all(k in r for r in records)]
        fields = [k for k in keys[:3] if any(k in r for r in records)] + extra
        text = {k: [_text_value(r.get(k)) for r in records] for k in fields if k not in ("images", "price", "domain", "item_id")}
        catalogue = Catalogue.build(
            ids, title=[_text_value(r.get("title")) for r in records], text=text, images=_empty_images(len(ids))
        )
    else:
        report.add("read", 0, f"no {item_path.name}: no catalogue")
    return RawDataset(
        name=name,
        interactions=interactions,
        catalogue=catalogue,
        time_is_order=True,
        report=report,
        source={"format": "lcrec", "path": str(folder), "files": files},
    )


def _text_value(v: Any) -> str | None:
    if isinstance(v, list):
        return join_text(v)
    return none_if_blank(v.strip() if isinstance(v, str) else v)


# =========================================================================== amazon-raw

_REVIEW_SCHEMA = pa.schema(
    [("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float64()), ("unixReviewTime", pa.int64())]
)
_META_SCHEMA_2018 = pa.schema(
    [
        ("asin", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("category", pa.list_(pa.string())),
        ("description", pa.list_(pa.string())),
        ("price", pa.string()),
        ("imageURL", pa.list_(pa.string())),
        ("imageURLHighRes", pa.list_(pa.string())),
    ]
)


def read_amazon_raw(path: str | Path, **options: Any) -> RawDataset:
    """Read raw Amazon review + metadata JSON lines (see the module docstring)."""
    opts = check_options("amazon-raw", options, RAW_OPTIONS)
    check_choice("amazon-raw", "on_bad_line", opts["on_bad_line"], ("error", "skip"))
    skip = opts["on_bad_line"] == "skip"
    base = as_path(path)
    report = ReadReport()
    if base.is_file():
        folder = base.parent
        reviews_path = base if opts["reviews"] is None else resolve_option_path(opts["reviews"], folder)
    elif base.is_dir():
        folder = base
        reviews_path = resolve_option_path(opts["reviews"], folder) if opts["reviews"] else _find_reviews(folder)
    else:
        raise DataError("no such file or folder", path=str(base), hint="give the reviews file or its folder")
    require_file(reviews_path, "reviews file", "check option 'reviews'")
    meta_path: Path | None
    if opts["meta"]:
        meta_path = require_file(resolve_option_path(opts["meta"], folder), "meta file", "check option 'meta'")
    else:
        metas = sorted(p for p in folder.glob("meta_*") if p.is_file() and p.name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")))
        if len(metas) > 1:
            raise ConfigError(f"{folder}: several meta files ({', '.join(p.name for p in metas)}); pick one with the reader option meta, e.g. -r meta={metas[0].name}")
        meta_path = metas[0] if metas else None

    interactions = _read_reviews(reviews_path, skip, report)
    catalogue = None
    if meta_path is not None:
        images_dir = resolve_option_path(opts["images_dir"], folder) if opts["images_dir"] else None
        if images_dir is not None and not images_dir.is_dir():
            raise DataError("images_dir is not a folder", path=str(images_dir), hint="check option 'images_dir'")
        catalogue = _read_meta(meta_path, skip, images_dir, report)
    else:
        report.add("read", 0, "no meta file: no catalogue")
    name = opts["name"] or re.sub(r"(\.jsonl?)?(\.gz)?$", "", reviews_path.name)
    files = {"reviews": str(reviews_path)}
    if meta_path is not None:
        files["meta"] = str(meta_path)
    return RawDataset(
        name=name,
        interactions=interactions,
        catalogue=catalogue,
        time_is_order=False,
        report=report,
        source={"format": "amazon-raw", "path": str(folder), "files": files},
    )


def _find_reviews(folder: Path) -> Path:
    cands = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith("meta_") and p.name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz"))
    )
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise DataError("no reviews file (*.json or *.json.gz) in the folder", path=str(folder), hint="name it with option 'reviews'")
    raise ConfigError(f"{folder}: several possible reviews files ({', '.join(p.name for p in cands)}); pick one with the reader option reviews, e.g. -r reviews={cands[0].name}")


def _iter_records(path: Path, skip: bool, report: ReadReport, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line: JSON, else a Python dict literal (2014 meta)."""
    bad = 0
    with open_text(path, errors="strict") as fh:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text: {e.reason}", path=str(path), line=lineno + 1, hint="re-encode the file as UTF-8") from None
            if not line:
                break
            lineno += 1
            s = line.strip()
            if not s:
                continue
            obj: Any = None
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                try:
                    obj = ast.literal_eval(s)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    obj = e
            if not isinstance(obj, dict):
                if skip:
                    bad += 1
                    continue
                why = f"{obj.msg} at column {obj.colno}" if isinstance(obj, json.JSONDecodeError) else "not an object"
                raise DataError(
                    f"malformed {what} line ({why}): {s[:80]!r}",
                    path=str(path),
                    line=lineno,
                    hint="fix or delete the line, or set option on_bad_line: skip",
                )
            yield lineno, obj
    if bad:
        report.add("read", bad, f"malformed lines skipped in {path.name}", file=str(path))


def _read_reviews(path: Path, skip: bool, report: ReadReport) -> pa.Table:
    table = None
    try:
        table = pajson.read_json(
            pa.input_stream(str(path), compression="detect"),
            parse_options=pajson.ParseOptions(explicit_schema=_REVIEW_SCHEMA, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        table = None  # malformed or not strict JSON: the line scan below finds out which
    if table is not None:
        required = ["reviewerID", "asin", "unixReviewTime"]
        ok = None
        for c in required:
            valid = pc.is_valid(clean_text(table.column(c))) if c != "unixReviewTime" else pc.is_valid(table.column(c))
            ok = valid if ok is None else pc.and_(ok, valid)
        assert ok is not None
        n_bad = len(ok) - pc.sum(ok).as_py() if len(ok) else 0
        if n_bad == 0 or skip:
            if n_bad:
                report.add("read", n_bad, f"review lines without reviewerID, asin or unixReviewTime skipped in {path.name}", file=str(path))
                table = table.filter(ok)
            return make_interactions(
                {
                    "user_id": table.column("reviewerID"),
                    "item_id": table.column("asin"),
                    "timestamp": table.column("unixReviewTime").cast(pa.float64()),
                    "rating": table.column("overall"),
                }
            )
    # slow path: one line at a time, exact line numbers
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    ratings: list[float | None] = []
    missing = 0
    for lineno, rec in _iter_records(path, skip, report, "review"):
        user, item, t = rec.get("reviewerID"), rec.get("asin"), rec.get("unixReviewTime")
        rating = rec.get("overall")
        ok_t = isinstance(t, (int, float)) and not isinstance(t, bool) or (isinstance(t, str) and t.strip().isdigit())
        ok_r = rating is None or (isinstance(rating, (int, float)) and not isinstance(rating, bool))
        if not (none_if_blank(user) and none_if_blank(item) and ok_t and ok_r):
            if skip:
                missing += 1
                continue
            raise DataError(
                "a review needs reviewerID, asin and a numeric unixReviewTime (and a numeric overall if any)",
                path=str(path),
                line=lineno,
                hint="fix or delete the line, or set option on_bad_line: skip",
            )
        users.append(str(user))
        items.append(str(item))
        times.append(float(t))  # type: ignore[arg-type]
        ratings.append(None if rating is None else float(rating))
    if missing:
        report.add("read", missing, f"review lines without reviewerID, asin or unixReviewTime skipped in {path.name}", file=str(path))
    return make_interactions({"user_id": users, "item_id": items, "timestamp": times, "rating": pa.array(ratings, pa.float64())})


def _read_meta(path: Path, skip: bool, images_dir: Path | None, report: ReadReport) -> Catalogue:
    try:
        cols = _meta_fast(path, skip, report)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        cols = None  # e.g. text that is not UTF-8: the line scan names the line
    if cols is None:
        cols = _meta_slow(path, skip, report)
    ids: list[str] = cols.pop("asin")
    prices_raw: list[Any] = cols.pop("price")
    # first row of each asin
    seen: set[str] = set()
    keep = []
    for a in ids:
        keep.append(a not in seen)
        seen.add(a)
    dup = len(ids) - sum(keep)
    if dup:
        report.add("read", dup, f"duplicate asins in {path.name}: kept the first row", file=str(path))
        ids = [a for a, k in zip(ids, keep) if k]
        prices_raw = [p for p, k in zip(prices_raw, keep) if k]
        cols = {k: [v for v, kk in zip(vals, keep) if kk] for k, vals in cols.items()}
    parsed: dict[Any, tuple[float | None, bool]] = {}
    prices: list[float | None] = []
    unparsed = 0
    for p in prices_raw:
        key = (type(p), p) if not isinstance(p, list) else (list, str(p))
        if key not in parsed:
            parsed[key] = parse_price(p) if not isinstance(p, list) else (None, False)
        value, ok = parsed[key]
        prices.append(value)
        unparsed += not ok
    if unparsed:
        report.add("read", unparsed, f"prices that are not a single amount (e.g. ranges) in {path.name}: price null", file=str(path))
    images = _empty_images(len(ids))
    image_root = None
    if images_dir is not None:
        found = list_images(images_dir)
        images = [[found[a]] if a in found else [] for a in ids]
        image_root = str(images_dir.resolve())
        without = sum(1 for im in images if not im)
        if without:
            report.add("read", without, f"items without an image in {images_dir} (kept, images=[])")
    title = cols.pop("title")
    return Catalogue.build(ids, title=title, text=cols, images=images, price=pa.array(prices, pa.float64()), image_root=image_root)


def _meta_fast(path: Path, skip: bool, report: ReadReport) -> dict[str, list[Any]] | None:
    """2018-style meta through pyarrow's JSON reader; None when the file does not fit that schema."""
    try:
        table = pajson.read_json(
            pa.input_stream(str(path), compression="detect"),
            parse_options=pajson.ParseOptions(explicit_schema=_META_SCHEMA_2018, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    asin = clean_text(table.column("asin"))
    if asin.null_count:
        if not skip:
            return None  # the line scan reports the exact line
        report.add("read", asin.null_count, f"meta lines without an asin skipped in {path.name}", file=str(path))
        keep = pc.is_valid(asin)
        table, asin = table.filter(keep), asin.filter(keep)
    hi = table.column("imageURLHighRes").combine_chunks()
    lo = table.column("imageURL").combine_chunks()
    urls = pc.if_else(pc.fill_null(pc.greater(pc.list_value_length(hi), 0), False), hi, lo)
    return {
        "asin": asin.to_pylist(),
        "title": clean_text(table.column("title")).to_pylist(),
        "brand": clean_text(table.column("brand")).to_pylist(),
        "categories": clean_text(pc.binary_join(_strip_items(table.column("category")), ", ")).to_pylist(),
        "description": clean_text(pc.binary_join(_strip_items(table.column("description")), " ")).to_pylist(),
        "image_urls": clean_text(pc.binary_join(_strip_items(urls), "|")).to_pylist(),
        "price": table.column("price").to_pylist(),
    }


def _strip_items(lists: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Trim list items and drop the blank ones, keeping null lists null."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    keep = pc.fill_null(pc.not_equal(flat, ""), False).to_numpy(zero_copy_only=False)
    flat_np = flat.filter(pa.array(keep))
    counts = np.bincount(parents[keep], minlength=len(lists))
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
    mask = lists.is_null()
    return pa.ListArray.from_arrays(pa.array(offsets), flat_np, mask=mask)


def _meta_slow(path: Path, skip: bool, report: ReadReport) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {k: [] for k in ("asin", "title", "brand", "categories", "description", "image_urls", "price")}
    missing = 0
    for lineno, rec in _iter_records(path, skip, report, "meta"):
        asin = none_if_blank(rec.get("asin"))
        if asin is None:
            if skip:
                missing += 1
                continue
            raise DataError("a meta line without an asin", path=str(path), line=lineno, hint="fix or delete the line, or set option on_bad_line: skip")
        cols["asin"].append(asin.strip())
        cols["title"].append(_meta_text(rec.get("title")))
        cols["brand"].append(_meta_text(rec.get("brand")))
        cats = rec.get("category", rec.get("categories"))
        cols["categories"].append(join_text(_flatten_categories(cats)))
        desc = rec.get("description")
        cols["description"].append(join_text(desc, " ") if isinstance(desc, list) else _meta_text(desc))
        urls = rec.get("imageURLHighRes") or rec.get("imageURL") or rec.get("imUrl")
        cols["image_urls"].append(join_text(urls if isinstance(urls, list) else [urls], "|") if urls else None)
        cols["price"].append(rec.get("price"))
    if missing:
        report.add("read", missing, f"meta lines without an asin skipped in {path.name}", file=str(path))
    return cols


def _meta_text(v: Any) -> str | None:
    if v is None or isinstance(v, (dict, list)):
        return join_text(v) if isinstance(v, list) else None
    return none_if_blank(str(v).strip())


def _flatten_categories(cats: Any) -> list[str]:
    """2018: a list of names; 2014: a list of category paths (lists). Flattened, without repeats."""
    if cats is None:
        return []
    if isinstance(cats, str):
        return [cats]
    out: list[str] = []
    for c in cats:
        for name in c if isinstance(c, list) else [c]:
            if isinstance(name, str) and name.strip() and name.strip() not in out:
                out.append(name.strip())
    return out


__all__ = ["read_s3rec", "read_unisrec", "read_lcrec", "read_amazon_raw"]
