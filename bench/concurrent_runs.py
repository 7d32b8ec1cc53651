"""Several independent training runs on one machine, as a new user would start them: the table of
issue 24, re-measured by a script.

    python bench/concurrent_runs.py --data beauty                 # SASRec, 3 epochs, each case below
    python bench/concurrent_runs.py --quick                       # tiny synthetic data: the code paths

Cases (every run is the same ``mmrec train`` command: same data, SASRec, ``--epochs`` epochs, seed 0,
so every case must give the same metrics):

1. ``alone``: one run on its own, default threads (mmrec sizes them from the cores it is given,
   ``mmrec.resources.available_cores``).
2. ``two, default threads``: two runs started together, each with the default threads (each sees
   every core of the machine, so together they start twice as many threads as there are cores).
3. ``two, train.threads=1``: two runs together, each with one thread.
4. ``two, one core each``: two runs together, each given its own core by the CPU affinity mask
   (as ``taskset -c`` or a batch scheduler would); mmrec's default threads then follow the mask.
   Left out with fewer than two cores.

Columns: seconds per epoch of each run (median of its epochs' ``train_seconds``), the case's wall
time, and against running the same runs one after the other: ``2 x alone s/epoch / slowest run's
s/epoch`` (above 1: faster together) and the same with wall times; whether every run's test
metrics equal the alone run's. ``--data`` is a prepared folder or a benchmark dataset name
(``bench/prepare_bench_data.py``; ``beauty``: Amazon Beauty from ``../shared/data``, about the size of
the Games data of the issue). Measure on an idle machine: the cases are the load. ``--reps`` repeats
the cases in turn (medians); ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(HERE))

from processes import cores, mmrec_command, tiny_dataset  # noqa: E402


def start(cmd: list[str], log: Path, affinity: set[int] | None, nice: int) -> subprocess.Popen:
    def pre() -> None:
        if nice:
            os.nice(nice)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)

    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # a new user's shell: no thread variables
        env.pop(var, None)
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, preexec_fn=pre)


def case(name: str, runs: list[dict[str, Any]], args, data: Path, work: Path) -> dict[str, Any]:
    """Start ``runs`` together (each: extra settings, affinity), wait for all; per-run seconds and metrics."""
    procs = []
    t = time.perf_counter()
    for k, r in enumerate(runs):
        run_dir = work / f"{name}-{k}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cli = ["train", "-d", str(data), "-m", args.method, "--run-dir", str(run_dir), "--quiet",
               "--set", f"train.epochs={args.epochs}", "--set", "train.seed=0",
               *[x for s in args.set + r["set"] for x in ("--set", s)]]
        procs.append((run_dir, start(mmrec_command(cli, 1), work / f"{name}-{k}.log", r.get("affinity"), args.nice)))
    out = []
    for run_dir, p in procs:
        rc = p.wait()
        if rc != 0:
            raise SystemExit(f"{name}: a run failed (exit {rc}); see {work}")
        res = json.loads((run_dir / "results.json").read_text())
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        out.append({"s_per_epoch": statistics.median(r["train_seconds"] for r in rows),
                    "threads": res["timing"]["threads"], "test": res["test"]})
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"case": name, "wall_s": time.perf_counter() - t, "runs": out}


CASES = {
    "alone": [{"set": []}],
    "two, default threads": [{"set": []}, {"set": []}],
    "two, train.threads=1": [{"set": ["train.threads=1"]}, {"set": ["train.threads=1"]}],
    "two, one core each": [{"set": [], "affinity": {0}}, {"set": [], "affinity": {1}}],
}


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    med = statistics.median
    alone_spe = med(r["runs"][0]["s_per_epoch"] for r in results["alone"])
    alone_wall = med(r["wall_s"] for r in results["alone"])
    ref = results["alone"][0]["runs"][0]["test"]
    lines = ["| case | threads per run | s/epoch of each run | wall s | together vs one after the other (s/epoch) | "
             "(wall) | metrics equal to alone |", "|---|---|---|---|---|---|---|"]
    for name, reps in results.items():
        n = len(reps[0]["runs"])
        spe = [med(r["runs"][k]["s_per_epoch"] for r in reps) for k in range(n)]
        wall = med(r["wall_s"] for r in reps)
        same = all(run["test"] == ref for r in reps for run in r["runs"])
        threads = ", ".join(str(run["threads"]) for run in reps[0]["runs"])
        if n == 1:
            ratio = wall_ratio = "1 run"
        else:
            ratio = f"{n * alone_spe / max(spe):.2f}x"
            wall_ratio = f"{n * alone_wall / wall:.2f}x"
        lines.append(f"| {name} | {threads} | {', '.join(f'{s:.1f}' for s in spe)} | {wall:.1f} | {ratio} | "
                     f"{wall_ratio} | {'yes' if same else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="beauty", help="prepared folder or benchmark dataset name (default beauty)")
    ap.add_argument("--method", default="sasrec")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1, help="times each case runs, the cases in turn (medians)")
    ap.add_argument("--set", action="append", default=[], help="another mmrec train setting for every run")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=None, help="run only these cases (alone always)")
    ap.add_argument("--nice", type=int, default=0, help="run the mmrec commands at this niceness")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic data, 1 epoch")
    ap.add_argument("--work", help="keep logs here (default: a temporary folder)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mmrec-concurrent-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        data = tiny_dataset(work / "tiny")
        args.epochs, args.set = 1, ["train.batch_size=32"] + args.set
    else:
        from prepare_bench_data import resolve

        data = resolve(args.data, log=lambda m: print(m, file=sys.stderr, flush=True))
    n_cores = cores()
    names = ["alone"] + [c for c in (args.cases or CASES) if c != "alone"]
    try:
        affinity = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        affinity = set()
    cases = dict(CASES)
    if len(affinity) >= 2:  # the first two cores this process may use
        first, second = sorted(affinity)[:2]
        cases["two, one core each"] = [{"set": [], "affinity": {first}}, {"set": [], "affinity": {second}}]
    elif "two, one core each" in names:
        names.remove("two, one core each")
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        for _ in range(args.reps):
            for name in names:
                results[name].append(case(name, cases[name], args, data, work))
                print(f"{name}: {json.dumps(results[name][-1])}", file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.method} on {Path(data).name}, {args.epochs} epochs a run, {n_cores} cores "
          f"({platform.machine()}), {args.reps} repetition(s):\n")
    print(table(results))
    doc = {"data": str(data), "epochs": args.epochs, "cores": n_cores, "reps": args.reps, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
