"""Experiments as files: datasets x rows x seeds, run to the end (resumable), then the table and the
report. ``mmrec experiment run FILE`` / ``mmrec experiment show FILE``.

An experiment file (YAML or TOML)::

    name: odmt-office                 # the run folders go under <out>/<dataset>/<row>-s<seed>
    out: runs/odmt-office
    seeds: [0, 1, 2]
    datasets:
      office: {path: data/office-odmt, store: features/office}
    preset: paper                     # optional: each row starts from its method's preset ...
    family: odmt                      # ... or, without one, from this method's train/eval part
    settings: {train.epochs: 200, train.patience: 10, train.threads: 1}    # every row
    rows:
      odmt: {method: odmt, features: {text: minilm}, settings: {model.hidden: 128}}
      sasrec: {method: sasrec}
      odmt_harmonised: {method: odmt, preset: harmonised, seeds: [0], features: {text: minilm}}
    report: {baseline: sasrec, metric: ndcg@10}

Paths are as on the command line (relative to the folder the command runs in). A run that finished with the same settings is reused, one
cut short resumes from its checkpoint, one that finished with other settings is an error naming them,
and one another process is training is left to it: the same file run by two processes shares its
runs (the run folder's lock), and an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmrec.config import from_dict, read_config_file, settings_overrides
from mmrec.errors import ConfigError, RunFolderBusy
from mmrec.runs.config import RunConfig, build_run, finished_results, preset_base
from mmrec.runs.folder import RunFolder


@dataclass
class DatasetSpec:
    path: str
    store: str = "features"


@dataclass
class RowSpec:
    method: str
    features: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None  # overrides the experiment's preset for this row
    seeds: list[int] | None = None  # overrides the experiment's seeds for this row (e.g. a one-seed check)


@dataclass
class ReportSpec:
    baseline: str | None = None
    metric: str = "ndcg@10"


@dataclass
class Experiment:
    name: str
    datasets: dict[str, Any]  # name -> DatasetSpec (load_experiment builds them)
    rows: dict[str, Any]  # label -> RowSpec
    out: str = "runs"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str | None = None
    family: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    report: ReportSpec = field(default_factory=ReportSpec)

    def validate(self) -> None:
        if not self.datasets or not self.rows or not self.seeds:
            raise ConfigError("an experiment needs datasets, rows and seeds")


def load_experiment(path: str | Path) -> tuple[Experiment, Path]:
    """The experiment of ``path`` and the folder its relative paths are under (the current one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    exp = from_dict(Experiment, read_config_file(path), prefix="")
    exp.datasets = {k: from_dict(DatasetSpec, {"path": v} if isinstance(v, str) else v, prefix=f"datasets.{k}.")
                    for k, v in exp.datasets.items()}
    exp.rows = {k: from_dict(RowSpec, v, prefix=f"rows.{k}.") for k, v in exp.rows.items()}
    return exp, Path.cwd()


def _abs(root: Path, p: str) -> str:
    return str(p if Path(p).is_absolute() else root / p)


def row_config(exp: Experiment, root: Path, ds: str, row: str, seed: int) -> RunConfig:
    """The RunConfig of one (dataset, row, seed): defaults < preset < experiment settings < row
    settings < dataset, method, features, seed."""
    spec, data = exp.rows[row], exp.datasets[ds]
    preset = spec.preset or exp.preset
    try:
        base, label = preset_base(spec.method, preset, exp.family)
    except ConfigError:
        raise ConfigError(f"row {row}: method {spec.method} has no preset {preset!r}; give the experiment a "
                          "family (a method whose train/eval settings this row takes) or the row its own preset") from None
    flags = {"dataset": _abs(root, data.path), "method": spec.method, "store": _abs(root, data.store),
             "features": dict(spec.features)}
    sets = settings_overrides({**exp.settings, **spec.settings, "train.seed": seed})
    return build_run(flags, sets, base=base, label=label)


def run_folder(exp: Experiment, root: Path, ds: str, row: str, seed: int) -> Path:
    return Path(_abs(root, exp.out)) / ds / f"{row}-s{seed}"


def run_experiment(path: str | Path, *, only_finished: bool = False, log: Callable[[str], None] = print,
                   report: bool = True) -> dict[str, Any]:
    """Train what has not finished (unless ``only_finished``), then the table and the report."""
    from mmrec.trainers.loop import Trainer

    exp, root = load_experiment(path)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pending = 0
    for ds in exp.datasets:
        for row, spec in exp.rows.items():
            for seed in spec.seeds or exp.seeds:
                run = row_config(exp, root, ds, row, seed)
                folder = run_folder(exp, root, ds, row, seed)
                res = finished_results(run, folder)
                if res is None and not only_finished:
                    holder = RunFolder(folder).holder()
                    if holder is not None:
                        log(f"{ds}/{row} seed {seed}: left to the other process ({holder})")
                    else:
                        t = time.perf_counter()
                        try:
                            res = Trainer(run, folder, log=lambda m: None, progress_bar=False).fit(resume=True)
                            log(f"{ds}/{row} seed {seed}: {time.perf_counter() - t:.0f}s, best epoch "
                                f"{res['best_epoch']} of {res['epochs_run']}")
                        except RunFolderBusy as busy:
                            log(f"{ds}/{row} seed {seed}: left to the other process ({busy.holder})")
                if res is None:
                    pending += 1
                else:
                    results.setdefault((ds, row), []).append(res)
    table = format_table(exp, results)
    log(table)
    out: dict[str, Any] = {"table": table, "pending": pending}
    if report and results:
        from mmrec.runs.report import build_report

        for ds in exp.datasets:
            folders = [Path(_abs(root, exp.out)) / ds]
            if any(k[0] == ds for k in results):
                page = Path(_abs(root, exp.out)) / ds / "report.html"
                try:
                    out[f"report_{ds}"] = build_report(folders, page, metric=exp.report.metric,
                                                       baseline=exp.report.baseline, title=f"{exp.name}: {ds}")
                    log(f"report: {page}")
                except ConfigError as e:  # e.g. the baseline has not finished yet
                    log(f"no report for {ds} yet: {e}")
    if pending:
        log(f"{pending} run(s) not finished here; run the same command again to continue")
    return out


def format_table(exp: Experiment, results: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """Markdown: per dataset and row, seeds, test metric mean ± sd, HR, best epochs (converged when
    well before the cap), seconds per epoch."""
    from mmrec.runs.report import mean_sd

    k = exp.report.metric
    hr = k.replace("ndcg", "hr")
    lines = [f"| dataset | row | seeds | {k} | {hr} | best epoch / epochs run | s/epoch |", "|---|---|---|---|---|---|---|"]
    for (ds, row), rs in results.items():
        vals = [r["test"].get(k, float("nan")) for r in rs]
        hrs = [r["test"].get(hr, float("nan")) for r in rs]
        eps = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in rs)
        spe = statistics.fmean(r["timing"]["seconds_per_epoch_mean"] or 0.0 for r in rs)
        lines.append(f"| {ds} | {row} | {len(rs)} | {mean_sd(vals)} | {mean_sd(hrs)} | {eps} | {spe:.1f} |")
    return "\n".join(lines)
