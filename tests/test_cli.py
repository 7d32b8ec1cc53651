"""The command line end to end: prepare, train, evaluate, demo; errors without tracebacks."""

import json

import pytest
from typer.testing import CliRunner

from mmrec.cli import app

runner = CliRunner()


def _ml_fixture(root):
    root.mkdir()
    lines = []
    for u in range(1, 31):
        for k in range(8):
            lines.append(f"{u}::{(u + k) % 12 + 1}::4::{1000 + k}")
    (root / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (root / "movies.dat").write_text(
        "\n".join(f"{i}::Movie {i} (199{i % 10})::Drama|Comedy" for i in range(1, 13)) + "\n", encoding="latin-1")
    return root


def test_prepare_train_evaluate(tmp_path):
    src = _ml_fixture(tmp_path / "ml")
    r = runner.invoke(app, ["data", "prepare", "-f", "movielens", "-i", str(src), "-o", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "30 users, 12 items, 240 interactions" in r.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 2\n  threads: 1\nmodel:\n  hidden: 16\n  inner: 32\n")
    r = runner.invoke(app, ["train", "-d", str(tmp_path / "ds"), "-m", "sasrec", "-c", str(cfg),
                            "--set", "train.batch_size=8", "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["hidden"] == 16 and saved["train"]["batch_size"] == 8 and saved["train"]["lr"] == 0.001
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--set", "eval.history_mask=whole"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["protocol"]["history_mask"] == "whole" and out["n_cases"] == 30


def test_errors_are_messages_with_exit_code_2(tmp_path):
    src = _ml_fixture(tmp_path / "ml")
    with open(src / "ratings.dat", "a", encoding="latin-1") as f:
        f.write("7::3::5\n")  # line 241: a field short
    r = runner.invoke(app, ["data", "prepare", "-f", "movielens", "-i", str(src), "-o", str(tmp_path / "ds")])
    assert r.exit_code == 2
    assert "ratings.dat, line 241" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["data", "prepare", "-f", "movielens", "-i", str(_ml_fixture(tmp_path / "ok")),
                            "-o", str(tmp_path / "ds"), "--set", "prepare.min_user_interactions=50"])
    assert r.exit_code == 2 and "user filter of the k-core (min_user_interactions=50" in r.output
    r = runner.invoke(app, ["train", "-d", str(tmp_path / "nowhere"), "--set", "train.epochs=1"])
    assert r.exit_code == 2 and "not a prepared dataset" in r.output
    r = runner.invoke(app, ["train", "-d", "x", "--set", "train.epoch=1"])
    assert r.exit_code == 2 and "unknown setting(s) train.epoch" in r.output


def test_help_on_every_command():
    for cmd in (["--help"], ["data", "prepare", "--help"], ["train", "--help"], ["evaluate", "--help"],
                ["demo", "--help"], ["data", "info", "--help"], ["extract", "--help"], ["features", "info", "--help"],
                ["features", "validate", "--help"], ["methods", "--help"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 0 and "Usage" in r.output


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--methods",
                            "pop,sasrec,sasrec_ef,mmsr", "--encoders", "price"])
    assert r.exit_code == 0, r.output
    # the demo extracts features of the prepared catalogue: every item with a usable price has one
    import pyarrow.parquet as pq

    from mmrec.data.prepared import PreparedDataset
    from mmrec.features.store import FeatureEntry

    items = pq.read_table(tmp_path / "demo" / "prepared" / "items.parquet").to_pydict()
    priced = sum(1 for p in items["price"] if p is not None and p == p and p >= 0)
    entry = FeatureEntry(tmp_path / "demo" / "features" / "price")
    assert entry.validate() == []
    assert entry.manifest["n_rows"] == priced and len(entry.manifest["missing"]) == len(items["item_id"]) - priced
    assert f"{priced:>8,} {len(items['item_id']) - priced:>8,}" in r.output
    # the feature methods train on the extracted price features
    ef = json.loads((tmp_path / "demo" / "runs" / "sasrec_ef" / "results.json").read_text())
    assert list(ef["features"]) == ["price"] and ef["features"]["price"]["items_with_feature"] == priced
    stats = PreparedDataset(tmp_path / "demo" / "prepared").meta["stats"]
    assert stats["n_users"] == 1500  # the demo's default, every user kept by prepare
    assert (f"demo: {stats['n_users']:,} users, {stats['n_items']:,} items, "
            f"{stats['n_interactions']:,} interactions") in r.output
    table = r.output.split("method")[-1]
    assert "pop" in table and "sasrec" in table and "sasrec_ef" in table and "mmsr" in table
    assert (tmp_path / "demo" / "runs" / "sasrec" / "results.json").exists()


def test_methods_lists_every_method_with_its_modalities():
    from mmrec.trainers.methods import METHODS

    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0
    lines = {l.split()[0]: l for l in r.output.splitlines()[1:] if l.strip()}
    assert set(lines) == set(METHODS)
    assert "text*" in lines["unisrec"] and lines["sasrec"].split()[2] == "-"
