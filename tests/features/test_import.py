"""`mmrec features import`: features from elsewhere into the store, by id, refused when they are wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError, DataError
from mmrec.features.aligned import load_features
from mmrec.features.importing import NOT_IN_FILE, ImportConfig, import_features
from mmrec.features.store import FeatureEntry

runner = CliRunner()
QUIET = {"log": lambda m: None}

# four items of the `small` dataset (items "1".."5"), out of order; item "3" has no row
IDS = ["4", "1", "5", "2"]
MATRIX = np.array([[4.0, 0.5, -4.0], [1.0, 0.25, -1.0], [5.0, 0.125, -5.0], [2.0, 2.5, -2.0]], dtype=np.float32)


def write_npy(tmp_path: Path, matrix: np.ndarray = MATRIX, ids: list[str] = IDS) -> tuple[Path, Path]:
    src, id_file = tmp_path / "feats.npy", tmp_path / "ids.txt"
    np.save(src, matrix)
    id_file.write_text("\n".join(ids) + "\n")
    return src, id_file


def cfg(src: Path, store: Path, **kw) -> ImportConfig:
    return ImportConfig(source=str(src), modality=kw.pop("modality", "text"), store=str(store), **kw)


def test_npy_and_id_list_become_an_entry_aligned_by_id(small, tmp_path):
    src, id_file = write_npy(tmp_path)
    store = tmp_path / "store"
    res = import_features(cfg(src, store, ids=str(id_file), dataset=str(small), dtype="float32", name="mine"), **QUIET)
    assert res.entry_dir == store / "mine" and (res.n_rows, res.n_missing) == (4, 1)
    e = FeatureEntry(store / "mine")
    assert e.validate() == []  # shards, checksums, n_rows + missing == n_items
    m = e.manifest
    assert (m["n_items"], m["n_rows"], m["missing"]) == (5, 4, {"3": NOT_IN_FILE})
    assert m["import"]["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert m["import"]["ids_sha256"] == hashlib.sha256(id_file.read_bytes()).hexdigest()
    assert (m["encoder"]["encoder"], m["modality"], m["shape_per_item"], m["dtype"]) == ("import", "text", [3], "float32")
    assert m["catalogue_source"] == str(small)
    assert json.loads((store / "mine" / "errors.jsonl").read_text()) == {"item_id": "3", "reason": NOT_IN_FILE}
    # the rows land on their ids, whatever the file's order
    feats, present = e.aligned(["1", "2", "3", "4", "5"])
    assert present.tolist() == [True, True, False, True, True]
    assert feats.tolist() == [[1.0, 0.25, -1.0], [2.0, 2.5, -2.0], [0.0, 0.0, 0.0], [4.0, 0.5, -4.0], [5.0, 0.125, -5.0]]
    # and training reads it: internal ids 1..5 are raw ids "1".."5" in the small dataset
    d = PreparedDataset(small)
    t = load_features({"text": "mine"}, d, store)["text"]
    assert t.present.tolist() == [False, True, True, False, True, True]
    assert t.table[4].tolist() == [4.0, 0.5, -4.0] and t.source["encoder"] == "import"


def test_without_a_dataset_every_row_is_an_item_and_float16_rounds(tmp_path):
    src, id_file = write_npy(tmp_path)
    res = import_features(cfg(src, tmp_path / "s", ids=str(id_file)), **QUIET)
    e = FeatureEntry(res.entry_dir)
    assert res.entry_dir.name == "feats" and (e.manifest["n_items"], e.missing, e.manifest["dtype"]) == (4, {}, "float16")
    feats, _ = e.aligned(["2"])
    assert feats.tolist() == [[2.0, 2.5, -2.0]]  # exact in float16


def test_same_import_again_is_a_no_op_and_other_data_needs_overwrite(tmp_path):
    src, id_file = write_npy(tmp_path)
    store = tmp_path / "s"
    first = import_features(cfg(src, store, ids=str(id_file)), **QUIET).manifest
    shards = sorted((store / "feats" / "shards").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    again = import_features(cfg(src, store, ids=str(id_file)), **QUIET).manifest
    assert again == first  # the same manifest, its creation time included
    assert shards and {p: p.stat().st_mtime_ns for p in shards} == stamps  # no shard written again
    np.save(src, MATRIX * 2)
    with pytest.raises(ConfigError, match="pass --overwrite"):
        import_features(cfg(src, store, ids=str(id_file)), **QUIET)
    import_features(cfg(src, store, ids=str(id_file), overwrite=True), **QUIET)
    assert FeatureEntry(store / "feats").aligned(["1"])[0].tolist() == [[2.0, 0.5, -2.0]]


def test_mmrec_folder_rows_are_item_ids_of_the_mapping(small, tmp_path):
    folder = tmp_path / "baby"
    folder.mkdir()
    # MMRec: row i of text_feat.npy is itemID i; i_id_mapping.csv maps raw ids to itemIDs (tab-separated)
    np.save(folder / "text_feat.npy", np.array([[10.0, 1.0], [20.0, 2.0], [30.0, 3.0]], dtype=np.float32))
    (folder / "i_id_mapping.csv").write_text("asin\titemID\n5\t2\n1\t0\n2\t1\n")
    res = import_features(cfg(folder, tmp_path / "s", format="mmrec", dataset=str(small), dtype="float32"), **QUIET)
    e = FeatureEntry(res.entry_dir)
    assert res.entry_dir.name == "baby-text" and e.manifest["import"]["id_column"] == "asin"
    feats, present = e.aligned(["1", "2", "5", "3"])
    assert feats[:3].tolist() == [[10.0, 1.0], [20.0, 2.0], [30.0, 3.0]] and present.tolist() == [True] * 3 + [False]
    assert e.missing == {"3": NOT_IN_FILE, "4": NOT_IN_FILE}
    with pytest.raises(DataError, match="image features .*image_feat.npy.* are not in the folder"):
        import_features(cfg(folder, tmp_path / "s", format="mmrec", modality="image"), **QUIET)
    (folder / "i_id_mapping.csv").write_text("asin\titemID\n5\t2\n1\t0\n")
    with pytest.raises(DataError, match=r"row-count mismatch: the mapping names 2 items, the feature matrix has 3 rows "
                                        r"\(no raw id for itemID \[1\]\)"):
        import_features(cfg(folder, tmp_path / "s2", format="mmrec"), **QUIET)
    assert not (tmp_path / "s2").exists()


def test_parquet_hdf5_and_pt_sources(tmp_path):
    want = [[1.0, 0.25, -1.0], [2.0, 2.5, -2.0]]
    # Parquet: a list column keyed by item_id (CLIP vectors), and the wide layout (one column per dimension)
    pq.write_table(pa.table({"item_id": IDS, "clip": pa.array([list(r) for r in MATRIX], pa.list_(pa.float32()))}),
                   tmp_path / "clip.parquet")
    pq.write_table(pa.table({"sku": [4, 1, 5, 2], **{f"d{k}": MATRIX[:, k] for k in range(3)}}), tmp_path / "wide.parquet")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["item_id"] = np.array(IDS, dtype="S")
        f["vectors"] = MATRIX
    torch.save({"emb": torch.from_numpy(MATRIX), "other": torch.zeros(2)}, tmp_path / "emb.pt")
    (tmp_path / "ids.txt").write_text("\n".join(IDS))
    runs = [("clip.parquet", {}), ("wide.parquet", {"id_column": "sku"}), ("f.h5", {}),
            ("emb.pt", {"ids": str(tmp_path / "ids.txt"), "key": "emb"})]
    for name, kw in runs:
        res = import_features(cfg(tmp_path / name, tmp_path / "s", dtype="float32", **kw), **QUIET)
        assert FeatureEntry(res.entry_dir).aligned(["1", "2"])[0].tolist() == want, name
    with pytest.raises(DataError, match=r"2 tensors \(emb, other\); say which is the feature matrix\n  what to do: pass --key NAME"):
        import_features(cfg(tmp_path / "emb.pt", tmp_path / "s", ids=str(tmp_path / "ids.txt"), name="x"), **QUIET)
    src, _ = write_npy(tmp_path)
    with pytest.raises(ConfigError, match="carries no item ids: pass --ids FILE"):
        import_features(cfg(src, tmp_path / "s"), **QUIET)


@pytest.mark.parametrize("case", ["short_ids", "header", "nan", "duplicates", "unknown", "3d", "1d", "tokens_2d",
                                  "float16_range", "empty_id"])
def test_bad_imports_are_refused_and_write_nothing(small, tmp_path, case):
    matrix, ids, kw = MATRIX.copy(), list(IDS), {}
    if case == "short_ids":
        ids = ids[:3]
        want = r"row-count mismatch: 4 feature rows but 3 item ids in .*ids.txt"
    elif case == "header":
        ids = ["item_id"] + ids
        want = r"4 feature rows but 5 item ids .*\(a header line in the id list\?\)"
    elif case == "nan":
        matrix[1, 2] = np.nan
        matrix[3, 0] = np.inf
        want = r"feats.npy: 2 row\(s\) hold NaN or inf; the first is row 1 \(item '1'\)"
    elif case == "duplicates":
        ids = ["4", "1", "4", "1"]
        want = r"2 item id\(s\) appear more than once: '4' \(rows 0, 2\); '1' \(rows 1, 3\)"
    elif case == "unknown":
        ids = ["4", "B00X", "5", "zz"]
        kw["dataset"] = str(small)
        want = r"2 of 4 item ids are not in the dataset .* \(e.g. 'B00X', 'zz'\)\n  what to do: pass --drop-unknown"
    elif case == "3d":
        matrix = np.zeros((4, 2, 3), np.float32)
        want = r"features are 3-D \(shape \[4, 2, 3\]\); expected \[items, dim\] \(2-D\); pass --tokens"
    elif case == "1d":
        matrix = np.zeros(4, np.float32)
        want = r"features are 1-D \(shape \[4\]\); expected \[items, dim\] \(2-D\)"
    elif case == "tokens_2d":
        kw["tokens"] = True
        want = r"features are 2-D .* --tokens expects \[items, tokens, dim\] \(3-D\); drop --tokens"
    elif case == "float16_range":
        matrix[2, 1] = 1e5
        want = r"1 row\(s\) hold values beyond float16's range .* row 2 \(item '5'\)\n  what to do: pass --dtype float32"
    else:
        ids[2] = " "
        want = r"ids.txt, line 3: empty line in the id list"
    src, id_file = write_npy(tmp_path, matrix, ids)
    store = tmp_path / "store"
    with pytest.raises(DataError, match=want):
        import_features(cfg(src, store, ids=str(id_file), **kw), **QUIET)
    assert not store.exists()


def test_drop_unknown_keeps_the_known_rows_and_records_the_dropped(small, tmp_path):
    src, id_file = write_npy(tmp_path, ids=["4", "B00X", "5", "zz"])
    res = import_features(cfg(src, tmp_path / "s", ids=str(id_file), dataset=str(small), drop_unknown=True), **QUIET)
    m = res.manifest
    assert (res.n_rows, res.dropped_unknown, m["import"]["dropped_examples"]) == (2, 2, ["B00X", "zz"])
    assert m["missing"] == {"1": NOT_IN_FILE, "2": NOT_IN_FILE, "3": NOT_IN_FILE}
    assert FeatureEntry(res.entry_dir).aligned(["5"])[0].tolist() == [[5.0, 0.125, -5.0]]


def test_tokens_only_when_asked(tmp_path):
    tok = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    src, id_file = write_npy(tmp_path, tok)
    res = import_features(cfg(src, tmp_path / "s", ids=str(id_file), tokens=True), **QUIET)
    e = FeatureEntry(res.entry_dir)
    assert e.shape_per_item == (2, 3) and e.manifest["encoder"]["pooling"] == "tokens"
    assert e.aligned(["1"])[0].tolist() == [[[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]]  # row 1 of the file is item "1"


def test_cli_import_and_its_errors(small, tmp_path):
    src, id_file = write_npy(tmp_path)
    store = tmp_path / "store"
    r = runner.invoke(app, ["features", "import", str(src), "--ids", str(id_file), "--modality", "text",
                            "-d", str(small), "--store", str(store), "--name", "mine"])
    assert r.exit_code == 0, r.output
    assert "rows      4 of 5 catalogue items" in r.output and "not in the imported file: 1" in r.output
    assert f"use it:   --store {store} --features text=mine" in r.output
    bad = tmp_path / "ids_short.txt"
    bad.write_text("4\n1\n")
    r = runner.invoke(app, ["features", "import", str(src), "--ids", str(bad), "--modality", "text",
                            "--store", str(tmp_path / "other")])
    assert r.exit_code == 2 and "row-count mismatch: 4 feature rows but 2 item ids" in r.output
    assert not (tmp_path / "other").exists()
    r = runner.invoke(app, ["features", "import", str(src), "--ids", str(id_file), "--modality", "sound",
                            "--store", str(tmp_path / "other")])
    assert r.exit_code == 2 and "modality" in r.output
