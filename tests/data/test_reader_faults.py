"""Fault injection on the readers: every file of each reader's valid fixture is damaged in several
ways, byte-level (cut in the middle, garbage bytes, emptied, deleted, every line doubled, wrong
encoding) and field-level (a column dropped, a number made a word, NaN, negative, a file replaced by a
symbolic link). Reading and preparing must then either succeed (with what was dropped reported, and
no NaN reaching the prepared data) or raise mmrec's own error (DataError / ConfigError: a message
naming the file and what to do), never another exception.

The number of cases tried is printed at the end of the run (see ``faults`` in conftest.py)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_readers import (  # noqa: F401
    META_2018,
    REVIEWS_2018,
    _jsonl,
    _unisrec_folder,
    hm_folder,
    ml_folder,
    recbole_folder,
    s3rec_folder,
    write,
)

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.readers import read_dataset
from mmrec.errors import MMRecError

BYTE_DAMAGE = ("cut", "garbage", "empty", "delete", "double", "latin1")
FIELD_DAMAGE = ("drop_column", "word_for_number", "nan", "negative", "symlink")
_NUMBER = re.compile(r"(?<![\w.\-])\d+(?:\.\d+)?(?![\w.])")


def _lcrec_folder(d: Path) -> Path:
    write(d / "Office.inter.json", json.dumps({"0": [0, 1, 0], "7": [1, 0]}))
    write(d / "Office.item.json", json.dumps({
        "0": {"title": "Stapler", "description": "", "brand": "Swingline", "categories": "Office"},
        "1": {"title": "Pen", "description": "Blue ink.", "brand": "", "categories": "Office"}}))
    return d


def _amazon_folder(d: Path) -> Path:
    _jsonl(d / "Beauty_5.json", REVIEWS_2018)
    _jsonl(d / "meta_Beauty.json", META_2018)
    return d


TABLE_OPTIONS = {"user_col": "customer", "item_col": "sku", "time_col": "ts", "price_col": "paid",
                 "items": {"path": "items.csv", "title_col": "name", "text_cols": ["cat"], "price_col": "list_price"}}


def _table_folder(d: Path) -> Path:
    write(d / "events.csv", "customer,sku,ts,paid\n007,A-1,2021-01-02T03:04:05Z,9.5\n007,B-2,2021-01-02,2\n"
                            "8,A-1,2021-01-03,1\n")
    write(d / "items.csv", "sku,name,cat,list_price\nA-1,Anvil,Tools,20\nB-2,Ball,Toys,3.5\n")
    return d


# format -> (fixture name or folder builder, the path passed to the reader inside the folder, options)
READER_CASES = {
    "movielens": ("ml_folder", None, {}),
    "recbole": ("recbole_folder", None, {}),
    "s3rec": ("s3rec_folder", None, {}),
    "hm": ("hm_folder", None, {}),
    "unisrec": (_unisrec_folder, None, {}),
    "lcrec": (_lcrec_folder, None, {}),
    "amazon-raw": (_amazon_folder, None, {}),
    "table": (_table_folder, "events.csv", TABLE_OPTIONS),
}


def _mutate(path: Path, how: str, outside: Path) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(data + b"\xff\xfe\x00\x81 garbage,,::\t{\n")
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    elif how == "double":
        path.write_bytes(data + (b"" if data.endswith(b"\n") else b"\n") + data)
    elif how == "latin1":
        path.write_bytes(data.decode("utf-8", errors="replace").replace("e", "\u00e9").encode("latin-1", errors="replace"))
    elif how == "symlink":  # the same bytes, reached through a link to a file outside the folder
        outside.mkdir(parents=True, exist_ok=True)
        target = outside / path.name
        target.write_bytes(data)
        path.unlink()
        path.symlink_to(target)
    else:
        path.write_text(_field_damage(data.decode("utf-8", errors="replace"), how, path.suffix))


def _field_damage(text: str, how: str, suffix: str) -> str:
    if how == "drop_column":
        if suffix == ".json":
            return _drop_json_key(text)
        sep = next((s for s in ("\t", "::", ",", " ") if s in text.split("\n", 1)[0]), None)
        if sep is None:
            return text
        return "\n".join(sep.join(line.split(sep)[:-1]) if line else line for line in text.split("\n"))
    replace = {"word_for_number": lambda m: "many", "nan": lambda m: "NaN", "negative": lambda m: "-" + m.group(0)}[how]
    lines = text.split("\n")
    # the header (if any) stays; every data line has its numbers damaged
    return "\n".join([lines[0]] + [_NUMBER.sub(replace, line) for line in lines[1:]]) if len(lines) > 2 \
        else _NUMBER.sub(replace, text)


def _drop_json_key(text: str) -> str:
    """Remove the last key of every JSON object: one document, or one per line."""
    def drop(obj):
        if isinstance(obj, dict):
            obj = {k: drop(v) for k, v in obj.items()}
            if obj and not all(isinstance(v, dict) for v in obj.values()):
                obj.pop(list(obj)[-1])
            return obj
        return obj
    try:
        return json.dumps(drop(json.loads(text)))
    except json.JSONDecodeError:
        return "".join(json.dumps(drop(json.loads(line))) + "\n" for line in text.splitlines() if line.strip())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".jpg", ".png"))


def _check(fmt: str, folder: Path, entry: str | None, options: dict, out: Path) -> str:
    try:
        raw = read_dataset(fmt, folder / entry if entry else folder, **options)
        prepared = prepare(raw, out, PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    except MMRecError as e:
        return str(e)
    times = np.load(prepared / "seq_times.npy")
    assert np.isfinite(times).all(), f"{fmt}: NaN/inf reached the prepared event times"
    return "ok"


@pytest.mark.parametrize("how", BYTE_DAMAGE + FIELD_DAMAGE)
@pytest.mark.parametrize("fmt", list(READER_CASES))
def test_damaged_files_give_mmrec_errors_or_reported_drops(fmt, how, request, tmp_path, faults):
    source, entry, options = READER_CASES[fmt]
    base = request.getfixturevalue(source) if isinstance(source, str) else source(tmp_path / "src")
    outcomes = {}
    for i, f in enumerate(_files(base)):
        work = tmp_path / f"case{i}"
        shutil.copytree(base, work)
        target = work / f.relative_to(base)
        before = target.read_bytes()
        _mutate(target, how, tmp_path / f"outside{i}")
        if how not in ("delete", "symlink") and target.read_bytes() == before:
            faults["  (damage that changed nothing: not counted)"] += 1
            continue  # e.g. no number on a data line for "nan" to replace: nothing to test
        try:
            outcomes[f.name] = _check(fmt, work, entry, options, work / "prepared")
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{fmt}: {f.name} {how}: {type(e).__name__}: {e}")
    assert outcomes  # every file was tried
    # an error names the file it is about (the damaged one, or a file the damage left without its
    # partner, as a deleted catalogue leaves ratings without titles)
    for name, outcome in outcomes.items():
        if outcome != "ok":
            case = next(tmp_path / f"case{i}" for i, f in enumerate(_files(base)) if f.name == name)
            assert name in outcome or (how == "delete" and str(case) in outcome), (name, how, outcome)
    if how == "symlink":  # a linked data file is read like the file itself
        assert set(outcomes.values()) == {"ok"}, outcomes
    faults["bad input files tried (reader x file x damage)"] += len(outcomes)
    faults["  ... refused with an error naming the file"] += sum(o != "ok" for o in outcomes.values())
    faults["  ... read, damage dropped and counted or harmless"] += sum(o == "ok" for o in outcomes.values())


def test_field_damage_helpers_do_what_they_say():
    assert _field_damage("a,b,c\n1,2,3\n4,5,6\n", "drop_column", ".csv") == "a,b\n1,2\n4,5\n"
    assert _field_damage("1::10::5\n2::20::3\n", "drop_column", ".dat") == "1::10\n2::20\n"
    assert _field_damage("h\tp\nx\t1.5\ny\t2\n", "negative", ".inter") == "h\tp\nx\t-1.5\ny\t-2\n"
    assert _field_damage("h,p\nA-1,3\nB-2,4\n", "nan", ".csv") == "h,p\nA-1,NaN\nB-2,NaN\n"
    assert _field_damage("h,p\nx,3\ny,4\n", "word_for_number", ".csv") == "h,p\nx,many\ny,many\n"
    assert json.loads(_drop_json_key('{"0": {"a": 1, "b": 2}}')) == {"0": {"a": 1}}
    assert _drop_json_key('{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n') == '{"a": 1}\n{"a": 3}\n'
