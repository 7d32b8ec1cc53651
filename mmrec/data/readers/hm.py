"""Format ``hm``: H&M Personalized Fashion Recommendations (Kaggle) CSV files.

Expected folder layout (``path`` is the folder)::

    transactions_train*.csv   t_dat,customer_id,article_id,price,sales_channel_id
                              2018-09-20,000058a1...,0663713001,0.0508,2
    articles*.csv             article_id,product_code,prod_name,product_type_no,product_type_name,
                              product_group_name,...,garment_group_name,detail_desc  (25 columns)
    customers*.csv            optional: customer_id,FN,Active,club_member_status,
                              fashion_news_frequency,age,postal_code
    images/<article_id>.jpg   optional; the Kaggle original nests them as
                              images/<first 3 digits>/<article_id>.jpg: both work

``article_id`` is read as a string, so the leading zero stays ("0663713001"); ids written without it
(a CSV saved from an integer column) are padded back to 10 digits, and the report says how many.

Result:
  interactions  user_id = customer_id, item_id = article_id, timestamp = t_dat as seconds since the
                epoch (midnight UTC; events of one day keep the file's row order), price = the price
                paid; domain = sales_channel_id when ``domain_field: sales_channel_id``
  catalogue     one row per article of articles*.csv: title = prod_name; text fields
                product_type_name, product_group_name, graphical_appearance_name, colour_group_name,
                perceived_colour_value_name, perceived_colour_master_name, department_name,
                index_name, index_group_name, section_name, garment_group_name, detail_desc (those
                present); images = ["images/<...>.jpg"] relative to ``image_root`` (the folder) when
                the file exists, else []; price = the median price paid for the article in the
                transactions (null when it was never bought); domain = the ``domain_field`` column
                when it names an articles column (e.g. product_group_name), else null.
                Articles bought but absent from articles*.csv get no catalogue row: prepare decides
                what to do with them (the report counts them).
  users         customers*.csv with customer_id renamed user_id, when present

Options:
  transactions, articles, customers   file names (relative to the folder) when the globs are ambiguous
  images_dir    image folder relative to the dataset folder (default "images")
  text_fields   list of articles columns to keep as text fields (default: the list above)
  domain_field  an articles column for the catalogue domain, or "sales_channel_id" for the
                interaction domain (default: none)
  name          dataset name (default: the folder name)
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mmrec.data.readers._common import (
    as_path,
    check_list_option,
    check_options,
    clean_text,
    drop_duplicate_ids,
    drop_null_ids,
    find_one,
    image_lists,
    list_images,
    parsing,
    require_dir,
    require_file,
    resolve_option_path,
    strptime_to_seconds,
    temporal_to_seconds,
)
from mmrec.data.readers.generic import to_float
from mmrec.data.schema import Catalogue, RawDataset, ReadReport, make_interactions
from mmrec.errors import ConfigError, DataError

FORMAT = "hm"
LAYOUT = "an H&M folder with transactions_train*.csv and articles*.csv (and optional customers*.csv, images/)"
DEFAULT_TEXT_FIELDS = (
    "product_type_name",
    "product_group_name",
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "perceived_colour_master_name",
    "department_name",
    "index_name",
    "index_group_name",
    "section_name",
    "garment_group_name",
    "detail_desc",
)
OPTIONS: dict[str, Any] = {
    "transactions": None,
    "articles": None,
    "customers": None,
    "images_dir": "images",
    "text_fields": None,
    "domain_field": None,
    "name": None,
}
ARTICLE_ID_WIDTH = 10


def read_hm(path: str | Path, **options: Any) -> RawDataset:
    """Read the H&M Kaggle files (see the module docstring for the layout and options)."""
    opts = check_options(FORMAT, options, OPTIONS)
    if opts["text_fields"] is not None:  # before reading the (large) transactions file
        opts["text_fields"] = check_list_option(FORMAT, "text_fields", opts["text_fields"], "articles column names")
    folder = require_dir(as_path(path), FORMAT, LAYOUT)
    report = ReadReport()

    def locate(option: str, patterns: tuple[str, ...], what: str, required: bool) -> Path | None:
        if opts[option]:
            return require_file(resolve_option_path(opts[option], folder), f"{what} file", f"check option {option!r}")
        return find_one(folder, patterns, what, option, required=required)

    tx_path = locate("transactions", ("transactions_train*.csv", "transactions*.csv", "transactions*.csv.gz"), "transactions", True)
    art_path = locate("articles", ("articles*.csv", "articles*.csv.gz"), "articles", False)
    cust_path = locate("customers", ("customers*.csv", "customers*.csv.gz"), "customers", False)
    assert tx_path is not None

    domain_field = opts["domain_field"]
    tx = _read_csv(
        tx_path,
        {"t_dat": pa.date32(), "customer_id": pa.string(), "article_id": pa.string(), "price": pa.float64()}
        | ({"sales_channel_id": pa.string()} if domain_field == "sales_channel_id" else {}),
    )
    tx = drop_null_ids(tx, ["customer_id", "article_id"], report, tx_path)
    article_ids = _pad_article_ids(tx.column("article_id"), report, tx_path)
    seconds = temporal_to_seconds(tx.column("t_dat"))
    if seconds.null_count:
        row = int(np.flatnonzero(seconds.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("empty t_dat", path=str(tx_path), line=row + 2, hint="fill in the date or delete this row")
    cols: dict[str, Any] = {
        "user_id": tx.column("customer_id"),
        "item_id": article_ids,
        "timestamp": seconds,
        "price": tx.column("price"),
    }
    if domain_field == "sales_channel_id":
        cols["domain"] = clean_text(tx.column("sales_channel_id"))
    interactions = make_interactions(cols)

    catalogue = None
    if art_path is not None:
        catalogue = _read_articles(art_path, folder, opts, interactions, report)
    else:
        report.add("read", 0, "no articles*.csv: no catalogue")
        if domain_field not in (None, "sales_channel_id"):
            raise ConfigError(f"format 'hm': domain_field {domain_field!r} needs an articles file")

    users = None
    if cust_path is not None:
        users = _read_csv(cust_path, {"customer_id": pa.string(), "postal_code": pa.string()}, all_columns=True)
        users = users.rename_columns(["user_id" if c == "customer_id" else c for c in users.column_names])
        users = drop_duplicate_ids(users, "user_id", report, cust_path, what="customer")

    files = {"transactions": str(tx_path)}
    if art_path is not None:
        files["articles"] = str(art_path)
    if cust_path is not None:
        files["customers"] = str(cust_path)
    return RawDataset(
        name=opts["name"] or folder.resolve().name,
        interactions=interactions,
        catalogue=catalogue,
        users=users,
        time_is_order=False,
        report=report,
        source={"format": FORMAT, "path": str(folder), "files": files},
    )


def _read_csv(path: Path, types: dict[str, pa.DataType], *, all_columns: bool = False) -> pa.Table:
    """Read the named columns (all of them with ``all_columns``), with a clear error for missing ones
    and for a damaged file."""
    with parsing(path):
        return _read_csv_columns(path, types, all_columns)


def _read_csv_columns(path: Path, types: dict[str, pa.DataType], all_columns: bool) -> pa.Table:
    header = _csv_columns(path)
    missing = [c for c in types if c not in header]
    if missing and not all_columns:
        raise DataError(
            f"no column {', '.join(repr(m) for m in missing)}; the file has {', '.join(header)}",
            path=str(path),
            line=1,
            hint="is this the right file?",
        )
    column_types = {c: t for c, t in types.items() if c in header}
    if all_columns:
        column_types |= {c: pa.string() for c in header if c not in column_types and c.endswith("_id")}
    include = None if all_columns else list(types)
    try:
        return pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(column_types=column_types, include_columns=include)
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        error = e
    # a value did not convert: read the columns as text and find the row
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in (header if all_columns else types)}, include_columns=include
        ),
    )
    for c, t in column_types.items():
        if pa.types.is_date(t):
            try:
                strptime_to_seconds(clean_text(table.column(c)), "%Y-%m-%d")
            except ValueError as bad:
                row, value = bad.args
                raise DataError(
                    f"{c} must be a date YYYY-MM-DD, got {value!r}", path=str(path), line=row + 2, hint="fix or delete this row"
                ) from None
        elif pa.types.is_floating(t):
            to_float(table.column(c), path, c)  # raises DataError with the row
    raise DataError(f"cannot parse the file: {error}", path=str(path), hint="check the row the message names")


def _csv_columns(path: Path) -> list[str]:
    """The header of a CSV file (plain or .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
        return [c.strip() for c in next(csv.reader(fh), [])]


def _pad_article_ids(ids: pa.ChunkedArray | pa.Array, report: ReadReport, path: Path) -> pa.Array:
    """Left-pad all-digit ids shorter than 10 characters with zeros (ids saved as integers lost them)."""
    ids = clean_text(ids)
    short = pc.and_(pc.less(pc.utf8_length(ids), ARTICLE_ID_WIDTH), pc.utf8_is_digit(ids))
    short = pc.fill_null(short, False)
    n = pc.sum(short).as_py() or 0
    if n:
        report.add("read", n, f"article ids in {path.name} shorter than 10 digits: zero-padded", file=str(path))
        ids = pc.if_else(short, pc.utf8_lpad(ids, width=ARTICLE_ID_WIDTH, padding="0"), ids)
    return ids


def _median_price(item_ids: pa.Array, prices: pa.Array) -> dict[str, float]:
    """Exact median of the non-null prices of each item."""
    valid = pc.is_valid(prices)
    item_ids, prices = item_ids.filter(valid), prices.filter(valid)
    if not len(item_ids):
        return {}
    enc = pc.dictionary_encode(item_ids)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    p = prices.to_numpy(zero_copy_only=False)
    order = np.lexsort((p, codes))
    codes, p = codes[order], p[order]
    counts = np.bincount(codes, minlength=len(enc.dictionary))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    med = (p[starts + (counts - 1) // 2] + p[starts + counts // 2]) / 2
    return dict(zip(enc.dictionary.to_pylist(), med.tolist()))


def _read_articles(
    path: Path, folder: Path, opts: dict[str, Any], interactions: pa.Table, report: ReadReport
) -> Catalogue:
    with parsing(path):
        return _read_articles_table(path, folder, opts, interactions, report)


def _read_articles_table(
    path: Path, folder: Path, opts: dict[str, Any], interactions: pa.Table, report: ReadReport
) -> Catalogue:
    header = _csv_columns(path)
    if "article_id" not in header:
        raise DataError(f"no column 'article_id'; the file has {', '.join(header)}", path=str(path), line=1, hint="is this the articles file?")
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}))
    table = drop_null_ids(table, ["article_id"], report, path)
    table = table.set_column(table.schema.get_field_index("article_id"), "article_id", _pad_article_ids(table.column("article_id"), report, path))
    table = drop_duplicate_ids(table, "article_id", report, path, what="article")
    ids = table.column("article_id").combine_chunks()

    if opts["text_fields"] is not None:
        fields = check_list_option(FORMAT, "text_fields", opts["text_fields"], "articles column names")
        missing = [f for f in fields if f not in header]
        if missing:
            raise DataError(
                f"text_fields {missing} are not columns; the file has {', '.join(header)}", path=str(path), line=1, hint="fix option 'text_fields'"
            )
    else:
        fields = [f for f in DEFAULT_TEXT_FIELDS if f in header]
    text = {f: clean_text(table.column(f)) for f in fields if f not in ("prod_name", "article_id")}

    domain = None
    domain_field = opts["domain_field"]
    if domain_field not in (None, "sales_channel_id"):
        if domain_field not in header:
            raise DataError(
                f"domain_field {domain_field!r} is not a column; the file has {', '.join(header)}",
                path=str(path),
                line=1,
                hint="use e.g. product_group_name or garment_group_name",
            )
        domain = clean_text(table.column(domain_field))

    medians = _median_price(interactions.column("item_id").combine_chunks(), interactions.column("price").combine_chunks())
    id_list = ids.to_pylist()
    price = pa.array([medians.get(i) for i in id_list], pa.float64())

    images_dir = folder / opts["images_dir"]
    images = [[] for _ in id_list]
    if images_dir.is_dir():
        images = image_lists(id_list, list_images(images_dir), prefix=f"{opts['images_dir'].rstrip('/')}/")
        without = sum(1 for im in images if not im)
        if without:
            report.add("read", without, f"articles without an image in {opts['images_dir']}/ (kept, images=[])", file=str(path))
    else:
        report.add("read", len(id_list), f"no {opts['images_dir']}/ folder: articles have no images", file=str(path))

    known = pc.is_in(interactions.column("item_id"), value_set=ids)
    unknown_rows = len(known) - (pc.sum(known).as_py() or 0)
    if unknown_rows:
        unknown_items = pc.count_distinct(interactions.column("item_id").filter(pc.invert(known))).as_py()
        report.add(
            "read",
            unknown_rows,
            f"transactions on articles absent from {path.name} ({unknown_items} articles; kept, no catalogue row)",
            file=str(path),
        )
    return Catalogue.build(
        ids,
        title=clean_text(table.column("prod_name")) if "prod_name" in header else None,
        text=text,
        images=images,
        price=price,
        domain=domain,
        image_root=str(folder.resolve()),
    )


__all__ = ["read_hm", "OPTIONS", "FORMAT", "DEFAULT_TEXT_FIELDS"]
