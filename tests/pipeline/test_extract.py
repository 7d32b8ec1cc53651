"""The extraction pipeline: plan, shards, resume, stale-feature refusal, missing items."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raw_from_sequences

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError, DataError
from mmrec.features.base import Encoder, Missing
from mmrec.features.store import FeatureEntry
from mmrec.pipeline.extract import ExtractConfig, extract


class HashText(Encoder):
    """A deterministic stand-in encoder: a 4-d vector from the title's characters."""

    key = "hashtext"
    modality = "text"
    dim = 4

    def make_input(self, item):
        t = item.get("title")
        if not t:
            return Missing("empty text")
        return t

    def collate(self, inputs):
        codes = [[ord(c) for c in t] for t in inputs]
        return {"x": torch.tensor([[sum(c), len(c), max(c), min(c)] for c in codes], dtype=torch.float32)}

    def encode(self, batch):
        return batch["x"] / 100.0

    def sort_key(self, item):
        return len(item.get("title") or "")

    def describe(self):
        return {"encoder": self.key, "pooling": "pooled", "dim": 4}


@pytest.fixture
def catalogue_ds(tmp_path):
    ids = [str(i) for i in range(1, 26)]
    raw = raw_from_sequences({f"u{u}": [str((u + k) % 25 + 1) for k in range(6)] for u in range(30)})
    titles = [f"item number {i}" if i != "7" else None for i in ids]
    raw.catalogue = Catalogue.build(ids, title=titles)
    return prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))


def _cfg(ds, tmp_path, **kw):
    return ExtractConfig(encoder="hashtext", dataset=str(ds), store=str(tmp_path / "store"), shard_size=10,
                         batch_size=4, num_workers=0, device="cpu", **kw)


def test_extract_writes_shards_manifest_and_missing(catalogue_ds, tmp_path):
    res = extract(_cfg(catalogue_ds, tmp_path), encoder=HashText(), log=lambda m: None)
    m = res.manifest
    assert m["n_items"] == 25 and m["n_rows"] == 24 and len(m["shards"]) == 3
    assert m["missing"] == {"7": "empty text"}
    errors = [json.loads(l) for l in (res.entry_dir / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"item_id": "7", "reason": "empty text"}]
    e = FeatureEntry(res.entry_dir)
    assert e.validate() == []
    feats, present = e.aligned(["", "3", "7", "unknown"])
    t = "item number 3"
    expect = np.array([sum(map(ord, t)), len(t), max(map(ord, t)), min(map(ord, t))]) / 100.0
    assert np.allclose(feats[1], expect.astype(np.float16).astype(np.float32))
    assert present.tolist() == [False, True, False, False]
    assert not feats[0].any() and not feats[2].any()
    # `mmrec features info` on the fresh entry names its encoder (the store reads what extraction wrote)
    from typer.testing import CliRunner

    from mmrec.cli import app

    r = CliRunner().invoke(app, ["features", "info", str(res.entry_dir)])
    assert r.exit_code == 0, r.output
    assert "hashtext  (text, pooling pooled)" in r.output and "None" not in r.output.split("model")[0]


def test_rerun_resumes_and_changed_inputs_are_refused(catalogue_ds, tmp_path):
    done = []
    cfg = _cfg(catalogue_ds, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        def stop(s):
            done.append(s)
            if len(done) == 2:
                raise KeyboardInterrupt
        extract(cfg, encoder=HashText(), log=lambda m: None, on_shard_done=stop)
    assert not (Path(cfg.store) / "hashtext" / "manifest.json").exists()
    res = extract(cfg, encoder=HashText(), log=lambda m: None)
    assert (res.shards_written, res.shards_skipped) == (1, 2)
    # another dtype is another configuration: refused, then allowed with overwrite
    with pytest.raises(ConfigError, match="features from another encoder or settings; pass --overwrite"):
        extract(_cfg(catalogue_ds, tmp_path, dtype="float32"), encoder=HashText(), log=lambda m: None)
    res = extract(_cfg(catalogue_ds, tmp_path, dtype="float32", overwrite=True), encoder=HashText(), log=lambda m: None)
    assert res.shards_written == 3 and res.manifest["dtype"] == "float32"


def test_changed_catalogue_is_detected(catalogue_ds, tmp_path):
    cfg = _cfg(catalogue_ds, tmp_path)
    extract(cfg, encoder=HashText(), log=lambda m: None)
    import pyarrow.parquet as pq

    items = pq.read_table(catalogue_ds / "items.parquet")
    titles = items["title"].to_pylist()
    titles[0] = "a new title"
    import pyarrow as pa

    pq.write_table(items.set_column(items.column_names.index("title"), "title", pa.array(titles)),
                   catalogue_ds / "items.parquet")
    with pytest.raises(ConfigError, match=r"catalogue \(1 of 3 shards differ\)"):
        extract(cfg, encoder=HashText(), log=lambda m: None)


class NaNForSome(HashText):
    """Like HashText, but item titles containing '5' encode to NaN, and '9' to a value beyond float16."""

    def encode(self, batch):
        x = batch["x"] / 100.0
        return x

    def collate(self, inputs):
        out = super().collate(inputs)
        for j, t in enumerate(inputs):
            if "5" in t:
                out["x"][j, 0] = float("nan")
            if "9" in t:
                out["x"][j, 1] = 1e9
        return out


def test_non_finite_features_are_recorded_as_missing(catalogue_ds, tmp_path):
    res = extract(_cfg(catalogue_ds, tmp_path), encoder=NaNForSome(), log=lambda m: None)
    miss = res.manifest["missing"]
    assert sorted(miss) == ["15", "19", "25", "5", "7", "9"]
    assert miss["5"].startswith("the encoder gave a non-finite feature") and "float16" in miss["9"]
    feats, present = FeatureEntry(res.entry_dir).aligned(["", "5", "9", "4"])
    assert present.tolist() == [False, False, False, True] and np.isfinite(feats).all()
    # in float32 the large value fits: only the NaNs are missing
    res = extract(_cfg(catalogue_ds, tmp_path, dtype="float32", name="f32"), encoder=NaNForSome(), log=lambda m: None)
    assert sorted(res.manifest["missing"]) == ["15", "25", "5", "7"]


# ---------------------------------------------------------------------------------------------
# real processes: the CLI under `accelerate launch`, and SIGKILL mid-run


import os
import signal
import subprocess
import sys

from mmrec.data.prepare import PrepareConfig as _PC


@pytest.fixture
def priced_ds(tmp_path):
    """60 items with prices (two invalid), for the weightless price encoder."""
    ids = [str(i) for i in range(1, 61)]
    raw = raw_from_sequences({f"u{u}": [str((3 * u + k) % 60 + 1) for k in range(5)] for u in range(80)})
    prices = [round(1.5 * i, 2) for i in range(1, 61)]
    prices[10], prices[20] = None, -3.0
    raw.catalogue = Catalogue.build(ids, price=prices)
    return prepare(raw, tmp_path / "ds", _PC(min_user_interactions=1, min_item_interactions=1))


def _env():
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _cli_args(ds, store, fmt="h5"):
    return ["extract", "--encoder", "price", "--dataset", str(ds), "--store", str(store),
            "--set", "shard_size=7", "--set", "batch_size=4", "--set", "num_workers=0",
            "--set", f"out_format={fmt}", "--set", "threads=1"]


def _shard_bytes(entry: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((entry / "shards").iterdir())
            if p.name.startswith("part-") and not p.name.endswith(".json")}


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_two_processes_write_the_same_store_as_one(priced_ds, tmp_path, fmt):
    one = subprocess.run([sys.executable, "-m", "mmrec.cli", *_cli_args(priced_ds, tmp_path / "one", fmt)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--main_process_port", "0", "-m", "mmrec.cli", *_cli_args(priced_ds, tmp_path / "two", fmt)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 process(es)" in two.stderr
    a, b = tmp_path / "one" / "price", tmp_path / "two" / "price"
    sidecars = [json.loads(p.read_text()) for p in sorted((b / "shards").glob("part-*.json"))]
    # 60 items in shards of 7: 9 shards; shard i was written by process i % 2, and only by it
    assert [s["process"] for s in sidecars] == [i % 2 for i in range(9)]
    assert {s["processes"] for s in sidecars} == {2}
    assert _shard_bytes(a) == _shard_bytes(b) and len(_shard_bytes(a)) == 9
    ma, mb = (json.loads((e / "manifest.json").read_text()) for e in (a, b))
    assert ma["shards"] == mb["shards"] and ma["missing"] == mb["missing"]
    assert mb["missing"] == {"11": "no price", "21": "price is negative: -3.0"}
    assert FeatureEntry(b).validate() == []


_KILLER = r'''
import os, signal, sys
from mmrec.pipeline.extract import ExtractConfig, extract
import mmrec.features.store as store

ds, root, mode, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
written = []
if mode == "during":  # die inside a shard write, after part of the file is on disk
    real = store._write_h5
    def torn(tmp, ids, feats, attrs):
        real(tmp, ids, feats, attrs)
        written.append(1)
        if len(written) == at:
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    store._write_h5 = torn
def after(s):
    if mode == "after" and s == at:
        os.kill(os.getpid(), signal.SIGKILL)
cfg = ExtractConfig(encoder="price", dataset=ds, store=root, shard_size=7, batch_size=4, num_workers=0,
                    device="cpu", threads=1)
extract(cfg, log=lambda m: None, on_shard_done=after)
'''


@pytest.mark.parametrize("mode,at", [("after", 3), ("during", 5)])
def test_sigkill_then_resume_is_byte_identical(priced_ds, tmp_path, mode, at, faults):
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    clean = subprocess.run([sys.executable, str(script), str(priced_ds), str(tmp_path / "clean"), "none", "0"],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    killed = subprocess.run([sys.executable, str(script), str(priced_ds), str(tmp_path / "killed"), mode, str(at)],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    entry = tmp_path / "killed" / "price"
    assert not (entry / "manifest.json").exists()
    done = sorted(p.name for p in (entry / "shards").glob("part-*.json"))
    assert len(done) == (at + 1 if mode == "after" else at - 1)
    if mode == "during":  # the torn write never became a shard
        assert list((entry / "shards").glob(".part-*.tmp")) and not (entry / "shards" / f"part-{at - 1:05d}.h5").exists()
    res = extract(ExtractConfig(encoder="price", dataset=str(priced_ds), store=str(tmp_path / "killed"), shard_size=7,
                                batch_size=4, num_workers=0, device="cpu", threads=1), log=lambda m: None)
    assert res.shards_skipped == len(done) and res.shards_written == 9 - len(done)
    assert not list((entry / "shards").glob(".*tmp"))
    assert _shard_bytes(entry) == _shard_bytes(tmp_path / "clean" / "price")
    assert FeatureEntry(entry).validate() == []
    faults["extractions SIGKILLed (between or inside shard writes), resumed to a byte-identical store"] += 1


def test_relative_image_paths_without_a_root_are_refused(tmp_path):
    from mmrec.errors import DataError

    raw = raw_from_sequences({f"u{u}": ["1", "2", "3"] for u in range(3)})
    raw.catalogue = Catalogue.build(["1", "2", "3"], images=[["a.jpg"], None, ["c.jpg"]])
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    cfg = ExtractConfig(encoder="hashtext", dataset=str(ds), store=str(tmp_path / "s"))
    with pytest.raises(DataError, match=r"(?s)image paths are relative \(e.g. 'a.jpg'\).*--set image_root=DIR"):
        extract(cfg, encoder=HashText(), log=lambda m: None)
    from mmrec.pipeline.extract import load_catalogue

    cfg.image_root = str(tmp_path / "imgs")
    assert load_catalogue(cfg)["images"].to_pylist() == [[str(tmp_path / "imgs" / "a.jpg")], [], [str(tmp_path / "imgs" / "c.jpg")]]


def test_default_item_text_is_title_and_the_catalogues_text_fields(tmp_path):
    from mmrec.pipeline.extract import catalogue_text_fields

    raw = raw_from_sequences({f"u{u}": ["1", "2", "3"] for u in range(3)})
    raw.catalogue = Catalogue.build(["1", "2", "3"], title=["a", "b", "c"], text={"genres": ["x", "y", None]})
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    assert catalogue_text_fields(ExtractConfig(encoder="minilm", dataset=str(ds))) == ["title", "genres"]
    raw.catalogue = Catalogue.build(["1", "2", "3"], title=["a", "b", "c"])
    ds2 = prepare(raw, tmp_path / "ds2", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    assert catalogue_text_fields(ExtractConfig(encoder="minilm", dataset=str(ds2))) == []


def test_disk_full_during_a_shard_write_keeps_earlier_shards_and_resumes(catalogue_ds, tmp_path, monkeypatch, faults):
    """The second shard's write fails with ENOSPC: a DataError that names the shard file and what to
    do; the first shard (file + sidecar) is intact, no temporary file is left; after space is freed
    the same command resumes and the store equals one written without the failure."""
    import errno

    import mmrec.features.store as ex  # extract() imports write_shard from here when it runs

    clean = extract(_cfg(catalogue_ds, tmp_path / "clean"), encoder=HashText(), log=lambda m: None)
    real = ex.write_shard
    calls = {"n": 0}

    def full_disk(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(ex, "write_shard", full_disk)
    with pytest.raises(DataError, match=r"part-00001\.h5.*could not write shard 1 .*No space left on device"
                                         r"(.|\n)*1 shard\(s\) already written are complete"):
        extract(_cfg(catalogue_ds, tmp_path), encoder=HashText(), log=lambda m: None)
    shards = tmp_path / "store" / "hashtext" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["part-00000.h5", "part-00000.json"]
    monkeypatch.setattr(ex, "write_shard", real)
    res = extract(_cfg(catalogue_ds, tmp_path), encoder=HashText(), log=lambda m: None)
    assert res.shards_skipped == 1 and res.shards_written == 2 and res.manifest is not None
    a = sorted((clean.entry_dir / "shards").glob("part-*.h5"))
    b = sorted((res.entry_dir / "shards").glob("part-*.h5"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    faults["disk-full shard writes: clear error, earlier shards intact, resumed identical"] += 1


def test_image_paths_that_leave_the_image_folder_are_refused(tmp_path, faults):
    """Relative catalogue paths resolve under the image folder; '..' or a symbolic link that leads
    outside it is refused (recorded as missing with the reason), never read."""
    from PIL import Image

    from mmrec.features.encoders.images import images_to_tensor, load_rgb
    from mmrec.pipeline.extract import load_catalogue

    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "ok.jpg")
    Image.new("RGB", (8, 8), (10, 10, 200)).save(tmp_path / "secret.jpg")
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    raw = raw_from_sequences({f"u{u}": ["1", "2", "3", "4"] for u in range(3)})
    raw.catalogue = Catalogue.build(["1", "2", "3", "4"],
                                    images=[["ok.jpg"], ["../secret.jpg"], ["link.jpg"], ["sub/../ok.jpg"]])
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    cfg = ExtractConfig(encoder="hashtext", dataset=str(ds), store=str(tmp_path / "s"), image_root=str(root))
    paths = [row[0] for row in load_catalogue(cfg)["images"].to_pylist()]
    assert paths[0] == str(root / "ok.jpg") and paths[3] == str(root / "sub/../ok.jpg")
    for bad, shown in ((paths[1], "../secret.jpg"), (paths[2], "link.jpg")):
        reason = load_rgb(bad)
        assert isinstance(reason, str) and reason.startswith("path leaves the image folder") and shown in reason
        out = images_to_tensor({"images": [bad]}, lambda im: torch.zeros(3, 2, 2), max_images=4,
                               max_pixels=10**6, max_image_pixels=10**7)
        assert "leaves the image folder" in out.reason
    assert load_rgb(paths[3]).size == (8, 8)
    faults["catalogue image paths escaping the image folder ('..', symlink), refused"] += 2
