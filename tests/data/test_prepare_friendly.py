"""Friendlier data preparation: the format detected when ``-f`` is left out, several S3-Rec datasets
in one folder, list-valued options shown in their ``[a, b]`` form, and item text cleaned of HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.config import from_dict, list_form
from mmrec.data.prepare import PrepareConfig, clean_text_value, prepare
from mmrec.data.readers import choose_format, detect_format, detect_formats, read_dataset
from mmrec.errors import ConfigError, DataError

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def s3rec(folder: Path, *names: str) -> Path:
    """One S3-Rec dataset per name: 7 users, each with 6 of the items 1..6 (so every item has 7 events)."""
    for name in names:
        write(folder / f"{name}.txt", "".join(f"{u} " + " ".join(str((u + k) % 6 + 1) for k in range(6)) + "\n"
                                              for u in range(1, 8)))
        write(folder / f"{name}_item2attributes.json", json.dumps({str(i): [i] for i in range(1, 7)}))
    return folder


def lcrec(folder: Path, name: str) -> Path:
    write(folder / f"{name}.inter.json", json.dumps({"u1": [1, 2, 3]}))
    write(folder / f"{name}.item.json", json.dumps({"1": {"title": "a"}}))
    return folder


PRODUCTS = (
    "item_id,name,categories\n"
    "i0,Sonic &amp; Knuckles,Video Games\n"
    'i1,"Pen <b>Blue</b>   pack",Office &amp;amp; School\n'
    "i2,Plain title,Office\n"
    'i3,"AT&T 210  Phone",Phones\n'
    "i4,<br>,Office\n"
    "i5,Caf&eacute; &#8211; mug,Kitchen\n"
)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """8 users with 6 events each on items i0..i5 (every item 8 events), and products with HTML text."""
    rows = ["user_id,item_id,timestamp"] + [f"u{u},i{(u + k) % 6},{u * 100 + k}" for u in range(1, 9) for k in range(6)]
    write(tmp_path / "shop" / "products.csv", PRODUCTS)
    return write(tmp_path / "shop" / "events.csv", "\n".join(rows) + "\n")


SHOP_ITEMS = {"path": "products.csv", "title_col": "name", "text_cols": ["categories"]}


# --------------------------------------------------------------------------- format detection


def test_detection_names_the_files_that_decided(tmp_path):
    assert detect_formats(s3rec(tmp_path / "b", "Beauty")) == [("s3rec", "Beauty.txt + Beauty_item2attributes.json")]
    assert detect_formats(lcrec(tmp_path / "o", "Office")) == [("lcrec", "Office.inter.json + Office.item.json")]
    write(tmp_path / "ml" / "ratings.dat", "1::1::5::1\n")
    write(tmp_path / "ml" / "movies.dat", "1::A (1999)::Drama\n")
    assert choose_format(tmp_path / "ml") == ("movielens", "ratings.dat + movies.dat")
    write(tmp_path / "rb" / "x.inter", "user_id:token\titem_id:token\n")
    write(tmp_path / "rb" / "x.item", "item_id:token\n")
    assert detect_formats(tmp_path / "rb") == [("recbole", "x.inter + x.item")]
    # UniSRec's split files are not taken for RecBole atomic files
    for split in ("train", "valid", "test"):
        write(tmp_path / "u" / f"Sci.{split}.inter", "user_id:token\titem_id_list:token_seq\titem_id:token\n")
    assert detect_formats(tmp_path / "u") == [("unisrec", "Sci.train.inter + Sci.valid.inter + Sci.test.inter")]
    assert choose_format(write(tmp_path / "e.csv", "a,b\n")) == ("table", "the table file e.csv")


def test_an_ambiguous_folder_lists_the_candidates(tmp_path):
    mixed = lcrec(s3rec(tmp_path / "mixed", "Beauty"), "Office")
    assert detect_format(mixed) is None  # unsure: no silent pick
    with pytest.raises(DataError) as e:
        choose_format(mixed)
    msg = str(e.value)
    assert "fit several formats: lcrec (Office.inter.json + Office.item.json); " \
           "s3rec (Beauty.txt + Beauty_item2attributes.json)" in msg
    assert "pass -f to choose one (e.g. -f lcrec)" in msg and e.value.path == str(mixed)


def test_an_unrecognised_folder_lists_every_format_and_its_files(tmp_path):
    write(tmp_path / "mystery" / "events.csv", "user,item\n1,2\n")
    with pytest.raises(DataError) as e:
        choose_format(tmp_path / "mystery")
    msg = str(e.value)
    assert "no reader recognises this folder; the formats and the files each expects:" in msg
    for line in ("    s3rec       <Name>.txt + <Name>_item2attributes.json (or + datamaps.json)",
                 "    lcrec       <Name>.inter.json + <Name>.item.json",
                 "    movielens   ratings.dat + movies.dat",
                 "    table       one CSV/TSV/Parquet file of interactions, given itself as -i FILE"):
        assert line in msg, line
    assert msg.count("\n    ") == 8  # one line per format
    with pytest.raises(DataError, match="no reader recognises this file"):
        choose_format(write(tmp_path / "notes.md", "hi\n"))
    with pytest.raises(DataError, match="no such file or folder"):
        choose_format(tmp_path / "nowhere")


def test_a_folder_of_dataset_folders_names_them(tmp_path):
    lcrec(tmp_path / "sci" / "lcrec", "Scientific")
    s3rec(tmp_path / "sci" / "s3", "Sci")
    with pytest.raises(DataError) as e:
        choose_format(tmp_path / "sci")
    msg = str(e.value)
    assert f"its subfolders hold datasets: {tmp_path / 'sci' / 'lcrec'} (lcrec: Scientific.inter.json + " \
           f"Scientific.item.json); {tmp_path / 'sci' / 's3'} (s3rec: Sci.txt + Sci_item2attributes.json)" in msg
    assert f"give one of them with -i (e.g. -i {tmp_path / 'sci' / 'lcrec'})" in msg


def test_cli_prepares_without_format_and_says_which(tmp_path):
    src = s3rec(tmp_path / "beauty", "Beauty")
    r = runner.invoke(app, ["data", "prepare", "-i", str(src), "-o", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "format: s3rec (detected: Beauty.txt + Beauty_item2attributes.json); pass -f to choose"
    assert "Beauty: 7 users, 6 items, 42 interactions" in r.output
    job = json.loads((tmp_path / "ds" / "dataset.json").read_text())["job"]
    assert job == {"format": "s3rec", "input": str(src), "reader": {},
                   "format_detected": "Beauty.txt + Beauty_item2attributes.json"}
    assert not (tmp_path / "ds" / ".dataset.json.tmp").exists()
    # -f given: nothing detected, nothing printed about it
    r = runner.invoke(app, ["data", "prepare", "-f", "s3rec", "-i", str(src), "-o", str(tmp_path / "ds2")])
    assert r.exit_code == 0 and "format:" not in r.output
    assert "format_detected" not in json.loads((tmp_path / "ds2" / "dataset.json").read_text())["job"]


def test_cli_ambiguous_and_missing_input_exit_2(tmp_path):
    mixed = lcrec(s3rec(tmp_path / "mixed", "Beauty"), "Office")
    r = runner.invoke(app, ["data", "prepare", "-i", str(mixed), "-o", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "fit several formats: lcrec" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "ds").exists()
    r = runner.invoke(app, ["data", "prepare", "-o", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "give the dataset to read with -i" in r.output


# --------------------------------------------------------------------------- several S3-Rec datasets


def test_s3rec_folder_with_two_datasets_asks_for_name(tmp_path):
    two = s3rec(tmp_path / "two", "Beauty", "Toys")
    (two / "Toys.txt").write_text("1 5 6\n2 6 5\n")
    with pytest.raises(ConfigError) as e:
        read_dataset("s3rec", two)
    assert str(e.value) == (f"{two} holds 2 s3rec datasets: Beauty (Beauty.txt, Beauty_item2attributes.json); "
                            "Toys (Toys.txt, Toys_item2attributes.json); pick one with the reader option name, "
                            "e.g. -r name=Beauty")
    toys = read_dataset("s3rec", two, name="Toys")
    assert toys.name == "Toys" and toys.interactions.column("item_id").to_pylist() == ["5", "6", "6", "5"]
    r = runner.invoke(app, ["data", "prepare", "-i", str(two), "-o", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "pick one with the reader option name, e.g. -r name=Beauty" in r.output


def test_lcrec_and_unisrec_several_datasets_name_the_option(tmp_path):
    folder = lcrec(lcrec(tmp_path / "lc", "Office"), "Beauty")
    with pytest.raises(ConfigError, match=r"holds 2 lcrec datasets: Beauty \(Beauty.inter.json\); "
                                          r"Office \(Office.inter.json\); .* -r name=Beauty"):
        read_dataset("lcrec", folder)


# --------------------------------------------------------------------------- list-valued options


def test_list_form_is_built_from_the_users_value():
    assert list_form("categories") == "[categories]"
    assert list_form("brand,category") == "[brand, category]"
    assert list_form("brand category") == "[brand, category]"
    assert list_form("[brand") == "[brand]"
    assert list_form(0.9) == "[0.9]"
    assert list_form(True) == "[true]"
    assert list_form(["a", "b"]) == "[a, b]"
    assert list_form(None) == list_form({}) == list_form([]) == "[a, b]"


def test_table_text_cols_error_shows_the_bracket_form(shop):
    with pytest.raises(ConfigError) as e:
        read_dataset("table", shop, items={**SHOP_ITEMS, "text_cols": "categories"})
    assert str(e.value) == ("format 'table': option items.text_cols must be a list of column names in brackets, "
                            "got 'categories'; write items.text_cols=[categories] (on the command line: "
                            "-r 'items.text_cols=[categories]'; in a config file: text_cols: [categories])")
    with pytest.raises(ConfigError, match=r"got 3; write items.text_cols=\[3\]"):
        read_dataset("table", shop, items={**SHOP_ITEMS, "text_cols": 3})


def test_cli_text_cols_without_brackets_then_with(shop, tmp_path):
    args = ["data", "prepare", "-f", "table", "-i", str(shop), "-o", str(tmp_path / "ds"), "-r", "items.path=products.csv",
            "-r", "items.title_col=name"]
    r = runner.invoke(app, args + ["-r", "items.text_cols=categories"])
    assert r.exit_code == 2 and "-r 'items.text_cols=[categories]'" in r.output
    r = runner.invoke(app, args + ["-r", "items.text_cols=[categories]"])
    assert r.exit_code == 0, r.output


def test_hm_and_movielens_list_options_show_the_bracket_form(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_dataset("hm", tmp_path, text_fields="prod_name,detail_desc")
    assert "option text_fields must be a list of articles column names in brackets, got 'prod_name,detail_desc'; " \
           "write text_fields=[prod_name, detail_desc] (on the command line: -r 'text_fields=[prod_name, detail_desc]'" \
           in str(e.value)
    write(tmp_path / "ml" / "ratings.dat", "1::1::5::1\n")
    write(tmp_path / "ml" / "movies.dat", "1::A (1999)::Drama\n")
    with pytest.raises(ConfigError) as e:
        read_dataset("movielens", tmp_path / "ml", domain="first", domain_genres="Drama")
    assert "option domain_genres must be a list of genre names (not empty) in brackets, got 'Drama'; " \
           "write domain_genres=[Drama]" in str(e.value)
    with pytest.raises(ConfigError, match=r"got an empty list; write domain_genres=\[a, b\]"):
        read_dataset("movielens", tmp_path / "ml", domain="first", domain_genres=[])


def test_config_list_errors_show_the_bracket_form():
    with pytest.raises(ConfigError) as e:
        from_dict(PrepareConfig, {"ratios": "0.8,0.1,0.1"}, prefix="prepare.")
    assert str(e.value) == ("prepare.ratios: expected a list in brackets, got '0.8,0.1,0.1'; write "
                            "prepare.ratios=[0.8, 0.1, 0.1] (on the command line quote it: "
                            "--set 'prepare.ratios=[0.8, 0.1, 0.1]'; in a config file: ratios: [0.8, 0.1, 0.1])")
    with pytest.raises(ConfigError, match=r"prepare.time_split: expected a list in brackets, got 0.9; "
                                          r"write prepare.time_split=\[0.9\]"):
        from_dict(PrepareConfig, {"time_split": 0.9}, prefix="prepare.")

    from dataclasses import dataclass

    @dataclass
    class Opt:
        names: list[str] | None = None

    with pytest.raises(ConfigError, match=r"x.names: expected a list in brackets, got 'a b'; write x.names=\[a, b\]"):
        from_dict(Opt, {"names": "a b"}, prefix="x.")


# --------------------------------------------------------------------------- item text cleaning


@pytest.mark.parametrize("raw,clean", [
    ("Sonic &amp; Knuckles", "Sonic & Knuckles"),
    ("Office &amp;amp; School", "Office & School"),  # escaped twice
    ("Caf&eacute; &#8211; mug &#x2019;", "Café \u2013 mug \u2019"),
    ('12&quot; ruler&nbsp;&nbsp;blue', '12" ruler blue'),  # a no-break space is whitespace
    ("Pen <b>Blue</b>   pack", "Pen Blue pack"),
    ("<p>Hi</p><p>there</p>", "Hi there"),
    ("a <!-- Begin A+ Content --> b <!--> c", "a b c"),
    ("line\none\t two ", "line one two"),
    ("AT&T 210", "AT&T 210"),          # a bare ampersand stays
    ("a &notit; b", "a &notit; b"),     # not a complete entity: stays (html.unescape would give "¬it;")
    ("size < 5 and > 3", "size < 5 and > 3"),  # not tags
    ("Monitors &lt;= 30 in", "Monitors <= 30 in"),
    ("<br>", None),                     # nothing left: missing
    (None, None),
])
def test_clean_text_value(raw, clean):
    assert clean_text_value(raw) == clean


def test_prepare_cleans_item_text_and_records_it(shop, tmp_path):
    raw = read_dataset("table", shop, items=SHOP_ITEMS)
    out = prepare(raw, tmp_path / "ds", PrepareConfig(min_item_interactions=1))
    items = {r["item_id"]: r for r in pq.read_table(out / "items.parquet").to_pylist()}
    assert [items[f"i{k}"]["title"] for k in range(6)] == [
        "Sonic & Knuckles", "Pen Blue pack", "Plain title", "AT&T 210 Phone", None, "Café \u2013 mug"]
    assert items["i1"]["categories"] == "Office & School" and items["i2"]["categories"] == "Office"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["config"]["clean_text"] is True
    tc = meta["text_cleaning"]
    assert tc["enabled"] is True and tc["fields"] == ["title", "categories"]
    assert tc["items_changed"] == 5  # i0, i1, i3, i4, i5
    assert tc["values_changed"] == {"title": 5, "categories": 1}
    assert tc["values_emptied"] == {"title": 1}  # i4's "<br>"
    # entities: i0, i5 titles and i1 categories; tags: i1, i4 titles; spacing: i1, i3, i4 titles
    assert tc["values_changed_by_step"] == {"entities": 3, "tags": 2, "whitespace": 3}
    assert tc["examples"][0] == {"item_id": "i0", "field": "title", "before": "Sonic &amp; Knuckles",
                                 "after": "Sonic & Knuckles"}
    assert len(tc["examples"]) == 3


def test_clean_text_false_keeps_the_text_as_read(shop, tmp_path):
    raw = read_dataset("table", shop, items=SHOP_ITEMS)
    out = prepare(raw, tmp_path / "ds", PrepareConfig(min_item_interactions=1, clean_text=False))
    items = {r["item_id"]: r for r in pq.read_table(out / "items.parquet").to_pylist()}
    assert items["i0"]["title"] == "Sonic &amp; Knuckles" and items["i4"]["title"] == "<br>"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["config"]["clean_text"] is False and meta["text_cleaning"] == {"enabled": False}


def test_cli_reports_the_cleaning_and_can_turn_it_off(shop, tmp_path):
    args = ["data", "prepare", "-i", str(shop), "-r", "items.path=products.csv", "-r", "items.title_col=name",
            "-r", "items.text_cols=[categories]", "--set", "prepare.min_item_interactions=1"]
    r = runner.invoke(app, args + ["-o", str(tmp_path / "on")])
    assert r.exit_code == 0, r.output
    assert "format: table (detected: the table file events.csv); pass -f to choose" in r.output
    assert ("text: cleaned the text of 5 items (HTML entities in 3 values, tags in 2, spacing in 3; details in "
            "dataset.json); --set prepare.clean_text=false keeps it as read") in r.output
    r = runner.invoke(app, args + ["-o", str(tmp_path / "off"), "--set", "prepare.clean_text=false"])
    assert r.exit_code == 0 and "text: cleaned" not in r.output
    assert pq.read_table(tmp_path / "off" / "items.parquet").column("title").to_pylist()[0] == "Sonic &amp; Knuckles"
