"""`mmrec extract -f FORMAT -i RAW` cleans item text as `mmrec data prepare` does (HTML entities and
tags, whitespace) and records it in the entry's manifest; `--set clean_text=false` keeps it as read;
an entry made from a prepared dataset records the dataset's cleaning."""

import json

import pytest
from test_extract import HashText

from mmrec.data.prepare import clean_text_value
from mmrec.features.store import FeatureEntry
from mmrec.pipeline.extract import ExtractConfig, extract, load_catalogue

TITLES = {"i1": "Sonic &amp; Knuckles", "i2": "Plain title", "i3": "Tom &amp;amp; Jerry  <br>deluxe"}


@pytest.fixture
def raw_folder(tmp_path):
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{u},i{(u + t) % 3 + 1},{t}\n" for u in range(6) for t in range(4)))
    (tmp_path / "items.csv").write_text("item_id,title,description\n"
                                        'i1,"Sonic &amp; Knuckles","<b>fast</b>   hedgehog"\n'
                                        "i2,Plain title,plain text\n"
                                        'i3,"Tom &amp;amp; Jerry  <br>deluxe",ok\n')
    return tmp_path


def _cfg(tmp_path, **kw):
    return ExtractConfig(encoder="hashtext", format="table", input=str(tmp_path / "events.csv"),
                         reader={"items": {"path": "items.csv", "title_col": "title", "text_cols": ["description"]}},
                         store=str(tmp_path / "store"), num_workers=0, device="cpu", **kw)


def test_extract_from_a_raw_dataset_cleans_item_text_and_records_it(raw_folder):
    table = load_catalogue(_cfg(raw_folder))
    assert table.column("title").to_pylist() == ["Sonic & Knuckles", "Plain title", "Tom & Jerry deluxe"]
    assert table.column("description").to_pylist() == ["fast hedgehog", "plain text", "ok"]
    assert [clean_text_value(t) for t in TITLES.values()] == table.column("title").to_pylist()  # prepare's cleaning
    res = extract(_cfg(raw_folder), encoder=HashText(), log=lambda m: None)
    rec = json.loads((res.entry_dir / "manifest.json").read_text())["text_cleaning"]
    assert rec["enabled"] is True and rec["fields"] == ["title", "description"] and rec["items_changed"] == 2
    assert rec["values_changed"] == {"title": 2, "description": 1}
    assert rec["examples"][0] == {"item_id": "i1", "field": "title", "before": "Sonic &amp; Knuckles",
                                  "after": "Sonic & Knuckles"}
    assert rec["applied_by"] == "mmrec extract (clean_text=true)"
    # the features are those of the cleaned titles: "Sonic & Knuckles" encoded, not "Sonic &amp; Knuckles"
    ids, feats = next(FeatureEntry(res.entry_dir).iter_shards())
    enc = HashText()
    want = enc.encode(enc.collate(["Sonic & Knuckles"]))[0].numpy()
    assert list(ids).index("i1") == 0 and feats[0].tolist() == pytest.approx(want.tolist(), rel=1e-3)


def test_clean_text_false_keeps_the_text_as_read_and_says_so(raw_folder):
    cfg = _cfg(raw_folder, clean_text=False, name="asread")
    assert load_catalogue(cfg).column("title").to_pylist() == list(TITLES.values())
    res = extract(cfg, encoder=HashText(), log=lambda m: None)
    rec = json.loads((res.entry_dir / "manifest.json").read_text())["text_cleaning"]
    assert rec == {"enabled": False, "applied_by": "mmrec extract (clean_text=false)"}


def test_an_entry_from_a_prepared_dataset_records_the_datasets_cleaning(raw_folder):
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.readers import read_dataset

    raw = read_dataset("table", str(raw_folder / "events.csv"),
                       items={"path": "items.csv", "title_col": "title", "text_cols": ["description"]})
    ds = prepare(raw, raw_folder / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    res = extract(ExtractConfig(encoder="hashtext", dataset=str(ds), store=str(raw_folder / "store2"), num_workers=0,
                                device="cpu"), encoder=HashText(), log=lambda m: None)
    rec = json.loads((res.entry_dir / "manifest.json").read_text())["text_cleaning"]
    meta = json.loads((ds / "dataset.json").read_text())["text_cleaning"]
    assert rec == {**meta, "applied_by": "mmrec data prepare (the dataset's dataset.json)"}
    assert rec["items_changed"] == 2
