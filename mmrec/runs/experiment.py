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
cut short resumes from its checkpoint, one that finished with a lower ``train.epochs`` or
``train.patience`` than the file now says resumes to them (a cap raised to reach convergence), one
that finished with other settings is an error naming them,
and one another process is training is left to it: the same file run by two processes shares its
runs (the run folder's lock), and an interrupted experiment continues where it stopped
(``mmrec experiment run FILE --jobs N`` starts N such processes and prints the table once).

More a file can say:

- ``search:`` a grid (``{grid: {model.dropout: [0.1, 0.3], train.lr: [1e-3, 1e-4]}}``, every
  combination) or Optuna (``{optuna: {trials: 20, space: {train.lr: {low: 1e-4, high: 1e-2, log: true},
  model.dropout: {choices: [0.1, 0.3]}}, sampler_seed: 0}}``; ``pip install "mmrec[search]"``), the
  same trials for every row (``search: false`` on a row leaves it out). Trial k of a row is the run
  folder ``<row>-t<k>-s<seed>`` with the row's first seed; trials are compared on the validation
  metric (``train.valid_metric`` at the best checkpoint), Optuna's are pruned by their validation
  curve (median rule, ``startup_trials``, ``warmup_epochs``; a pruned trial leaves ``pruned.json`` in
  its folder), and its state lives in ``<out>/optuna.db`` (resumable, shared by processes). The best
  trial's settings then run with every seed (the first seed is the trial itself): the row's entry.
- A dataset derived from another: ``hm-swimwear: {of: hm, domain: Swimwear}`` is the events of one
  item domain of ``hm`` (``mmrec.data.domains``; ``top_domains: N`` on ``hm`` keeps the N largest
  domains and merges the rest into ``(other)``, as SyNCRec's ``model.top_domains``), written once to
  ``<out>/data/<hm>/<domain>`` (``derived_data: DIR`` instead of ``<out>/data``: a second file reading the
  first's, e.g. its runs re-evaluated under another protocol by ``mmrec evaluate --out``); a row runs on
  some datasets only with ``datasets: [..]``.
- ``modalities: [text]`` on a dataset: the feature modalities its store has; rows' features of other
  modalities are left out there (one row list for a text+image target and a text-only one).
- ``init_from: RUN_FOLDER`` on a row: start from a finished run (``model.init_from``, e.g. an ANT
  pre-training run; the row states the model settings that run had, as its checkpoint needs them).
  ``{dataset}`` in it is the dataset's name: ``"runs/unisrec-pre-{dataset}"`` (quoted in YAML) gives
  each target its own pre-training (UniSRec pre-trains on the datasets other than the target).
- ``report: {domains: hm}``: tables per item domain of ``hm``'s test targets (the cases whose user had
  an earlier event of that domain), rows on its single-domain datasets mapped onto the same cases,
  and per-domain values a method logs at its best epoch (SyNCRec's negative-transfer gaps and weights).

The table has, per dataset and row, the test metrics (warm and cold items under the cold-start
protocol; a method's evaluation variants, e.g. ODMT's sub-networks alone, as extra rows) and, with a
``report: {baseline: ROW}``, the gap of each row's mean to the baseline's and whether it is beyond
the two seed spreads together. Rows alike but for the pre-training epoch they start from
(``init_from: RUN@N``, from a run trained with ``train.keep_every``) get a pre-training budget table:
per epoch, the pre-training run's loss and validation metric there beside the rows' test metric.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmrec.config import from_dict, read_config_file, settings_overrides
from mmrec.errors import ConfigError, Preempted, RunFolderBusy
from mmrec.runs.config import (
    RunConfig,
    build_run,
    finished_results,
    flatten,
    preset_base,
)
from mmrec.runs.folder import RunFolder

PRUNED = "pruned.json"  # in a trial's run folder: the search's pruner stopped it (epoch, validation value)


@dataclass
class DatasetSpec:
    path: str | None = None  # a prepared dataset folder
    store: str | None = None  # its feature store (default: features; a derived dataset: its source's)
    of: str | None = None  # or: the single-domain view of another dataset of the file ...
    domain: str | None = None  # ... holding the events of this item domain (mmrec.data.domains)
    top_domains: int = 0  # domains of this dataset: the N largest, the rest merged into "(other)" (0: all)
    # the feature modalities its store has (e.g. [text] for a text-only target); a row's features of
    # other modalities are left out on this dataset. None: every row's features as written
    modalities: list[str] | None = None
    # settings for every row on this dataset (e.g. a batch size or patience its size calls for): over the
    # experiment's settings, under each row's own
    settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if (self.path is None) == (self.of is None):
            raise ConfigError("a dataset is a prepared dataset ({path: FOLDER}) or one item domain of another "
                              "dataset of the file ({of: NAME, domain: DOMAIN})")
        if (self.of is None) != (self.domain is None):
            raise ConfigError("of and domain go together: of names the dataset, domain the item domain to keep")
        from mmrec.features.aligned import MODALITIES

        odd = [m for m in self.modalities or [] if m not in MODALITIES]
        if odd:
            raise ConfigError(f"modalities: {', '.join(map(repr, odd))} is not a modality; use some of {', '.join(MODALITIES)}")


@dataclass
class RowSpec:
    method: str
    features: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None  # overrides the experiment's preset for this row
    seeds: list[int] | None = None  # overrides the experiment's seeds for this row (e.g. a one-seed check)
    datasets: list[str] | None = None  # only these datasets of the file (default: every one)
    init_from: str | None = None  # a finished run folder to start from (model.init_from, made absolute)
    search: bool = True  # false: the experiment's search leaves this row out (its own settings, every seed)


@dataclass
class RangeSpec:
    """One dimension of an Optuna search: ``{low, high}`` (integers: an integer setting; ``log``,
    ``step`` as Optuna's) or ``{choices: [...]}``."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    def validate(self) -> None:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ConfigError("a search dimension is either {choices: [a, b, ...]} or {low: A, high: B}")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ConfigError("a search dimension is {low: A, high: B} with A < B (log: true for a log scale), "
                              f"or {{choices: [a, b, ...]}}; got low={self.low!r}, high={self.high!r}")


@dataclass
class OptunaSpec:
    trials: int
    space: dict[str, Any]  # setting (train.lr, model.dropout, ...) -> RangeSpec (load_experiment builds them)
    sampler_seed: int = 0
    startup_trials: int = 2  # the pruner prunes no trial before this many have finished ...
    warmup_epochs: int = 0  # ... nor in a trial's first epochs

    def validate(self) -> None:
        if self.trials < 1 or not self.space:
            raise ConfigError("search.optuna needs trials >= 1 and a space ({setting: {low, high} or {choices}})")


@dataclass
class SearchSpec:
    grid: dict[str, list[Any]] | None = None  # setting -> values: every combination is a trial
    optuna: Any = None  # OptunaSpec (load_experiment builds it)

    def validate(self) -> None:
        if (self.grid is None) == (self.optuna is None):
            raise ConfigError("search: give either grid: {setting: [values]} or optuna: {trials, space}")
        for k, v in (self.grid or {}).items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"search.grid.{k}: expected a non-empty list of values, e.g. [0.1, 0.3]")


@dataclass
class ReportSpec:
    baseline: str | None = None
    metric: str = "ndcg@10"
    domains: str | None = None  # a dataset of the file: per-domain tables of its test targets


@dataclass
class Experiment:
    name: str
    datasets: dict[str, Any]  # name -> DatasetSpec (load_experiment builds them)
    rows: dict[str, Any]  # label -> RowSpec
    out: str = "runs"
    # where derived datasets ({of:, domain:}) are written: <out>/data unless set (a second file over the
    # same derived datasets, e.g. the first's runs re-evaluated under another protocol, names the first's)
    derived_data: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str | None = None
    family: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    report: ReportSpec = field(default_factory=ReportSpec)
    search: Any = None  # SearchSpec (load_experiment builds it)

    def validate(self) -> None:
        if not self.datasets or not self.rows or not self.seeds:
            raise ConfigError("an experiment needs datasets, rows and seeds")


_SCIENTIFIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")


def _yaml12_numbers(value: Any) -> Any:
    """``1e-4`` as the number YAML 1.2 reads (PyYAML, a YAML 1.1 reader, keeps it a string)."""
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _yaml12_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml12_numbers(v) for v in value]
    return value


def load_experiment(path: str | Path) -> tuple[Experiment, Path]:
    """The experiment of ``path`` and the folder its relative paths are under (the current one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    data = read_config_file(path)
    if path.suffix in (".yaml", ".yml"):
        data = _yaml12_numbers(data)
    exp = from_dict(Experiment, data, prefix="")
    exp.datasets = {k: from_dict(DatasetSpec, {"path": v} if isinstance(v, str) else v, prefix=f"datasets.{k}.")
                    for k, v in exp.datasets.items()}
    exp.rows = {k: from_dict(RowSpec, v, prefix=f"rows.{k}.") for k, v in exp.rows.items()}
    if exp.search is not None:
        exp.search = from_dict(SearchSpec, exp.search, prefix="search.")
    if exp.search is not None and exp.search.optuna is not None:
        exp.search.optuna = from_dict(OptunaSpec, exp.search.optuna, prefix="search.optuna.")
        exp.search.optuna.space = {k: from_dict(RangeSpec, v, prefix=f"search.optuna.space.{k}.")
                                   for k, v in exp.search.optuna.space.items()}
    prepared = [k for k, d in exp.datasets.items() if d.of is None]
    for k, d in exp.datasets.items():
        if d.of is not None and d.of not in prepared:
            raise ConfigError(f"datasets.{k}.of: {d.of!r} is not a prepared dataset of the file ({', '.join(prepared)})")
    for k, r in exp.rows.items():
        unknown = sorted(set(r.datasets or []) - set(exp.datasets))
        if unknown or r.datasets == [] or r.seeds == []:
            raise ConfigError(f"rows.{k}: datasets must name datasets of the file ({', '.join(exp.datasets)}) and "
                              f"seeds be non-empty; got datasets {r.datasets}, seeds {r.seeds}")
    if exp.report.domains is not None and exp.report.domains not in prepared:
        raise ConfigError(f"report.domains: {exp.report.domains!r} is not a prepared dataset of the file ({', '.join(prepared)})")
    return exp, Path.cwd()


def _abs(root: Path, p: str) -> str:
    return str(p if Path(p).is_absolute() else root / p)


def dataset_path(exp: Experiment, root: Path, ds: str) -> str:
    """The prepared dataset folder of ``ds``; a derived one's is ``<out>/data/<of>/<domain>[-top<N>]``
    (what it holds is in its path, so a run on another domain's events never passes for the same run)."""
    spec = exp.datasets[ds]
    if spec.path is not None:
        return _abs(root, spec.path)
    top = exp.datasets[spec.of].top_domains
    leaf = re.sub(r"[^\w.-]+", "_", spec.domain).strip("_") or "_"
    base = Path(_abs(root, exp.derived_data)) if exp.derived_data else Path(_abs(root, exp.out)) / "data"
    return str(base / spec.of / (leaf + (f"-top{top}" if top else "")))


def _store(exp: Experiment, ds: str) -> str:
    spec = exp.datasets[ds]
    return spec.store or (exp.datasets[spec.of].store if spec.of else None) or "features"


def row_init_from(exp: Experiment, root: Path, ds: str, row: str) -> str | None:
    """The row's ``init_from`` on dataset ``ds``: ``{dataset}`` filled in, made absolute (None: none)."""
    spec = exp.rows[row]
    return _abs(root, spec.init_from.replace("{dataset}", ds)) if spec.init_from else None


def row_config(exp: Experiment, root: Path, ds: str, row: str, seed: int, params: dict[str, Any] | None = None) -> RunConfig:
    """The RunConfig of one (dataset, row, seed): defaults < preset < experiment settings < the
    dataset's settings < row settings < ``params`` (a search trial's) < dataset, method, features,
    ``init_from``, seed."""
    spec = exp.rows[row]
    preset = spec.preset or exp.preset
    try:
        base, label = preset_base(spec.method, preset, exp.family)
    except ConfigError:
        raise ConfigError(f"row {row}: method {spec.method} has no preset {preset!r}; give the experiment a "
                          "family (a method whose train/eval settings this row takes) or the row its own preset") from None
    have = exp.datasets[ds].modalities
    flags = {"dataset": dataset_path(exp, root, ds), "method": spec.method, "store": _abs(root, _store(exp, ds)),
             "features": {m: e for m, e in spec.features.items() if have is None or m in have}}
    init = row_init_from(exp, root, ds, row)
    own = {"model.init_from": init} if init else {}
    sets = settings_overrides({**exp.settings, **exp.datasets[ds].settings, **spec.settings, **(params or {}), **own,
                               "train.seed": seed})
    return build_run(flags, sets, base=base, label=label)


def run_folder(exp: Experiment, root: Path, ds: str, row: str, seed: int) -> Path:
    return Path(_abs(root, exp.out)) / ds / f"{row}-s{seed}"


def trial_folder(exp: Experiment, root: Path, ds: str, row: str, k: int, seed: int) -> Path:
    return Path(_abs(root, exp.out)) / ds / f"{row}-t{k}-s{seed}"


def row_datasets(exp: Experiment, row: str) -> list[str]:
    return [ds for ds in exp.datasets if exp.rows[row].datasets is None or ds in exp.rows[row].datasets]


def row_seeds(exp: Experiment, row: str) -> list[int]:
    return list(exp.rows[row].seeds or exp.seeds)


def is_searched(exp: Experiment, row: str) -> bool:
    return exp.search is not None and exp.rows[row].search


def grid_trials(search: SearchSpec) -> list[dict[str, Any]]:
    """Every combination of the grid's values (the first setting varies slowest)."""
    keys = list(search.grid or {})
    return [dict(zip(keys, combo)) for combo in itertools.product(*(search.grid[k] for k in keys))]


# -- Optuna ----------------------------------------------------------------------------------------
def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError('this experiment searches with Optuna, which is not installed: pip install "mmrec[search]" '
                          "(or pip install optuna), or give the search as a grid") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distributions(optuna: Any, space: dict[str, RangeSpec]) -> dict[str, Any]:
    out = {}
    for k, r in space.items():
        try:
            if r.choices is not None:
                out[k] = optuna.distributions.CategoricalDistribution(r.choices)
            elif all(isinstance(v, int) for v in (r.low, r.high)) and (r.step is None or isinstance(r.step, int)):
                out[k] = optuna.distributions.IntDistribution(r.low, r.high, log=r.log, step=r.step or 1)
            else:
                out[k] = optuna.distributions.FloatDistribution(float(r.low), float(r.high), log=r.log, step=r.step)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"search.optuna.space.{k}: {e}") from None
    return out


def open_study(exp: Experiment, root: Path, ds: str, row: str) -> Any:
    """The Optuna study of one (dataset, row), created or continued, in ``<out>/optuna.db``. Its name
    holds a hash of the search's space, sampler and pruner, so another search is another study."""
    import hashlib

    optuna = _optuna()
    opt = exp.search.optuna
    db = Path(_abs(root, exp.out)) / "optuna.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    key = json.dumps({"space": {k: vars(v) for k, v in opt.space.items()}, "seed": opt.sampler_seed,
                      "startup": opt.startup_trials, "warmup": opt.warmup_epochs}, sort_keys=True, default=str)
    name = f"{exp.name}/{ds}/{row}/{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=opt.sampler_seed),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=opt.startup_trials,
                                                                  n_warmup_steps=opt.warmup_epochs))


class _Pruned(Exception):
    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch, self.value = epoch, value


# a RUNNING trial whose folder has no config.json yet is another process's that has not started
# training (or one that died before); after this long it is taken over
_UNSTARTED_TRIAL_S = 600.0


@dataclass
class Trial:
    k: int
    params: dict[str, Any] | None
    folder: Path
    state: str  # "done", "pruned", "pending"
    results: dict[str, Any] | None = None
    value: float | None = None  # the validation metric (at the best checkpoint; a pruned trial's last)


class _Runner:
    """One pass over an experiment: trains (unless ``only_finished``) or reuses every run."""

    def __init__(self, exp: Experiment, root: Path, *, only_finished: bool, log: Callable[[str], None],
                 seeds: list[int] | None = None):
        self.exp, self.root, self.only_finished, self.log = exp, root, only_finished, log
        self.seeds = seeds  # only these of each plain row's seeds (None: all)
        self.pending = self.trained = 0
        self.unfinished: list[tuple[str, Path, RunConfig]] = []  # (label, folder, run) of each pending plain run
        self._said: set[str] = set()

    def say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.log(line)

    def ensure_dataset(self, ds: str) -> None:
        """Derive a single-domain dataset (``of`` + ``domain``) before its first run."""
        spec = self.exp.datasets[ds]
        out = Path(dataset_path(self.exp, self.root, ds))
        if spec.of is None or (out / "dataset.json").exists():
            return
        from mmrec.data.domains import single_domain_dataset
        from mmrec.data.prepared import PreparedDataset
        from mmrec.trainers.methods.syncrec import item_domains

        data = PreparedDataset(dataset_path(self.exp, self.root, spec.of))
        codes, names = item_domains(data, self.exp.datasets[spec.of].top_domains)
        if spec.domain not in names:
            raise ConfigError(f"datasets.{ds}.domain: {data.root} has no item domain {spec.domain!r}; its domains "
                              f"(top_domains={self.exp.datasets[spec.of].top_domains}): {', '.join(names)}")
        single_domain_dataset(data, codes, names.index(spec.domain) + 1, spec.domain, out)
        self.log(f"{ds}: the {spec.domain!r} events of {spec.of} written to {out}")

    def train(self, ds: str, run: RunConfig, folder: Path, label: str,
              on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """The results of ``run`` in ``folder``: reused, or trained (resumed) unless ``only_finished``;
        None when it has not finished here (another process holds it)."""
        res = finished_results(run, folder)
        if res is not None or self.only_finished:
            return res
        holder = RunFolder(folder).holder()
        if holder is not None:
            self.say_once(f"{label}: left to the other process ({holder})")
            return None
        from mmrec.trainers.loop import Trainer

        self.ensure_dataset(ds)
        t = time.perf_counter()
        try:
            trainer = Trainer(run, folder, log=lambda m: None, progress_bar=False)
            res = trainer.fit(resume=True, on_epoch=on_epoch, reuse_finished=True)
        except RunFolderBusy as busy:
            self.say_once(f"{label}: left to the other process ({busy.holder})")
            return None
        if trainer.reused:  # the other process finished it between the look above and the lock
            return res
        self.trained += 1
        self.log(f"{label}: {time.perf_counter() - t:.0f}s, best epoch {res['best_epoch']} of {res['epochs_run']}")
        if trainer.stop_requested is not None:  # asked as the run finished: start no other run
            raise Preempted(trainer.stop_requested, str(folder), res["epochs_run"], None, finished=True)
        return res

    # -- rows ----------------------------------------------------------------------------------
    def plain_row(self, ds: str, row: str) -> list[tuple[Path, dict[str, Any]]]:
        done = []
        for seed in row_seeds(self.exp, row):
            if self.seeds is not None and seed not in self.seeds:
                continue
            folder = run_folder(self.exp, self.root, ds, row, seed)
            run = row_config(self.exp, self.root, ds, row, seed)
            res = self.train(ds, run, folder, f"{ds}/{row} seed {seed}")
            if res is None:
                self.pending += 1
                self.unfinished.append((f"{ds}/{row} seed {seed}", folder, run))
            else:
                done.append((folder, res))
        return done

    def searched_row(self, ds: str, row: str) -> tuple[list[tuple[Path, dict[str, Any]]], dict[str, Any]]:
        """The trials, then the best trial's settings with every seed (the first seed's run is the trial)."""
        exp, root = self.exp, self.root
        seeds = row_seeds(exp, row)
        trials = self.grid(ds, row, seeds[0]) if exp.search.grid is not None else self.optuna(ds, row, seeds[0])
        info: dict[str, Any] = {"trials": len(trials), **{s: sum(t.state == s for t in trials)
                                                        for s in ("done", "pruned", "pending")}}
        info["metric"] = row_config(exp, root, ds, row, seeds[0]).train.valid_metric
        info["by_trial"] = [{"trial": t.k, "params": t.params, "state": t.state, "valid": t.value} for t in trials]
        if info["pending"]:
            self.pending += info["pending"]
            return [], info
        finished = [t for t in trials if t.state == "done"]
        if not finished:
            raise ConfigError(f"{ds}/{row}: every trial of the search was pruned; raise search.optuna.startup_trials")
        best = max(finished, key=lambda t: (t.value, -t.k))
        info.update(best=best.k, params=best.params, valid=best.value)
        done = [(best.folder, best.results)]
        for seed in seeds[1:]:
            folder = run_folder(exp, root, ds, row, seed)
            res = self.train(ds, row_config(exp, root, ds, row, seed, best.params), folder,
                             f"{ds}/{row} seed {seed} (trial {best.k}'s settings)")
            if res is None:
                self.pending += 1
            else:
                done.append((folder, res))
        return done, info

    def _trial(self, ds: str, row: str, k: int, seed: int, params: dict[str, Any] | None,
               res: dict[str, Any] | None = None) -> Trial:
        """Trial ``k`` as its folder says: finished, pruned (``pruned.json``) or pending."""
        folder = trial_folder(self.exp, self.root, ds, row, k, seed)
        if params is None:  # (experiment show: the settings the trial's folder was trained with)
            saved = RunFolder(folder).config()
            if saved is None:
                return Trial(k, None, folder, "pending")
            flat = flatten(saved, ".")
            params = {key: flat.get(key) for key in self.exp.search.optuna.space}
        run = row_config(self.exp, self.root, ds, row, seed, params)
        res = res if res is not None else finished_results(run, folder)
        if res is not None:
            return Trial(k, params, folder, "done", res, float(res["valid"][run.train.valid_metric]))
        if (folder / PRUNED).exists():
            return Trial(k, params, folder, "pruned", value=json.loads((folder / PRUNED).read_text()).get("value"))
        return Trial(k, params, folder, "pending")

    def grid(self, ds: str, row: str, seed: int) -> list[Trial]:
        trials = []
        for k, params in enumerate(grid_trials(self.exp.search)):
            run = row_config(self.exp, self.root, ds, row, seed, params)
            folder = trial_folder(self.exp, self.root, ds, row, k, seed)
            res = self.train(ds, run, folder, f"{ds}/{row} trial {k} seed {seed}")
            trials.append(self._trial(ds, row, k, seed, params, res) if res is not None
                          else Trial(k, params, folder, "pending"))
        return trials

    def optuna(self, ds: str, row: str, seed: int) -> list[Trial]:
        opt = self.exp.search.optuna
        if self.only_finished:  # the folders say everything: no Optuna needed to show a table
            return [self._trial(ds, row, k, seed, None) for k in range(opt.trials)]
        optuna = _optuna()
        study = open_study(self.exp, self.root, ds, row)
        dists = _distributions(optuna, opt.space)
        running = (optuna.trial.TrialState.RUNNING,)
        while True:
            for t in study.get_trials(deepcopy=False, states=running):  # cut short, or another process's
                self.optuna_trial(optuna, study, t, ds, row, seed, fresh=False)
            if len(study.get_trials(deepcopy=False)) >= opt.trials:
                break
            t = study.ask(dists)
            if t.number >= opt.trials:  # another process asked for the last trial at the same moment
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                break
            self.optuna_trial(optuna, study, t, ds, row, seed, fresh=True)
        return [self._trial(ds, row, t.number, seed, dict(t.params))
                for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number) if t.number < opt.trials]

    def optuna_trial(self, optuna: Any, study: Any, t: Any, ds: str, row: str, seed: int, *, fresh: bool) -> None:
        """Train (resume, or reuse) one trial, its validation curve fed to the pruner; tell the study."""
        run = row_config(self.exp, self.root, ds, row, seed, dict(t.params))
        folder = trial_folder(self.exp, self.root, ds, row, t.number, seed)
        pruned = optuna.trial.TrialState.PRUNED
        if (folder / PRUNED).exists():
            study.tell(t.number, state=pruned, skip_if_finished=True)
            return
        if not fresh and RunFolder(folder).config() is None and t.datetime_start is not None and \
                (datetime.datetime.now() - t.datetime_start).total_seconds() < _UNSTARTED_TRIAL_S:
            return  # just asked for by another process, which is loading its data
        trial = t if fresh else optuna.trial.Trial(study, t._trial_id)
        metric = run.train.valid_metric
        label = f"{ds}/{row} trial {t.number} seed {seed}"

        def on_epoch(epoch: int, row_: dict[str, Any]) -> None:
            if "valid" not in row_:
                return
            value = float(row_["valid"][metric])
            trial.report(value, epoch)
            if trial.should_prune():
                from mmrec.runs.folder import atomic_json

                atomic_json(folder / PRUNED, {"epoch": epoch, "metric": metric, "value": value,
                                              "doc": "the search's pruner stopped this trial (median rule)"})
                raise _Pruned(epoch, value)

        try:
            res = self.train(ds, run, folder, label, on_epoch=on_epoch)
        except _Pruned as p:
            self.trained += 1
            self.log(f"{label}: pruned after epoch {p.epoch} (valid {metric} {p.value:.4f})")
            study.tell(t.number, state=pruned, skip_if_finished=True)
            return
        if res is not None:
            study.tell(t.number, float(res["valid"][metric]), skip_if_finished=True)


def run_experiment(path: str | Path, *, only_finished: bool = False, log: Callable[[str], None] = print,
                   report: bool = True, threads: int | None = None, worker: tuple[int, int] | None = None,
                   wait: bool = False, summary: bool = True, poll_s: float = 5.0,
                   rows: list[str] | None = None, datasets: list[str] | None = None,
                   seeds: list[int] | None = None) -> dict[str, Any]:
    """Train what has not finished (unless ``only_finished``), then the table and the report.

    ``threads``: ``train.threads`` for runs whose file does not set it. ``worker`` (i, n): worker i
    of n processes sharing the file (``--jobs``); every worker goes down the (dataset, row, seed) list
    in the file's order and takes the first run no other process holds (its lock), so the first rows'
    seeds finish first (a worker that started half-way down the list once trained an ablation while
    the main row's last seed waited). ``wait``: while runs are left to other processes, look again
    every ``poll_s`` seconds (a search's seeds start once its trials end) until all have finished.
    ``summary``: print the table and write the report (a worker leaves them to its parent).
    ``rows``: only these rows of the file (e.g. the main rows before the ablations); ``datasets``: only
    these datasets (e.g. one target whose pre-training has finished); ``seeds``: only these seeds of each
    row (e.g. seed 0 of two rows to compare before their other seeds; the table then has those seeds)."""
    exp, root = load_experiment(path)
    if threads:
        exp.settings = {"train.threads": threads, **exp.settings}
    check_selection(exp, rows, datasets, seeds)
    units = [(ds, row) for ds in exp.datasets for row in exp.rows
             if ds in row_datasets(exp, row) and (rows is None or row in rows)
             and (datasets is None or ds in datasets)]
    runner = _Runner(exp, root, only_finished=only_finished, log=log, seeds=seeds)
    while True:
        runner.pending = runner.trained = 0
        runner.unfinished = []
        got: dict[tuple[str, str], list[tuple[Path, dict[str, Any]]]] = {}
        searches: dict[tuple[str, str], dict[str, Any]] = {}
        for ds, row in units:
            if is_searched(exp, row):
                done, searches[(ds, row)] = runner.searched_row(ds, row)
            else:
                done = runner.plain_row(ds, row)
            if done:
                got[(ds, row)] = done
        if only_finished or not wait or runner.pending == 0:
            break
        if runner.trained == 0:
            time.sleep(poll_s)
    pending = runner.pending
    got = {k: got[k] for k in sorted(got, key=lambda k: (list(exp.datasets).index(k[0]), list(exp.rows).index(k[1])))}
    out: dict[str, Any] = {"pending": pending, "searches": searches,
                           "runs": {f"{ds}/{row}": [str(f) for f, _ in v] for (ds, row), v in got.items()}}
    if not summary:
        return out
    results = {k: [res for _, res in v] for k, v in got.items()}
    memo: dict[tuple[str, ...], Any] = {}  # each row's per-case metric, read once for the table and the budget table
    table = format_table(exp, results, {key: [f for f, _ in v] for key, v in got.items()}, memo)
    log(table)
    out["table"] = table
    for (ds, row), info in searches.items():
        log(search_line(ds, row, info))
    if exp.report.domains is not None and any(k[0] == exp.report.domains for k in got):
        out["domains"] = domain_tables(exp, root, got)
        log(out["domains"])
    budget = budget_tables(exp, root, got, memo)
    if budget:
        out["budget"] = budget
        log(budget)
    if report and got:
        from mmrec.runs.report import build_report

        for ds in exp.datasets:
            folders = [f for (d, _), v in got.items() if d == ds for f, _ in v]
            if folders:
                page = Path(_abs(root, exp.out)) / ds / "report.html"
                try:
                    out[f"report_{ds}"] = build_report(folders, page, metric=exp.report.metric,
                                                       baseline=exp.report.baseline if any(
                                                           d == ds and r == exp.report.baseline for d, r in got) else None,
                                                       title=f"{exp.name}: {ds}")
                    log(f"report: {page}")
                except ConfigError as e:
                    log(f"no report for {ds} yet: {e}")
    if pending:
        if only_finished and runner.unfinished:
            out["progress"] = progress_table(runner.unfinished)
            log(out["progress"])
        log(f"{pending} run(s) not finished here; run the same command again to continue")
    return out


def progress_table(unfinished: list[tuple[str, Path, RunConfig]]) -> str:
    """The runs that have not finished, from their folders: whether a process trains one now (its
    ``train.lock``), the epochs logged against the cap, the best validation metric so far and its
    epoch, the seconds an epoch took (training + evaluation, mean of the logged epochs) and the most
    it has left: to the cap, or, under ``train.early_stop=metric``, to the epoch where patience runs
    out if nothing improves (``best + patience x eval_every``), whichever comes first. Runs with
    nothing logged are counted on one line, not listed."""
    lines = ["\nnot finished (from the run folders)\n",
             "| run | state | epochs / cap | best valid (epoch) | s/epoch | at most left |", "|---|---|---|---|---|---|"]
    untouched = 0
    for label, folder, run in unfinished:
        rf = RunFolder(folder)
        epochs = [m for m in rf.metrics() if "epoch" in m]
        holder = rf.holder()
        if not epochs and holder is None:
            untouched += 1
            continue
        k = run.train.valid_metric
        scored = [m for m in epochs if k in m.get("valid", {})]
        best = max(scored, key=lambda m: m["valid"][k], default=None)
        best_cell = f"{k} {best['valid'][k]:.4f} ({best['epoch']})" if best else "-"
        secs = [m.get("train_seconds", 0.0) + m.get("eval_seconds", 0.0) for m in epochs]
        per = sum(secs) / len(secs) if secs else None
        state = f"training ({holder})" if holder else "stopped: the same command resumes it"
        last = epochs[-1]["epoch"] if epochs else 0
        tc = run.train
        stop_by = tc.epochs
        if best is not None and tc.early_stop == "metric":
            stop_by = min(stop_by, best["epoch"] + tc.patience * tc.eval_every)
        left = max(stop_by - last, 0)
        left_cell = f"{left} epoch{'' if left == 1 else 's'}" + (f", {_duration(left * per)}" if per is not None else "")
        per_cell = f"{per:.0f}" if per is not None else "-"
        lines.append(f"| {label} | {state} | {last} / {tc.epochs} | {best_cell} | {per_cell} | {left_cell} |")
    if untouched:
        lines.append(f"\nnot started: {untouched} run(s)")
    return "\n".join(lines)


def search_line(ds: str, row: str, info: dict[str, Any]) -> str:
    """One line per searched row: the chosen trial and its settings, or what is still running."""
    head = f"search {ds}/{row}: {info['trials']} trials ({info['done']} finished, {info['pruned']} pruned"
    if "best" not in info:
        return head + f", {info['pending']} not finished)"
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    return head + f"); best trial {info['best']} ({params}), valid {info['metric']} {info['valid']:.4f}"


NO_RANKS = "- (a run without test_ranks.npy)"  # a paired cell that cannot be computed


def _gap(vals: list[float], base: list[float]) -> tuple[str, str]:
    """The gap of the means (and in % of the baseline's) and whether it is beyond both seed spreads
    (``n/a (one seed)`` when a side has one seed: it has no spread)."""
    m, mb = statistics.fmean(vals), statistics.fmean(base)
    gap = m - mb
    if min(len(vals), len(base)) < 2:
        beyond = "n/a (one seed)"
    else:
        spread = statistics.stdev(vals) + statistics.stdev(base)
        beyond = "below" if gap < 0 and -gap > spread else ("above" if gap > 0 and gap > spread else "no")
    return f"{gap:+.4f} ({100 * gap / mb:+.1f}%)" if mb else f"{gap:+.4f}", beyond


def row_cases(folders: list[Path], metric: str, memo: dict[tuple[str, ...], Any]) -> Any:
    """``seeds_cases`` of one row's run folders, kept in ``memo`` (keyed by the folders and the metric) so
    that the tables of one command read each run's test_ranks.npy once."""
    from mmrec.runs.report import seeds_cases

    key = (metric, *map(str, folders))
    if key not in memo:
        memo[key] = seeds_cases(folders, metric)
    return memo[key]


def format_table(exp: Experiment, results: dict[tuple[str, str], list[dict[str, Any]]],
                 folders: dict[tuple[str, str], list[Path]] | None = None,
                 memo: dict[tuple[str, ...], Any] | None = None) -> str:
    """Markdown: per dataset and row, seeds, test metric mean ± sd, HR, (warm and cold under the
    cold-start protocol), best epochs (converged when well before the cap), seconds per epoch; with
    a baseline, the gap to it and whether it is beyond the two seed spreads together ("below" is
    negative transfer when the baseline is training from scratch), and with the runs' ``folders`` the
    p of the paired test over the test cases (each row's per-case metric averaged over its seeds, as
    ``mmrec report``). A method's evaluation variants (e.g. ODMT's sub-networks alone) are rows of
    their own, from the same runs."""
    from mmrec.runs.report import mean_sd, paired_test, protocol_difference

    k = exp.report.metric
    hr = k.replace("ndcg", "hr")
    cold = any("test_cold" in r for rs in results.values() for r in rs)
    base = exp.report.baseline
    head = ["dataset", "row", "seeds", k, hr] + ([f"{k} warm", f"{k} cold"] if cold else []) + \
        ["best epoch / epochs run", "s/epoch"] + ([f"gap vs {base}", "beyond spread"] if base else []) + \
        (["paired p"] if base and folders is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    memo = {} if memo is None else memo  # the baseline's per-case metric read once, not once per row

    def cases_of(key: tuple[str, str]) -> Any:
        return row_cases((folders or {}).get(key, []), k, memo)

    for (ds, row), rs in results.items():
        eps = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in rs)
        spe = statistics.fmean(r["timing"]["seconds_per_epoch_mean"] or 0.0 for r in rs)
        parts = [(row, [r["test"] for r in rs], [r.get("test_warm", {}) for r in rs], [r.get("test_cold", {}) for r in rs])]
        for v in rs[0].get("test_variants", {}):
            vs = [r["test_variants"][v] for r in rs]
            parts.append((f"{row} [{v}]", vs, [x.get("warm", {}) for x in vs], [x.get("cold", {}) for x in vs]))
        base_runs = results.get((ds, base), [])
        base_vals = [r["test"].get(k, float("nan")) for r in base_runs]
        other_protocol = protocol_difference(rs[0], base_runs[0]) if base_runs else None
        paired = "—"
        if base and folders is not None and row != base and base_runs and not other_protocol:
            a, b = cases_of((ds, base)), cases_of((ds, row))
            paired = (NO_RANKS if a is None or b is None or len(a) != len(b)
                      else f"{paired_test(a, b)['p_value']:.4f}")
        for label, tests, warms, colds in parts:
            vals = [t.get(k, float("nan")) for t in tests]
            cells = [ds, label, str(len(rs)), mean_sd(vals), mean_sd([t.get(hr, float("nan")) for t in tests])]
            if cold:
                cold_vals = [c[k] for c in colds if k in c]
                cells += [mean_sd([w[k] for w in warms if k in w]),
                          mean_sd(cold_vals) if cold_vals else ("n/a (ids only)" if any(colds) else "-")]
            cells += [eps, f"{spe:.1f}"]
            if base:
                if label == base or not base_vals:
                    cells += ["—", "—"]
                elif other_protocol:  # a gap between two protocols says nothing about the methods
                    cells += [f"other protocol ({other_protocol})", "—"]
                else:
                    cells += list(_gap(vals, base_vals))
                if folders is not None:
                    cells.append(paired if label == row else "—")  # (a variant's ranks are not kept)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def domain_tables(exp: Experiment, root: Path, got: dict[tuple[str, str], list[tuple[Path, dict[str, Any]]]]) -> str:
    """Per item domain of ``report.domains``'s test targets (the cases whose user had an earlier
    event of that domain, ``mmrec.data.domains.domain_test_cases``), each row's metric mean ± sd over
    seeds, from its runs' ``test_ranks.npy``; a row on the single-domain datasets has each case
    ranked by its domain's model (a seed counts once every such model finished). Then per-domain
    values the runs logged at their best epoch (``metrics.jsonl``: SyNCRec's ``ntg_gap``, ``ntg_weight``), and
    any per-domain weighting they logged (values summing to 1) over all their epochs."""
    import numpy as np

    from mmrec.data.domains import domain_test_cases
    from mmrec.data.prepared import PreparedDataset
    from mmrec.runs.report import mean_sd
    from mmrec.trainers.evaluation import metrics_from_ranks
    from mmrec.trainers.methods.syncrec import item_domains

    home = exp.report.domains
    data = PreparedDataset(dataset_path(exp, root, home))
    codes, names = item_domains(data, exp.datasets[home].top_domains)
    case_pos = domain_test_cases(data, codes, len(names))
    derived = {ds: names.index(s.domain) + 1 for ds, s in exp.datasets.items() if s.of == home and s.domain in names}
    at = {p: i for i, p in enumerate(data.eval_cases("test").pos)}
    per_row: dict[str, list[dict[int, np.ndarray]]] = {}
    logged: dict[str, dict[str, dict[str, list[float]]]] = {}
    # key -> row -> domain -> its value at every logged epoch of every seed, for the per-domain values a
    # method logs each epoch (SyNCRec's ntg_weight, ntg_gap, ...); and whether each epoch's values sum to 1
    series: dict[str, dict[str, dict[str, list[float]]]] = {}
    sums_to_one: dict[str, bool] = {}
    for row in exp.rows:
        for folder, res in got.get((home, row), []):
            ranks = RunFolder(folder).test_ranks()
            if ranks is None:
                continue
            per_row.setdefault(row, []).append({c: ranks[[at[p] for p in case_pos[c]]] for c in case_pos})
            epochs = RunFolder(folder).metrics()
            for m in epochs:
                for key, val in m.items():
                    if not (_per_domain(val, names) and all(isinstance(x, float) for x in val.values())):
                        continue  # per-domain fractions only (counts are ints, other dicts are not per domain)
                    for n, x in val.items():
                        series.setdefault(key, {}).setdefault(row, {}).setdefault(n, []).append(x)
                    sums_to_one[key] = sums_to_one.get(key, True) and abs(sum(val.values()) - 1.0) < 1e-3
            best = next((m for m in epochs if m.get("epoch") == res["best_epoch"]), {})
            for key, val in best.items():
                if _per_domain(val, names):
                    for n, x in val.items():
                        if isinstance(x, (int, float)):
                            logged.setdefault(row, {}).setdefault(key, {}).setdefault(n, []).append(x if isinstance(x, int) else float(x))
        by_seed: dict[int, dict[int, np.ndarray]] = {}
        mine = [(ds, c) for ds, c in derived.items() if (ds, row) in got]
        for ds, c in mine:
            sub = PreparedDataset(dataset_path(exp, root, ds))
            src = np.load(sub.root / "source_positions.npy")[sub.eval_cases("test").pos]
            if not np.array_equal(np.sort(src), np.sort(case_pos[c])):
                raise ConfigError(f"{ds}: its test cases are not the {names[c - 1]!r} cases of {home} "
                                  f"({sub.root} was derived from another dataset?); delete it to derive it again")
            at_sub = {p: i for i, p in enumerate(src)}
            for folder, _ in got[(ds, row)]:
                ranks = RunFolder(folder).test_ranks()
                seed = (RunFolder(folder).config() or {}).get("train", {}).get("seed")
                if ranks is not None:
                    by_seed.setdefault(seed, {})[c] = ranks[[at_sub[p] for p in case_pos[c]]]
        if mine:
            per_row[row] = [d for _, d in sorted(by_seed.items()) if len(d) == len(mine)]
    kk = int(exp.report.metric.split("@")[1])
    cols = [*names, "all"]
    out = []
    for metric in (f"ndcg@{kk}", f"hr@{kk}"):
        out.append(f"\n{metric} per domain of the test target in {home} (cases: "
                   + ", ".join(f"{n} {len(case_pos[c])}" for c, n in enumerate(names, start=1)) + ")\n")
        out += ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for row, seeds in per_row.items():
            cells = []
            for c in range(1, len(names) + 1):
                cells.append(mean_sd([metrics_from_ranks(s[c], [kk])[metric] for s in seeds if c in s]))
            whole = [s for s in seeds if len(s) == len(names)]
            cells.append(mean_sd([metrics_from_ranks(np.concatenate([s[c] for c in sorted(s)]), [kk])[metric]
                                  for s in whole]))
            out.append(f"| {row} | " + " | ".join(cells) + " |")
    if logged:
        out += ["\nlogged per domain at the best epoch (mean ± sd over seeds)\n",
                "| row | value | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for row, keys in logged.items():
            for key, per in keys.items():
                out.append(f"| {row} | {key} | " + " | ".join(mean_sd(per.get(n, [])) for n in names) + " |")
    for key, per_row in series.items():
        if sums_to_one[key]:  # a weighting over the domains: does it move away from uniform?
            out += [weights_over_training(key, per_row, names)]
    return "\n".join(out)


def _per_domain(val: Any, names: list[str]) -> bool:
    """Whether a logged value is a per-domain dict (keys among the domain names)."""
    return isinstance(val, dict) and bool(val) and set(val) <= set(names)


def budget_tables(exp: Experiment, root: Path, got: dict[tuple[str, str], list[tuple[Path, dict[str, Any]]]],
                  memo: dict[tuple[str, ...], Any] | None = None) -> str:
    """The pre-training budget: rows alike but for the epoch of the run they start from (``init_from:
    RUN@N``, or ``RUN``: its best epoch), per dataset, one line per pre-training epoch with the
    pre-training run's loss and validation metric at that epoch beside the row's test metric (for the
    first seed every such row has, and mean ± sd over the seeds each has), and each row against the row
    from the latest epoch, paired over the test cases (each row's per-case metric averaged over its
    seeds, as ``mmrec report``), so a reader sees whether the target still gains from more pre-training.
    Empty when no rows differ that way. ``memo``: as ``format_table``'s (shared, each run's ranks read once)."""
    from mmrec.runs.report import mean_sd, paired_test
    from mmrec.trainers.transfer import split_init_from

    k = exp.report.metric
    memo = {} if memo is None else memo
    groups: dict[tuple[str, ...], list[tuple[str, int | None, list[tuple[Path, dict[str, Any]]]]]] = {}
    for (ds, row), runs in got.items():
        spec, init = exp.rows[row], row_init_from(exp, root, ds, row)
        if not init:
            continue
        src, epoch = split_init_from(init)
        key = (ds, str(src), spec.method, spec.preset or "", json.dumps(spec.settings, sort_keys=True, default=str),
               json.dumps(spec.features, sort_keys=True))
        groups.setdefault(key, []).append((row, epoch, runs))
    out: list[str] = []
    for (ds, src, method, *_), members in groups.items():
        if len({e for _, e, _ in members}) < 2:
            continue
        pre = RunFolder(Path(src))
        by_epoch = {m.get("epoch"): m for m in pre.metrics()}
        best = (pre.results() or {}).get("best_epoch")
        seeds = [{(RunFolder(f).config() or {}).get("train", {}).get("seed"): res["test"][k] for f, res in runs}
                 for _, _, runs in members]
        common = sorted(set.intersection(*(set(x) for x in seeds)) - {None})
        s0 = common[0] if common else None
        order = sorted(zip(members, seeds), key=lambda t: (t[0][1] if t[0][1] is not None else best or 0))
        cases = [row_cases([f for f, _ in runs], k, memo) for (_, _, runs), _ in order]
        last_at = order[-1][0][1] if order[-1][0][1] is not None else best
        lines = [f"\npre-training budget: {ds}, {method} rows from {Path(src).name} at different epochs\n",
                 f"| row | pre-training epoch | pre-training loss | pre-training valid {k} | {k}"
                 + (f" seed {s0}" if s0 is not None else "") + f" | {k} mean ± sd (seeds) | against epoch {last_at} "
                 "(paired) |", "|---|---|---|---|---|---|---|"]
        for i, ((row, epoch, _), per_seed) in enumerate(order):
            if i == len(order) - 1:
                against = "—"
            elif cases[i] is None or cases[-1] is None or len(cases[i]) != len(cases[-1]):
                against = NO_RANKS
            else:
                t = paired_test(cases[-1], cases[i])
                against = f"{t['mean_diff']:+.4f}, p = {t['p_value']:.4f}"
            at = epoch if epoch is not None else best
            m = by_epoch.get(at, {})
            loss = f"{m['loss']:.4f}" if "loss" in m else "-"
            valid = f"{m['valid'][k]:.4f}" if k in m.get("valid", {}) else "-"
            label = f"{at}" + ("" if epoch is not None else " (best)")
            one = f"{per_seed[s0]:.4f}" if s0 is not None else "-"
            out_seeds = ", ".join(str(x) for x in sorted(x for x in per_seed if x is not None))
            lines.append(f"| {row} | {label} | {loss} | {valid} | {one} | {mean_sd(list(per_seed.values()))} ({out_seeds}) "
                         f"| {against} |")
        out += lines
    return "\n".join(out)


def weights_over_training(key: str, weights: dict[str, dict[str, list[float]]], names: list[str]) -> str:
    """A per-domain weighting a method logs every epoch (``key``: values summing to 1 over the domains,
    e.g. SyNCRec's LC-NTG ``ntg_weight``), over every logged epoch of every seed: its range per domain
    and the largest distance from the uniform 1/D, so a reader sees whether it moved at all."""
    uniform = 1.0 / len(names)
    out = [f"\n{key} over training: lowest - highest of every epoch of every seed (uniform 1/{len(names)} "
           f"= {uniform:.4f})\n", "| row | " + " | ".join(names) + " | farthest from uniform |",
           "|---|" + "---|" * (len(names) + 1)]
    for row, per in weights.items():
        cells = [f"{min(per[n]):.4f} - {max(per[n]):.4f}" if per.get(n) else "—" for n in names]
        far = max(abs(x - uniform) for v in per.values() for x in v)
        out.append(f"| {row} | " + " | ".join(cells) + f" | {far:.4f} ({100 * far / uniform:.1f}% of 1/D) |")
    return "\n".join(out)


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2.5 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_selection(exp: Experiment, rows: list[str] | None, datasets: list[str] | None = None,
                    seeds: list[int] | None = None) -> None:
    """``ConfigError`` naming any ``--rows``, ``--datasets`` or ``--seeds`` entry that is not in the file
    (a seed no selected row has), or ``--seeds`` with a searched row selected (its trials take the first
    seed, its other seeds the best trial's settings: select them with ``--rows``)."""
    unknown = [r for r in rows or [] if r not in exp.rows]
    if unknown:
        raise ConfigError(f"--rows: {', '.join(unknown)} not among the file's rows ({', '.join(exp.rows)})")
    unknown = [d for d in datasets or [] if d not in exp.datasets]
    if unknown:
        raise ConfigError(f"--datasets: {', '.join(unknown)} not among the file's datasets ({', '.join(exp.datasets)})")
    if seeds is None:
        return
    chosen = [r for r in exp.rows if rows is None or r in rows]
    searched = [r for r in chosen if is_searched(exp, r)]
    if searched:
        raise ConfigError(f"--seeds: searched rows ({', '.join(searched)}) run their trials and then every seed; "
                          "leave them out with --rows, or leave out --seeds")
    have = sorted({s for r in chosen for s in row_seeds(exp, r)})
    unknown = [str(s) for s in seeds if s not in have]
    if unknown:
        raise ConfigError(f"--seeds: {', '.join(unknown)} not among the seeds of the rows chosen "
                          f"({', '.join(map(str, have))})")


def run_jobs(path: str | Path, jobs: int, *, log: Callable[[str], None] = print, report: bool = True,
             rows: list[str] | None = None, datasets: list[str] | None = None,
             seeds: list[int] | None = None) -> dict[str, Any]:
    """``mmrec experiment run FILE --jobs N``: N worker processes run the file (sharing its runs through
    the run-folder locks), each with ``train.threads`` = the available cores / N unless the file sets
    it; SIGTERM / SIGINT are forwarded to them (each stops after a checkpoint); then the table and
    the report. Returns ``run_experiment``'s dict, with ``stopped`` (the signal's name) when stopped."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from mmrec.errors import MMRecError
    from mmrec.resources import available_cores

    exp, root = load_experiment(path)
    check_selection(exp, rows, datasets, seeds)
    threads = None
    if "train.threads" not in exp.settings:
        cores, source = available_cores()
        threads = max(1, cores // jobs)
        log(f"{jobs} workers, {threads} thread(s) each ({cores} cores: {source})")
    for ds in exp.datasets:  # the Optuna storage, before the workers race to create it
        for row in exp.rows:
            if is_searched(exp, row) and exp.search.optuna is not None and ds in row_datasets(exp, row):
                open_study(exp, root, ds, row)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(jobs):
        cmd = [sys.executable, "-m", "mmrec.cli", "experiment", "run", str(path), "--worker", f"{i}/{jobs}"]
        if threads:
            cmd += ["--threads", str(threads)]
        if rows:
            cmd += ["--rows", ",".join(rows)]
        if datasets:
            cmd += ["--datasets", ",".join(datasets)]
        if seeds is not None:
            cmd += ["--seeds", ",".join(map(str, seeds))]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      start_new_session=True))  # a terminal's Ctrl-C reaches the parent only
    lock = threading.Lock()

    def relay(i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            with lock:
                log(f"[{i}] {line.rstrip()}")
                sys.stdout.flush()  # a parent writing to a file shows its workers' lines as they come

    readers = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    stopped: list[str] = []

    def forward(num: int, frame: Any) -> None:
        stopped.append(signal.Signals(num).name)
        for p in procs:
            if p.poll() is None:
                p.send_signal(num)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        codes = [p.wait() for p in procs]
        for t in readers:
            t.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [(i, c) for i, c in enumerate(codes) if c not in (0, 75) and not stopped]
    if failed:
        raise MMRecError("; ".join(f"worker {i} ended with exit code {c}" for i, c in failed)
                         + " (its messages are above, after [i])")
    out = run_experiment(path, only_finished=True, report=report, log=log, rows=rows, datasets=datasets, seeds=seeds)
    if stopped or any(c == 75 for c in codes):
        out["stopped"] = stopped[0] if stopped else "a stop request"
    return out
