"""Experiments as files: every (dataset, row, seed) trained once, reused on a second call, a busy
folder left to its holder, the preset family for baselines, the table and the report."""

import fcntl
import json

import pytest
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.errors import ConfigError
from mmrec.runs.experiment import load_experiment, row_config, run_experiment


@pytest.fixture
def exp_file(tmp_path, successor_raw, monkeypatch):
    from mmrec.data.prepare import PrepareConfig, prepare

    monkeypatch.chdir(tmp_path)  # the file's paths are relative to where the command runs
    prepare(successor_raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    f = tmp_path / "exp.yaml"
    f.write_text("""
name: tiny
out: runs
seeds: [0, 1]
datasets:
  ring: {path: ds}
settings: {train.epochs: 2, train.threads: 1}
rows:
  pop: {method: pop}
  sasrec: {method: sasrec, settings: {model.hidden: 16, model.inner: 32}}
report: {baseline: pop}
""")
    return f


def test_an_experiment_trains_once_then_reuses_and_reports(exp_file, tmp_path):
    said = []
    out = run_experiment(exp_file, log=said.append)
    assert out["pending"] == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == \
        ["pop-s0", "pop-s1", "report.html", "sasrec-s0", "sasrec-s1"]
    assert sum(s.startswith("ring/") and "best epoch" in s for s in said) == 4
    assert "| ring | sasrec | 2 |" in out["table"] and out["report_ring"]["baseline"] == "pop"
    cfg = json.loads((tmp_path / "runs" / "ring" / "sasrec-s1" / "config.json").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["model"]["hidden"] == 16 and cfg["train"]["epochs"] == 2
    again = []
    run_experiment(exp_file, log=again.append, report=False)
    assert not any(s.startswith("ring/") for s in again)  # nothing trained the second time
    r = CliRunner().invoke(app, ["experiment", "show", str(exp_file)])
    assert r.exit_code == 0 and "| ring | pop | 2 |" in r.output


def test_a_row_with_its_own_seeds_runs_only_those(exp_file, tmp_path):
    exp_file.write_text(exp_file.read_text().replace("  pop: {method: pop}", "  pop: {method: pop, seeds: [1]}"))
    out = run_experiment(exp_file, log=lambda s: None, report=False)
    assert out["pending"] == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == ["pop-s1", "sasrec-s0", "sasrec-s1"]
    assert "| ring | pop | 1 |" in out["table"] and "| ring | sasrec | 2 |" in out["table"]


def test_a_busy_run_is_left_to_its_holder_and_the_command_says_so(exp_file, tmp_path):
    busy = tmp_path / "runs" / "ring" / "pop-s0"
    busy.mkdir(parents=True)
    with open(busy / "train.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--no-report"])
        fcntl.flock(held, fcntl.LOCK_UN)
    assert r.exit_code == 3, r.output
    assert "ring/pop seed 0: left to the other process (pid 4242 on elsewhere)" in r.output
    assert "1 run(s) not finished here" in r.output


def test_rows_take_their_preset_or_the_familys_and_errors_name_the_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "e.yaml"
    f.write_text("""
name: p
datasets: {d: {path: ds}}
preset: paper
family: odmt
rows: {odmt: {method: odmt}, sasrec: {method: sasrec}}
""")
    exp, root = load_experiment(f)
    odmt = row_config(exp, root, "d", "odmt", 0)
    sasrec = row_config(exp, root, "d", "sasrec", 0)
    assert odmt.preset == "paper" and odmt.train.optimizer == "adamw" and odmt.model["hidden"] == 768
    assert sasrec.preset == "odmt:paper (train, eval)" and sasrec.train.lr == odmt.train.lr and "hidden" not in sasrec.model
    assert sasrec.train.seed == 0 and odmt.dataset == str(root / "ds")
    f.write_text(f.read_text().replace("family: odmt\n", ""))
    exp, root = load_experiment(f)
    with pytest.raises(ConfigError, match="row sasrec: method sasrec has no preset 'paper'"):
        row_config(exp, root, "d", "sasrec", 0)
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "missing.yaml")
