"""Format ``recbole``: RecBole atomic files.

Expected layout (``path`` is the folder, or the ``.inter`` file itself)::

    <folder>/<name>.inter   interactions, required
    <folder>/<name>.item    items, optional
    <folder>/<name>.user    users, optional

Each file is tab-separated, without quoting, with a header of ``field:type`` names, where type is
``token``, ``token_seq`` (space-separated tokens), ``float`` or ``float_seq``. Example (ml-100k)::

    user_id:token   item_id:token   rating:float    timestamp:float
    196             242             3               881250949

    item_id:token   movie_title:token_seq   release_year:token  class:token_seq
    1               Toy Story               1995                Animation Children's Comedy

Result:
  interactions  user_id, item_id, timestamp, rating (when the file has it). Without a timestamp
                field the timestamp is the position of the row among the user's rows (0, 1, ...)
                and ``time_is_order`` is True.
  catalogue     from ``.item``: ``item_id``; the first field whose name contains "title" becomes
                ``title``; every other token / token_seq field becomes a text field under its own
                name (token_seq kept as the space-separated string); a float field named ``price``
                becomes ``price`` and a token field named ``domain`` becomes ``domain``; other
                float fields are left out (reported). Empty values are null.
  users         from ``.user``: every field (floats as float64, the rest as strings)

Options:
  name          the file stem (default: the folder name when ``<folder>/<folder>.inter`` exists,
                else the only ``*.inter`` file)
  user_field, item_field, time_field, rating_field
                field names in ``.inter`` (defaults user_id, item_id, timestamp, rating);
                ``time_field: null`` ignores any timestamp and uses the row order
  item_id_field, user_id_field
                id field names in ``.item`` / ``.user`` (default: the interaction field names)
  title_field   the ``.item`` field used as title (default: the first whose name contains "title")

A header without types, a row with the wrong number of fields, or a float value that does not parse
raises DataError with the file and line number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mmrec.data.readers._common import (
    as_path,
    check_options,
    clean_text,
    drop_duplicate_ids,
    drop_null_ids,
    positions_within_groups,
    several_datasets,
)
from mmrec.data.schema import Catalogue, RawDataset, ReadReport, make_interactions
from mmrec.errors import DataError

FORMAT = "recbole"
LAYOUT = "a folder with <name>.inter (and optional <name>.item, <name>.user): TSV with field:type headers"
OPTIONS: dict[str, Any] = {
    "name": None,
    "user_field": "user_id",
    "item_field": "item_id",
    "time_field": "timestamp",
    "rating_field": "rating",
    "item_id_field": None,
    "user_id_field": None,
    "title_field": None,
}
TYPES = ("token", "token_seq", "float", "float_seq")


def read_recbole(path: str | Path, **options: Any) -> RawDataset:
    """Read RecBole atomic files (see the module docstring for the layout and options)."""
    opts = check_options(FORMAT, options, OPTIONS)
    inter_path = _find_inter(as_path(path), opts["name"])
    folder, stem = inter_path.parent, inter_path.name[: -len(".inter")]
    report = ReadReport()

    table, types = read_atomic(inter_path)
    user_f, item_f, time_f, rating_f = (opts[k] for k in ("user_field", "item_field", "time_field", "rating_field"))
    for f in (user_f, item_f):
        _require_field(inter_path, types, f)
    table = drop_null_ids(table, [user_f, item_f], report, inter_path)
    cols: dict[str, Any] = {"user_id": table.column(user_f), "item_id": table.column(item_f)}
    time_is_order = time_f is None or time_f not in types
    if time_is_order:
        cols["timestamp"] = pa.array(positions_within_groups(table.column(user_f)))
        if time_f is not None:
            report.add("read", 0, f"{inter_path.name} has no {time_f!r} field: timestamps are positions in each user's rows")
    else:
        ts = float_column(table, time_f, inter_path)
        bad = np.flatnonzero(ts.is_null().to_numpy(zero_copy_only=False))
        if len(bad):
            raise DataError(
                f"empty {time_f!r} value",
                path=str(inter_path),
                line=_line_of_row(inter_path, int(bad[0])),
                hint="fill in the timestamp or delete the row",
            )
        cols["timestamp"] = ts
    if rating_f and rating_f in types:
        cols["rating"] = float_column(table, rating_f, inter_path)
    interactions = make_interactions(cols)

    catalogue = None
    item_path = folder / f"{stem}.item"
    if item_path.is_file():
        catalogue = _read_items(item_path, opts["item_id_field"] or item_f, opts["title_field"], report)

    users = None
    user_path = folder / f"{stem}.user"
    if user_path.is_file():
        users = _read_users(user_path, opts["user_id_field"] or user_f, report)

    files = {"inter": str(inter_path)}
    if catalogue is not None:
        files["item"] = str(item_path)
    if users is not None:
        files["user"] = str(user_path)
    return RawDataset(
        name=stem,
        interactions=interactions,
        catalogue=catalogue,
        users=users,
        time_is_order=time_is_order,
        report=report,
        source={"format": FORMAT, "path": str(folder), "files": files},
    )


def _find_inter(path: Path, name: str | None) -> Path:
    if path.is_file():
        if not path.name.endswith(".inter"):
            raise DataError("expected a .inter file or a folder", path=str(path), hint=f"expected {LAYOUT}")
        return path
    if not path.is_dir():
        raise DataError("no such folder", path=str(path), hint=f"expected {LAYOUT}")
    if name:
        p = path / f"{name}.inter"
        if not p.is_file():
            raise DataError(f"no {name}.inter in the folder", path=str(path), hint="check option 'name'")
        return p
    own = path / f"{path.resolve().name}.inter"
    if own.is_file():
        return own
    found = sorted(p for p in path.glob("*.inter") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError("no .inter file in the folder", path=str(path), hint=f"expected {LAYOUT}")
    raise several_datasets(FORMAT, path, {p.name[: -len(".inter")]: [p.name] for p in found})


def _require_field(path: Path, types: dict[str, str], name: str) -> None:
    if name not in types:
        raise DataError(
            f"no field {name!r}; the header has {', '.join(f'{k}:{v}' for k, v in types.items())}",
            path=str(path),
            line=1,
            hint="name the field with the reader's *_field option",
        )


def read_atomic(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """Read one atomic file: every column as string, plus the header's ``{field: type}``."""
    with open(path, "rb") as fh:
        raw_header = fh.readline()
    try:
        header = raw_header.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"the header is not UTF-8 text ({e.reason})", path=str(path), line=1,
                        hint="save the file as UTF-8") from None
    types: dict[str, str] = {}
    for col in header.split("\t"):
        name, sep, typ = col.strip().rpartition(":")
        if not sep or not name or typ not in TYPES:
            raise DataError(
                f"header column {col!r} is not 'name:type' with type one of {', '.join(TYPES)}",
                path=str(path),
                line=1,
                hint="RecBole atomic files start with a header like 'user_id:token<TAB>item_id:token'",
            )
        if name in types:
            raise DataError(f"header names field {name!r} twice", path=str(path), line=1, hint="rename one of them")
        types[name] = typ
    names = list(types)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as e:
        _scan_field_counts(path, len(names))
        raise DataError(f"cannot parse the file: {e}", path=str(path), hint="check that it is tab-separated UTF-8") from None
    return table, types


def _scan_field_counts(path: Path, expected: int) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if lineno == 1 or not line:
                continue
            n = line.count("\t") + 1
            if n != expected:
                raise DataError(
                    f"expected {expected} tab-separated fields (as in the header), found {n}",
                    path=str(path),
                    line=lineno,
                    hint="fix or delete this line",
                )


def _line_of_row(path: Path, row: int) -> int:
    """1-based line of data row ``row`` (0-based), skipping the header and blank lines as pyarrow does."""
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1 or not line.strip("\r\n"):
                continue
            seen += 1
            if seen == row:
                return lineno
    return row + 2


def float_column(table: pa.Table, name: str, path: Path) -> pa.Array:
    """A string column cast to float64 (blank -> null); a bad value raises DataError with its line."""
    col = clean_text(table.column(name))
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        for i, v in enumerate(col.to_pylist()):
            if v is None:
                continue
            try:
                float(v)
            except ValueError:
                raise DataError(
                    f"field {name!r} must be a number, got {v!r}",
                    path=str(path),
                    line=_line_of_row(path, i),
                    hint="fix or delete this line",
                ) from None
        raise


def _read_items(path: Path, id_field: str, title_field: str | None, report: ReadReport) -> Catalogue:
    table, types = read_atomic(path)
    _require_field(path, types, id_field)
    table = drop_null_ids(table, [id_field], report, path)
    table = drop_duplicate_ids(table, id_field, report, path)
    if title_field is None:
        title_field = next((n for n, t in types.items() if "title" in n.lower() and t.startswith("token") and n != id_field), None)
    elif title_field not in types:
        _require_field(path, types, title_field)
    text: dict[str, pa.Array] = {}
    price = domain = None
    skipped: list[str] = []
    for name, typ in types.items():
        if name in (id_field, title_field):
            continue
        if name == "price" and typ == "float":
            price = float_column(table, name, path)
        elif name == "domain" and typ.startswith("token"):
            domain = clean_text(table.column(name))
        elif typ.startswith("token") and name not in ("title", "images", "item_id"):
            text[name] = clean_text(table.column(name))
        else:
            skipped.append(f"{name}:{typ}")
    if skipped:
        report.add("read", 0, f"{path.name}: fields not kept in the catalogue: {', '.join(skipped)}", file=str(path))
    return Catalogue.build(
        table.column(id_field),
        title=clean_text(table.column(title_field)) if title_field else None,
        text=text,
        images=[[] for _ in range(table.num_rows)],
        price=price,
        domain=domain,
    )


def _read_users(path: Path, id_field: str, report: ReadReport) -> pa.Table:
    table, types = read_atomic(path)
    _require_field(path, types, id_field)
    table = drop_null_ids(table, [id_field], report, path)
    table = drop_duplicate_ids(table, id_field, report, path, what="user")
    cols: dict[str, pa.Array] = {"user_id": table.column(id_field)}
    for name, typ in types.items():
        if name == id_field:
            continue
        key = name if name != "user_id" else "user_id_"
        cols[key] = float_column(table, name, path) if typ == "float" else clean_text(table.column(name))
    return pa.table(cols)


__all__ = ["read_recbole", "read_atomic", "OPTIONS", "FORMAT"]
