"""Format ``table``: any interactions table (CSV/TSV, optionally gzipped, or Parquet) with a column mapping.

``path`` is the interactions file. Every id column is read as a string exactly as written (leading
zeros stay). Example configuration::

    format: table
    path: data/events.csv
    options:
      user_col: customer
      item_col: sku
      time_col: ts            # null: no time, the row order within each user is used
      time_format: iso        # "unix" (seconds), "unix_ms", "iso", or a strptime format like "%d/%m/%Y %H:%M"
      price_col: paid
      items:
        path: data/products.parquet      # relative to the interactions file's folder
        item_col: sku
        title_col: name
        text_cols: [brand, category, description]
        image_col: image                 # one path, or several separated by "|"
        image_root: data/images          # relative image paths are under it (default: the items file's folder)
        price_col: list_price

Interactions options:
  user_col (default "user_id"), item_col ("item_id"), time_col ("timestamp", or null),
  time_format ("auto": numbers are unix seconds, strings ISO 8601, Parquet dates/timestamps as they are),
  rating_col, price_col, domain_col (default none), delimiter (CSV only; default "," or tab for .tsv),
  name (default: the file stem)
Items options (``items``: a path, or a mapping with ``path`` and):
  item_col (default: the interactions item_col), title_col, text_cols (list), image_col, image_root,
  price_col, domain_col, check_images (default true: paths to missing files are dropped and counted)

Result: interactions with user_id, item_id, timestamp (seconds since the epoch, or the position in the
user's rows with ``time_is_order`` True) and the mapped optional columns; a catalogue with the mapped
columns (text fields named after their columns; images relative to ``image_root``).

A mapped column that does not exist raises DataError naming the file, the column and the columns
that exist; a timestamp or number that does not parse raises DataError with its row number
(for CSV the line number, counting the header as line 1).
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mmrec.data.readers._common import (
    as_path,
    check_list_option,
    check_options,
    clean_text,
    drop_duplicate_ids,
    drop_null_ids,
    iso_to_seconds,
    positions_within_groups,
    require_file,
    resolve_option_path,
    strptime_to_seconds,
    temporal_to_seconds,
)
from mmrec.data.schema import Catalogue, RawDataset, ReadReport, make_interactions
from mmrec.errors import ConfigError, DataError

FORMAT = "table"
OPTIONS: dict[str, Any] = {
    "user_col": "user_id",
    "item_col": "item_id",
    "time_col": "timestamp",
    "time_format": "auto",
    "rating_col": None,
    "price_col": None,
    "domain_col": None,
    "delimiter": None,
    "items": None,
    "name": None,
}
ITEM_OPTIONS: dict[str, Any] = {
    "path": None,
    "item_col": None,
    "title_col": None,
    "text_cols": None,
    "image_col": None,
    "image_root": None,
    "price_col": None,
    "domain_col": None,
    "delimiter": None,
    "check_images": True,
}
_SPECIAL_TIME_FORMATS = ("auto", "unix", "unix_ms", "iso")


def read_table(path: str | Path, **options: Any) -> RawDataset:
    """Read an interactions CSV/Parquet file and an optional items file (see the module docstring)."""
    opts = check_options(FORMAT, options, OPTIONS)
    inter_path = require_file(as_path(path), "interactions file")
    report = ReadReport()
    for key in ("user_col", "item_col"):
        if not opts[key]:
            raise ConfigError(f"format 'table': option {key!r} is required")
    if opts["time_format"] not in _SPECIAL_TIME_FORMATS and "%" not in str(opts["time_format"]):
        raise ConfigError(
            f"format 'table': time_format must be one of {list(_SPECIAL_TIME_FORMATS)} or a strptime format "
            f"such as '%Y-%m-%d %H:%M:%S', got {opts['time_format']!r}"
        )

    item_opts = None
    if opts["items"] is not None:
        item_opts = opts["items"] if isinstance(opts["items"], dict) else {"path": opts["items"]}
        item_opts = check_options("table (items)", item_opts, ITEM_OPTIONS)
        if not item_opts["path"]:
            raise ConfigError("format 'table': option 'items' needs a 'path'")
        if item_opts["text_cols"] is not None:
            item_opts["text_cols"] = check_list_option(FORMAT, "items.text_cols", item_opts["text_cols"], "column names")

    wanted = {"user": opts["user_col"], "item": opts["item_col"]}
    for key in ("time_col", "rating_col", "price_col", "domain_col"):
        if opts[key]:
            wanted[key] = opts[key]
    string_cols = [opts["user_col"], opts["item_col"]] + ([opts["domain_col"]] if opts["domain_col"] else [])
    table = read_columns(inter_path, list(dict.fromkeys(wanted.values())), string_cols, opts["delimiter"])
    table = drop_null_ids(table, [opts["user_col"], opts["item_col"]], report, inter_path)

    cols: dict[str, Any] = {"user_id": table.column(opts["user_col"]), "item_id": table.column(opts["item_col"])}
    time_is_order = not opts["time_col"]
    if time_is_order:
        cols["timestamp"] = pa.array(positions_within_groups(cols["user_id"]))
    else:
        cols["timestamp"] = to_seconds(table.column(opts["time_col"]), opts["time_format"], inter_path, opts["time_col"])
    for key, field in (("rating_col", "rating"), ("price_col", "price")):
        if opts[key]:
            cols[field] = to_float(table.column(opts[key]), inter_path, opts[key])
    if opts["domain_col"]:
        cols["domain"] = clean_text(table.column(opts["domain_col"]))
    interactions = make_interactions(cols)

    files = {"interactions": str(inter_path)}
    catalogue = None
    if item_opts is not None:
        items_path = require_file(resolve_option_path(item_opts["path"], inter_path.parent), "items file", "check option items.path")
        catalogue = _read_items(items_path, item_opts, opts["item_col"], report)
        files["items"] = str(items_path)
    return RawDataset(
        name=opts["name"] or _stem(inter_path),
        interactions=interactions,
        catalogue=catalogue,
        time_is_order=time_is_order,
        report=report,
        source={"format": FORMAT, "path": str(inter_path), "files": files},
    )


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def _delimiter(path: Path, delimiter: str | None) -> str:
    if delimiter:
        return delimiter
    return "\t" if ".tsv" in path.suffixes else ","


def columns_of(path: Path, delimiter: str | None = None) -> list[str]:
    """Column names of a CSV (header line) or Parquet file."""
    if _is_parquet(path):
        return list(pq.read_schema(path).names)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
            return [c.strip() for c in next(csv.reader(fh, delimiter=_delimiter(path, delimiter)), [])]
    except UnicodeDecodeError:
        raise DataError("the header is not UTF-8 text", path=str(path), line=1, hint="save the file as UTF-8") from None


def read_columns(path: Path, columns: list[str], string_cols: list[str], delimiter: str | None = None) -> pa.Table:
    """Read only ``columns`` (``string_cols`` as strings); a missing column raises DataError listing the others."""
    existing = columns_of(path, delimiter)
    missing = [c for c in columns if c not in existing]
    if missing:
        raise DataError(
            f"no column {', '.join(repr(c) for c in missing)}; the file has: {', '.join(existing)}",
            path=str(path),
            line=None if _is_parquet(path) else 1,
            hint="fix the column mapping in the options (time_col: null reads a file without times)",
        )
    if _is_parquet(path):
        table = pq.read_table(path, columns=columns)
        for c in string_cols:
            i = table.schema.get_field_index(c)
            if not pa.types.is_string(table.schema.field(i).type):
                table = table.set_column(i, c, table.column(c).cast(pa.string()))
        return table
    try:
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=_delimiter(path, delimiter)),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in string_cols}
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:  # a type guess failed on a later block: read everything as strings, columns convert below
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=_delimiter(path, delimiter)),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns}),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"cannot read the table: {e}", path=str(path),
                        hint="a row has the wrong number of fields, or the file is cut or not UTF-8: fix it and rerun") from None


def _row_line(path: Path, row: int) -> tuple[int | None, str]:
    """(line for DataError, words for the message) of 0-based data row ``row``."""
    if _is_parquet(path):
        return None, f"row {row + 1}"
    return row + 2, f"data row {row + 1}"


def to_seconds(col: pa.ChunkedArray | pa.Array, time_format: str, path: Path, name: str) -> pa.Array:
    """Convert a time column to float seconds since the epoch; raise DataError with the row of a bad value."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    fmt = time_format
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        out = temporal_to_seconds(col)
    else:
        if fmt == "auto":
            fmt = "unix" if (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) else "iso"
            if fmt == "iso":
                numeric = pc.fill_null(pc.match_substring_regex(clean_text(col), r"^\s*-?\d+(\.\d*)?\s*$"), True)
                if pc.all(numeric).as_py():
                    fmt = "unix"
        try:
            if fmt in ("unix", "unix_ms"):
                out = to_float(col, path, name)
                if fmt == "unix_ms":
                    out = pc.divide(out, 1000.0)
            elif fmt == "iso":
                out = iso_to_seconds(clean_text(col))
            else:
                out = strptime_to_seconds(clean_text(col), fmt)
        except ValueError as e:
            row, value = e.args
            line, where = _row_line(path, row)
            what = {"iso": "an ISO 8601 date/time", "unix": "a number (unix seconds)", "unix_ms": "a number (unix ms)"}.get(
                fmt, f"a time in the format {fmt!r}"
            )
            raise DataError(
                f"column {name!r}, {where}: {value!r} is not {what}",
                path=str(path),
                line=line,
                hint="fix the value, or set option time_format to the format the column uses",
            ) from None
    nulls = out.is_null()
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    if out.null_count:
        row = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
        line, where = _row_line(path, row)
        raise DataError(
            f"column {name!r}, {where}: the time is empty", path=str(path), line=line, hint="fill it in or delete the row"
        )
    return out


def to_float(col: pa.ChunkedArray | pa.Array, path: Path, name: str) -> pa.Array:
    """Numbers, or strings holding numbers (blank -> null); raises ValueError(row, value) on a bad one."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        return col.cast(pa.float64())
    if pa.types.is_null(col.type):
        return col.cast(pa.float64())
    text = clean_text(col)
    try:
        return pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        for i, v in enumerate(text.to_pylist()):
            if v is None:
                continue
            try:
                float(v)
            except ValueError:
                line, where = _row_line(path, i)
                raise DataError(
                    f"column {name!r}, {where}: {v!r} is not a number", path=str(path), line=line, hint="fix the value or delete the row"
                ) from None
        raise


def _read_items(path: Path, o: dict[str, Any], default_item_col: str, report: ReadReport) -> Catalogue:
    item_col = o["item_col"] or default_item_col
    text_cols = list(o["text_cols"] or [])
    clash = [c for c in text_cols if c in ("item_id", "title", "images", "price", "domain")]
    if clash:
        raise ConfigError(f"format 'table': items.text_cols {clash} would clash with catalogue columns; rename them in the file")
    wanted = [item_col] + [o[k] for k in ("title_col", "image_col", "price_col", "domain_col") if o[k]] + text_cols
    string_cols = [c for c in wanted if c != o["price_col"]]
    table = read_columns(path, list(dict.fromkeys(wanted)), string_cols, o["delimiter"])
    table = drop_null_ids(table, [item_col], report, path)
    table = drop_duplicate_ids(table, item_col, report, path)
    ids = table.column(item_col)
    n = table.num_rows

    images: list[list[str]] = [[] for _ in range(n)]
    image_root = resolve_option_path(o["image_root"], path.parent) if o["image_root"] else path.parent
    if o["image_col"]:
        missing = 0
        images = []
        for value in table.column(o["image_col"]).to_pylist():
            paths = [p.strip() for p in (value or "").split("|") if p.strip()]
            if o["check_images"]:
                kept = [p for p in paths if os.path.isfile(os.path.join(image_root, p))]
                missing += len(paths) - len(kept)
                paths = kept
            images.append(paths)
        if missing:
            report.add("read", missing, f"image paths in {path.name} that are not files under {image_root} (dropped)", file=str(path))
    price = to_float(table.column(o["price_col"]), path, o["price_col"]) if o["price_col"] else None
    return Catalogue.build(
        ids,
        title=clean_text(table.column(o["title_col"])) if o["title_col"] else None,
        text={c: clean_text(table.column(c)) for c in text_cols},
        images=images,
        price=price,
        domain=clean_text(table.column(o["domain_col"])) if o["domain_col"] else None,
        image_root=str(image_root.resolve()),
    )


__all__ = ["read_table", "read_columns", "columns_of", "to_seconds", "to_float", "OPTIONS", "ITEM_OPTIONS", "FORMAT"]
