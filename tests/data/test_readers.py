"""Readers on tiny fixtures written by each test: exact values, nulls, image paths, error messages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrec.data.readers import READERS, detect_format, read_dataset
from mmrec.data.schema import RawDataset
from mmrec.errors import ConfigError, DataError


def col(raw: RawDataset, name: str) -> list:
    return raw.interactions.column(name).to_pylist()


def cat(raw: RawDataset) -> dict[str, dict]:
    assert raw.catalogue is not None
    return {r["item_id"]: r for r in raw.catalogue.table.to_pylist()}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_format():
    assert set(READERS) == {"movielens", "recbole", "s3rec", "unisrec", "lcrec", "amazon-raw", "hm", "table"}


def test_unknown_format_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_dataset("movielense", tmp_path)
    assert "movielense" in str(e.value) and "movielens" in str(e.value) and "table" in str(e.value)


def test_unknown_option_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_dataset("movielens", tmp_path, encodng="latin-1")
    assert "encodng" in str(e.value) and "encoding" in str(e.value) and "posters_dir" in str(e.value)


# --------------------------------------------------------------------------- movielens


@pytest.fixture
def ml_folder(tmp_path: Path) -> Path:
    d = tmp_path / "ml-tiny"
    write(d / "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n2::30::1::978300000\n")
    write(
        d / "movies.dat",
        "10::Toy Story (1995)::Animation|Children's|Comedy\n"
        "20::Misérables, Les (1995)::Drama|Musical\n"
        "30::Untitled Film::Drama\n",
        encoding="latin-1",
    )
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (d / "posters").mkdir()
    (d / "posters" / "10.jpg").write_bytes(b"\xff\xd8\xff")
    (d / "posters" / "30.jpg").write_bytes(b"\xff\xd8\xff")
    return d


def test_movielens_values(ml_folder):
    raw = read_dataset("movielens", ml_folder)
    assert raw.name == "ml-tiny" and not raw.time_is_order
    assert raw.interactions.column_names == ["user_id", "item_id", "timestamp", "rating"]
    assert col(raw, "user_id") == ["1", "1", "2", "2"]
    assert col(raw, "item_id") == ["10", "20", "10", "30"]
    assert col(raw, "timestamp") == [978300760.0, 978302109.0, 978301968.0, 978300000.0]
    assert col(raw, "rating") == [5.0, 3.0, 4.0, 1.0]
    c = cat(raw)
    assert c["10"]["title"] == "Toy Story (1995)"
    assert c["10"]["genres"] == "Animation, Children's, Comedy"
    assert c["10"]["year"] == "1995"
    assert c["20"]["title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert c["30"]["year"] is None  # no year in the title: missing, not invented
    assert c["10"]["images"] == ["posters/10.jpg"] and c["20"]["images"] == [] and c["30"]["images"] == ["posters/30.jpg"]
    assert raw.catalogue.image_root == str(ml_folder.resolve())
    assert (Path(raw.catalogue.image_root) / c["10"]["images"][0]).is_file()
    assert c["10"]["price"] is None and c["10"]["domain"] is None
    assert raw.catalogue.text_fields == ["genres", "year"]
    assert raw.users.to_pylist() == [
        {"user_id": "1", "gender": "F", "age": 1, "occupation": 10, "zip": "48067"},
        {"user_id": "2", "gender": "M", "age": 56, "occupation": 16, "zip": "70072-1234"},
    ]
    assert any(e["rows"] == 1 and "poster" in e["why"] for e in raw.report.to_list())


def test_movielens_bad_field_count_names_file_and_line(ml_folder):
    write(ml_folder / "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4\n")
    with pytest.raises(DataError) as e:
        read_dataset("movielens", ml_folder)
    msg = str(e.value)
    assert "ratings.dat" in msg and "line 3" in msg and "expected 4 fields" in msg and "what to do" in msg
    assert e.value.line == 3 and e.value.path.endswith("ratings.dat")


def test_movielens_non_integer_id_and_timestamp(ml_folder):
    write(ml_folder / "ratings.dat", "1::10::5::978300760\n\n1::x20::3::978302109\n")
    with pytest.raises(DataError) as e:
        read_dataset("movielens", ml_folder)
    assert e.value.line == 3 and "MovieID" in str(e.value) and "x20" in str(e.value)
    write(ml_folder / "ratings.dat", "1::10::5::978300760\n1::20::3::97830.2109\n")
    with pytest.raises(DataError) as e:
        read_dataset("movielens", ml_folder)
    assert e.value.line == 2 and "Timestamp" in str(e.value)


def test_movielens_bad_movies_line(ml_folder):
    write(ml_folder / "movies.dat", "10::Toy Story (1995)::Animation\nnot a movie line\n")
    with pytest.raises(DataError) as e:
        read_dataset("movielens", ml_folder)
    assert "movies.dat" in str(e.value) and e.value.line == 2


def test_movielens_utf8_and_title_with_separator(tmp_path):
    d = tmp_path / "ml"
    write(d / "ratings.dat", "1::1::4.5::100\r\n")
    write(d / "movies.dat", "1::Amélie::Odd (2001)::(no genres listed)\n")
    raw = read_dataset("movielens", d)
    c = cat(raw)["1"]
    assert c["title"] == "Amélie::Odd (2001)" and c["year"] == "2001" and c["genres"] is None
    assert c["images"] == [] and raw.users is None
    assert col(raw, "rating") == [4.5]


def test_movielens_csv_layout(tmp_path):
    d = tmp_path / "ml-latest"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    write(d / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Grumpier, Old Men (1995)",Comedy\n')
    raw = read_dataset("movielens", d)
    assert col(raw, "item_id") == ["1", "3"] and col(raw, "timestamp") == [964982703.0, 964981247.0]
    assert cat(raw)["3"]["title"] == "Grumpier, Old Men (1995)"


# --------------------------------------------------------------------------- recbole


@pytest.fixture
def recbole_folder(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    write(d / "tiny.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t01\t3\t881250949\n7\t2\t4.5\t881250950\n")
    write(
        d / "tiny.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tscore:float\n"
        "01\tToy \"Story\"\t1995\tAnimation Children's\t1.5\n"
        "2\tGoldenEye\t\tAction\t\n",
    )
    write(d / "tiny.user", "user_id:token\tage:float\tgender:token\n7\t24\tM\n")
    return d


def test_recbole_values(recbole_folder):
    raw = read_dataset("recbole", recbole_folder)
    assert raw.name == "tiny" and not raw.time_is_order
    assert col(raw, "user_id") == ["7", "7"] and col(raw, "item_id") == ["01", "2"]
    assert col(raw, "timestamp") == [881250949.0, 881250950.0] and col(raw, "rating") == [3.0, 4.5]
    c = cat(raw)
    assert c["01"]["title"] == 'Toy "Story"'
    assert c["01"]["release_year"] == "1995" and c["2"]["release_year"] is None
    assert c["01"]["class"] == "Animation Children's"
    assert raw.catalogue.text_fields == ["release_year", "class"]
    assert "score" not in raw.catalogue.table.column_names
    assert raw.users.to_pylist() == [{"user_id": "7", "age": 24.0, "gender": "M"}]


def test_recbole_no_timestamp_uses_order(tmp_path):
    p = write(tmp_path / "x" / "x.inter", "user_id:token\titem_id:token\na\t1\nb\t2\na\t3\na\t1\n")
    raw = read_dataset("recbole", p)
    assert raw.time_is_order
    assert col(raw, "timestamp") == [0.0, 0.0, 1.0, 2.0]
    assert raw.catalogue is None


def test_recbole_errors(tmp_path):
    d = tmp_path / "bad"
    write(d / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tnoon\n")
    with pytest.raises(DataError) as e:
        read_dataset("recbole", d)
    assert "bad.inter" in str(e.value) and e.value.line == 3 and "noon" in str(e.value)
    write(d / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\n")
    with pytest.raises(DataError) as e:
        read_dataset("recbole", d)
    assert e.value.line == 3 and "fields" in str(e.value)
    write(d / "bad.inter", "user_id\titem_id:token\n1\t2\n")
    with pytest.raises(DataError) as e:
        read_dataset("recbole", d)
    assert e.value.line == 1 and "name:type" in str(e.value)
    write(d / "bad.inter", "uid:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataError) as e:
        read_dataset("recbole", d)
    assert "'user_id'" in str(e.value) and "uid:token" in str(e.value)
    assert col(read_dataset("recbole", d, user_field="uid"), "user_id") == ["1"]


# --------------------------------------------------------------------------- s3rec


@pytest.fixture
def s3rec_folder(tmp_path: Path) -> Path:
    d = tmp_path / "beauty"
    write(d / "Mini.txt", "1 1 2 3\n2 2 1\n")
    write(d / "sequential_data.txt", "1 1 2 3\r\n2 2 1\r\n")
    write(d / "Mini_item2attributes.json", json.dumps({"1": [1, 2], "2": [3], "3": []}))
    maps = {
        "id2item": {"1": "B001", "2": "B002", "3": "B003"},
        "id2user": {"1": "AU1", "2": "AU2"},
        "id2attribute": {"1": "Brandy", "2": "Makeup", "3": "Face"},
        "attributeid2num": {"1": 1, "2": 1, "3": 1},
    }
    write(d / "datamaps.json", json.dumps(maps))
    return d


def test_s3rec_with_maps(s3rec_folder):
    raw = read_dataset("s3rec", s3rec_folder)
    assert raw.name == "Mini" and raw.time_is_order
    assert col(raw, "user_id") == ["AU1", "AU1", "AU1", "AU2", "AU2"]
    assert col(raw, "item_id") == ["B001", "B002", "B003", "B002", "B001"]
    assert col(raw, "timestamp") == [0.0, 1.0, 2.0, 0.0, 1.0]
    c = cat(raw)
    assert list(c) == ["B001", "B002", "B003"]
    assert c["B001"]["attributes"] == "Brandy, Makeup" and c["B001"]["attribute_ids"] == "1 2"
    assert c["B003"]["attributes"] is None and c["B003"]["attribute_ids"] is None
    assert c["B001"]["title"] is None


def test_s3rec_derived_names_win_and_inconsistent_maps_are_not_decoded(s3rec_folder):
    write(s3rec_folder / "DERIVED_asin2attribute_names.json", json.dumps({"B001": ["OPI", "Nails"], "B002": ["Face"]}))
    c = cat(read_dataset("s3rec", s3rec_folder))
    assert c["B001"]["attributes"] == "OPI, Nails" and c["B003"]["attributes"] is None
    (s3rec_folder / "DERIVED_asin2attribute_names.json").unlink()
    maps = json.loads((s3rec_folder / "datamaps.json").read_text())
    maps["attributeid2num"] = {"1": 5, "2": 1, "3": 1}
    write(s3rec_folder / "datamaps.json", json.dumps(maps))
    raw = read_dataset("s3rec", s3rec_folder)
    assert "attributes" not in raw.catalogue.text_fields and cat(raw)["B001"]["attribute_ids"] == "1 2"
    assert any("not decoded" in e["why"] for e in raw.report.to_list())


def test_s3rec_without_maps_and_errors(tmp_path):
    d = tmp_path / "plain"
    write(d / "Toys.txt", "5 3 1\n6 1\n")
    raw = read_dataset("s3rec", d)
    assert col(raw, "user_id") == ["5", "5", "6"] and col(raw, "item_id") == ["3", "1", "1"]
    assert list(cat(raw)) == ["1", "3"]
    write(d / "Toys.txt", "5 3 1\n6 1 x\n")
    with pytest.raises(DataError) as e:
        read_dataset("s3rec", d)
    assert "Toys.txt" in str(e.value) and e.value.line == 2 and "'x'" in str(e.value)


# --------------------------------------------------------------------------- unisrec


def _unisrec_folder(d: Path, max_len: int = 50) -> Path:
    """User u0 has items 0..5; user u1 has items 2,3,2,4. Histories truncated to ``max_len``."""
    seqs = {"0": ["0", "1", "2", "3", "4", "5"], "1": ["2", "3", "2", "4"]}
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train, valid, test = [head], [head], [head]
    for u, s in seqs.items():
        for t in range(len(s) - 3, 0, -1):
            train.append(f"{u}\t{' '.join(s[max(0, t - max_len):t])}\t{s[t]}\n")
        t = len(s) - 2
        valid.append(f"{u}\t{' '.join(s[max(0, t - max_len):t])}\t{s[t]}\n")
        t = len(s) - 1
        test.append(f"{u}\t{' '.join(s[max(0, t - max_len):t])}\t{s[t]}\n")
    write(d / "Sci.train.inter", "".join(train))
    write(d / "Sci.valid.inter", "".join(valid))
    write(d / "Sci.test.inter", "".join(test))
    write(d / "Sci.item2index", "".join(f"ASIN{i}\t{i}\n" for i in range(6)))
    write(d / "Sci.user2index", "REV0\t0\nREV1\t1\n")
    write(d / "Sci.text", "item_id:token\ttext:token_seq\n" + "".join(f"ASIN{i}\tItem {i}. Café. \n" for i in range(5)) + "ASIN5\t \n")
    return d


@pytest.mark.parametrize("max_len", [50, 2])
def test_unisrec_rebuilds_full_sequences(tmp_path, max_len):
    raw = read_dataset("unisrec", _unisrec_folder(tmp_path / "u", max_len))
    assert raw.name == "Sci" and raw.time_is_order
    assert col(raw, "user_id") == ["REV0"] * 6 + ["REV1"] * 4
    assert col(raw, "item_id") == [f"ASIN{i}" for i in range(6)] + ["ASIN2", "ASIN3", "ASIN2", "ASIN4"]
    assert col(raw, "timestamp") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0, 3.0]
    c = cat(raw)
    assert c["ASIN0"]["text"] == "Item 0. Café." and c["ASIN0"]["title"] is None
    assert c["ASIN5"]["text"] is None
    assert raw.report.to_list() == []


def test_unisrec_bad_line(tmp_path):
    d = _unisrec_folder(tmp_path / "u")
    with open(d / "Sci.valid.inter", "a") as fh:
        fh.write("3\t1 2\n")
    with pytest.raises(DataError) as e:
        read_dataset("unisrec", d)
    assert "Sci.valid.inter" in str(e.value) and e.value.line == 4


# --------------------------------------------------------------------------- lcrec


def test_lcrec_values(tmp_path):
    d = tmp_path / "office"
    write(d / "Office.inter.json", json.dumps({"0": [0, 1, 0], "7": [1]}))
    items = {
        "0": {"title": "Stapler", "description": "", "brand": "Swingline", "categories": "Office, Staplers"},
        "1": {"title": "Pen", "description": "Blue ink.", "brand": "", "categories": "Office"},
    }
    write(d / "Office.item.json", json.dumps(items))
    raw = read_dataset("lcrec", d)
    assert raw.name == "Office" and raw.time_is_order
    assert col(raw, "user_id") == ["0", "0", "0", "7"] and col(raw, "item_id") == ["0", "1", "0", "1"]
    assert col(raw, "timestamp") == [0.0, 1.0, 2.0, 0.0]
    c = cat(raw)
    assert c["0"] == {
        "item_id": "0",
        "title": "Stapler",
        "description": None,
        "brand": "Swingline",
        "categories": "Office, Staplers",
        "images": [],
        "price": None,
        "domain": None,
    }
    assert c["1"]["brand"] is None and c["1"]["description"] == "Blue ink."
    write(d / "Office.inter.json", '{"0": [0, 1],\n "7": [1}\n')
    with pytest.raises(DataError) as e:
        read_dataset("lcrec", d)
    assert "Office.inter.json" in str(e.value) and e.value.line == 2


# --------------------------------------------------------------------------- amazon-raw


REVIEWS_2018 = [
    {"overall": 5.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": "U1", "asin": "A1", "unixReviewTime": 1472688000, "style": {"Size:": "S"}},
    {"overall": 3.0, "reviewerID": "U2", "asin": "A2", "unixReviewTime": 1472774400, "vote": "2"},
    {"overall": 4.0, "reviewerID": "U1", "asin": "A3", "unixReviewTime": 1472860800},
]
META_2018 = [
    {"asin": "A1", "title": "Lipstick", "brand": "Acme", "category": ["Beauty", "Makeup", "Lips"], "description": ["Red.", "Matte."], "price": "$12.99", "imageURL": ["http://x/a1s.jpg"], "imageURLHighRes": ["http://x/a1.jpg", "http://x/a1b.jpg"]},
    {"asin": "A2", "title": "Brush", "brand": "", "category": [], "description": [], "price": "$5.00 - $9.00", "imageURL": ["http://x/a2s.jpg"], "imageURLHighRes": []},
    {"asin": "A3", "title": "", "price": "", "category": ["Beauty"]},
    {"asin": "A1", "title": "Duplicate"},
]


def _jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_raw_2018(tmp_path, gz):
    ext = ".json.gz" if gz else ".json"
    reviews = _jsonl(tmp_path / f"Beauty_5{ext}", REVIEWS_2018, gz)
    _jsonl(tmp_path / f"meta_Beauty{ext}", META_2018, gz)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "A2.jpg").write_bytes(b"jpg")
    raw = read_dataset("amazon-raw", tmp_path, images_dir="imgs")
    assert raw.name == "Beauty_5" and not raw.time_is_order
    assert col(raw, "user_id") == ["U1", "U2", "U1"] and col(raw, "item_id") == ["A1", "A2", "A3"]
    assert col(raw, "timestamp") == [1472688000.0, 1472774400.0, 1472860800.0] and col(raw, "rating") == [5.0, 3.0, 4.0]
    c = cat(raw)
    assert list(c) == ["A1", "A2", "A3"]
    assert c["A1"]["title"] == "Lipstick" and c["A1"]["brand"] == "Acme"
    assert c["A1"]["categories"] == "Beauty, Makeup, Lips" and c["A1"]["description"] == "Red. Matte."
    assert c["A1"]["image_urls"] == "http://x/a1.jpg|http://x/a1b.jpg" and c["A1"]["price"] == 12.99
    assert c["A2"]["brand"] is None and c["A2"]["categories"] is None and c["A2"]["description"] is None
    assert c["A2"]["image_urls"] == "http://x/a2s.jpg" and c["A2"]["price"] is None
    assert c["A3"]["title"] is None and c["A3"]["price"] is None and c["A3"]["image_urls"] is None
    assert c["A1"]["images"] == [] and c["A2"]["images"] == ["A2.jpg"]
    assert raw.catalogue.image_root == str((tmp_path / "imgs").resolve())
    why = {e["why"]: e["rows"] for e in raw.report.to_list()}
    assert any(k.startswith("prices that are not a single amount") and v == 1 for k, v in why.items())
    assert any(k.startswith("duplicate asins") and v == 1 for k, v in why.items())
    # the reviews file as path, meta named by option
    raw2 = read_dataset("amazon-raw", reviews, meta=f"meta_Beauty{ext}")
    assert col(raw2, "item_id") == ["A1", "A2", "A3"] and len(raw2.catalogue) == 3


def test_amazon_raw_2014_python_literal_meta(tmp_path):
    _jsonl(tmp_path / "reviews_Toys_5.json", REVIEWS_2018[:1])
    meta = (
        "{'asin': 'A1', 'title': \"Kid's Car\", 'price': 3.5, 'imUrl': 'http://x/1.jpg', "
        "'categories': [['Toys & Games', 'Cars'], ['Toys & Games', 'Kids']], 'brand': 'Acme'}\n"
        "{'asin': 'A2', 'categories': [[]], 'description': 'Plain text.'}\n"
    )
    write(tmp_path / "meta_Toys.json.gz", "")
    (tmp_path / "meta_Toys.json.gz").write_bytes(gzip.compress(meta.encode()))
    raw = read_dataset("amazon-raw", tmp_path)
    c = cat(raw)
    assert c["A1"]["title"] == "Kid's Car" and c["A1"]["price"] == 3.5 and c["A1"]["image_urls"] == "http://x/1.jpg"
    assert c["A1"]["categories"] == "Toys & Games, Cars, Kids" and c["A1"]["brand"] == "Acme"
    assert c["A2"]["categories"] is None and c["A2"]["description"] == "Plain text." and c["A2"]["price"] is None


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_raw_bad_line(tmp_path, gz):
    lines = [json.dumps(r) for r in REVIEWS_2018]
    lines.insert(2, '{"overall": 5.0, "reviewerID": "U9", "asin": ')
    text = "\n".join(lines) + "\n"
    p = tmp_path / ("r.json.gz" if gz else "r.json")
    p.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(DataError) as e:
        read_dataset("amazon-raw", p)
    assert p.name in str(e.value) and e.value.line == 3 and "on_bad_line" in str(e.value)
    raw = read_dataset("amazon-raw", p, on_bad_line="skip")
    assert col(raw, "user_id") == ["U1", "U2", "U1"]
    assert [e["rows"] for e in raw.report.to_list() if "malformed" in e["why"]] == [1]


def test_amazon_raw_missing_key_and_options(tmp_path):
    p = _jsonl(tmp_path / "r.json", [REVIEWS_2018[0], {"reviewerID": "U2", "asin": "A2"}])
    with pytest.raises(DataError) as e:
        read_dataset("amazon-raw", p)
    assert e.value.line == 2 and "unixReviewTime" in str(e.value)
    raw = read_dataset("amazon-raw", p, on_bad_line="skip")
    assert col(raw, "item_id") == ["A1"] and raw.report.to_list()[0]["rows"] == 1
    with pytest.raises(ConfigError, match=r"on_bad_line.* got 'ignore'"):
        read_dataset("amazon-raw", p, on_bad_line="ignore")


# --------------------------------------------------------------------------- hm


@pytest.fixture
def hm_folder(tmp_path: Path) -> Path:
    d = tmp_path / "hm"
    write(
        d / "transactions_train.csv",
        "t_dat,customer_id,article_id,price,sales_channel_id\n"
        "2018-09-20,c1,0111565001,0.02,2\n"
        "2018-09-20,c2,0222000001,0.05,1\n"
        "2018-09-21,c1,0111565001,0.04,2\n"
        "2018-09-22,c1,0111565001,0.03,1\n"
        "2018-09-22,c2,0999000001,,2\n",
    )
    header = "article_id,product_code,prod_name,product_type_name,product_group_name,colour_group_name,garment_group_name,detail_desc\n"
    write(
        d / "articles.csv",
        header
        + '0111565001,111565,20 den 1p Stockings,Underwear Tights,Socks & Tights,Black,Socks and Tights,"Semi shiny, reinforced."\n'
        + "0222000001,222000,Tee,T-shirt,Garment Upper body,White,Jersey Basic,\n"
        + "0333000001,333000,Cap,Hat,Accessories,Red,Accessories,Red cap.\n",
    )
    write(d / "customers.csv", "customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code\nc1,1.0,,ACTIVE,NONE,55.0,0bb7\n")
    (d / "images").mkdir()
    (d / "images" / "0111565001.jpg").write_bytes(b"jpg")
    (d / "images" / "033").mkdir()
    (d / "images" / "033" / "0333000001.jpg").write_bytes(b"jpg")
    return d


def test_hm_values(hm_folder):
    raw = read_dataset("hm", hm_folder)
    assert raw.name == "hm" and not raw.time_is_order
    assert col(raw, "user_id") == ["c1", "c2", "c1", "c1", "c2"]
    assert col(raw, "item_id") == ["0111565001", "0222000001", "0111565001", "0111565001", "0999000001"]
    day = 1537401600.0  # 2018-09-20 00:00 UTC
    assert col(raw, "timestamp") == [day, day, day + 86400, day + 2 * 86400, day + 2 * 86400]
    assert col(raw, "price") == [0.02, 0.05, 0.04, 0.03, None]
    assert "domain" not in raw.interactions.column_names
    c = cat(raw)
    assert list(c) == ["0111565001", "0222000001", "0333000001"]
    a = c["0111565001"]
    assert a["title"] == "20 den 1p Stockings" and a["detail_desc"] == "Semi shiny, reinforced."
    assert a["product_group_name"] == "Socks & Tights" and a["colour_group_name"] == "Black"
    assert a["price"] == pytest.approx(0.03) and a["images"] == ["images/0111565001.jpg"] and a["domain"] is None
    assert c["0222000001"]["detail_desc"] is None and c["0222000001"]["images"] == [] and c["0222000001"]["price"] == 0.05
    assert c["0333000001"]["images"] == ["images/033/0333000001.jpg"] and c["0333000001"]["price"] is None
    assert "product_code" not in raw.catalogue.table.column_names
    assert raw.users.column("user_id").to_pylist() == ["c1"] and raw.users.column("Active").to_pylist() == [None]
    rep = raw.report.to_list()
    assert any(e["rows"] == 1 and "absent from articles.csv" in e["why"] for e in rep)


def test_hm_domain_and_padding(hm_folder):
    raw = read_dataset("hm", hm_folder, domain_field="product_group_name")
    assert cat(raw)["0222000001"]["domain"] == "Garment Upper body"
    raw = read_dataset("hm", hm_folder, domain_field="sales_channel_id")
    assert col(raw, "domain") == ["2", "1", "2", "1", "2"]
    text = (hm_folder / "transactions_train.csv").read_text().replace(",0111565001,", ",111565001,")
    write(hm_folder / "transactions_train.csv", text)
    raw = read_dataset("hm", hm_folder)
    assert col(raw, "item_id")[0] == "0111565001"
    assert any("zero-padded" in e["why"] for e in raw.report.to_list())


def test_hm_errors(hm_folder):
    text = (hm_folder / "transactions_train.csv").read_text().replace("2018-09-21", "21/09/2018")
    write(hm_folder / "transactions_train.csv", text)
    with pytest.raises(DataError) as e:
        read_dataset("hm", hm_folder)
    assert "transactions_train.csv" in str(e.value) and e.value.line == 4 and "21/09/2018" in str(e.value)
    write(hm_folder / "transactions_train.csv", "t_dat,customer_id,article_id,price\n2018-09-20,c1,0111565001,0.02\n2018-09-20,c1,0111565001,free\n")
    with pytest.raises(DataError) as e:
        read_dataset("hm", hm_folder)
    assert e.value.line == 3 and "'price'" in str(e.value) and "free" in str(e.value)
    write(hm_folder / "transactions_train.csv", "t_dat,customer,article_id,price\n2018-09-20,c1,0111565001,0.02\n")
    with pytest.raises(DataError) as e:
        read_dataset("hm", hm_folder)
    assert "'customer_id'" in str(e.value) and "customer" in str(e.value)
    # a domain column the articles file lacks (with a well-formed transactions file, so that is what fails)
    write(hm_folder / "transactions_train.csv", "t_dat,customer_id,article_id,price\n2018-09-20,c1,0111565001,0.02\n")
    with pytest.raises(DataError, match="domain_field 'nope' is not a column; the file has") as e:
        read_dataset("hm", hm_folder, domain_field="nope")
    assert "articles.csv" in str(e.value)


# --------------------------------------------------------------------------- table


def test_table_csv_with_items(tmp_path):
    write(
        tmp_path / "events.csv",
        "customer,sku,ts,paid,store\n"
        "007,A-1,2021-01-02T03:04:05Z,9.5,web\n"
        "007,B-2,2021-01-02 03:04:06,,shop\n"
        "8,A-1,2021-01-03,1,\n",
    )
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a1.jpg").write_bytes(b"jpg")
    (tmp_path / "img" / "a1b.jpg").write_bytes(b"jpg")
    write(tmp_path / "items.csv", "sku,name,brand,cat,image,list_price\nA-1,Anvil,Acme,Tools,a1.jpg|a1b.jpg|gone.jpg,20\nB-2,,,Toys,,\n")
    raw = read_dataset(
        "table",
        tmp_path / "events.csv",
        user_col="customer",
        item_col="sku",
        time_col="ts",
        price_col="paid",
        domain_col="store",
        items={"path": "items.csv", "title_col": "name", "text_cols": ["brand", "cat"], "image_col": "image", "image_root": "img", "price_col": "list_price"},
    )
    assert raw.name == "events" and not raw.time_is_order
    assert col(raw, "user_id") == ["007", "007", "8"] and col(raw, "item_id") == ["A-1", "B-2", "A-1"]
    assert col(raw, "timestamp") == [1609556645.0, 1609556646.0, 1609632000.0]
    assert col(raw, "price") == [9.5, None, 1.0] and col(raw, "domain") == ["web", "shop", None]
    c = cat(raw)
    assert c["A-1"]["title"] == "Anvil" and c["A-1"]["brand"] == "Acme" and c["A-1"]["cat"] == "Tools"
    assert c["A-1"]["images"] == ["a1.jpg", "a1b.jpg"] and c["A-1"]["price"] == 20.0
    assert c["B-2"]["title"] is None and c["B-2"]["brand"] is None and c["B-2"]["images"] == [] and c["B-2"]["price"] is None
    assert raw.catalogue.image_root == str((tmp_path / "img").resolve())
    assert raw.catalogue.text_fields == ["brand", "cat"]
    assert [e["rows"] for e in raw.report.to_list()] == [1]


def test_table_missing_column_names_file_and_columns(tmp_path):
    p = write(tmp_path / "events.csv", "uid,iid,time\n1,2,3\n")
    with pytest.raises(DataError) as e:
        read_dataset("table", p, user_col="uid", item_col="item")
    msg = str(e.value)
    assert "events.csv" in msg and "'item'" in msg and "uid, iid, time" in msg and "what to do" in msg
    with pytest.raises(DataError) as e:
        read_dataset("table", p, user_col="uid", item_col="iid", time_col="time", items={"path": write(tmp_path / "it.csv", "id,t\n2,x\n"), "item_col": "iid"})
    assert "it.csv" in str(e.value) and "'iid'" in str(e.value) and "id, t" in str(e.value)


def test_table_bad_timestamp_names_row(tmp_path):
    p = write(tmp_path / "e.csv", "u,i,t\n1,2,2020-01-01\n1,3,2020-01-02\n1,4,yesterday\n")
    with pytest.raises(DataError) as e:
        read_dataset("table", p, user_col="u", item_col="i", time_col="t")
    assert "e.csv" in str(e.value) and e.value.line == 4 and "yesterday" in str(e.value) and "data row 3" in str(e.value)
    p = write(tmp_path / "e2.csv", "u,i,t\n1,2,20/01/2020 10:00\n1,3,21/01/2020\n")
    with pytest.raises(DataError) as e:
        read_dataset("table", p, user_col="u", item_col="i", time_col="t", time_format="%d/%m/%Y %H:%M")
    assert e.value.line == 3 and "21/01/2020" in str(e.value)
    p = write(tmp_path / "e3.csv", "u,i,t\n1,2,100\n1,3,\n")
    with pytest.raises(DataError) as e:
        read_dataset("table", p, user_col="u", item_col="i", time_col="t")
    assert e.value.line == 3 and "empty" in str(e.value)


def test_table_formats_and_order(tmp_path):
    p = write(tmp_path / "e.tsv", "u\ti\tt\na\t1\t20/01/2020 10:00\nb\t2\t21/01/2020 00:00\n")
    raw = read_dataset("table", p, user_col="u", item_col="i", time_col="t", time_format="%d/%m/%Y %H:%M")
    assert col(raw, "timestamp") == [1579514400.0, 1579564800.0]
    p = write(tmp_path / "ms.csv", "u,i,t\na,1,1500\n")
    assert col(read_dataset("table", p, user_col="u", item_col="i", time_col="t", time_format="unix_ms"), "timestamp") == [1.5]
    p = write(tmp_path / "o.csv", "u,i\na,1\nb,2\na,3\n")
    raw = read_dataset("table", p, user_col="u", item_col="i", time_col=None)
    assert raw.time_is_order and col(raw, "timestamp") == [0.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="time_format must be one of .* got 'dd/mm'"):
        read_dataset("table", p, user_col="u", item_col="i", time_format="dd/mm")
    with pytest.raises(ConfigError) as e:
        read_dataset("table", p, user_col="u", item_col="i", items={"path": "x.csv", "titel_col": "t"})
    assert "titel_col" in str(e.value) and "title_col" in str(e.value)


def test_table_parquet(tmp_path):
    t = pa.table(
        {
            "u": pa.array([1, 2], pa.int64()),
            "i": ["x", "y"],
            "when": pa.array([1_600_000_000_000_000, 1_600_000_001_000_000], pa.timestamp("us")),
            "r": [1.0, None],
        }
    )
    pq.write_table(t, tmp_path / "e.parquet")
    raw = read_dataset("table", tmp_path / "e.parquet", user_col="u", item_col="i", time_col="when", rating_col="r")
    assert col(raw, "user_id") == ["1", "2"] and col(raw, "timestamp") == [1_600_000_000.0, 1_600_000_001.0]
    assert col(raw, "rating") == [1.0, None]
    pq.write_table(pa.table({"u": ["a"], "i": ["x"], "t": ["soon"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError) as e:
        read_dataset("table", tmp_path / "bad.parquet", user_col="u", item_col="i", time_col="t")
    assert "bad.parquet" in str(e.value) and "row 1" in str(e.value)


# --------------------------------------------------------------------------- detection


def test_detect_format(tmp_path, ml_folder, hm_folder, s3rec_folder, recbole_folder):
    assert detect_format(ml_folder) == "movielens"
    assert detect_format(hm_folder) == "hm"
    assert detect_format(s3rec_folder) == "s3rec"
    assert detect_format(recbole_folder) == "recbole"
    assert detect_format(_unisrec_folder(tmp_path / "u")) == "unisrec"
    assert detect_format(_jsonl(tmp_path / "r" / "reviews.json", REVIEWS_2018)) == "amazon-raw"
    assert detect_format(write(tmp_path / "x.csv", "a,b\n")) == "table"
    (tmp_path / "empty").mkdir()
    assert detect_format(tmp_path / "empty") is None
    assert detect_format(tmp_path / "nowhere") is None
