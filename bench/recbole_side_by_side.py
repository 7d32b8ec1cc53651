"""SASRec trained in mmrec and in RecBole on the same prepared data, side by side (issue 7).

Each toolkit runs in its own subprocess (its own interpreter, one thread), so the peak resident
memory each child reports (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, data loading included)
is its own. Per toolkit and dataset the table gives:

- ``s/epoch``: mean wall seconds of one training epoch (no evaluation inside).
- ``targets/epoch`` and ``targets/s``: training targets (loss terms) per epoch and per second.
  The two toolkits' training units differ, so ``s/epoch`` compares different amounts of work:
  RecBole's SASRec turns every prefix of a user's training part into its own sample (the prefix's
  last <= 50 items predict the next item: one loss term per sample, the sample padded to 50), i.e.
  sum_u (a_u - 1) samples; mmrec trains one window per user, the last ``max_len`` training targets,
  with a loss at every position, i.e. sum_u min(a_u - 1, 50) targets (a_u = length of u's training
  part). On Beauty the two counts are close (131k vs 128k); on ml-1m RecBole's is 3.7x mmrec's
  (981k vs 266k), because long histories contribute up to 50 targets a window in mmrec but one
  sample a prefix in RecBole. ``targets/s`` is the like-for-like throughput.
- ``eval s``: full-ranking evaluation of the validation and the test part over all items, once, at
  the best checkpoint (mmrec: ``timing.final_eval_seconds``; RecBole: ``Trainer.evaluate`` on both
  loaders, timed in the child after the best checkpoint is loaded).
- ``peak RSS MiB``, and the test NDCG@10 / HR@10 of the best validation epoch.
- a ``mmrec/RecBole`` row with the ratio of each column.

Commands, from the repository root with mmrec's environment active (the shared data at
``../shared/data``; the figures of docs/benchmarks.md are from its 2-core CPU, one thread each side)::

    # 1. the RecBole environment (never a dependency of mmrec): a venv with pinned versions, torch
    #    from the package registry; default folder ../venv-recbole
    bash bench/envs/recbole.sh ../venv-recbole
    # 2. the side by side; --data takes a prepared folder or a benchmark dataset name (beauty, ml1m,
    #    ml100k, ...: prepared from ../shared/data on first use, see bench/prepare_bench_data.py)
    export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
    python bench/recbole_side_by_side.py --recbole-python ../venv-recbole/bin/python \
        --data beauty --timing-only --out out/recbole-bench/timing-beauty.json       # 2 epochs a side
    python bench/recbole_side_by_side.py --data ml1m --timing-only --out out/recbole-bench/timing-ml1m.json
    # the smallest run: ml-100k, one epoch a side (5 minutes on the busy 2-core CPU, RecBole 96% of it)
    python bench/recbole_side_by_side.py --data ml100k --timing-only --epochs 1
    # one table from earlier runs' JSON files (trains nothing)
    python bench/recbole_side_by_side.py --show out/recbole-bench/timing-beauty.json \
        out/recbole-bench/timing-ml1m.json
    # convergence on Beauty: early stopping on valid NDCG@10
    python bench/recbole_side_by_side.py --data beauty --epochs 100 --patience 5 \
        --out out/recbole-bench/beauty-converged.json

``--recbole-python`` defaults to ``MMREC_RECBOLE_PYTHON``, else ``../venv-recbole/bin/python`` beside
the repository (the environment script's default folder).

Same data: the parent exports each user's whole time-ordered sequence of the prepared dataset to
RecBole atomic files (``<name>.inter``: ``user_id:token item_id:token timestamp:float``, the token
being mmrec's internal id and the timestamp the event's position in the user's sequence, so
RecBole's time order is exactly mmrec's). RecBole keeps every user and item (no filtering) and
splits leave-one-out (``LS: valid_and_test``, order ``TO``), which is mmrec's ``loo`` split on
these data (every user has >= 3 events). The parent asserts that both sides see the same number of
users, items, validation and test cases.

Same settings: hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5 (hidden and attention), GELU,
max_len 50, batch 256, Adam lr 1e-3, cross-entropy over all items, full ranking over all items
(history not masked: RecBole's protocol for sequential models, see below), evaluation batches of 1,024 users, valid metric NDCG@10, seed 0, one thread.

Differences kept (each toolkit's own SASRec):

- Early stopping: mmrec stops after ``patience`` validations without a strictly better NDCG@10;
  RecBole (``early_stopping``) counts a tie as an improvement and stops after ``stopping_step + 1``
  validations without one, so RecBole gets ``stopping_step = patience - 1`` (same stopping point).
- Positions: mmrec's default ``model.position=reverse`` (the newest item always has the last
  position, left-padding style as Kang's and S3-Rec's code); RecBole counts positions from the
  oldest item of the window. LayerNorm eps: RecBole 1e-12, mmrec torch's default.
- History masking: RecBole 1.2.1's full-sort evaluation does NOT mask the history for sequential
  models (``FullSortEvalDataLoader.collate_fn`` returns ``history_index=None`` for a sequential
  dataset; ``_full_sort_batch_eval`` then only masks the padding item 0). It ranks every item. So
  mmrec runs with ``eval.history_mask=none`` (every item ranked, the target included), the same
  protocol, for training, early stopping and the table. The mmrec child also evaluates the same best
  checkpoint once more with ``eval.history_mask=whole`` (every item before the target masked: the
  training part for a validation case, training + validation for a test case, never the target
  itself) and reports it apart (``test_whole_mask`` in the JSON; not in the ratio columns). The
  parent counts targets that repeat an item of their own history (under a history mask RecBole
  would have made those unreachable, mmrec keeps them): 0 on Beauty and ml-1m.
- Ties: mmrec ranks pessimistically (a target ties below equal scores); RecBole takes ``torch.topk``
  order. Float scores practically never tie.
- Batching: mmrec groups windows of similar length into a batch and trims the padding
  (``train.bucket_batches``); RecBole pads every sample to 50.

RecBole 1.2.1 on torch 2.13-2.14 / numpy 1.26, patched in the child at import time only (never in
site-packages):

- ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, which refuses RecBole's own
  checkpoint (it pickles the config); the child wraps ``torch.load`` to default to
  ``weights_only=False``, used only to reload the checkpoint RecBole wrote in this run.
- numpy: the aliases removed in numpy 1.24/2 (``np.float``, ``np.int``, ``np.bool``, ``np.object``,
  ``np.long``) are set to the builtins when missing before RecBole is imported (RecBole 1.2.1 also
  sets some of them itself in its Config).
- ``torch.set_num_threads(1)`` before RecBole starts (it has no thread setting for CPU).
- Importing ``recbole.model.sequential_recommender`` imports ``sine.py``, whose module level calls
  ``torch.autograd.set_detect_anomaly(True)``: autograd anomaly detection (a debugging mode that
  records a traceback per op and checks every backward) is on for every RecBole sequential model.
  The child turns it off again after the import (the JSON records both states); ``--recbole-as-shipped``
  leaves it on, which measures RecBole as installed (slower).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, LAYERS, HEADS, INNER, DROPOUT, MAX_LEN, BATCH, LR, EVAL_BATCH, SEED = 64, 2, 2, 256, 0.5, 50, 256, 1e-3, 1024, 0
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ exporter
def export_recbole(data_dir: str | Path, out_root: str | Path, name: str | None = None) -> dict:
    """Write the prepared dataset at ``data_dir`` as RecBole atomic files ``out_root/<name>/<name>.inter``.

    One row per event, users in internal-id order, each user's events in sequence order; tokens are
    mmrec's internal ids (user 0.., item 1..), the timestamp is the event's position in its user's
    sequence. Returns the counts both sides must agree on."""
    import numpy as np

    from mmrec.data.prepared import PreparedDataset

    d = PreparedDataset(data_dir)
    name = name or Path(data_dir).name
    folder = Path(out_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    items = np.asarray(d.items).astype(np.int64)
    lengths = d.lengths
    users = np.repeat(np.arange(d.n_users, dtype=np.int64), lengths)
    pos = np.arange(len(items), dtype=np.int64) - np.repeat(d.offsets[:-1], lengths)
    path = folder / f"{name}.inter"
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{p}\n" for u, i, p in zip(users.tolist(), items.tolist(), pos.tolist()))
    a = d.split[:, 0]
    n_targets = np.maximum(a - 1, 0)
    repeated = {}
    for part in ("valid", "test"):
        c = d.eval_cases(part)
        n = 0
        for u, p in zip(c.user.tolist(), c.pos.tolist()):
            if items[p] in set(items[d.offsets[u]:p].tolist()):
                n += 1
        repeated[part] = n
    return {
        "name": name, "path": str(path), "n_users": d.n_users, "n_items": d.n_items,
        "n_events": int(len(items)), "n_items_seen": int(len(np.unique(items))),
        "n_valid": len(d.eval_cases("valid")), "n_test": len(d.eval_cases("test")),
        "recbole_train_samples": int(n_targets.sum()),
        "mmrec_train_targets": int(np.minimum(n_targets, MAX_LEN).sum()),
        "targets_repeating_history": repeated,
        "loo": bool((d.split[:, 0] == d.lengths - 2).all() and (d.split[:, 1] == d.lengths - 1).all()),
    }


# ------------------------------------------------------------------------------------ children
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _vm_hwm_mib() -> float | None:
    """Peak RSS of this process image (``VmHWM``; Linux), a cross-check of ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _cuda_peak_mib(device: str) -> float | None:
    """Peak GPU memory allocated by torch in this process (None on a CPU run)."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def child_mmrec(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from mmrec.config import apply_overrides, from_dict
    from mmrec.runs.config import RunConfig
    from mmrec.trainers.loop import Trainer

    sets = [
        "train.loss=ce", "eval.history_mask=none", "eval.mode=full", f"train.threads={args.threads}",
        f"train.device={args.device}",
        f"train.epochs={args.epochs}", f"train.patience={args.patience}", f"train.seed={args.seed}",
        f"train.batch_size={BATCH}", f"train.lr={LR}", f"train.max_len={MAX_LEN}", "train.valid_metric=ndcg@10",
        "train.windows=last", f"eval.batch_size={EVAL_BATCH}",
        f"model.hidden={HIDDEN}", f"model.layers={LAYERS}", f"model.heads={HEADS}", f"model.inner={INNER}",
        f"model.dropout={DROPOUT}", f"model.attn_dropout={DROPOUT}",
    ] + list(args.mmrec_set or [])
    run = from_dict(RunConfig, apply_overrides({"dataset": args.data, "method": "sasrec"}, sets))
    run_dir = Path(args.workdir) / "mmrec-run"
    t = time.perf_counter()
    trainer = Trainer(run, run_dir, log=lambda m: print(m, flush=True))
    build_s = time.perf_counter() - t
    d = trainer.data
    res = trainer.fit()
    # the same best checkpoint under mmrec's whole-history mask (not RecBole's protocol; reported apart)
    from mmrec.trainers.evaluation import Evaluator

    t = time.perf_counter()
    import dataclasses

    whole = Evaluator(d, dataclasses.replace(run.eval, history_mask="whole"), run.train.max_len,
                      trainer.accel.device).evaluate(trainer.raw_model, "test")
    whole_s = time.perf_counter() - t
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        trainer._epoch(999)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return {
        "toolkit": "mmrec", "n_users": d.n_users, "n_items": d.n_items,
        "n_valid": len(d.eval_cases("valid")), "n_test": len(d.eval_cases("test")),
        "train_targets_per_epoch": int(trainer.samples.lengths().sum()),
        "epoch_seconds": [r["train_seconds"] for r in rows],
        "valid_eval_seconds": [r.get("eval_seconds") for r in rows],
        "final_eval_seconds": res["timing"]["final_eval_seconds"],
        "build_seconds": build_s,
        "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"],
        "test_ndcg10": res["test"]["ndcg@10"], "test_hr10": res["test"]["hr@10"],
        "valid_ndcg10": res["valid"]["ndcg@10"], "threads": torch.get_num_threads(),
        "test_whole_mask": {"ndcg10": whole["ndcg@10"], "hr10": whole["hr@10"], "seconds": whole_s},
        "versions": {"torch": torch.__version__}, "device": args.device, "cuda_peak_mib": _cuda_peak_mib(args.device),
    }


def _patch_for_recbole() -> list[str]:
    """Import-time patches RecBole 1.2.1 needs on this stack (see the module docstring)."""
    import numpy as np
    import torch

    done = []
    for alias, builtin in (("float", float), ("int", int), ("bool", bool), ("object", object), ("long", int),
                           ("complex", complex), ("str", str)):
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
            done.append(f"np.{alias}")
    original = torch.load

    def load(*a, **kw):
        kw.setdefault("weights_only", False)  # RecBole reloads only the checkpoint it wrote itself
        return original(*a, **kw)

    torch.load = load
    done.append("torch.load(weights_only=False)")
    return done


def child_recbole(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    patches = _patch_for_recbole()
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    # importing recbole.model.sequential_recommender imports sine.py, which turns on
    # torch.autograd.set_detect_anomaly(True) for the whole process (RecBole 1.2.1)
    anomaly_as_shipped = torch.is_anomaly_enabled()
    if not args.recbole_as_shipped:
        torch.autograd.set_detect_anomaly(False)
        patches.append("torch.autograd.set_detect_anomaly(False) after import")

    name = Path(args.inter).parent.name
    cfg = {
        "data_path": str(Path(args.inter).parent.parent), "dataset": name,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "train_neg_sample_args": None, "loss_type": "CE",
        "MAX_ITEM_LIST_LENGTH": MAX_LEN, "train_batch_size": BATCH, "eval_batch_size": EVAL_BATCH,
        "hidden_size": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "inner_size": INNER,
        "hidden_dropout_prob": DROPOUT, "attn_dropout_prob": DROPOUT, "hidden_act": "gelu",
        "learner": "adam", "learning_rate": LR, "weight_decay": 0.0,
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "metric_decimal_place": 6,
        "epochs": args.epochs, "stopping_step": max(args.patience - 1, 0), "eval_step": 1,
        "seed": args.seed, "reproducibility": True, "show_progress": False,
        # RecBole 1.2.1 picks its device from gpu_id alone: "" is the CPU, "0" the first visible GPU
        "use_gpu": args.device == "cuda", "gpu_id": "0" if args.device == "cuda" else "",
        "checkpoint_dir": str(Path(args.workdir) / "recbole-saved"), "worker": 0,
        "log_wandb": False, "state": "INFO",
    }
    config = Config(model="SASRec", dataset=name, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    t = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    build_s = time.perf_counter() - t
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])  # as run_recbole does
    model = SASRec(config, train_data.dataset).to(config["device"])

    epoch_s, valid_s = [], []

    class TimedTrainer(Trainer):
        def _train_epoch(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._train_epoch(*a, **kw)
            epoch_s.append(time.perf_counter() - t0)
            print(f"epoch {len(epoch_s)} train {epoch_s[-1]:.1f}s", flush=True)
            return out

        def _valid_epoch(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._valid_epoch(*a, **kw)
            valid_s.append(time.perf_counter() - t0)
            print(f"epoch {len(valid_s)} valid {valid_s[-1]:.1f}s {out[0]:.4f}", flush=True)
            return out

    trainer = TimedTrainer(config, model)
    if args.recbole_saved:  # a run stopped by hand: its best checkpoint, its times from its log
        for line in Path(args.recbole_log).read_text().splitlines():
            m = re.fullmatch(r"epoch (\d+) (train|valid) ([\d.]+)s.*", line.strip())
            if m:
                (epoch_s if m.group(2) == "train" else valid_s).append(float(m.group(3)))
        n = min(len(epoch_s), len(valid_s))  # the epochs with both (the last may have been cut)
        del epoch_s[n:], valid_s[n:]
        saved = args.recbole_saved
    else:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        saved = trainer.saved_model_file
    ckpt = torch.load(saved, map_location="cpu")
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    t0 = time.perf_counter()
    valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    final_eval_s = time.perf_counter() - t0
    best_epoch = int(ckpt["epoch"]) + 1  # RecBole counts epochs from 0
    return {
        "toolkit": "recbole", "n_users": int(dataset.user_num) - 1, "n_items": int(dataset.item_num) - 1,
        "n_valid": len(valid_data.dataset), "n_test": len(test_data.dataset),
        "train_targets_per_epoch": len(train_data.dataset),
        "epoch_seconds": epoch_s, "valid_eval_seconds": valid_s, "final_eval_seconds": final_eval_s,
        "build_seconds": build_s, "best_epoch": best_epoch, "epochs_run": len(epoch_s),
        "test_ndcg10": float(test["ndcg@10"]), "test_hr10": float(test["hit@10"]),
        "valid_ndcg10": float(valid["ndcg@10"]), "threads": torch.get_num_threads(),
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__,
                     "numpy": __import__("numpy").__version__},
        "device": args.device, "cuda_peak_mib": _cuda_peak_mib(args.device),
        "stopped_by_hand": bool(args.recbole_saved),
        "patches": patches, "anomaly_detection_on_import": anomaly_as_shipped,
        "anomaly_detection_during_run": torch.is_anomaly_enabled(),
    }


# ------------------------------------------------------------------------------------ parent
def _run_child(python: str, kind: str, args, extra: list[str], workdir: Path) -> dict:
    out = workdir / f"{kind}.json"
    log = workdir / f"{kind}.log"
    cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--epochs", str(args.epochs),
           "--patience", str(args.patience), "--seed", str(args.seed), "--device", args.device,
           "--threads", str(args.threads), *[f"--mmrec-set={x}" for x in (args.mmrec_set or [])], *(["--recbole-as-shipped"] if args.recbole_as_shipped else []),
           "--workdir", str(workdir), "--child-out", str(out), *extra]
    n = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,
               HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    print(f"  {kind}: {' '.join(cmd)}  (log {log})", file=sys.stderr, flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=workdir).returncode
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{kind} child failed (exit {rc}); last lines of {log}:\n{tail}")
    res = json.loads(out.read_text())
    res["wall_seconds"] = time.perf_counter() - t
    return res


def _row(r: dict) -> dict:
    secs = r["epoch_seconds"]
    spe = sum(secs) / len(secs)
    valid = [v for v in r.get("valid_eval_seconds") or [] if v is not None]
    return {"s_per_epoch": spe, "targets_per_epoch": r["train_targets_per_epoch"],
            "targets_per_s": r["train_targets_per_epoch"] / spe, "eval_s": r["final_eval_seconds"],
            "valid_eval_s": sum(valid) / len(valid) if valid else None,
            "peak_rss_mib": r["peak_rss_mib"], "cuda_peak_mib": r.get("cuda_peak_mib"),
            "ndcg10": r["test_ndcg10"], "hr10": r["test_hr10"]}


COLS = [("s_per_epoch", "s/epoch", "{:.1f}"), ("targets_per_epoch", "train targets/epoch", "{:,}"),
        ("targets_per_s", "targets/s", "{:,.0f}"), ("eval_s", "eval s (valid+test)", "{:.1f}"),
        ("valid_eval_s", "valid eval s (mean per epoch)", "{:.1f}"),
        ("peak_rss_mib", "peak RSS MiB", "{:,.0f}"), ("cuda_peak_mib", "peak GPU MiB", "{:,.0f}"),
        ("ndcg10", "test NDCG@10", "{:.4f}"), ("hr10", "test HR@10", "{:.4f}")]


def table(results: list[dict]) -> str:
    rows = [(_row(res["mmrec"]), _row(res["recbole"])) for res in results]
    # a column that no row has (GPU memory of CPU runs) is left out
    cols = [c for c in COLS if any(r[c[0]] is not None for pair in rows for r in pair)]
    head = "| dataset | toolkit | epochs (best) | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for res, (m, r) in zip(results, rows):
        name = res["dataset"] + (f" (seed {res['seed']})" if res.get("seed", SEED) != SEED else "")
        if res.get("mmrec_set"):
            name += " [mmrec " + ", ".join(res["mmrec_set"]) + "]"
        for kind, row in (("mmrec", m), ("RecBole", r)):
            raw = res[kind.lower()]
            lines.append(f"| {name} | {kind} | {raw['epochs_run']} ({raw['best_epoch']}) | "
                         + " | ".join("-" if row[k] is None else fmt.format(row[k]) for k, _, fmt in cols) + " |")
        lines.append(f"| {name} | mmrec/RecBole | | "
                     + " | ".join(f"{m[k] / r[k]:.2f}x" if m[k] is not None and r[k] else "-" for k, _, _ in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append",
                    help="prepared dataset folder, or a benchmark dataset name (beauty, ml1m, ml100k, ...: prepared "
                         "from ../shared/data on first use, bench/prepare_bench_data.py); repeatable")
    ap.add_argument("--epochs", type=int, default=None, help="epoch cap (default 100; 2 with --timing-only)")
    ap.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping")
    ap.add_argument("--timing-only", action="store_true",
                    help="a few epochs (2 unless --epochs), no convergence: the metrics are not comparable")
    ap.add_argument("--recbole-python", default=os.environ.get("MMREC_RECBOLE_PYTHON", str(REPO.parent / "venv-recbole" / "bin" / "python")),
                    help="the RecBole environment's python (bash bench/envs/recbole.sh DIR makes DIR/bin/python; "
                         "default MMREC_RECBOLE_PYTHON, else ../venv-recbole/bin/python beside the repository)")
    ap.add_argument("--mmrec-python", default=sys.executable)
    ap.add_argument("--seed", type=int, default=SEED, help="seed of both sides (default 0)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="both sides on this device; cuda: the first visible GPU (set CUDA_VISIBLE_DEVICES to pick "
                         "one), peak GPU memory is then reported too")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each side (default 1)")
    ap.add_argument("--mmrec-set", action="append", metavar="KEY=VALUE",
                    help="an mmrec setting on top of the shared ones (repeatable), e.g. train.batch_size=64; "
                         "the table names it")
    ap.add_argument("--only", choices=["mmrec", "recbole"],
                    help="run one side only (two --only runs can go in parallel; --show merges their JSON)")
    ap.add_argument("--profile", action="store_true", help="mmrec child: cProfile one extra epoch into its log")
    ap.add_argument("--recbole-saved", help="RecBole side: do not train; evaluate this saved checkpoint (.pth) of a run "
                                            "stopped by hand, with the epoch times read from --recbole-log")
    ap.add_argument("--recbole-log", help="the stopped RecBole child's log (its 'epoch N train/valid' lines)")
    ap.add_argument("--recbole-as-shipped", action="store_true",
                    help="leave RecBole's import-time torch.autograd.set_detect_anomaly(True) on (slower)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (exports, runs, logs)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--show", nargs="+", metavar="JSON",
                    help="train nothing: print one table from the JSON files of earlier runs (--out combines them)")
    # child mode (internal)
    ap.add_argument("--child", choices=["mmrec", "recbole"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--inter", help=argparse.SUPPRESS)
    ap.add_argument("--data-one", dest="data_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs is None:
        args.epochs = 2 if args.timing_only else 100
    if args.timing_only:
        args.patience = max(args.patience, args.epochs + 1)

    if args.recbole_saved and not args.recbole_log:
        ap.error("--recbole-saved needs --recbole-log (the stopped run's log, for its epoch times)")
    if args.child:
        if args.child == "mmrec":
            args.data = args.data_one
            res = child_mmrec(args)
        else:
            res = child_recbole(args)
        res["peak_rss_mib"] = _peak_rss_mib()
        res["vm_hwm_mib"] = _vm_hwm_mib()
        Path(args.child_out).write_text(json.dumps(res, indent=2))
        return

    if args.show:
        docs = [json.loads(Path(p).read_text()) for p in args.show]
        # results of the same dataset and seed from separate --only runs are merged into one row pair;
        # a RecBole side pairs with every mmrec side of its dataset and seed (whatever its --mmrec-set)
        mm: dict[tuple, dict] = {}
        rb: dict[tuple, dict] = {}
        for d in docs:
            for r in d["results"]:
                base = (r["dataset"], r.get("seed", SEED), r.get("timing_only"))
                if "mmrec" in r:
                    mm[base + (tuple(r.get("mmrec_set", [])),)] = r
                if "recbole" in r:
                    rb[base] = r
        merged: dict[tuple, dict] = {}
        for key, r in mm.items():
            if key[:3] in rb:
                merged[key] = {**r, "recbole": rb[key[:3]]["recbole"]}
        incomplete = sorted({k[:3] for k in mm if k[:3] not in rb} | {k for k in rb if not any(m[:3] == k for m in mm)})
        if incomplete:
            ap.error(f"no mmrec or no RecBole side for {incomplete}: pass the JSON of both sides")
        doc = {"settings": [d["settings"] for d in docs], "results": list(merged.values())}
        doc["table"] = table(doc["results"])
        print(doc["table"])
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=2))
        return
    if not args.data:
        ap.error("--data PREPARED_DIR is required (repeatable)")
    if args.only != "mmrec" and not Path(args.recbole_python).exists():
        ap.error(f"no RecBole environment at {args.recbole_python}: make one with `bash bench/envs/recbole.sh DIR` "
                 "and pass --recbole-python DIR/bin/python (or set MMREC_RECBOLE_PYTHON)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prepare_bench_data import resolve  # a benchmark dataset name is prepared from the shared data

    args.data = [str(resolve(d, log=lambda m: print(m, file=sys.stderr, flush=True))) for d in args.data]
    results = []
    for data in args.data:
        tmp = Path(tempfile.mkdtemp(prefix="recbole-sbs-"))
        name = Path(data).resolve().name
        t = time.perf_counter()
        exp = export_recbole(data, tmp / "atomic", name)
        print(f"{name}: exported {exp['n_events']:,} events of {exp['n_users']:,} users, {exp['n_items']:,} items "
              f"to {exp['path']} ({time.perf_counter() - t:.1f}s); targets repeating an item of their history: "
              f"{exp['targets_repeating_history']}", file=sys.stderr, flush=True)
        assert exp["n_items_seen"] == exp["n_items"], "an item never occurs in a sequence: RecBole would drop it"
        assert exp["loo"], "the prepared split is not leave-one-out on every user; RecBole's LS would differ"
        res = {"dataset": name, "data": str(data), "export": exp, "epochs_cap": args.epochs,
               "patience": args.patience, "timing_only": args.timing_only, "seed": args.seed,
               "mmrec_set": list(args.mmrec_set or [])}
        sides = [args.only] if args.only else ["mmrec", "recbole"]
        for kind in sides:  # one after the other: never two heavy jobs at once
            wd = tmp / kind
            wd.mkdir()
            if kind == "mmrec":
                res[kind] = _run_child(args.mmrec_python, kind, args, ["--data-one", str(Path(data).resolve())], wd)
            else:
                extra = ["--inter", exp["path"]]
                if args.recbole_saved:
                    extra += ["--recbole-saved", str(Path(args.recbole_saved).resolve()),
                              "--recbole-log", str(Path(args.recbole_log).resolve())]
                res[kind] = _run_child(args.recbole_python, kind, args, extra, wd)
            r = res[kind]
            for k in ("n_users", "n_items", "n_valid", "n_test"):
                assert r[k] == exp[k], f"{kind} sees {k}={r[k]}, the prepared data has {exp[k]}"
            print(f"  {kind}: users {r['n_users']:,} items {r['n_items']:,} valid {r['n_valid']:,} "
                  f"test {r['n_test']:,} (same as the prepared data); epochs {r['epoch_seconds']}, "
                  f"eval {r['final_eval_seconds']:.1f}s, peak {r['peak_rss_mib']:.0f} MiB, "
                  f"NDCG@10 {r['test_ndcg10']:.4f}", file=sys.stderr, flush=True)
        results.append(res)
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {tmp}", file=sys.stderr)
    doc = {"settings": {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "inner": INNER, "dropout": DROPOUT,
                        "max_len": MAX_LEN, "batch": BATCH, "lr": LR, "eval_batch": EVAL_BATCH, "seed": args.seed,
                        "threads": args.threads, "device": args.device, "epochs": args.epochs, "patience": args.patience,
                        "timing_only": args.timing_only},
           "results": results}
    if not args.only:
        kind = "timing run: metrics after {} epochs, not converged".format(args.epochs) if args.timing_only \
            else f"early stopping on valid NDCG@10, patience {args.patience}, at most {args.epochs} epochs"
        where = f"{args.threads} thread CPU" if args.device == "cpu" else f"GPU ({args.threads} CPU thread)"
        print(f"SASRec, mmrec vs RecBole {results[0]['recbole']['versions'].get('recbole')}, {where} ({kind}); "
              "s/epoch: mmrec trains one last-50 window per user with a loss at every position, RecBole one "
              "sample per prefix; targets/s is the like-for-like throughput\n")
        doc["table"] = table(results)
        print(doc["table"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
