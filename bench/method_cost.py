"""Every method at its ``harmonised`` preset on the same data shapes, side by side in one run: the
training step, the evaluation and the memory of a step, each also as a ratio to SASRec's.

Shapes (synthetic ids, random features of the real dimensions):

- ``ml-1m``: 6,040 users, 3,416 items, text 384-d + image 1,280-d features, 18 item domains (ml-1m's
  first genres; SyNCRec reads them);
- ``beauty``: 22,363 users, 12,101 items, text 384-d, no domains (SyNCRec then has one).

Every user has ``length + 3`` events (Zipf-like item choices, every item at least once), so each
training window (``train.windows=last``) and each evaluation history is ``length`` = 50 items long:
the dearest case per step (real Beauty windows are much shorter). The dataset is written by mmrec's
own ``prepare`` into a temporary folder; batches come from the trainer's ``TrainSamples`` and
evaluation is the trainer's ``Evaluator``. A training step is the loop's: the method's loss on a
batch of ``train.batch_size`` windows (the loss times its targets over the mean per batch),
``zero_grad``, ``backward``, the optimiser's step (Adam on ``param_groups``); the loop's hooks
(``item_popularity``, ``on_epoch_start``) are called before.

Figures, per method and shape:

- ``step``: median seconds of a training step after ``--warmup`` steps, over ``--rounds`` rounds;
  each round times one step of every method in turn on the same batch (alternating, so a slow
  moment of a shared machine falls on every method alike); with one thread and with the default
  threads (what the trainer uses when ``train.threads`` is unset: ``mmrec.resources.available_cores``);
- ``eval``: seconds per 1,000 users of full-ranking evaluation (``eval`` defaults: every item, in
  the evaluator's tiles) of the test part of the first ``--eval-users`` users, the item table built
  once per evaluation included; median over ``--eval-rounds`` alternating rounds, default threads;
- ``peak``: the peak of torch's CPU allocations during one training step above what was live
  before it (so: activations, gradients, temporaries; parameters, features excluded), from the
  torch profiler's memory events (``profile_memory=True``; tracemalloc does not see torch's
  allocator), on the first warm-up step (one thread; its time is not used); it also holds the
  optimiser's state, allocated at that first step (2 x the parameters for Adam, small beside the
  activations at these shapes). With ``--device cuda``: the models and batches on the GPU, one timed
  setting, and the peak from ``torch.cuda.max_memory_allocated``.

Before and after a change, side by side: ``--tree NAME=DIR`` runs the same measurements on the mmrec
package in ``DIR`` (e.g. an unpacked ``git archive`` of an earlier commit) in a worker process,
its steps alternating with this tree's (one process runs at a time); its rows are ``method [NAME]``
and its ratios are to *this* tree's SASRec. A method may carry settings of its own for a row:
``ant@hidden=64,inner=64`` (``--set``-style ``model.*`` values) measures ANT at another size.

    python bench/method_cost.py                            # both shapes, every method
    python bench/method_cost.py --shapes ml-1m --methods sasrec ant kdsr --rounds 7
    git archive HEAD~1 | tar -x -C /tmp/before
    python bench/method_cost.py --methods sasrec ant --tree before=/tmp/before
    python bench/method_cost.py --quick                    # tiny shapes, a few steps (< 1 min; tested)
    python bench/method_cost.py --readout --shapes ml-1m   # evaluation's read-out: query against all states

Prints a Markdown table per shape and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shape:
    users: int
    items: int
    length: int
    features: dict[str, int]
    domains: int = 0  # item domains in the catalogue (0: none)
    batch: int = 256


SHAPES = {
    "ml-1m": Shape(6040, 3416, 50, {"text": 384, "image": 1280}, domains=18),
    "beauty": Shape(22363, 12101, 50, {"text": 384}),
}
QUICK_SHAPES = {
    "ml-1m": Shape(48, 120, 8, {"text": 12, "image": 20}, domains=3, batch=16),
    "beauty": Shape(64, 160, 8, {"text": 12}, batch=16),
}
# --quick only: KDSR fits its codebook on fewer pairs (a smoke test of the code paths, not a figure)
QUICK_SETTINGS = {"kdsr": {"code_sample_pairs": 2000, "code_kmeans_iters": 5}}
REPLY = "@@method_cost "  # a worker's reply lines start with this (anything else on stdout is passed on)


def build_dataset(shape: Shape, folder: Path, seed: int = 0):
    """A prepared dataset of ``shape`` written by mmrec's ``prepare`` (module docstring)."""
    import numpy as np
    import pyarrow as pa

    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.prepared import PreparedDataset
    from mmrec.data.schema import Catalogue, RawDataset, make_interactions

    rng = np.random.default_rng(seed)
    per_user = shape.length + 3  # leave-one-out: a training part of length + 1 events, full windows
    n_events = shape.users * per_user
    pop = 1.0 / np.arange(1, shape.items + 1) ** 0.8
    items = rng.choice(shape.items, size=n_events, p=pop / pop.sum())
    items[rng.choice(n_events, size=shape.items, replace=False)] = rng.permutation(shape.items)  # every item
    users = np.repeat(np.arange(shape.users), per_user)
    ts = np.tile(np.arange(per_user, dtype=np.float64), shape.users)
    catalogue = None
    if shape.domains:
        ids = np.arange(shape.items).astype(str)
        catalogue = Catalogue.build(ids, domain=[f"d{d:02d}" for d in rng.integers(0, shape.domains, shape.items)])
    raw = RawDataset(name="synthetic", catalogue=catalogue, interactions=make_interactions({
        "user_id": pa.array(users.astype(str)), "item_id": pa.array(items.astype(str)), "timestamp": pa.array(ts)}))
    data = PreparedDataset(prepare(raw, folder, PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    if data.n_items != shape.items or data.n_users != shape.users:
        raise RuntimeError(f"prepared {data.n_users} users x {data.n_items} items, wanted {shape.users} x {shape.items}")
    return data


def random_features(shape: Shape, seed: int = 0) -> dict[str, Any]:
    """Random feature tables of the shape's dimensions, every item present."""
    import torch

    from mmrec.features.aligned import FeatureTable

    g = torch.Generator().manual_seed(seed)
    present = torch.ones(shape.items + 1, dtype=torch.bool)
    present[0] = False
    out = {}
    for modality, dim in shape.features.items():
        table = torch.randn(shape.items + 1, dim, generator=g)
        table[0] = 0.0
        out[modality] = FeatureTable(modality, table, present, {"entry": f"random-{dim}d"})
    return out


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``ant@hidden=64,inner=64`` -> ("ant", {"hidden": 64, "inner": 64}); values read as JSON where
    they parse, else as strings."""
    name, _, rest = spec.partition("@")
    settings: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"{spec!r}: settings are key=value pairs separated by commas")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return name, settings


@dataclass
class Case:
    """One method's model, optimiser and settings on one shape."""

    model: Any
    opt: Any
    train: Any
    build_s: float


def build_case(spec: str, data, features: dict[str, Any], max_len: int, batch: int, seed: int = 0,
               quick: bool = False, device: str = "cpu") -> Case:
    """The method of ``spec`` at its ``harmonised`` preset (plus the spec's settings; ``quick``: also
    ``QUICK_SETTINGS``), as ``mmrec.trainers.loop`` builds it."""
    import numpy as np
    import torch

    from mmrec.config import from_dict
    from mmrec.runs.config import TrainConfig, preset_settings
    from mmrec.trainers.methods import get_method

    name, extra_settings = parse_method(spec)
    cls = get_method(name)
    settings = preset_settings(name, "harmonised")
    train = from_dict(TrainConfig, {**settings.get("train", {}), "batch_size": batch, "max_len": max_len},
                      prefix="train.")
    quick_settings = QUICK_SETTINGS.get(name, {}) if quick else {}
    mcfg = from_dict(cls.Config, {**settings.get("model", {}), **quick_settings, **extra_settings}, prefix="model.")
    torch.manual_seed(seed)
    t = time.perf_counter()
    extra = cls.dataset_kwargs(mcfg, data)
    feats = {m: f for m, f in features.items() if m in cls.modalities}
    model = cls(mcfg, data.n_items, max_len, **({"features": feats} if cls.modalities else {}), **extra)
    build_s = time.perf_counter() - t
    model.item_popularity = torch.from_numpy(np.asarray(data.item_popularity, dtype=np.int64))
    model.to(device)
    opt_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.param_groups(train.lr), lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    model.on_epoch_start(1, opt)
    model.train()
    return Case(model, opt, train, build_s)


def train_step(case: Case, batch: dict[str, Any], mean_targets: float) -> None:
    """One optimiser step as the loop takes it (``Trainer._epoch``)."""
    import torch

    tc = case.train
    loss = case.model(batch, tc)
    if tc.loss_weighting == "target":
        loss = loss * ((batch["targets"] > 0).sum() / mean_targets)
    case.opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip:
        torch.nn.utils.clip_grad_norm_(case.model.parameters(), tc.grad_clip)
    case.opt.step()
    float(loss.detach())


@contextlib.contextmanager
def native_stderr_hidden():
    """The profiler's C++ side (kineto) writes ``USDT ... profiler_start`` / ``STAGE`` lines straight
    to file descriptor 2 at every start and stop, which no log level turns off: point descriptor 2
    at /dev/null meanwhile (a Python exception is still raised, and printed, after it is restored)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_step_mib(fn, device: str = "cpu") -> float:
    """The peak of torch's allocations while ``fn()`` runs, above those live when it starts (MiB):
    on the CPU from the profiler's memory events (allocations and frees in time order), on a GPU
    from ``torch.cuda.max_memory_allocated``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    with native_stderr_hidden(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    return max(itertools.accumulate(n for _, n in events), default=0) / 2**20


def default_threads() -> int:
    """The threads the trainer uses when ``train.threads`` is unset."""
    import torch

    from mmrec.resources import available_cores

    cores, _ = available_cores()
    return max(1, min(cores, torch.get_num_threads()))


class Session:
    """One code tree's side of one shape: the dataset, the features, every method's case and the
    batches (the same in every tree: everything is seeded)."""

    def __init__(self, label: str, shape: Shape, methods: list[str], n_batches: int, eval_users: int,
                 seed: int = 0, quick: bool = False, device: str = "cpu", log=print):
        import numpy as np
        import torch

        from mmrec.trainers.batching import TrainSamples
        from mmrec.trainers.evaluation import EvalConfig, Evaluator

        self.threads0 = default_threads()
        torch.set_num_threads(self.threads0)
        self.device = device
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self._tmp = tempfile.TemporaryDirectory()
        t = time.perf_counter()
        data = build_dataset(shape, Path(self._tmp.name) / label, seed)
        log(f"{label}: prepared {data.n_users} users x {data.n_items} items in {time.perf_counter() - t:.1f}s")
        features = random_features(shape, seed)
        self.cases: dict[str, Case] = {}
        self.errors: dict[str, str] = {}
        for spec in methods:
            try:
                self.cases[spec] = build_case(spec, data, features, shape.length, shape.batch, seed, quick, device)
                log(f"{label}: built {spec} in {self.cases[spec].build_s:.1f}s")
            except Exception as e:  # noqa: BLE001 - a method that cannot run here is reported, the others go on
                self.errors[spec] = f"{type(e).__name__}: {e}"
                log(f"{label}: {spec} failed to build: {self.errors[spec]}")
        samples = TrainSamples(data, shape.length, "last")
        order = samples.epoch_batches(shape.batch, np.random.default_rng(seed), True)
        self.mean_targets = float(samples.targets_per_sample().sum()) / max(len(order), 1)
        full = [idx for idx in order if len(idx) == shape.batch] or order
        n_neg = max((c.train.negatives for c in self.cases.values() if c.train.loss == "bce"), default=0)
        self.batches = []
        for i in range(n_batches):
            raw = samples.batch(full[i % len(full)], n_neg, np.random.default_rng([seed, i]))
            self.batches.append({k: torch.as_tensor(v, device=device) for k, v in raw.items()})
        self.evaluator = Evaluator(data, EvalConfig(), shape.length, torch.device(device))
        cases = data.eval_cases("test")
        keep = cases.user < eval_users
        self.eval_cases = type(cases)(cases.user[keep], cases.pos[keep])
        self.eval_users = len(np.unique(self.eval_cases.user))

    def info(self) -> dict[str, Any]:
        return {"build_s": {m: c.build_s for m, c in self.cases.items()}, "errors": self.errors,
                "eval_users": self.eval_users, "default_threads": self.threads0}

    def _run(self, spec: str, fn) -> dict[str, Any]:
        if spec in self.errors:
            return {"error": self.errors[spec]}
        try:
            return {"value": fn(self.cases[spec])}
        except Exception as e:  # noqa: BLE001 - reported in the method's row
            self.errors[spec] = f"{type(e).__name__}: {e}"
            return {"error": self.errors[spec]}

    def step(self, spec: str, threads: int, i: int, peak: bool = False) -> dict[str, Any]:
        """Seconds of a training step on batch ``i``; with ``peak`` (a warm-up step, whose time is not
        used), the step's peak memory instead (``peak_step_mib``), under the profiler."""
        import torch

        torch.set_num_threads(threads)

        def one(c: Case) -> float:
            if peak:
                c.opt.zero_grad(set_to_none=True)  # the profiler misses frees of blocks allocated before it
                return peak_step_mib(lambda: train_step(c, self.batches[i], self.mean_targets), self.device)
            self.sync()
            t = time.perf_counter()
            train_step(c, self.batches[i], self.mean_targets)
            self.sync()
            return time.perf_counter() - t

        return self._run(spec, one)

    def evaluate(self, spec: str, threads: int) -> dict[str, Any]:
        import torch

        torch.set_num_threads(threads)

        def one(c: Case) -> float:
            self.sync()
            t = time.perf_counter()
            self.evaluator.evaluate(c.model, "test", cases=self.eval_cases)
            self.sync()
            dt = time.perf_counter() - t
            c.model.train()
            return dt / self.eval_users * 1000

        return self._run(spec, one)

    def close(self) -> None:
        self._tmp.cleanup()


class LocalWorker:
    """This tree, in this process."""

    methods: list[str] | None = None  # every method of the run

    def __init__(self, log):
        self.log, self.session = log, None

    def call(self, op: str, **kw) -> dict[str, Any]:
        if op == "setup":
            if self.session is not None:
                self.session.close()
            kw["shape"] = Shape(**kw["shape"])
            self.session = Session(**kw, log=self.log)
            return self.session.info()
        if op == "close":
            if self.session is not None:
                self.session.close()
            self.session = None
            return {}
        return getattr(self.session, op)(**kw)


class RemoteWorker:
    """Another tree's mmrec (``--tree NAME=DIR``), in a worker process running this script with
    ``DIR`` first on its path; one request at a time over its stdin / stdout."""

    def __init__(self, name: str, root: str, methods: list[str] | None = None):
        self.methods = methods  # None: every method of the run
        if not (Path(root) / "mmrec" / "__init__.py").is_file():
            raise SystemExit(f"--tree {name}={root}: no mmrec package there (expected {root}/mmrec/__init__.py)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(root).resolve()), os.environ.get("PYTHONPATH", "")])}
        self.name, self.root = name, root
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=root)

    def call(self, op: str, **kw) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                out = json.loads(line[len(REPLY):])
                if "worker_error" in out:
                    raise RuntimeError(f"tree {self.name}: {out['worker_error']}")
                return out
            print(line, end="", file=sys.stderr)
        raise RuntimeError(f"tree {self.name}: the worker ended (exit {self.proc.wait()})")

    def stop(self) -> None:
        try:
            self.call("close")
        finally:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait()


def worker_main(name: str) -> None:
    """``--worker NAME``: serve ``LocalWorker`` requests from stdin (``RemoteWorker``)."""
    import mmrec

    def log(msg: str) -> None:
        print(f"[{name}] {msg}", file=sys.stderr, flush=True)

    log(f"mmrec from {Path(mmrec.__file__).parent}")
    local = LocalWorker(log)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = local.call(req.pop("op"), **req)
        except Exception as e:  # noqa: BLE001 - sent back to the coordinator, which raises it
            out = {"worker_error": f"{type(e).__name__}: {e}"}
        print(REPLY + json.dumps(out), flush=True)


def measure_shape(label: str, shape: Shape, methods: list[str], workers: dict[str, Any], args, log
                  ) -> dict[str, Any]:
    threads0 = default_threads()
    if args.device == "cuda":  # (label, torch threads) of each timed setting
        settings, eval_key = [("cuda", threads0)], "cuda"
    else:
        settings = [(f"{k}t", k) for k in (sorted({1, threads0}) if not args.threads else args.threads)]
        eval_key = f"{threads0}t"
    n_batches = args.warmup + args.rounds
    infos = {t: w.call("setup", label=label, shape=asdict(shape), methods=w.methods or methods, n_batches=n_batches,
                       eval_users=args.eval_users, seed=args.seed, quick=args.quick, device=args.device)
             for t, w in workers.items()}
    rows = {(t, m): {"step_all_s": {}, "eval_all_s": {}, "error": infos[t]["errors"].get(m), "peak_step_mib": None}
            for t, w in workers.items() for m in (w.methods or methods)}

    def record(t: str, m: str, res: dict[str, Any]) -> float | None:
        if "error" in res:
            rows[t, m]["error"] = res["error"]
            return None
        return res["value"]

    pairs = [(t, m) for m in methods for t, w in workers.items() if m in (w.methods or methods)]  # alternating
    for n, (key, threads) in enumerate(settings):
        for r in range(n_batches):
            peak = n == 0 and r == 0  # the first warm-up step is the memory reading
            cpu_peak = peak and args.device == "cpu"
            for t, m in pairs:
                v = record(t, m, workers[t].call("step", spec=m, threads=1 if cpu_peak else threads, i=r, peak=peak))
                if v is not None and peak:
                    rows[t, m]["peak_step_mib"] = v
                elif v is not None and r >= args.warmup:
                    rows[t, m]["step_all_s"].setdefault(key, []).append(v)
            log(f"{label}: {key}, step {r + 1} of {n_batches} done")
            if args.out:  # what is measured so far, in case the run is stopped
                Path(args.out + ".partial").write_text(json.dumps(
                    {label: {f"{m} [{t}]": row for (t, m), row in rows.items()}}, indent=1))
    for r in range(args.eval_rounds):
        for t, m in pairs:
            v = record(t, m, workers[t].call("evaluate", spec=m, threads=threads0))
            if v is not None:
                rows[t, m]["eval_all_s"].setdefault(eval_key, []).append(v)
    log(f"{label}: evaluation done")
    out_rows = {}
    for (t, m), row in rows.items():
        key = m if t == "this" else f"{m} [{t}]"
        if row["error"]:
            out_rows[key] = {"error": row["error"]}
            continue
        out_rows[key] = {"build_s": round(infos[t]["build_s"][m], 3),
                         "step_s": {k: statistics.median(v) for k, v in row["step_all_s"].items()},
                         "eval_s_per_1000": {k: statistics.median(v) for k, v in row["eval_all_s"].items()},
                         "peak_step_mib": row["peak_step_mib"], "step_all_s": row["step_all_s"]}
    return with_ratios({"shape": asdict(shape), "device": args.device, "settings": [k for k, _ in settings],
                        "eval_setting": eval_key, "eval_threads": threads0,
                        "eval_users": infos["this"]["eval_users"], "rounds": args.rounds, "warmup": args.warmup,
                        "trees": {t: getattr(w, "root", None) for t, w in workers.items()}, "methods": out_rows})


def with_ratios(res: dict[str, Any], reference: str = "sasrec") -> dict[str, Any]:
    """Adds ``ratio`` {figure: value / reference's value} to every row (None without a reference)."""
    ref = res["methods"].get(reference, {})
    for row in res["methods"].values():
        if "error" in row:
            continue
        ratio: dict[str, float | None] = {}
        for fig in ("step_s", "eval_s_per_1000"):
            for k, v in row[fig].items():
                base = ref.get(fig, {}).get(k) if "error" not in ref else None
                ratio[f"{fig}[{k}]"] = v / base if base else None
        base = ref.get("peak_step_mib")
        ratio["peak_step_mib"] = row["peak_step_mib"] / base if base and row["peak_step_mib"] is not None else None
        row["ratio"] = ratio
    return res


def table(label: str, res: dict[str, Any]) -> str:
    s = res["shape"]
    feats = " + ".join(f"{m} {d}-d" for m, d in s["features"].items())
    title = (f"{label}: {s['users']:,} users, {s['items']:,} items, windows of {s['length']}, batch {s['batch']}, "
             f"{feats}; median of {res['rounds']} steps after {res['warmup']}; evaluation of {res['eval_users']:,} "
             f"users ({res['eval_setting']}); x sasrec: the ratio to this tree's SASRec")
    head = [title, ""]
    cols = ["method"]
    for k in res["settings"]:
        cols += [f"step {k} (s)", "x sasrec"]
    cols += ["eval / 1k users (s)", "x sasrec", f"peak step MiB ({res['device']})", "x sasrec"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for name, row in res["methods"].items():
        if "error" in row:
            lines.append(f"| {name} | " + " | ".join(["-"] * (len(cols) - 2)) + f" | {row['error'][:80]} |")
            continue
        r = row["ratio"]
        cells = [name]
        for k in res["settings"]:
            cells += [f(row["step_s"].get(k), ".3f"), f(r.get(f"step_s[{k}]"), ".2f")]
        ek = res["eval_setting"]
        cells += [f(row["eval_s_per_1000"].get(ek), ".3f"), f(r.get(f"eval_s_per_1000[{ek}]"), ".2f"),
                  f(row["peak_step_mib"], ".1f"), f(r.get("peak_step_mib"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines)


def alternate(ways: dict[str, Any], rounds: int, warmup: int, before: Any = None
              ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Each of ``ways`` (name -> function) called in turn, ``warmup + rounds`` rounds, so that a slow moment of
    a shared machine falls on every way alike (``before``, if given, runs untimed before each call): the
    seconds of each way's last ``rounds`` calls, and each way's last return value."""
    times: dict[str, list[float]] = {k: [] for k in ways}
    last: dict[str, Any] = {}
    for r in range(warmup + rounds):
        for name, fn in ways.items():
            if before is not None:
                before()
            t = time.perf_counter()
            last[name] = fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times, last


def expert_batching_bound(batch: int, length: int, rounds: int, warmup: int, threads: int = 1) -> dict[str, Any]:
    """What computing SyNCRec's experts as one batched product could save at most: a forward and
    backward of its K experts (``syncrec`` harmonised: K Transformer stacks) one after the other on a
    ``[batch, length, hidden]`` input, against *one* expert on the K inputs stacked along the batch
    (``[K batch, length, hidden]``): the same arithmetic in one call per operation, which is what a
    product over stacked expert weights (bmm) does at best. Median seconds over alternating rounds."""
    import torch

    from mmrec.config import from_dict
    from mmrec.trainers.methods.syncrec import Expert, SyNCRecConfig

    torch.set_num_threads(threads)
    cfg = from_dict(SyNCRecConfig, {}, prefix="model.")
    torch.manual_seed(0)
    experts = [Expert(cfg).train() for _ in range(cfg.experts)]
    x = torch.randn(batch, length, cfg.hidden)

    def loop() -> None:
        sum(e(x).sum() for e in experts).backward()

    def stacked() -> None:
        experts[0](x.repeat(cfg.experts, 1, 1)).sum().backward()

    times, _ = alternate({"loop": loop, "stacked": stacked}, rounds, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"experts": cfg.experts, "hidden": cfg.hidden, "layers": cfg.layers, "batch": batch, "length": length,
            "threads": threads, "seconds": med, "all_seconds": times, "loop_over_stacked": med["loop"] / med["stacked"]}


def moe_loop_against_batched(shape: Shape, rounds: int, warmup: int, threads: int = 1) -> dict[str, Any]:
    """ANT's mixture of whitening experts (``harmonised``: 8 experts to hidden 256, dropout 0.2, gate
    noise) on each feature table of ``shape`` (every item, as one step's item table), forward and
    backward: the experts one after the other, each its own module and dropout (the formulation
    before ``MoEAdaptor.expert_outputs``, written out here), against the batched product. Median
    seconds over alternating rounds."""
    import torch

    from mmrec.config import from_dict
    from mmrec.trainers.methods.ant import ANTConfig
    from mmrec.trainers.modules.adaptors import MoEAdaptor

    torch.set_num_threads(threads)
    cfg = from_dict(ANTConfig, {}, prefix="model.")
    out: dict[str, Any] = {"experts": cfg.n_experts, "hidden": cfg.hidden, "dropout": cfg.adaptor_dropout,
                           "threads": threads, "tables": {}}
    for modality, dim in shape.features.items():
        torch.manual_seed(0)
        moe = MoEAdaptor(dim, cfg.hidden, cfg.n_experts, cfg.adaptor_dropout).train()
        x = torch.randn(shape.items + 1, dim)

        def loop(moe: MoEAdaptor = moe, x: torch.Tensor = x) -> None:
            g = moe.gates(x)
            v = (g.unsqueeze(-1) * torch.stack([e(x) for e in moe.experts], dim=-2)).sum(-2)
            v.pow(2).sum().backward()

        def batched(moe: MoEAdaptor = moe, x: torch.Tensor = x) -> None:
            moe(x).pow(2).sum().backward()

        times, _ = alternate({"loop": loop, "batched": batched}, rounds, warmup,
                             before=lambda moe=moe: moe.zero_grad(set_to_none=True))
        med = {k: statistics.median(v) for k, v in times.items()}
        out["tables"][modality] = {"rows": shape.items + 1, "dim": dim, "seconds": med, "all_seconds": times,
                                   "loop_over_batched": med["loop"] / med["batched"]}
    return out


def readout_against_states(shape: Shape, methods: list[str], users: int, rounds: int, warmup: int,
                           threads: int = 1, seed: int = 0) -> dict[str, Any]:
    """Evaluation's read-out alone, per method: ``query`` (where the method has it, the encoders' last
    block run at each row's last position only) against the states of every position read at the last
    (``gather_last(sequence_states)``, what ``query`` computed before it had that path), on ``users``
    windows of the shape's length (random item ids), in eval mode without autograd, one process,
    alternating rounds: median seconds per 1,000 users and the largest difference between the two."""
    import tempfile

    import torch

    from mmrec.trainers.modules.sequence import gather_last

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"users": users, "length": shape.length, "threads": threads, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = build_dataset(shape, Path(tmp) / "data", seed)
        feats = random_features(shape, seed)
        g = torch.Generator().manual_seed(seed)
        items = torch.randint(1, shape.items + 1, (users, shape.length), generator=g)
        lengths = torch.full((users,), shape.length)
        for spec in methods:
            try:
                model = build_case(spec, data, feats, shape.length, shape.batch, seed).model.eval()
                ways = {"states": lambda m=model: gather_last(m.sequence_states(items, lengths), lengths),
                        "query": lambda m=model: m.query(items, lengths)}
                with torch.no_grad():
                    seconds, got = alternate(ways, rounds, warmup)
                times = {k: [t / users * 1000 for t in v] for k, v in seconds.items()}
            except Exception as e:  # noqa: BLE001 - reported in the method's row
                out["methods"][spec] = {"error": f"{type(e).__name__}: {e}"}
                continue
            med = {k: statistics.median(v) for k, v in times.items()}
            out["methods"][spec] = {"seconds_per_1000": med, "all_seconds_per_1000": times,
                                    "speedup": med["states"] / med["query"],
                                    "max_abs_diff": float((got["states"] - got["query"]).abs().max())}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--methods", nargs="+",
                    help="default: every registered method (sasrec is always added); NAME@key=value,... for a "
                         "row with settings of its own")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR[,METHOD...]",
                    help="also measure the mmrec package in DIR, side by side (rows 'method [NAME]'): every "
                         "method of the run, or those listed after DIR")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps per method and thread setting")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", help="thread settings (default: 1 and the default threads)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the models train and evaluate (cuda: one timed setting, peak from "
                         "torch.cuda.max_memory_allocated)")
    ap.add_argument("--eval-rounds", type=int, default=3)
    ap.add_argument("--eval-users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, 2 rounds after 1 warm-up step, one thread (a test)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--experts-bound", action="store_true",
                    help="only: SyNCRec's experts one after the other against one expert on their stacked inputs "
                         "(the most a batched product over the experts could save), --rounds after --warmup")
    ap.add_argument("--moe", action="store_true",
                    help="only: ANT's experts over each ml-1m feature table, one after the other against the "
                         "batched product, --rounds after --warmup")
    ap.add_argument("--readout", action="store_true",
                    help="only: each method's evaluation read-out (query) against every position's states read "
                         "at the last, on --eval-users windows of the first --shapes shape, --rounds after --warmup")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    if args.experts_bound:
        shape = (QUICK_SHAPES if args.quick else SHAPES)["ml-1m"]
        res = expert_batching_bound(shape.batch, shape.length, 2 if args.quick else args.rounds,
                                    1 if args.quick else args.warmup, (args.threads or [1])[0])
        print(f"SyNCRec's {res['experts']} experts ({res['layers']} blocks, hidden {res['hidden']}) on "
              f"[{res['batch']}, {res['length']}] inputs, forward + backward, {res['threads']} thread(s), median of "
              f"{len(res['all_seconds']['loop'])}: one after the other {res['seconds']['loop']:.3f}s, one expert on "
              f"the stacked inputs {res['seconds']['stacked']:.3f}s, ratio {res['loop_over_stacked']:.2f}")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return res
    if args.moe:
        shape = (QUICK_SHAPES if args.quick else SHAPES)["ml-1m"]
        res = moe_loop_against_batched(shape, 2 if args.quick else args.rounds, 1 if args.quick else args.warmup,
                                       (args.threads or [1])[0])
        for modality, r in res["tables"].items():
            print(f"ANT's {res['experts']} whitening experts, {modality} {r['dim']}-d -> {res['hidden']} over "
                  f"{r['rows']:,} items, dropout {res['dropout']}, forward + backward, {res['threads']} thread(s), "
                  f"median of {len(r['all_seconds']['loop'])}: one after the other {r['seconds']['loop']:.3f}s, "
                  f"batched {r['seconds']['batched']:.3f}s, ratio {r['loop_over_batched']:.2f}")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return res

    from mmrec.trainers.methods import METHODS

    if args.readout:
        label = args.shapes[0]
        shape = (QUICK_SHAPES if args.quick else SHAPES)[label]
        names = args.methods or [m for m in METHODS if m != "pop"]
        res = readout_against_states(shape, names, 20 if args.quick else args.eval_users,
                                     2 if args.quick else args.rounds, 1 if args.quick else args.warmup,
                                     (args.threads or [1])[0], args.seed)
        print(f"{label}: the evaluation read-out of {res['users']:,} windows of {res['length']} items, "
              f"{res['threads']} thread(s), median of {2 if args.quick else args.rounds} alternating rounds; "
              "seconds per 1,000 users\n")
        print("| method | every position's states, read at the last | query | speed-up | max abs difference |")
        print("|---|---|---|---|---|")
        for name, r in res["methods"].items():
            if "error" in r:
                print(f"| {name} | - | - | - | {r['error'][:80]} |")
                continue
            sec = r["seconds_per_1000"]
            print(f"| {name} | {sec['states']:.3f} | {sec['query']:.3f} | {r['speedup']:.2f}x | "
                  f"{r['max_abs_diff']:.1e} |")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return res

    methods = args.methods or list(METHODS)
    if "sasrec" not in methods:
        methods = ["sasrec", *methods]
    unknown = [m for m in methods if parse_method(m)[0] not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.quick:
        args.rounds, args.warmup, args.eval_rounds, args.eval_users, args.threads = 2, 1, 1, 20, [1]
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first warm-up step reads the peak memory)")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workers: dict[str, Any] = {"this": LocalWorker(log)}
    for spec in args.tree:
        name, eq, rest = spec.partition("=")
        root, *only = rest.split(",")
        if not eq or name == "this" or name in workers:
            ap.error(f"--tree takes NAME=DIR[,METHOD...] with a new NAME (not 'this'), got {spec!r}")
        if [m for m in only if m not in methods]:
            ap.error(f"--tree {spec}: {[m for m in only if m not in methods]} are not methods of this run")
        workers[name] = RemoteWorker(name, root, only or None)
    out: dict[str, Any] = {}
    try:
        for label in args.shapes:
            out[label] = measure_shape(label, shapes[label], methods, workers, args, log)
            print(table(label, out[label]) + "\n", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(out, indent=1))
    finally:
        for w in workers.values():
            w.stop() if isinstance(w, RemoteWorker) else w.call("close")
    return out


if __name__ == "__main__":
    main()
