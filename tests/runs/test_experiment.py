"""Experiments as files: every (dataset, row, seed) trained once, reused on a second call, a busy
folder left to its holder, the preset family for baselines, the table and the report."""

import fcntl
import json
from pathlib import Path

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


def test_a_stop_asked_as_a_run_finishes_starts_no_other_run(exp_file, tmp_path, monkeypatch):
    # SIGTERM during a run's final evaluation came too late to cut the run short; the experiment
    # went on to the next run (seen: a lane killed that way trained its next seed)
    from mmrec.trainers.loop import Trainer

    real_finish = Trainer.finish

    def finish_with_a_stop(self, state):
        self.request_stop("SIGTERM")
        return real_finish(self, state)

    monkeypatch.setattr(Trainer, "finish", finish_with_a_stop)
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--no-report"])
    assert r.exit_code == 75, r.output
    assert "SIGTERM: " in r.output and "pop-s0 finished; no other run started" in r.output
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == ["pop-s0"]
    assert (tmp_path / "runs" / "ring" / "pop-s0" / "results.json").exists()
    monkeypatch.setattr(Trainer, "finish", real_finish)
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--no-report"])
    assert r.exit_code == 0, r.output
    assert "ring/pop seed 0" not in r.output and "ring/pop seed 1" in r.output  # the finished run reused
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == ["pop-s0", "pop-s1", "sasrec-s0", "sasrec-s1"]


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


def test_a_datasets_settings_sit_between_the_files_and_the_rows(exp_file, tmp_path):
    exp_file.write_text(exp_file.read_text().replace(
        "  ring: {path: ds}", "  ring: {path: ds, settings: {train.epochs: 1, train.patience: 3, model.hidden: 8}}"))
    exp, root = load_experiment(exp_file)
    run = row_config(exp, root, "ring", "sasrec", 0)
    # the dataset's epochs and patience over the file's (2, the default 10); the row's hidden over the dataset's
    assert (run.train.epochs, run.train.patience, run.model["hidden"], run.train.threads) == (1, 3, 16, 1)
    exp_file.write_text(exp_file.read_text().replace("settings: {train.epochs: 1,", "settings: {train.epochs: 0,"))
    exp, root = load_experiment(exp_file)
    with pytest.raises(ConfigError, match="train.epochs"):
        row_config(exp, root, "ring", "sasrec", 0)


def test_show_lists_the_unfinished_runs_with_their_progress(exp_file, tmp_path):
    run_experiment(exp_file, log=lambda s: None, report=False)
    ring = tmp_path / "runs" / "ring"
    for name in ("sasrec-s0", "sasrec-s1", "pop-s1"):
        (ring / name / "results.json").unlink()  # as if stopped before the end
    rows = [json.loads(x) for x in (ring / "sasrec-s0" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [m for m in rows if "epoch" in m]
    best = max(rows, key=lambda m: m["valid"]["ndcg@10"])
    per = sum(m["train_seconds"] + m["eval_seconds"] for m in rows) / len(rows)
    (ring / "pop-s1" / "metrics.jsonl").unlink(missing_ok=True)  # nothing logged: counted, not listed
    with open(ring / "sasrec-s1" / "train.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        r = CliRunner().invoke(app, ["experiment", "show", str(exp_file)])
        fcntl.flock(held, fcntl.LOCK_UN)
    assert r.exit_code == 0, r.output
    assert (f"| ring/sasrec seed 0 | stopped: the same command resumes it | 2 / 2 | "
            f"ndcg@10 {best['valid']['ndcg@10']:.4f} ({best['epoch']}) | {per:.0f} | 0 epochs, 0 s |") in r.output
    assert "| ring/sasrec seed 1 | training (pid 4242 on elsewhere) | 2 / 2 |" in r.output
    assert "ring/pop seed 1" not in r.output and "not started: 1 run(s)" in r.output
    assert "3 run(s) not finished here" in r.output


def test_the_time_left_is_bounded_by_the_cap_and_by_patience(tmp_path):
    from mmrec.config import from_dict
    from mmrec.runs.config import RunConfig
    from mmrec.runs.experiment import progress_table

    folder = tmp_path / "run"
    folder.mkdir()
    valid = [0.10, 0.20, 0.15, 0.18]  # best at epoch 2
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_seconds": 50.0, "eval_seconds": 10.0, "valid": {"ndcg@10": v}}) + "\n"
        for e, v in enumerate(valid, start=1)))

    def line(**train):
        run = from_dict(RunConfig, {"dataset": "x", "method": "sasrec", "train": train})
        return [x for x in progress_table([("x/sasrec seed 0", folder, run)]).splitlines() if x.startswith("| x/")][0]

    # patience 3 evaluations after epoch 2 ends at epoch 5: 1 epoch of 60 s left
    assert line(epochs=100, patience=3).endswith("| 4 / 100 | ndcg@10 0.2000 (2) | 60 | 1 epoch, 1 min |")
    assert line(epochs=100, patience=3, eval_every=2).endswith("| 4 epochs, 4 min |")  # epoch 8
    assert line(epochs=6, patience=50).endswith("| 2 epochs, 2 min |")  # the cap first
    assert line(epochs=100, patience=3, early_stop="any").endswith("| 96 epochs, 1.6 h |")  # only the cap bounds it


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


def test_two_workers_share_one_experiment_and_the_parent_prints_the_whole_table(exp_file, tmp_path):
    """``--jobs 2``: two processes run the file, every run is trained once (by the worker that got its
    lock first), and the parent prints the table of every run."""
    exp_file.write_text(exp_file.read_text().replace("train.epochs: 2", "train.epochs: 4"))
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--jobs", "2"])
    assert r.exit_code == 0, r.output
    trained = [line for line in r.output.splitlines() if "s, best epoch" in line]
    runs = sorted(line[4:].split(":")[0] for line in trained)
    # every run trained once, by one worker or the other (which one depends on timing: on a loaded
    # machine a worker that starts late finds every run taken or finished)
    assert runs == ["ring/pop seed 0", "ring/pop seed 1", "ring/sasrec seed 0", "ring/sasrec seed 1"], r.output
    assert {line[:3] for line in trained} <= {"[0]", "[1]"}
    assert "| ring | pop | 2 |" in r.output and "| ring | sasrec | 2 |" in r.output
    assert (tmp_path / "runs" / "ring" / "report.html").exists() and "not finished" not in r.output
    cfg = json.loads((tmp_path / "runs" / "ring" / "sasrec-s0" / "config.json").read_text())
    assert cfg["train"]["threads"] == 1  # the file's own train.threads wins over cores / N


def test_every_worker_takes_the_runs_in_the_files_order(exp_file):
    """A worker (here the second of two, alone) goes down the rows in the file's order, so the first
    row's seeds finish before the next row's runs (workers once started half-way down the list)."""
    said = []
    run_experiment(exp_file, worker=(1, 2), log=said.append, summary=False, report=False)
    trained = [line.split(":")[0] for line in said if "s, best epoch" in line]
    assert trained == ["ring/pop seed 0", "ring/pop seed 1", "ring/sasrec seed 0", "ring/sasrec seed 1"], said


def test_workers_get_the_cores_divided_unless_the_file_sets_threads(exp_file, monkeypatch):
    import subprocess

    from mmrec.runs import experiment

    exp_file.write_text(exp_file.read_text().replace(", train.threads: 1", ""))
    started = []

    class Done:
        stdout = iter(())

        def __init__(self, cmd, **kw):
            started.append(cmd)

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Done)
    monkeypatch.setattr("mmrec.resources.available_cores", lambda: (6, "CPU affinity"))
    said = []
    experiment.run_jobs(exp_file, 3, log=said.append, report=False)
    assert [c[-4:] for c in started] == [["--worker", f"{i}/3", "--threads", "2"] for i in range(3)]
    assert said[0] == "3 workers, 2 thread(s) each (6 cores: CPU affinity)"


def _settings_of(cfg: dict, root) -> dict:
    """A run's settings that differ from its method's defaults (flattened; paths under ``root`` as <root>)."""
    from mmrec.config import from_dict
    from mmrec.runs.config import RunConfig, flatten, resolved_config, setting_in

    default = flatten(resolved_config(from_dict(RunConfig, {"dataset": cfg["dataset"], "method": cfg["method"]})), ".")
    return {k: (v.replace(str(root), "<root>") if isinstance(v, str) else v)
            for k, v in sorted(flatten(cfg, ".").items())
            if default.get(k, "<absent>") != v and not setting_in(k, {"preset", "preset_overrides", "out", "name"})}


# The settings (beyond each method's defaults) of config.json files that the bench drivers this
# replaced wrote for the commands of docs/results.md (bench/methods_table.py, negative_transfer.py,
# syncrec_domains.py at commit a323f86, run on a tiny dataset at <root>/ds with --store <root>/features and
# the pre-training run <root>/ant-pre-img, training stubbed out; the syncrec commands with the
# settings the page says its runs had: train.loss_weighting=batch, and ntg_gap=mean,
# mim_estimator=code, mim_negatives=batch for SyNCRec).
OLD_DRIVER_SETTINGS = {
    ("methods-scientific", "scientific", "kdsr_noholistic", 1): {"cold.fraction": 0.1, "eval.history_mask": "whole", "features.text": "minilm", "model.holistic": False, "store": "<root>/features", "train.epochs": 60, "train.loss_weighting": "batch", "train.patience": 5, "train.seed": 1, "train.threads": 1},
    ("methods-scientific", "scientific", "unisrec_trans", 0): {"cold.fraction": 0.1, "eval.history_mask": "whole", "features.text": "minilm", "model.hidden": 64, "model.mode": "transductive", "store": "<root>/features", "train.epochs": 60, "train.loss_weighting": "batch", "train.patience": 5, "train.seed": 0, "train.threads": 1},
    ("methods-ml1m", "ml1m", "odmt_nodistill", 2): {"cold.fraction": 0.1, "eval.history_mask": "whole", "features.image": "effnet", "features.text": "minilm", "model.distill": False, "store": "<root>/features", "train.epochs": 15, "train.loss_weighting": "batch", "train.patience": 3, "train.seed": 2, "train.threads": 1},
    ("methods-ml1m", "ml1m", "mmsr_merged_g1_p15", 0): {"cold.fraction": 0.1, "eval.history_mask": "whole", "features.image": "effnet", "features.text": "minilm", "model.fusion_gain": 1.0, "store": "<root>/features", "train.epochs": 15, "train.loss_weighting": "batch", "train.patience": 15, "train.seed": 0, "train.threads": 1},
    ("odmt-office-paper", "office", "sasrec", 2): {"eval.history_mask": "whole", "eval.ks": [10], "model.hidden": 128, "model.inner": 512, "store": "<root>/features", "train.bucket_batches": False, "train.grad_clip": 5.0, "train.loss_weighting": "batch", "train.lr": 0.0001, "train.max_len": 12, "train.mixed_precision": "fp16", "train.optimizer": "adamw", "train.seed": 2, "train.threads": 1, "train.valid_metric": "hr@10", "train.weight_decay": 0.1},
    ("odmt-office-paper", "office", "odmt", 0): {"eval.history_mask": "whole", "eval.ks": [10], "features.text": "minilm", "model.attn_bias": False, "model.detach_teacher": False, "model.first_item_candidates": True, "model.hidden": 128, "model.in_batch_mask": "window", "model.inner": 512, "store": "<root>/features", "train.bucket_batches": False, "train.grad_clip": 5.0, "train.loss_weighting": "batch", "train.lr": 0.0001, "train.max_len": 12, "train.mixed_precision": "fp16", "train.optimizer": "adamw", "train.seed": 0, "train.threads": 1, "train.valid_metric": "hr@10", "train.weight_decay": 0.1},
    ("odmt-office-paper", "office", "odmt_harmonised", 0): {"eval.history_mask": "whole", "features.text": "minilm", "store": "<root>/features", "train.seed": 0, "train.threads": 1, "train.valid_metric": "hr@10"},
    ("ant-transfer-hm", "hm", "relearn", 1): {"eval.history_mask": "whole", "features.image": "effnet", "features.price": "price", "features.text": "minilm", "model.hidden": 64, "model.init_from": "<root>/ant-pre-img", "model.pretrain_negatives": "batch", "store": "<root>/features", "train.batch_size": 32, "train.epochs": 40, "train.patience": 40, "train.seed": 1, "train.threads": 1},
    ("ant-transfer-scientific", "scientific", "finetune", 0): {"eval.history_mask": "whole", "features.text": "minilm", "model.adapt": "finetune", "model.hidden": 64, "model.init_from": "<root>/ant-pre-img", "model.pretrain_negatives": "batch", "store": "<root>/features", "train.epochs": 60, "train.patience": 5, "train.seed": 0, "train.threads": 1},
    ("syncrec-hm", "hm", "syncrec-no-scmim", 0): {"eval.history_mask": "whole", "model.mim_estimator": "code", "model.mim_negatives": "batch", "model.ntg_gap": "mean", "model.sc_mim": False, "model.top_domains": 4, "train.epochs": 100, "train.loss_weighting": "batch", "train.seed": 0, "train.threads": 1},
    ("syncrec-hm", "hm-other", "sasrec-single", 2): {"eval.history_mask": "whole", "train.epochs": 100, "train.loss_weighting": "batch", "train.seed": 2, "train.threads": 1},
    ("syncrec-ml1m", "ml1m", "syncrec", 1): {"eval.history_mask": "whole", "model.mim_estimator": "code", "model.mim_negatives": "batch", "model.ntg_gap": "mean", "train.batch_size": 64, "train.epochs": 100, "train.loss": "bce", "train.loss_weighting": "batch", "train.seed": 1, "train.threads": 1},
    ("syncrec-ml1m", "ml1m", "sasrec-cross", 0): {"eval.history_mask": "whole", "train.batch_size": 64, "train.epochs": 100, "train.loss": "bce", "train.loss_weighting": "batch", "train.seed": 0, "train.threads": 1},
}


@pytest.mark.parametrize("key", list(OLD_DRIVER_SETTINGS), ids=lambda k: f"{k[0]}:{k[1]}/{k[2]}-s{k[3]}")
def test_example_files_give_the_settings_the_bench_drivers_gave_the_tables_runs(key, tmp_path):
    from mmrec.runs.config import resolved_config

    name, ds, row, seed = key
    exp, root = load_experiment(Path(__file__).resolve().parents[2] / "examples" / "experiments" / f"{name}.yaml")
    for spec in exp.datasets.values():  # the tiny dataset the old commands were given
        if spec.path is not None:
            spec.path, spec.store = str(tmp_path / "ds"), str(tmp_path / "features")
    if exp.rows[row].init_from:
        exp.rows[row].init_from = str(tmp_path / "ant-pre-img")
    exp.out = str(tmp_path / "out")
    run = row_config(exp, root, ds, row, seed)
    got = _settings_of(resolved_config(run), tmp_path)
    if name.startswith("syncrec"):  # the syncrec driver left the (unused) store relative: "features"
        got.pop("store")
    assert got == OLD_DRIVER_SETTINGS[key]
    spec = exp.datasets[ds]
    expected = tmp_path / "ds" if spec.of is None else tmp_path / "out" / "data" / spec.of / "other-top4"
    assert run.dataset == str(expected)  # ((other) of hm's 4 largest domains and the rest)


def test_the_table_has_warm_and_cold_variant_rows_and_the_gap_to_the_baseline():
    """By hand: a [0.10, 0.11] against scratch [0.20, 0.21]: gap -0.1000, -48.8% of 0.205, below the
    two spreads together (0.0071 + 0.0071); b [0.195, 0.205]: -0.0050, within; c: +0.1000, above."""
    from mmrec.runs.experiment import Experiment, ReportSpec, format_table

    def runs(vals, **extra):
        return [{"test": {"ndcg@10": v, "hr@10": v}, "best_epoch": 1, "epochs_run": 2,
                 "timing": {"seconds_per_epoch_mean": 1.0}, **extra} for v in vals]

    exp = Experiment(name="t", datasets={}, rows={}, report=ReportSpec(baseline="scratch"))
    table = format_table(exp, {("d", "a"): runs([0.10, 0.11]), ("d", "b"): runs([0.195, 0.205]),
                               ("d", "c"): runs([0.30, 0.31]), ("d", "scratch"): runs([0.20, 0.21])})
    lines = table.splitlines()
    assert lines[0] == ("| dataset | row | seeds | ndcg@10 | hr@10 | best epoch / epochs run | s/epoch | "
                        "gap vs scratch | beyond spread |")
    assert lines[2].endswith("| -0.1000 (-48.8%) | below |") and lines[3].endswith("| -0.0050 (-2.4%) | no |")
    assert lines[4].endswith("| +0.1000 (+48.8%) | above |") and lines[5].endswith("| — | — |")
    one = format_table(exp, {("d", "a"): runs([0.30]), ("d", "scratch"): runs([0.20, 0.21])}).splitlines()
    assert one[2].endswith("| +0.0950 (+46.3%) | n/a (one seed) |")  # one seed has no spread to be beyond
    masked = {"protocol": {"evaluation": {"mode": "full", "history_mask": "whole", "ties": "pessimistic"}}}
    plain = {"protocol": {"evaluation": {"mode": "full", "history_mask": "none", "ties": "pessimistic"}}}
    table = format_table(exp, {("d", "a"): runs([0.10, 0.11], **plain), ("d", "scratch"): runs([0.20, 0.21], **masked)})
    assert table.splitlines()[2].endswith("| other protocol (eval.history_mask 'none' against 'whole') | — |")
    cold = {"test_warm": {"ndcg@10": 0.5}, "test_cold": {"n_cases": 3, "note": "method scores items by id only"},
            "test_variants": {"id": {"ndcg@10": 0.25, "hr@10": 0.5, "warm": {"ndcg@10": 0.3}, "cold": {"ndcg@10": 0.1}}}}
    table = format_table(Experiment(name="t", datasets={}, rows={}), {("d", "odmt"): runs([0.4], **cold)})
    lines = table.splitlines()
    assert lines[0].startswith("| dataset | row | seeds | ndcg@10 | hr@10 | ndcg@10 warm | ndcg@10 cold |")
    assert lines[2].startswith("| d | odmt | 1 | 0.4000 | 0.4000 | 0.5000 | n/a (ids only) |")
    assert lines[3].startswith("| d | odmt [id] | 1 | 0.2500 | 0.5000 | 0.3000 | 0.1000 |")


@pytest.fixture
def two_domains(tmp_path, monkeypatch):
    """100 users walking a ring of 20 items whose odd items are domain "a", even ones "b"."""
    import sys

    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.schema import Catalogue

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import raw_from_sequences

    monkeypatch.chdir(tmp_path)
    ring = {f"u{u:03d}": [str((u + k) % 20 + 1) for k in range(10)] for u in range(100)}
    raw = raw_from_sequences(ring)
    ids = sorted({i for s in ring.values() for i in s}, key=int)
    raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids], domain=["a" if int(i) % 2 else "b" for i in ids])
    prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    return tmp_path


def test_single_domain_datasets_and_the_tables_per_domain(two_domains):
    import numpy as np

    from mmrec.data.prepared import PreparedDataset

    tmp_path = two_domains
    f = tmp_path / "exp.yaml"
    f.write_text("""
name: dom
out: runs
seeds: [0]
datasets:
  d: {path: ds}
  d-a: {of: d, domain: a}
  d-b: {of: d, domain: b}
settings: {train.epochs: 2, train.threads: 1, model.hidden: 16, model.inner: 32}
rows:
  single: {method: sasrec, datasets: [d-a, d-b]}
  cross: {method: sasrec, datasets: [d]}
  syncrec: {method: syncrec}
report: {baseline: cross, domains: d}
""")
    f.write_text(f.read_text().replace("  syncrec: {method: syncrec}", "  syncrec: {method: syncrec, datasets: [d]}"))
    said = []
    out = run_experiment(f, log=said.append, report=False)
    assert out["pending"] == 0
    assert sorted(out["runs"]) == ["d-a/single", "d-b/single", "d/cross", "d/syncrec"]
    # the derived datasets: domain a's events only, each keeping its part; written once under <out>/data/<of>
    data, sub = PreparedDataset(tmp_path / "ds"), PreparedDataset(tmp_path / "runs" / "data" / "d" / "a")
    src = np.load(sub.root / "source_positions.npy")
    assert np.array_equal(np.asarray(sub.items), np.asarray(data.items)[src]) and (np.asarray(sub.items) % 2 == 1).all()
    assert sub.meta["derived"]["domain"] == "a" and "d-a: the 'a' events of d written to" in " ".join(said)
    # per domain: the single-domain model's cell is its own test figure (the cases are the same), and
    # "all" pools both domains' cases (by hand from the ranks)
    table = out["domains"]
    res = {k: json.loads((tmp_path / "runs" / k / "single-s0" / "results.json").read_text()) for k in ("d-a", "d-b")}
    ranks = np.concatenate([np.load(tmp_path / "runs" / k / "single-s0" / "test_ranks.npy") for k in ("d-a", "d-b")])
    pooled = float(np.mean(np.where(ranks < 10, 1.0 / np.log2(ranks + 2), 0.0)))
    assert (f"| single | {res['d-a']['test']['ndcg@10']:.4f} | {res['d-b']['test']['ndcg@10']:.4f} | {pooled:.4f} |"
            in table), table
    assert "| cross |" in table and "| syncrec |" in table
    assert "| syncrec | ntg_gap |" in table and "| syncrec | ntg_weight |" in table  # logged at the best epoch
    # a logged count (one seed) prints as the whole number it is, not as 787.0000
    best_row = json.loads((tmp_path / "runs" / "d" / "syncrec-s0" / "results.json").read_text())["best_epoch"]
    counts = next(json.loads(x) for x in (tmp_path / "runs" / "d" / "syncrec-s0" / "metrics.jsonl").read_text()
                  .splitlines() if json.loads(x)["epoch"] == best_row)["ntg_targets"]
    assert f"| syncrec | ntg_targets | {counts['a']} | {counts['b']} |" in table, table
    # the weights over training: each domain's range over the run's epochs, and the farthest from 1/2 (by hand)
    logged = [json.loads(x)["ntg_weight"] for x in
              (tmp_path / "runs" / "d" / "syncrec-s0" / "metrics.jsonl").read_text().splitlines()]
    lo_hi = [f"{min(m[n] for m in logged):.4f} - {max(m[n] for m in logged):.4f}" for n in ("a", "b")]
    far = max(abs(m[n] - 0.5) for m in logged for n in ("a", "b"))
    assert len(logged) == 2 and "uniform 1/2 = 0.5000" in table
    assert f"| syncrec | {lo_hi[0]} | {lo_hi[1]} | {far:.4f} ({200 * far:.1f}% of 1/D) |" in table, table
    assert "| cross |" not in table.split("ntg_weight over training")[1]  # only rows that log weights
    assert f"cases: a {res['d-a']['test']['n_cases']}, b {res['d-b']['test']['n_cases']})" in table
    # a second file over the same derived datasets (derived_data): its runs read runs/data, write no copy
    g = tmp_path / "again.yaml"
    g.write_text(f.read_text().replace("out: runs", "out: runs2\nderived_data: runs/data").replace("cross: {", "# {"))
    g.write_text("\n".join(x for x in g.read_text().splitlines() if "syncrec" not in x and "# {" not in x)
                 .replace("baseline: cross, ", ""))
    run_experiment(g, log=said.append, report=False, rows=["single"])
    cfg = json.loads((tmp_path / "runs2" / "d-a" / "single-s0" / "config.json").read_text())
    assert cfg["dataset"] == str(tmp_path / "runs" / "data" / "d" / "a") and not (tmp_path / "runs2" / "data").exists()
    f.write_text(f.read_text().replace("d-b: {of: d, domain: b}", "d-c: {of: d, domain: c}").replace("d-b]", "d-c]"))
    with pytest.raises(ConfigError, match="no item domain 'c'; its domains .*: a, b"):
        run_experiment(f, log=said.append, report=False)


def test_a_row_starts_from_a_run_folder_given_relative_to_where_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "e.yaml"
    f.write_text("""
name: t
datasets: {d: {path: ds}}
rows: {relearn: {method: ant, init_from: runs/pre, settings: {model.adapt: relearn, model.objective: target}}}
""")
    exp, root = load_experiment(f)
    run = row_config(exp, root, "d", "relearn", 0)
    assert run.model["init_from"] == str(tmp_path / "runs" / "pre") and run.model["adapt"] == "relearn"
    f.write_text(f.read_text().replace("init_from: runs/pre", "init_from: 'runs/pre-{dataset}'"))
    exp, root = load_experiment(f)
    assert row_config(exp, root, "d", "relearn", 0).model["init_from"] == str(tmp_path / "runs" / "pre-d")
    # a text-only dataset leaves out a row's image feature; the other keeps it
    f.write_text(f.read_text().replace("{d: {path: ds}}", "{d: {path: ds, modalities: [text]}, e: {path: ds2}}")
                 .replace("method: ant,", "method: ant, features: {text: minilm, image: effnet},"))
    exp, root = load_experiment(f)
    assert row_config(exp, root, "d", "relearn", 0).features == {"text": "minilm"}
    assert row_config(exp, root, "e", "relearn", 0).features == {"text": "minilm", "image": "effnet"}
    f.write_text(f.read_text().replace("modalities: [text]", "modalities: [txt]"))
    with pytest.raises(ConfigError, match="modalities: 'txt' is not a modality; use some of text, image, price"):
        load_experiment(f)
    f.write_text(f.read_text().replace("modalities: [txt]", "modalities: [text]"))
    f.write_text(f.read_text().replace("e: {path: ds2}", "e: {of: x, domain: a}"))
    with pytest.raises(ConfigError, match="datasets.e.of: 'x' is not a prepared dataset of the file"):
        load_experiment(f)


def _ant_ring(tmp_path, successor_raw, **pre_train):
    """The ring dataset with 8-d text features in ``store`` and an ANT pre-training run in ``pre``
    (one epoch, or ``pre_train``'s train settings)."""
    import numpy as np

    from mmrec.config import from_dict
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.schema import Catalogue
    from mmrec.features.store import write_manifest, write_shard
    from mmrec.runs.config import RunConfig
    from mmrec.trainers.loop import Trainer

    ids = sorted({str(i) for i in range(1, 41)}, key=int)
    successor_raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids])
    prepare(successor_raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    entry = tmp_path / "store" / "text"
    (entry / "shards").mkdir(parents=True)
    info = write_shard(entry / "shards" / "part-00000.h5", ids,
                       np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32), fmt="h5", dtype="float32")
    write_manifest(entry, {"version": 1, "name": "text", "encoder": {"encoder": "synthetic"}, "modality": "text",
                           "format": "h5", "dtype": "float32", "shape_per_item": [8], "n_items": 40, "n_rows": 40,
                           "shards": [info], "missing": {}, "catalogue_hash": "x", "config_hash": "y",
                           "library_versions": {}, "created": "now"})
    pre = from_dict(RunConfig, {"dataset": "ds", "method": "ant", "features": {"text": "text"}, "store": "store",
                                "model": {"hidden": 16, "inner": 16, "objective": "pretrain"},
                                "train": {"epochs": 1, "threads": 1, **pre_train}})
    Trainer(pre, tmp_path / "pre", log=lambda s: None).fit()


def _ant_experiment(tmp_path, name, rows):
    """``<name>.yaml``: ANT target rows (``rows``, indented YAML, then anything after them) on ``_ant_ring``'s
    dataset, seeds 0-1, two epochs of a 16-wide model."""
    f = tmp_path / f"{name}.yaml"
    f.write_text("""
name: NAME
out: runs
seeds: [0, 1]
datasets: {ring: {path: ds, store: store}}
settings: {train.epochs: 2, train.threads: 1, model.hidden: 16, model.inner: 16, model.objective: target}
rows:
""".replace("NAME", name) + rows.lstrip("\n"))
    return f


def test_transfer_policies_from_one_pretraining_run(tmp_path, successor_raw, monkeypatch):
    """ANT pre-trained once; rows relearn and scratch start from it (``init_from``), every seed,
    resumable; the table gives each policy's gap to scratch (what bench/negative_transfer.py did)."""
    monkeypatch.chdir(tmp_path)
    _ant_ring(tmp_path, successor_raw)
    f = _ant_experiment(tmp_path, "nt", """
  relearn: {method: ant, init_from: pre, features: {text: text}, settings: {model.adapt: relearn}}
  scratch: {method: ant, init_from: pre, features: {text: text}, settings: {model.adapt: scratch}}
report: {baseline: scratch}
""")
    out = run_experiment(f, log=lambda s: None, report=False)
    assert out["pending"] == 0
    run = tmp_path / "runs" / "ring" / "relearn-s1"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["init_from"] == str(tmp_path / "pre") and cfg["train"]["seed"] == 1
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["transfer"]["policy"] == "relearn" and first["transfer"]["frozen"] > 0  # loaded from pre
    rows = {line.split(" | ")[1]: line for line in out["table"].splitlines()[2:]}
    # the gap and the verdict, by hand from the runs' results (mean gap against the two seed sds together)
    import statistics
    r, sc = ([json.loads((tmp_path / "runs" / "ring" / f"{row}-s{i}" / "results.json").read_text())["test"]["ndcg@10"]
              for i in (0, 1)] for row in ("relearn", "scratch"))
    gap, spread = statistics.fmean(r) - statistics.fmean(sc), statistics.stdev(r) + statistics.stdev(sc)
    verdict = "below" if gap < -spread else ("above" if gap > spread else "no")
    assert f"| {gap:+.4f} ({100 * gap / statistics.fmean(sc):+.1f}%) | {verdict} | " in rows["relearn"]
    assert rows["scratch"].endswith("| — | — | — |")
    again = []
    run_experiment(f, log=again.append, report=False)
    assert not any(s.startswith("ring/") for s in again)
    assert "pre-training budget" not in "\n".join(again)  # every row from the same weights


def test_the_pretraining_budget_table_sets_rows_from_each_kept_epoch_side_by_side(tmp_path, successor_raw, monkeypatch):
    """Rows alike but for the pre-training epoch they start from (``RUN@N``, ``RUN`` = its best epoch):
    one table line per epoch with the pre-training run's loss and validation NDCG@10 there and the
    rows' test NDCG@10 (seed 0, and mean over the seeds each has), ordered by epoch; a row with other
    settings (scratch) is not in it; each row against the latest epoch's, paired over the test cases."""
    import numpy as np

    from mmrec.runs.report import mean_sd, paired_test

    monkeypatch.chdir(tmp_path)
    _ant_ring(tmp_path, successor_raw, epochs=3, keep_every=1)
    f = _ant_experiment(tmp_path, "budget", """
  relearn: {method: ant, init_from: pre, features: {text: text}, settings: {model.adapt: relearn}}
  relearn_pre2: {method: ant, seeds: [0], init_from: pre@2, features: {text: text}, settings: {model.adapt: relearn}}
  relearn_pre1: {method: ant, seeds: [0], init_from: pre@1, features: {text: text}, settings: {model.adapt: relearn}}
  scratch: {method: ant, seeds: [0], init_from: pre@1, features: {text: text}, settings: {model.adapt: scratch}}
""")
    out = run_experiment(f, log=lambda s: None, report=False)
    assert out["pending"] == 0
    pre = [json.loads(x) for x in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((tmp_path / "pre" / "results.json").read_text())["best_epoch"]

    def test(row, seed):
        return json.loads((tmp_path / "runs" / "ring" / f"{row}-s{seed}" / "results.json").read_text())["test"]["ndcg@10"]

    lines = [x for x in out["budget"].splitlines() if x.startswith("| relearn")]
    expect = {"relearn_pre1": 1, "relearn_pre2": 2, "relearn": best}
    ats = [int(x.split(" | ")[1].split()[0]) for x in lines]
    assert len(lines) == 3 and ats == sorted(ats)  # in pre-training order
    for row, at in expect.items():
        m = pre[at - 1]
        seeds = [0, 1] if row == "relearn" else [0]
        label = f"{at} (best)" if row == "relearn" else str(at)
        assert any(x.startswith(f"| {row} | {label} | {m['loss']:.4f} | {m['valid']['ndcg@10']:.4f} | {test(row, 0):.4f} | "
                                f"{mean_sd([test(row, s) for s in seeds])} ({', '.join(map(str, seeds))}) |")
                   for x in lines), out["budget"]
    assert "pre-training budget: ring, ant rows from pre at different epochs" in out["budget"]

    # each row against the latest epoch's, paired over the test cases (NDCG@10 by hand from the saved ranks)
    def cases(row):
        seeds = [0, 1] if row == "relearn" else [0]
        ranks = [np.load(tmp_path / "runs" / "ring" / f"{row}-s{s}" / "test_ranks.npy") for s in seeds]
        return np.mean([(r < 10) / np.log2(r + 2) for r in ranks], axis=0)

    last = lines[-1].split(" | ")[0].removeprefix("| ")
    assert lines[-1].endswith("| — |") and f"against epoch {ats[-1]} (paired)" in out["budget"]
    for line in lines[:-1]:
        row = line.split(" | ")[0].removeprefix("| ")
        diff = float(np.mean(cases(row) - cases(last)))
        assert line.endswith(f"| {diff:+.4f}, p = {paired_test(cases(last), cases(row))['p_value']:.4f} |"), line
    assert "scratch" not in out["budget"]

    # the table's paired column and the budget table read each run's ranks once between them
    from mmrec.runs.folder import RunFolder

    reads: list[str] = []
    real = RunFolder.test_ranks
    monkeypatch.setattr(RunFolder, "test_ranks", lambda self: reads.append(Path(self.path).name) or real(self))
    f.write_text(f.read_text() + "report: {baseline: relearn, metric: ndcg@10}\n")  # the table's paired column too
    again = run_experiment(f, only_finished=True, log=lambda s: None, report=False)
    assert again["budget"] == out["budget"] and "| paired p |" in again["table"]
    assert sorted(reads) == sorted(set(reads)) and "relearn-s1" in reads, reads


def test_rows_runs_only_the_rows_named(exp_file, tmp_path):
    """``--rows pop``: the pop runs only (the main rows before the ablations); the table has that row;
    an unknown row is an error listing the file's rows."""
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--rows", "pop", "--no-report"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == ["pop-s0", "pop-s1"]
    assert "| ring | pop | 2 |" in r.output and "| ring | sasrec |" not in r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--rows", "pop,gru", "--jobs", "2"])
    assert r.exit_code != 0 and "--rows: gru not among the file's rows (pop, sasrec)" in r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--rows", "sasrec", "--jobs", "2", "--no-report"])
    assert r.exit_code == 0, r.output  # the workers get the rows too
    trained = sorted(line[4:].split(":")[0] for line in r.output.splitlines() if "s, best epoch" in line)
    assert trained == ["ring/sasrec seed 0", "ring/sasrec seed 1"], r.output
    assert "| ring | sasrec | 2 |" in r.output and "| ring | pop |" not in r.output
    r = CliRunner().invoke(app, ["experiment", "show", str(exp_file), "--rows", "pop"])
    assert r.exit_code == 0 and "| ring | pop | 2 |" in r.output and "| ring | sasrec |" not in r.output, r.output


def test_datasets_runs_only_the_datasets_named(exp_file, tmp_path):
    """``--datasets ring2``: only that dataset's runs (a target whose pre-training has finished), also
    through --jobs' workers; ``show --datasets`` the same; an unknown name is an error listing the file's."""
    exp_file.write_text(exp_file.read_text().replace("  ring: {path: ds}", "  ring: {path: ds}\n  ring2: {path: ds}"))
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--datasets", "ring2", "--rows", "pop", "--no-report"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ring2"]
    assert "| ring2 | pop | 2 |" in r.output and "| ring | pop |" not in r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--datasets", "ring", "--rows", "pop",
                                 "--jobs", "2", "--no-report"])
    assert r.exit_code == 0, r.output
    trained = sorted(line[4:].split(":")[0] for line in r.output.splitlines() if "s, best epoch" in line)
    assert trained == ["ring/pop seed 0", "ring/pop seed 1"], r.output
    r = CliRunner().invoke(app, ["experiment", "show", str(exp_file), "--datasets", "ring2"])
    assert r.exit_code == 0 and "| ring2 | pop | 2 |" in r.output and "| ring | pop |" not in r.output, r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--datasets", "ring3"])
    assert r.exit_code != 0 and "--datasets: ring3 not among the file's datasets (ring, ring2)" in r.output


def test_the_table_has_each_rows_paired_test_against_the_baseline(exp_file, tmp_path):
    """The experiment's table ends each row with the p of the paired test against the baseline over the
    test cases (each row's per-case NDCG@10 averaged over its seeds, by hand from test_ranks.npy here);
    the baseline's own cell is a dash."""
    import numpy as np

    from mmrec.runs.report import paired_test

    out = run_experiment(exp_file, log=lambda s: None, report=False)
    lines = out["table"].splitlines()
    assert lines[0].endswith("| gap vs pop | beyond spread | paired p |")

    def cases(row):
        ranks = [np.load(tmp_path / "runs" / "ring" / f"{row}-s{s}" / "test_ranks.npy") for s in (0, 1)]
        return np.mean([(r < 10) / np.log2(r + 2) for r in ranks], axis=0)

    row = next(x for x in lines if x.startswith("| ring | sasrec |"))
    p = paired_test(cases("pop"), cases("sasrec"))["p_value"]
    assert row.endswith(f"| {p:.4f} |") and 0 < p <= 1, row
    assert next(x for x in lines if x.startswith("| ring | pop |")).endswith("| — | — | — |")


def test_seeds_runs_only_the_seeds_named(exp_file, tmp_path):
    """``--seeds 0``: every chosen row's seed 0 only (all rows' first seed before their others), through
    --jobs' workers too; the table counts that seed; a seed no chosen row has, a non-number, and a
    searched row chosen are errors that say what to do."""
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--seeds", "0", "--no-report"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == ["pop-s0", "sasrec-s0"]
    assert "| ring | pop | 1 |" in r.output and "| ring | sasrec | 1 |" in r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--seeds", "1", "--rows", "sasrec", "--jobs", "2",
                                 "--no-report"])
    assert r.exit_code == 0, r.output
    trained = sorted(line[4:].split(":")[0] for line in r.output.splitlines() if "s, best epoch" in line)
    assert trained == ["ring/sasrec seed 1"], r.output
    assert sorted(p.name for p in (tmp_path / "runs" / "ring").iterdir()) == ["pop-s0", "sasrec-s0", "sasrec-s1"]
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--seeds", "0,2"])
    assert r.exit_code != 0 and "--seeds: 2 not among the seeds of the rows chosen (0, 1)" in r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--seeds", "first"])
    assert r.exit_code != 0 and "give whole numbers separated by commas" in r.output
    exp_file.write_text(exp_file.read_text().replace("  pop: {method: pop}", "  pop: {method: pop, search: false}")
                        + "search: {grid: {train.lr: [0.001]}}\n")  # (a row is searched unless it says not)
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--seeds", "0"])
    assert r.exit_code != 0 and "--seeds: searched rows (sasrec) run their trials and then every seed" in r.output, r.output
    r = CliRunner().invoke(app, ["experiment", "run", str(exp_file), "--seeds", "1", "--rows", "pop", "--no-report"])
    assert r.exit_code == 0 and "| ring | pop | 1 |" in r.output, r.output


def test_a_logged_weighting_over_the_domains_is_summarised_over_training_whatever_its_name():
    from mmrec.runs.experiment import weights_over_training

    text = weights_over_training("mix", {"m": {"a": [0.5, 0.7, 0.6], "b": [0.5, 0.3, 0.4]}}, ["a", "b"])
    assert text.startswith("\nmix over training: lowest - highest") and "uniform 1/2 = 0.5000" in text
    assert "| m | 0.5000 - 0.7000 | 0.3000 - 0.5000 | 0.2000 (40.0% of 1/D) |" in text
