"""One process against several (``accelerate launch --multi_gpu --num_processes N``), for extraction
and for training, side by side in one run.

    python bench/processes.py --data ml1m-1k                        # CPU: 1 process vs 2 on the cores
    python bench/processes.py --data ml1m-1k --device cuda --procs 4  # one process per GPU
    python bench/processes.py --quick                               # tiny synthetic data: the code paths

On a CPU the processes split the cores: one process runs with ``threads = cores``, each of N with
``cores // N`` (``train.threads`` / extract's ``threads``; ``ACCELERATE_USE_CPU=true``: accelerate's
``--cpu`` flag would silently run one process). ``--data`` is a prepared folder or a benchmark
dataset name (``bench/prepare_bench_data.py``: ``ml1m-1k`` = 1,000 MovieLens-1M users, prepared from
``../shared/data`` on first use).

- **Extraction** (``mmrec extract``, default ``minilm`` on the dataset's catalogue, shards of
  ``--shard-size`` items so that each process gets several; ``--limit N``: the first N items): items/s
  of the whole command (start-up
  and model load included, which every process pays) and of the encoding loop (the shards' own
  seconds from their sidecars; with N processes the slowest process's sum), median over ``--reps``
  repetitions that alternate the two sides; and whether the stores are **byte-identical**: the
  sha256 of every shard file of the one-process store against the N-process one.
- **Training** (``mmrec train``, SASRec by default, ``--epochs`` with early stopping, every seed of
  ``--seeds``, the two sides alternating): seconds per epoch (median of the epochs' ``train_seconds``,
  training only) and of the validation after each epoch (median of ``eval_seconds``: full ranking is
  split among the processes)
  and test NDCG@10 / HR@10. Data parallel: each process takes every N-th batch of the epoch's order
  and gradients are averaged, so an epoch has 1/N of the optimizer steps at N times the batch (the
  usual data-parallel trade; the learning rate is not scaled). The metrics are judged **within seed
  noise** when the difference of the two means is at most twice its standard error
  (``2 * sqrt(sd_1^2 / n_1 + sd_N^2 / n_N)``, sd over the seeds); with one seed nothing is judged.

Prints two Markdown tables and writes JSON (``--out``). Measure on an idle machine: the two sides
share the cores, so anything else running skews the ratio. ``--skip-extract`` / ``--skip-train``
run one half; ``--quick`` runs both on a synthetic dataset of 300 users and 80 priced items (the
weightless ``price`` encoder, one seed, one epoch) in about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def cores() -> int:
    from mmrec.resources import available_cores

    return available_cores()[0]


def tiny_dataset(folder: Path, users: int = 300, items: int = 80, noise: float = 0.3) -> Path:
    """A synthetic prepared dataset: users walk a ring of items (the next item follows; with
    probability ``noise`` a random item instead), with titles and prices in the catalogue (for the
    weightless ``price`` encoder and text encoders)."""
    import numpy as np

    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.schema import Catalogue, RawDataset, make_interactions

    rng = np.random.default_rng(0)
    u, i, t = [], [], []
    for user in range(users):
        at, n = int(rng.integers(items)), int(rng.integers(6, 20))
        for k in range(n):
            u.append(f"u{user}")
            i.append(str(at + 1))
            t.append(float(k))
            at = int(rng.integers(items)) if rng.random() < noise else (at + 1) % items
    ids = [str(k) for k in range(1, items + 1)]
    raw = RawDataset("tiny", make_interactions({"user_id": u, "item_id": i, "timestamp": t}))
    raw.catalogue = Catalogue.build(ids, title=[f"item number {k}" for k in ids],
                                    price=[round(1.5 * int(k), 2) for k in ids])
    return Path(prepare(raw, folder, PrepareConfig(min_user_interactions=1, min_item_interactions=1)))


def mmrec_command(args_: list[str], procs: int) -> list[str]:
    """``python -m mmrec.cli ARGS``, under ``accelerate launch`` with ``procs`` processes when > 1."""
    if procs == 1:
        return [sys.executable, "-m", "mmrec.cli", *args_]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0", "-m", "mmrec.cli", *args_]


def run_env(device: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"  # several CPU processes (accelerate's --cpu runs one)
    return env


def run(cmd: list[str], env: dict[str, str], log: Path, nice: int = 0) -> float:
    """Run ``cmd`` (its output to ``log``); returns its wall seconds; a failure ends the script with the log's tail."""
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None).returncode
    wall = time.perf_counter() - t
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    return wall


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return float(statistics.mean(xs)), (float(statistics.stdev(xs)) if len(xs) > 1 else None)


def within_noise(a: list[float], b: list[float]) -> tuple[bool | None, float, float | None]:
    """(judged within noise, difference of the means, twice its standard error); None with one seed."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    if sa is None or sb is None:
        return None, mb - ma, None
    bound = 2 * (sa ** 2 / len(a) + sb ** 2 / len(b)) ** 0.5
    return abs(mb - ma) <= bound, mb - ma, bound


# ------------------------------------------------------------------------------------ extraction
def shard_hashes(entry: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((entry / "shards").iterdir())
            if p.name.startswith("part-") and not p.name.endswith(".json")}


def loop_seconds(entry: Path) -> float:
    """The encoding loop's wall seconds: each process's shards one after the other, the processes in
    parallel, so the largest per-process sum of the sidecars' seconds."""
    per: dict[int, float] = {}
    for p in (entry / "shards").glob("part-*.json"):
        side = json.loads(p.read_text())
        per[side["process"]] = per.get(side["process"], 0.0) + side["seconds"]
    return max(per.values())


def bench_extract(args, data: Path, work: Path, n_cores: int) -> dict[str, Any]:
    env = run_env(args.device)
    n_items = json.loads((data / "dataset.json").read_text())["stats"]["n_items"]
    if args.limit:
        n_items = min(n_items, args.limit)
    sides = {1: max(1, n_cores), args.procs: max(1, n_cores // args.procs)}  # processes -> threads each
    runs: dict[int, list[dict[str, float]]] = {p: [] for p in sides}
    hashes: dict[int, dict[str, str]] = {}
    for rep in range(args.reps):
        for procs, threads in sides.items():  # alternating, so load from elsewhere hits both alike
            store = work / f"store-{procs}-{rep}"
            shutil.rmtree(store, ignore_errors=True)  # every repetition encodes from scratch
            cli = ["extract", "-e", args.encoder, "-d", str(data), "--store", str(store), "--name", "x", "--quiet",
                   "--set", f"shard_size={args.shard_size}", "--set", f"threads={threads}",
                   "--set", f"device={args.device}", *[x for o in args.option for x in ("-o", o)],
                   *(["--set", f"limit={args.limit}"] if args.limit else [])]
            wall = run(mmrec_command(cli, procs), env, work / f"extract-{procs}-{rep}.log", args.nice)
            entry = store / "x"
            runs[procs].append({"wall_s": wall, "loop_s": loop_seconds(entry)})
            hashes.setdefault(procs, shard_hashes(entry))
            if rep > 0:
                shutil.rmtree(store, ignore_errors=True)
    one, many = hashes[1], hashes[args.procs]
    out: dict[str, Any] = {"encoder": args.encoder, "items": n_items, "shard_size": args.shard_size,
                           "shards": len(one), "threads": {str(p): t for p, t in sides.items()},
                           "byte_identical": one == many and len(one) > 0,
                           "shards_differing": sorted(k for k in one if one.get(k) != many.get(k)), "runs": {}}
    for procs in sides:
        r = runs[procs]
        out["runs"][str(procs)] = {"wall_s": [x["wall_s"] for x in r], "loop_s": [x["loop_s"] for x in r],
                                   "items_per_s": n_items / median([x["wall_s"] for x in r]),
                                   "loop_items_per_s": n_items / median([x["loop_s"] for x in r])}
    a, b = out["runs"]["1"], out["runs"][str(args.procs)]
    out["speedup"] = b["items_per_s"] / a["items_per_s"]
    out["loop_speedup"] = b["loop_items_per_s"] / a["loop_items_per_s"]
    return out


def extract_table(r: dict[str, Any], procs: int) -> str:
    lines = ["| processes | threads each | items | shards | items/s, whole command | items/s, encoding loop |",
             "|---|---|---|---|---|---|"]
    for p in ("1", str(procs)):
        x = r["runs"][p]
        lines.append(f"| {p} | {r['threads'][p]} | {r['items']:,} | {r['shards']} | {x['items_per_s']:.1f} | "
                     f"{x['loop_items_per_s']:.1f} |")
    lines.append(f"| {procs} / 1 | | | | {r['speedup']:.2f}x | {r['loop_speedup']:.2f}x |")
    same = "yes" if r["byte_identical"] else f"NO ({', '.join(r['shards_differing'][:5])})"
    lines.append(f"\nshard files byte-identical (sha256 of each of the {r['shards']} shards, 1 process vs {procs}): {same}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ training
def bench_train(args, data: Path, work: Path, n_cores: int) -> dict[str, Any]:
    env = run_env(args.device)
    sides = {1: max(1, n_cores), args.procs: max(1, n_cores // args.procs)}
    per: dict[int, list[dict[str, Any]]] = {p: [] for p in sides}
    for seed in args.seeds:
        for procs, threads in sides.items():
            run_dir = work / f"train-{procs}-s{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cli = ["train", "-d", str(data), "-m", args.method, "--run-dir", str(run_dir), "--quiet",
                   "--set", f"train.epochs={args.epochs}", "--set", f"train.patience={args.patience}",
                   "--set", f"train.seed={seed}", "--set", f"train.threads={threads}",
                   "--set", f"train.device={args.device}", *[x for s in args.set for x in ("--set", s)]]
            wall = run(mmrec_command(cli, procs), env, work / f"train-{procs}-s{seed}.log", args.nice)
            res = json.loads((run_dir / "results.json").read_text())
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
            per[procs].append({"seed": seed, "wall_s": wall, "epoch_s": [r["train_seconds"] for r in rows],
                               "eval_s": [r["eval_seconds"] for r in rows if "eval_seconds" in r],
                               "steps_per_epoch": rows[0]["steps"], "best_epoch": res["best_epoch"],
                               "epochs_run": res["epochs_run"], "ndcg10": res["test"]["ndcg@10"],
                               "hr10": res["test"]["hr@10"], "loss_epoch1": rows[0]["loss"]})
            shutil.rmtree(run_dir, ignore_errors=True)
    out: dict[str, Any] = {"method": args.method, "seeds": list(args.seeds), "epochs_cap": args.epochs,
                           "threads": {str(p): t for p, t in sides.items()}, "runs": {}}
    for procs in sides:
        r = per[procs]
        out["runs"][str(procs)] = {"per_seed": r, "s_per_epoch": median([s for x in r for s in x["epoch_s"]]),
                                   "eval_s": median([s for x in r for s in x["eval_s"]]),
                                   "steps_per_epoch": r[0]["steps_per_epoch"],
                                   "ndcg10": mean_sd([x["ndcg10"] for x in r]), "hr10": mean_sd([x["hr10"] for x in r])}
    a, b = per[1], per[args.procs]
    out["speedup"] = out["runs"]["1"]["s_per_epoch"] / out["runs"][str(args.procs)]["s_per_epoch"]
    out["eval_speedup"] = out["runs"]["1"]["eval_s"] / out["runs"][str(args.procs)]["eval_s"]
    for m in ("ndcg10", "hr10"):
        ok, diff, bound = within_noise([x[m] for x in a], [x[m] for x in b])
        out[f"{m}_within_noise"] = {"judged": ok, "difference": diff, "twice_standard_error": bound}
    return out


def _ms(m: tuple[float, float | None]) -> str:
    return f"{m[0]:.4f}" + (f" ± {m[1]:.4f}" if m[1] is not None else "")


def train_table(r: dict[str, Any], procs: int) -> str:
    lines = ["| processes | threads each | steps/epoch | s/epoch (median) | validation s (median) | "
             "best / run epochs per seed | test NDCG@10 | test HR@10 |", "|---|---|---|---|---|---|---|---|"]
    for p in ("1", str(procs)):
        x = r["runs"][p]
        ep = ", ".join(f"{s['best_epoch']}/{s['epochs_run']}" for s in x["per_seed"])
        lines.append(f"| {p} | {r['threads'][p]} | {x['steps_per_epoch']} | {x['s_per_epoch']:.2f} | "
                     f"{x['eval_s']:.2f} | {ep} | {_ms(x['ndcg10'])} | {_ms(x['hr10'])} |")
    lines.append(f"| {procs} / 1 | | | {1 / r['speedup']:.2f}x ({r['speedup']:.2f}x faster) | "
                 f"{1 / r['eval_speedup']:.2f}x ({r['eval_speedup']:.2f}x faster) | | | |")
    for m, name in (("ndcg10", "NDCG@10"), ("hr10", "HR@10")):
        j = r[f"{m}_within_noise"]
        if j["judged"] is None:
            verdict = f"difference {j['difference']:+.4f}; one seed: not judged"
        else:
            verdict = (f"difference {j['difference']:+.4f}, twice its standard error {j['twice_standard_error']:.4f}: "
                       + ("within seed noise" if j["judged"] else "NOT within seed noise"))
        lines.append(f"\n{name}, {procs} processes - 1: {verdict} (seeds {r['seeds']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml1m-1k", help="prepared folder or benchmark dataset name (default ml1m-1k); "
                                                      "'tiny': the quick mode's synthetic data")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--procs", type=int, default=2, help="processes of the multi-process side (default 2)")
    ap.add_argument("--cores", type=int, default=None, help="cores to split (default: what mmrec finds, mmrec.resources)")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--option", "-o", action="append", default=[], help="encoder option key=value (repeatable)")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="extract only the catalogue's first N items")
    ap.add_argument("--reps", type=int, default=3, help="alternating extraction repetitions (medians)")
    ap.add_argument("--method", default="sasrec")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], help="another mmrec train setting (repeatable)")
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--nice", type=int, default=0, help="run the mmrec commands at this niceness")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic data, price encoder, 1 seed, 1 epoch")
    ap.add_argument("--work", help="keep the stores, runs and logs here (default: a temporary folder)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mmrec-processes-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    if args.quick:
        data = tiny_dataset(work / "tiny")
        args.encoder, args.option, args.shard_size, args.reps = "price", [], 10, 1
        args.seeds, args.epochs, args.set = [0], 1, ["train.batch_size=32"] + args.set
    elif args.data == "tiny":  # the quick mode's synthetic data, with any other settings
        data = tiny_dataset(work / "tiny")
    else:
        from prepare_bench_data import resolve

        data = resolve(args.data, log=lambda m: print(m, file=sys.stderr, flush=True))
    n_cores = args.cores or cores()
    doc: dict[str, Any] = {"data": str(data), "device": args.device, "procs": args.procs, "cores": n_cores,
                           "machine": platform.machine(), "quick": args.quick,
                           "note": "measured side by side, alternating; the ratio is the figure"}
    try:
        if not args.skip_extract:
            doc["extract"] = bench_extract(args, data, work, n_cores)
            print(f"Extraction ({args.encoder}, {Path(data).name}, {args.device}, {n_cores} cores), medians of {args.reps}:\n")
            print(extract_table(doc["extract"], args.procs) + "\n")
        if not args.skip_train:
            doc["train"] = bench_train(args, data, work, n_cores)
            print(f"Training ({args.method}, {Path(data).name}, {args.device}, {n_cores} cores, at most {args.epochs} "
                  f"epochs, patience {args.patience}):\n")
            print(train_table(doc["train"], args.procs))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
