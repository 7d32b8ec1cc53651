"""Searches in experiment files: a grid's trials are run folders, the best on the validation metric
is run with every seed, and a second call reuses everything; Optuna (optional) prunes a trial whose
validation curve is clearly worse and keeps its state in <out>/optuna.db; without Optuna the error
says what to install."""

import json
import sys

import pytest
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.errors import ConfigError
from mmrec.runs.experiment import run_experiment

GOOD, BAD = 0.01, 1e-7  # a learning rate that learns the ring in a few epochs, and one that learns nothing


@pytest.fixture
def ring(tmp_path, successor_raw, monkeypatch):
    from mmrec.data.prepare import PrepareConfig, prepare

    monkeypatch.chdir(tmp_path)
    prepare(successor_raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    return tmp_path


def _write(tmp_path, search: str, seeds: str = "[0, 1]") -> object:
    f = tmp_path / "exp.yaml"
    f.write_text(f"""
name: tiny-search
out: runs
seeds: {seeds}
datasets:
  ring: {{path: ds}}
settings: {{train.epochs: 3, train.threads: 1, train.patience: 3}}
search: {search}
rows:
  sasrec: {{method: sasrec, settings: {{model.hidden: 16, model.inner: 32}}}}
  pop: {{method: pop, search: false}}
report: {{baseline: pop}}
""")
    return f


def _valid(folder, metric="ndcg@10"):
    return json.loads((folder / "results.json").read_text())["valid"][metric]


def test_grid_search_runs_every_trial_picks_the_best_on_validation_and_reuses_them(ring):
    f = _write(ring, f"{{grid: {{train.lr: [{BAD:g}, {GOOD}], model.dropout: [0.1]}}}}")  # pop: search false
    said = []
    out = run_experiment(f, log=said.append)
    assert out["pending"] == 0
    runs = ring / "runs" / "ring"
    assert sorted(p.name for p in runs.iterdir()) == ["pop-s0", "pop-s1", "report.html", "sasrec-s1",
                                                      "sasrec-t0-s0", "sasrec-t1-s0"]
    cfg = [json.loads((runs / f"sasrec-t{k}-s0" / "config.json").read_text()) for k in (0, 1)]
    assert [c["train"]["lr"] for c in cfg] == [BAD, GOOD] and all(c["model"]["dropout"] == 0.1 for c in cfg)
    values = [_valid(runs / f"sasrec-t{k}-s0") for k in (0, 1)]
    assert values[1] > values[0] + 0.05  # the bad rate is clearly worse: the choice is not a coin toss
    info = out["searches"][("ring", "sasrec")]
    assert info["best"] == 1 and info["params"] == {"train.lr": GOOD, "model.dropout": 0.1}
    assert info["valid"] == pytest.approx(max(values)) and info["metric"] == "ndcg@10"
    # the best trial's settings with the other seed; the first seed's entry is the trial itself
    seed1 = json.loads((runs / "sasrec-s1" / "config.json").read_text())
    assert seed1["train"]["lr"] == GOOD and seed1["train"]["seed"] == 1
    assert out["runs"]["ring/sasrec"] == [str(runs / "sasrec-t1-s0"), str(runs / "sasrec-s1")]
    test = [json.loads((runs / n / "results.json").read_text())["test"]["ndcg@10"] for n in ("sasrec-t1-s0", "sasrec-s1")]
    from mmrec.runs.report import mean_sd

    assert f"| ring | sasrec | 2 | {mean_sd(test)} |" in out["table"]
    assert f"search ring/sasrec: 2 trials (2 finished, 0 pruned); best trial 1 (train.lr=0.01, model.dropout=0.1), " \
           f"valid ndcg@10 {max(values):.4f}" in said
    # the report groups the row's two seeds (trial folder and seed folder) as one row, named sasrec
    groups = out["report_ring"]["groups"]
    assert sorted(groups) == ["pop", "sasrec"] and len(groups["sasrec"]["test/ndcg@10"]) == 2
    # a second call trains nothing: every trial and seed folder is reused
    stamp = (runs / "sasrec-t0-s0" / "results.json").stat().st_mtime_ns
    again = []
    out2 = run_experiment(f, log=again.append, report=False)
    assert not any(s.startswith("ring/") for s in again) and out2["table"] == out["table"]
    assert (runs / "sasrec-t0-s0" / "results.json").stat().st_mtime_ns == stamp
    # experiment show builds the same table from the folders
    r = CliRunner().invoke(app, ["experiment", "show", str(f)])
    assert r.exit_code == 0 and out["table"] in r.output


def test_a_search_setting_the_method_does_not_know_is_an_error_naming_it(ring):
    f = _write(ring, "{grid: {model.dropuot: [0.1]}}")
    with pytest.raises(ConfigError, match="model.dropuot"):
        run_experiment(f, log=lambda s: None)


def test_search_blocks_are_checked_when_the_file_is_read(ring):
    from mmrec.runs.experiment import load_experiment

    f = _write(ring, "{grid: {train.lr: [0.01]}, optuna: {trials: 2, space: {train.lr: {low: 0.1, high: 0.01}}}}")
    with pytest.raises(ConfigError, match="either grid"):
        load_experiment(f)
    f = _write(ring, "{optuna: {trials: 2, space: {train.lr: {low: 0.1, high: 0.01}}}}")
    with pytest.raises(ConfigError, match="low: A, high: B} with A < B"):
        load_experiment(f)
    f = _write(ring, "{optuna: {trials: 2, space: {train.lr: {low: 1e-4, high: 1e-2, log: true}}}}")
    exp, _ = load_experiment(f)  # 1e-4 is a number here (PyYAML alone reads it as a string)
    assert exp.search.optuna.space["train.lr"].low == 1e-4 and exp.search.optuna.space["train.lr"].log


def _seed_drawing(optuna, choices, order):
    """A sampler seed whose TPE sampler draws ``order`` from ``choices`` in its first trials (its
    start-up trials are seeded random draws, whatever the values told), so the test fixes the order
    of good and bad trials without depending on one Optuna version's random stream."""
    dist = {"train.lr": optuna.distributions.CategoricalDistribution(choices)}
    for seed in range(200):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        drawn = []
        for _ in order:
            t = study.ask(dist)
            drawn.append(t.params["train.lr"])
            study.tell(t, 0.0)
        if drawn == list(order):
            return seed
    raise AssertionError("no seed draws that order")


def test_optuna_prunes_a_clearly_worse_trial_on_its_validation_curve_and_resumes_from_its_storage(ring):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = _seed_drawing(optuna, [GOOD, BAD], [GOOD, BAD, BAD])
    f = _write(ring, f"{{optuna: {{trials: 3, space: {{train.lr: {{choices: [{GOOD}, {BAD:g}]}}}}, "
                     f"sampler_seed: {seed}, startup_trials: 1}}}}", seeds="[0]")
    said = []
    out = run_experiment(f, log=said.append)
    assert out["pending"] == 0
    runs = ring / "runs" / "ring"
    db = f"sqlite:///{ring / 'runs' / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(db)[0].study_name, storage=db)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.params["train.lr"] for t in trials] == [GOOD, BAD, BAD]
    # the good rate's trial finishes (the pruner waits for startup_trials=1 finished trial); each bad
    # one is pruned at epoch 1: its validation value is below the median of the finished trials' there
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert trials[0].value == pytest.approx(_valid(runs / "sasrec-t0-s0"))
    good_epoch1 = json.loads((runs / "sasrec-t0-s0" / "metrics.jsonl").read_text().splitlines()[0])["valid"]["ndcg@10"]
    for k in (1, 2):
        pruned = json.loads((runs / f"sasrec-t{k}-s0" / "pruned.json").read_text())
        assert pruned["epoch"] == 1 and pruned["value"] < good_epoch1
        assert not (runs / f"sasrec-t{k}-s0" / "results.json").exists()
        assert len((runs / f"sasrec-t{k}-s0" / "metrics.jsonl").read_text().splitlines()) == 1  # stopped after epoch 1
        assert any(s.startswith(f"ring/sasrec trial {k} seed 0: pruned after epoch 1") for s in said)
    info = out["searches"][("ring", "sasrec")]
    assert (info["done"], info["pruned"], info["best"], info["params"]) == (1, 2, 0, {"train.lr": GOOD})
    assert any(s.startswith("search ring/sasrec: 3 trials (1 finished, 2 pruned); best trial 0") for s in said)
    # the same command again: the study's trials are done, nothing is trained
    again = []
    run_experiment(f, log=again.append, report=False)
    assert not any(s.startswith("ring/") for s in again)
    assert len(study.get_trials()) == 3


def test_an_optuna_trial_cut_short_is_resumed_from_its_checkpoint(ring):
    """A process killed inside a trial leaves it RUNNING in the study with a checkpoint in its
    folder; the next call resumes that folder (not a new trial) and tells the study."""
    optuna = pytest.importorskip("optuna")
    from mmrec.errors import Preempted
    from mmrec.trainers import loop

    f = _write(ring, f"{{optuna: {{trials: 1, space: {{train.lr: {{choices: [{GOOD}]}}}}}}}}", seeds="[0]")
    real_fit = loop.Trainer.fit

    def stop_after_epoch_1(self, resume=False, on_epoch=None, **kw):
        def hook(epoch, row):
            on_epoch(epoch, row)
            raise Preempted("SIGTERM", str(self.run_dir), epoch, None)
        return real_fit(self, resume, hook, **kw)

    loop.Trainer.fit = stop_after_epoch_1
    try:
        with pytest.raises(Preempted):
            run_experiment(f, log=lambda s: None)
    finally:
        loop.Trainer.fit = real_fit
    db = f"sqlite:///{ring / 'runs' / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(db)[0].study_name, storage=db)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]
    said = []
    out = run_experiment(f, log=said.append, report=False)
    assert out["pending"] == 0 and [t.state.name for t in study.get_trials()] == ["COMPLETE"]
    assert json.loads((ring / "runs" / "ring" / "sasrec-t0-s0" / "results.json").read_text())["epochs_run"] == 3


def test_without_optuna_a_search_says_what_to_install_and_show_needs_none(ring, monkeypatch):
    f = _write(ring, "{optuna: {trials: 2, space: {train.lr: {low: 1e-4, high: 1e-2, log: true}}}}")
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    r = CliRunner().invoke(app, ["experiment", "run", str(f)])
    assert r.exit_code == 2
    assert 'Optuna, which is not installed: pip install "mmrec[search]"' in r.output
    assert not (ring / "runs" / "ring").exists()  # refused before anything was trained
    r = CliRunner().invoke(app, ["experiment", "show", str(f)])  # the folders alone make the table
    assert r.exit_code == 0 and "2 not finished" in r.output
