"""The feature store: shard round trips, atomic writes, alignment by id, validation, lookup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mmrec.errors import DataError
from mmrec.features.store import (
    FeatureEntry,
    commit_shard,
    find_entry,
    finish_entry,
    format_info,
    list_entries,
    make_plan,
    read_shard,
    shard_file,
    start_entry,
    write_manifest,
    write_shard,
)

FORMATS = ["h5", "parquet"]
EXT = {"h5": "h5", "parquet": "parquet"}


def make_entry(root: Path, name: str, shards: list[tuple[list[str], np.ndarray]], *, fmt: str = "h5",
               dtype: str = "float32", missing: dict[str, str] | None = None) -> Path:
    """Write an entry with the writers extraction uses: plan, shards and their commit files, manifest
    (``missing`` is reported by the first shard)."""
    entry = root / name
    missing = missing or {}
    spans, start = [], 0
    for s, (ids, _) in enumerate(shards):
        n = len(ids) + (len(missing) if s == 0 else 0)
        spans.append((start, start + n))
        start += n
    plan = make_plan({"encoder": "toy"}, spans, [f"fingerprint{s}" for s in range(len(shards))])
    start_entry(entry, plan, overwrite=False, log=lambda m: None)
    for s, (ids, feats) in enumerate(shards):
        info = write_shard(shard_file(entry, s, EXT[fmt]), ids, feats, fmt=fmt, dtype=dtype,
                           attrs={"shard": s, "encoder": "toy", "nested": {"a": 1}})
        commit_shard(entry, s, info, missing if s == 0 else {}, f"fingerprint{s}", 0.5, spans[s][1] - spans[s][0], 0, 1)
    manifest = finish_entry(entry, plan, encoder={"encoder": "toy", "model": "toy/model", "weights_sha256": "0" * 64,
                                                  "pooling": "mean"},
                            modality="text", fmt=fmt, dtype=dtype, shape_per_item=list(shards[0][1].shape[1:]),
                            source=None, log=lambda m: None)
    assert manifest is not None
    return entry


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# shards


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_shard_round_trip(tmp_path, fmt, dtype):
    x = rand((37, 16))
    ids = [f"item{i}" for i in range(37)]
    path = tmp_path / f"part-00000.{EXT[fmt]}"
    info = write_shard(path, ids, x, fmt=fmt, dtype=dtype, attrs={"shard": 0})
    assert info["file"] == path.name and info["rows"] == 37 and info["shape"] == [37, 16]
    assert info["bytes"] == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    got_ids, got = read_shard(path)
    assert list(got_ids) == ids
    assert got.dtype == np.dtype(dtype)
    # float16: exactly the numpy cast, bit for bit
    np.testing.assert_array_equal(got.view(np.uint8), x.astype(dtype).view(np.uint8))


def test_h5_and_parquet_give_identical_vectors(tmp_path):
    x = rand((50, 8), seed=3) * 1000  # wide range: float16 rounding must be the same in both
    ids = [f"i{k}" for k in range(50)]
    write_shard(tmp_path / "a.h5", ids, x, fmt="h5", dtype="float16")
    write_shard(tmp_path / "a.parquet", ids, x, fmt="parquet", dtype="float16")
    (ia, a), (ib, b) = read_shard(tmp_path / "a.h5"), read_shard(tmp_path / "a.parquet")
    assert list(ia) == list(ib)
    assert a.dtype == b.dtype == np.float16
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_token_features(tmp_path, fmt):
    x = rand((5, 3, 4))
    entry = make_entry(tmp_path, "tok", [(list("abcde"), x)], fmt=fmt, dtype="float32")
    e = FeatureEntry(entry)
    assert e.shape_per_item == (3, 4) and e.dim == 4
    ids, got = next(e.iter_shards())
    np.testing.assert_array_equal(got, x)
    m, present = e.aligned(["", "c", "a"])
    assert m.shape == (3, 3, 4)
    np.testing.assert_array_equal(m[1], x[2])
    np.testing.assert_array_equal(m[2], x[0])
    assert present.tolist() == [False, True, True]
    assert e.validate() == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_shard(tmp_path, fmt):
    entry = make_entry(tmp_path, "e", [([], np.zeros((0, 6), np.float32)), (["x"], rand((1, 6)))], fmt=fmt,
                       dtype="float16", missing={"y": "empty text", "z": "empty text"})
    e = FeatureEntry(entry)
    assert e.shards[0]["rows"] == 0 and e.shards[0]["shape"] == [0, 6]
    ids, feats = next(e.iter_shards())
    assert len(ids) == 0 and feats.shape == (0, 6)
    m, present = e.aligned(["x", "y"])
    assert present.tolist() == [True, False]
    np.testing.assert_array_equal(m[0], rand((1, 6))[0].astype(np.float16).astype(np.float32))
    assert not m[1].any()
    assert e.validate() == []


def test_write_shard_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="2 item ids for 3"):
        write_shard(tmp_path / "p.h5", ["a", "b"], rand((3, 2)), fmt="h5", dtype="float32")
    with pytest.raises(ValueError, match="padding"):
        write_shard(tmp_path / "p.h5", ["a", ""], rand((2, 2)), fmt="h5", dtype="float32")
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(tmp_path / "p.h5", ["a", "a"], rand((2, 2)), fmt="h5", dtype="float32")
    with pytest.raises(ValueError, match="shape"):
        write_shard(tmp_path / "p.h5", ["a"], np.zeros(1), fmt="h5", dtype="float32")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_leaves_no_visible_shard(tmp_path, fmt, monkeypatch):
    first = tmp_path / f"part-00000.{EXT[fmt]}"
    info = write_shard(first, ["a"], rand((1, 4)), fmt=fmt, dtype="float16")
    before = first.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    second = tmp_path / f"part-00001.{EXT[fmt]}"
    with pytest.raises(OSError, match="disk gone"):
        write_shard(second, ["b"], rand((1, 4)), fmt=fmt, dtype="float16")
    monkeypatch.undo()
    assert not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # the temporary file is gone too
    assert first.read_bytes() == before and info["bytes"] == len(before)


def test_write_manifest_is_atomic_and_checked(tmp_path, monkeypatch):
    entry = make_entry(tmp_path, "m", [(["a"], rand((1, 2)))])
    before = (entry / "manifest.json").read_text()
    with pytest.raises(ValueError, match="'created'"):
        write_manifest(entry, {k: v for k, v in json.loads(before).items() if k != "created"})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no")))
    with pytest.raises(OSError, match="no"):
        write_manifest(entry, {**json.loads(before), "n_items": 5})
    monkeypatch.undo()
    assert (entry / "manifest.json").read_text() == before
    assert sorted(p.name for p in entry.iterdir()) == ["errors.jsonl", "manifest.json", "plan.json", "shards"]


# ---------------------------------------------------------------------------------------------
# alignment


@pytest.mark.parametrize("fmt", FORMATS)
def test_aligned_by_id(tmp_path, fmt):
    x = rand((10, 4), seed=1)
    ids = [f"it{k}" for k in range(10)]
    entry = make_entry(tmp_path, "al", [(ids[:6], x[:6]), (ids[6:], x[6:])], fmt=fmt, dtype="float16",
                       missing={"gone": "image file is truncated"})
    e = FeatureEntry(entry)
    rng = np.random.default_rng(0)
    order = rng.permutation(10)
    request = np.array([""] + [ids[k] for k in order[:4]] + ["gone", "never-seen"] + [ids[k] for k in order[4:]],
                       dtype=object)
    m, present = e.aligned(request)
    assert m.shape == (len(request), 4) and m.dtype == np.float32
    expect_present = [False] + [True] * 4 + [False, False] + [True] * 6
    assert present.tolist() == expect_present
    x16 = x.astype(np.float16).astype(np.float32)
    for i, rid in enumerate(request):
        if present[i]:
            np.testing.assert_array_equal(m[i], x16[ids.index(rid)])
        else:
            assert not m[i].any()
    # the stored dtype can be kept; a repeated id gets its row twice
    m16, p16 = e.aligned(["it3", "it3", "it9"], dtype=np.float16)
    assert m16.dtype == np.float16 and p16.all()
    for row, k in ((0, 3), (1, 3), (2, 9)):
        np.testing.assert_array_equal(m16[row], x.astype(np.float16)[k])

    rep = e.alignment_report(request)
    assert rep["requested"] == 13 and rep["padding"] == 1 and rep["found"] == 10
    assert rep["missing"] == 1 and rep["unknown"] == 1
    assert rep["missing_reasons"] == {"image file is truncated": 1}
    assert rep["unknown_examples"] == ["never-seen"]
    assert rep["coverage"] == pytest.approx(10 / 12)


def test_aligned_skips_shards_with_no_requested_ids(tmp_path):
    entry = make_entry(tmp_path, "sk", [(["a"], rand((1, 2))), (["b"], rand((1, 2), 1))])
    e = FeatureEntry(entry)
    e.alignment_report(["a"])  # builds the id index while both shards are fine
    (entry / "shards" / "part-00001.h5").write_bytes(b"not hdf5")
    m, present = e.aligned(["", "a"])  # shard 1 holds none of these: never opened for features
    assert present.tolist() == [False, True]
    with pytest.raises(DataError, match="part-00001.h5: shard cannot be read"):
        e.aligned(["b"])


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_corrupted_byte(tmp_path, fmt):
    x = rand((40, 8))
    entry = make_entry(tmp_path, "v", [([f"a{k}" for k in range(20)], x[:20]), ([f"b{k}" for k in range(20)], x[20:])],
                       fmt=fmt)
    assert FeatureEntry(entry).validate() == []
    shard = entry / "shards" / f"part-00001.{EXT[fmt]}"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = FeatureEntry(entry).validate()
    assert any(f"part-00001.{EXT[fmt]}" in p and "sha256" in p for p in problems), problems
    assert not any("part-00000" in p for p in problems)
    assert all("sha256" not in p for p in FeatureEntry(entry).validate(check_checksums=False))


def test_validate_deleted_shard(tmp_path):
    entry = make_entry(tmp_path, "d", [(["a"], rand((1, 2))), (["b"], rand((1, 2)))])
    (entry / "shards" / "part-00000.h5").unlink()
    problems = FeatureEntry(entry).validate()
    assert any("part-00000.h5" in p and "does not exist" in p for p in problems), problems
    with pytest.raises(DataError, match="missing"):
        FeatureEntry(entry).aligned(["a"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_duplicate_missing_and_nan(tmp_path, fmt):
    x = rand((3, 4))
    x[1, 2] = np.nan
    entry = make_entry(tmp_path, "dup", [(["a", "b"], x[:2]), (["a"], x[2:])], fmt=fmt, missing={"b": "no image"})
    problems = FeatureEntry(entry).validate()
    text = "\n".join(problems)
    assert "stored more than once" in text and "'a'" in text
    assert "recorded missing but also stored" in text
    assert f"part-00000.{EXT[fmt]}: 1 row(s) hold NaN or inf (first: item 'b')" in text


def test_validate_counts(tmp_path):
    entry = make_entry(tmp_path, "c", [(["a", "b"], rand((2, 2)))])
    m = json.loads((entry / "manifest.json").read_text())
    m["n_rows"] = 3
    m["shards"][0]["rows"] = 5
    write_manifest(entry, m)
    text = "\n".join(FeatureEntry(entry).validate())
    assert "2 rows, the manifest says 5" in text
    assert "n_rows is 3 but the shards hold 5 rows" in text
    assert "n_items is 2" in text


# ---------------------------------------------------------------------------------------------
# opening, info


def test_invalid_or_absent_manifest(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no manifest.json") as ei:
        FeatureEntry(tmp_path / "half")
    assert ei.value.path == str(tmp_path / "half") and "mmrec extract" in ei.value.hint
    entry = make_entry(tmp_path, "bad", [(["a"], rand((1, 2)))])
    m = json.loads((entry / "manifest.json").read_text())
    del m["shards"]
    m["dtype"] = 16
    (entry / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="'shards' is absent") as ei:
        FeatureEntry(entry)
    assert "'dtype' should be a string" in str(ei.value)
    (entry / "manifest.json").write_text("{")
    with pytest.raises(DataError, match="cannot be read"):
        FeatureEntry(entry)


def test_find_entry(tmp_path):
    make_entry(tmp_path, "clip-b32", [(["a"], rand((1, 2)))])
    make_entry(tmp_path, "bert-mean", [(["a"], rand((1, 2)))])
    (tmp_path / "unfinished").mkdir()
    assert list_entries(tmp_path) == ["bert-mean", "clip-b32"]
    assert find_entry("clip-b32", tmp_path).name == "clip-b32"
    assert find_entry(str(tmp_path / "bert-mean"), None).name == "bert-mean"
    assert find_entry(tmp_path / "bert-mean" / "manifest.json").name == "bert-mean"
    with pytest.raises(DataError) as ei:
        find_entry("clip-l14", tmp_path)
    assert "bert-mean, clip-b32" in str(ei.value) and "neither" in str(ei.value)
    with pytest.raises(DataError, match="unfinished"):
        find_entry("unfinished", tmp_path)
    with pytest.raises(DataError, match="store root") as ei:
        find_entry(str(tmp_path), tmp_path / "elsewhere")
    assert "clip-b32" in ei.value.hint


def test_info(tmp_path):
    miss = {"m1": "image file is truncated", "m2": "image file is truncated", "m3": "no image"}
    entry = make_entry(tmp_path, "inf", [(["a", "b"], rand((2, 6)))], fmt="parquet", dtype="float16", missing=miss)
    e = FeatureEntry(entry)
    info = e.info()
    assert info["n_rows"] == 2 and info["n_items"] == 5 and info["n_missing"] == 3
    assert info["missing_reasons"] == {"image file is truncated": 2, "no image": 1}
    assert info["total_bytes"] == (entry / "shards" / "part-00000.parquet").stat().st_size
    assert info["encoder"] == "toy"  # the name the encoder's description gives, as extraction writes it
    text = format_info(e)
    for part in ("toy  (text, pooling mean)", "toy/model", "6 per item, float16, parquet", "image file is truncated: 2",
                 "no image: 1", info["created"], "2 of 5"):
        assert part in text, text


def test_as_torch_embedding(tmp_path):
    from mmrec.features.store import as_torch_embedding

    entry = make_entry(tmp_path, "t", [(["a", "b"], rand((2, 3)))])
    m, _ = FeatureEntry(entry).aligned(["", "b", "a"])
    emb = as_torch_embedding(m)
    assert tuple(emb.weight.shape) == (3, 3) and not emb.weight.requires_grad
    assert emb.padding_idx == 0
    x = rand((2, 3))  # rows of "a" and "b"
    assert not emb.weight[0].any()
    np.testing.assert_array_equal(emb.weight[1].numpy(), x[1])
    np.testing.assert_array_equal(emb.weight[2].numpy(), x[0])
