"""Readers on the real datasets in ``$MMREC_SHARED_DATA`` (default ``<repo>/../shared/data``).

Each test is skipped, with the reason, when its folder is absent. The counts are the ones the
shared data README states, except where a comment says what the reader counts instead and why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from mmrec.data.readers import detect_format, read_dataset
from mmrec.data.schema import RawDataset

SHARED = Path(os.environ.get("MMREC_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))

pytestmark = pytest.mark.realdata


def data_dir(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_dir():
        pytest.skip(f"real data {p} is absent (set MMREC_SHARED_DATA to the shared data folder)")
    return p


def read(fmt: str, rel: str, **options) -> tuple[RawDataset, float]:
    folder = data_dir(rel)
    assert detect_format(folder) == fmt
    t = time.perf_counter()
    raw = read_dataset(fmt, folder, **options)
    return raw, time.perf_counter() - t


def n_distinct(raw: RawDataset, column: str) -> int:
    return pc.count_distinct(raw.interactions.column(column)).as_py()


def n_images(raw: RawDataset) -> int:
    return sum(1 for im in raw.catalogue.table.column("images").to_pylist() if im)


def test_ml1m():
    raw, seconds = read("movielens", "ml-1m")
    assert seconds < 10, f"ml-1m took {seconds:.1f}s"
    assert raw.interactions.num_rows == 1_000_209
    assert n_distinct(raw, "user_id") == 6_040
    assert n_distinct(raw, "item_id") == 3_706
    assert len(raw.catalogue) == 3_883
    assert n_images(raw) == 3_872
    rated = set(raw.interactions.column("item_id").unique().to_pylist())
    with_poster = {r["item_id"] for r in raw.catalogue.table.select(["item_id", "images"]).to_pylist() if r["images"]}
    assert len(rated & with_poster) == 3_699
    root = Path(raw.catalogue.image_root)
    rows = {r["item_id"]: r for r in raw.catalogue.table.to_pylist()}
    assert rows["1"]["title"] == "Toy Story (1995)" and rows["1"]["genres"] == "Animation, Children's, Comedy"
    assert rows["1"]["year"] == "1995" and (root / rows["1"]["images"][0]).is_file()
    assert rows["73"]["title"] == "Misérables, Les (1995)"
    assert raw.catalogue.table.column("year").null_count == 0
    assert raw.users.num_rows == 6_040
    first = raw.interactions.slice(0, 1).to_pylist()[0]
    assert first == {"user_id": "1", "item_id": "1193", "timestamp": 978300760.0, "rating": 5.0}


def test_ml100k_recbole():
    raw, _ = read("recbole", "ml-100k")
    assert raw.interactions.num_rows == 100_000
    assert n_distinct(raw, "user_id") == 943 and n_distinct(raw, "item_id") == 1_682
    assert len(raw.catalogue) == 1_682 and raw.users.num_rows == 943
    row = raw.catalogue.table.slice(0, 1).to_pylist()[0]
    assert row["title"] == "Toy Story" and row["release_year"] == "1995" and row["class"] == "Animation Children's Comedy"
    assert not raw.time_is_order


def test_beauty_s3rec():
    raw, _ = read("s3rec", "amazon-beauty")
    assert raw.interactions.num_rows == 198_502
    assert n_distinct(raw, "user_id") == 22_363 and n_distinct(raw, "item_id") == 12_101
    assert len(raw.catalogue) == 12_101 and raw.time_is_order
    rows = {r["item_id"]: r for r in raw.catalogue.table.to_pylist()}
    assert rows["B004756YJA"]["attributes"] == "OPI, Makeup, Nails, Nail Polish"
    assert raw.catalogue.table.column("attributes").null_count == 0
    assert raw.interactions.slice(0, 1).to_pylist()[0] == {"user_id": "A1YJEY40YUW4SE", "item_id": "B004756YJA", "timestamp": 0.0}


def test_sports_s3rec():
    raw, _ = read("s3rec", "amazon-sports")
    assert raw.interactions.num_rows == 296_337
    assert n_distinct(raw, "user_id") == 35_598 and n_distinct(raw, "item_id") == 18_357
    assert len(raw.catalogue) == 18_357
    # datamaps' id2attribute is numbered differently from Sports_and_Outdoors_item2attributes.json:
    # names are not decoded (they would be wrong); the attribute ids are kept
    assert raw.catalogue.text_fields == ["attribute_ids"]
    assert any("not decoded" in e["why"] for e in raw.report.to_list())


def test_scientific_unisrec():
    raw, _ = read("unisrec", "amazon-scientific/unisrec")
    assert n_distinct(raw, "user_id") == 8_442 and n_distinct(raw, "item_id") == 4_385
    assert len(raw.catalogue) == 4_385
    # The README's 59,384 counts the test rows (history + target); three users have more than 51 items
    # and their test history is cut to the last 50. Chaining the train/valid rows recovers the 43
    # older items: 34,101 train rows + 3 x 8,442 = 59,427 events.
    assert raw.interactions.num_rows == 59_427
    assert raw.report.to_list() == []
    per_user = {}
    for u in raw.interactions.column("user_id").to_pylist():
        per_user[u] = per_user.get(u, 0) + 1
    assert max(per_user.values()) == 80


def test_scientific_lcrec():
    raw, _ = read("lcrec", "amazon-scientific/lcrec")
    assert raw.interactions.num_rows == 58_492
    assert n_distinct(raw, "user_id") == 8_317 and n_distinct(raw, "item_id") == 4_344
    assert len(raw.catalogue) == 4_344
    assert raw.catalogue.text_fields == ["description", "brand", "categories"]


def test_office_lcrec():
    raw, _ = read("lcrec", "amazon-office")
    assert raw.interactions.num_rows == 53_258
    assert n_distinct(raw, "user_id") == 4_905 and n_distinct(raw, "item_id") == 2_420
    assert len(raw.catalogue) == 2_420
    assert raw.catalogue.table.column("title").null_count == 3  # three empty titles stay missing


def test_hm():
    raw, _ = read("hm", "hm")
    inter = raw.interactions
    assert inter.num_rows == 31_662
    assert n_distinct(raw, "user_id") == 1_364 and n_distinct(raw, "item_id") == 17_033
    ids = inter.column("item_id").to_pylist()
    assert all(len(i) == 10 and i.startswith("0") for i in ids)
    rows = {r["item_id"]: r for r in raw.catalogue.table.to_pylist()}
    imaged = {i for i, r in rows.items() if r["images"]}
    assert len(imaged) == 4_116
    assert len(set(ids) & set(rows)) == 4_116
    assert sum(1 for i in ids if i in imaged) == 9_925
    users = inter.column("user_id").to_pylist()
    assert len({u for u, i in zip(users, ids) if i in imaged}) == 1_037
    assert all(rows[i]["price"] is not None for i in imaged)
    assert (Path(raw.catalogue.image_root) / rows["0111565001"]["images"][0]).is_file()
    assert rows["0111565001"]["title"] == "20 den 1p Stockings"
    assert any(e["rows"] == 31_662 - 9_925 for e in raw.report.to_list())
