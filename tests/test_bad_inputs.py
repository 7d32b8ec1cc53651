"""Fault injection on the readers: every file of each reader's valid fixture is damaged in several
ways (cut in the middle, garbage bytes, emptied, deleted, every line doubled, wrong encoding). Reading
and preparing must then either succeed (with what was dropped reported) or raise mmrec's own error
(DataError / ConfigError: a message naming the file and what to do), never another exception."""

import shutil
from pathlib import Path

import pytest

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.readers import read_dataset
from mmrec.errors import MMRecError

from test_readers import _unisrec_folder, hm_folder, ml_folder, recbole_folder, s3rec_folder  # noqa: F401

MUTATIONS = ("cut", "garbage", "empty", "delete", "double", "latin1")


def _mutate(path: Path, how: str) -> None:
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


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".jpg", ".png"))


def _check(fmt: str, folder: Path, tmp_path: Path) -> str:
    try:
        raw = read_dataset(fmt, folder)
        prepare(raw, tmp_path / "prepared", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    except MMRecError as e:
        return str(e)
    return "ok"


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("fmt,fixture", [("movielens", "ml_folder"), ("recbole", "recbole_folder"),
                                         ("s3rec", "s3rec_folder"), ("hm", "hm_folder"), ("unisrec", None)])
def test_damaged_files_give_mmrec_errors_or_reported_drops(fmt, fixture, how, request, tmp_path):
    if fixture is None:
        base = _unisrec_folder(tmp_path / "src")
    else:
        base = request.getfixturevalue(fixture)
    outcomes = {}
    for i, f in enumerate(_files(base)):
        work = tmp_path / f"case{i}"
        shutil.copytree(base, work)
        target = work / f.relative_to(base)
        _mutate(target, how)
        try:
            outcomes[f.name] = _check(fmt, work, work)
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{fmt}: {f.name} {how}: {type(e).__name__}: {e}")
    assert outcomes  # every file was tried
    # an error names the file it is about (the damaged one, or a file the damage left without its
    # partner, as a deleted catalogue leaves ratings without titles)
    for name, outcome in outcomes.items():
        if outcome != "ok":
            assert name in outcome or (how == "delete" and str(tmp_path) in outcome), (name, how, outcome)
