"""The training loop shared by every method: Accelerate for devices, early stopping on a
validation metric, the test part evaluated once at the best checkpoint, resumable.

Run folder::

    config.json         the resolved configuration (every default filled in)
    metrics.jsonl       one JSON line per epoch: loss, seconds, validation metrics
    last/               model.safetensors, optimizer.pt (tensors only), state.json: resume point
    best.safetensors    weights of the best validation epoch
    results.json        best epoch, validation and test metrics, the protocol, timings
    negatives_*.npy     sampled-evaluation negatives (mode=sampled only)

Randomness is derived from (seed, epoch, batch number), so a run resumed from ``last/`` takes
the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run-folder lock
    fcntl = None

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmrec.config import from_dict, to_dict
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError, DataError, Preempted, RunFolderBusy
from mmrec.trainers.batching import TrainSamples
from mmrec.trainers.evaluation import EvalConfig, Evaluator
from mmrec.trainers.methods import get_method
from mmrec.trainers.modules.fusion import ATTENTION_KINDS


# Accelerate's tracker names -> the package each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def _flatten(d: dict[str, Any], sep: str, prefix: str = "") -> dict[str, Any]:
    """The leaves of a nested dict, keyed ``a<sep>b``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, sep, f"{prefix}{k}{sep}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _scalars(d: dict[str, Any]) -> dict[str, float]:
    """The numbers of a nested dict, keyed ``a/b`` (what trackers take)."""
    return {k: float(v) for k, v in _flatten(d, "/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    loss: Literal["ce", "bce"] = "ce"
    negatives: int = 1
    # a user's sampled negatives avoid the items of their training part ("train"), or of the whole
    # sequence including the validation and test items ("sequence": S3-Rec's code; a leak)
    negatives_avoid: Literal["train", "sequence"] = "train"
    max_len: int = 50
    windows: Literal["last", "all"] = "last"
    bucket_batches: bool = True
    # how a batch's loss counts: "target" (default): scaled by the batch's targets over the epoch's
    # mean targets per batch, so every target weighs the same, as with mixed batches; "batch": as
    # the method returns it (a mean per batch, each batch weighing the same, so under bucket_batches
    # a target in a batch of short windows weighs up to max_len times one in a batch of long ones;
    # mmrec's behaviour before 2026-11-30: on Beauty SASRec converged lower with it, docs/benchmarks.md)
    loss_weighting: Literal["batch", "target"] = "target"
    patience: int = 10
    valid_metric: str = "ndcg@10"
    # "metric": keep the epoch with the best valid_metric; "any" (S3-Rec's EarlyStopping): a new
    # checkpoint whenever any validation metric beats the last kept epoch's value of it
    early_stop: Literal["metric", "any"] = "metric"
    eval_every: int = 1
    grad_clip: float | None = None
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # torch.compile the model (inductor): worth it on a GPU for long runs; the first steps pay the
    # compilation (tens of seconds), and each new batch shape may recompile once
    compile: bool = False
    threads: int | None = None
    log_every_s: float = 30.0
    # experiment trackers through Accelerate (off by default: no network calls from batch nodes);
    # metrics.jsonl is always written
    trackers: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_len < 1:
            raise ConfigError("train.epochs, train.batch_size and train.max_len must be positive")
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        for t in self.trackers:
            if t not in TRACKERS:
                raise ConfigError(f"train.trackers: unknown tracker {t!r}; use any of {', '.join(TRACKERS)}")
            if importlib.util.find_spec(TRACKERS[t]) is None:
                raise ConfigError(f"train.trackers: {t} needs the {TRACKERS[t]} package (pip install {TRACKERS[t]}), "
                                  "or leave it out")
        name, _, k = self.valid_metric.partition("@")
        if name not in ("hr", "ndcg", "mrr") or not k.isdigit():
            raise ConfigError(f"train.valid_metric {self.valid_metric!r} must look like ndcg@10, hr@20 or mrr@10")


@dataclass
class ColdConfig:
    """The cold-start protocol: ``fraction`` of the items (drawn with ``seed``) are held out of
    training and appear only as validation/test targets; metrics are reported for cold and warm
    test cases separately. ``fraction=0`` (the default) turns it off; ``--cold-start`` sets 0.1."""

    fraction: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError(f"cold.fraction must be in [0, 1), got {self.fraction}")


# settings whose default differs from what runs did before the setting existed: a run folder saved
# without them is resumed with the old behaviour (the value here, given the saved configuration),
# not the new default
_BEHAVIOUR_BEFORE: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
    ("train", "loss_weighting"): lambda old: "batch",
    # the attention fusions' output LayerNorm started at gain 1; the other fusions have no such gain,
    # nor has a run of one modality (nothing to fuse)
    ("model", "fusion_gain"): lambda old: (1.0 if old.get("model", {}).get("fusion") in ATTENTION_KINDS
                                           and len(old.get("features") or {}) > 1 else None),
}


@dataclass
class RunConfig:
    dataset: str
    method: str = "sasrec"
    out: str = "runs"
    name: str | None = None
    features: dict[str, str] = field(default_factory=dict)  # slot (text|image|price) -> store entry
    store: str = "features"
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cold: ColdConfig = field(default_factory=ColdConfig)

    def validate(self) -> None:
        k = int(self.train.valid_metric.split("@")[1])
        if k not in self.eval.ks:
            raise ConfigError(f"train.valid_metric uses K={k}, which is not in eval.ks={self.eval.ks}")


# settings that change how a run is computed, not what it computes: a run folder is resumed or
# reused whatever they were
_RESOURCE_SETTINGS = frozenset({"out", "name", "train.device", "train.threads", "train.log_every_s",
                                "train.trackers", "eval.batch_size", "eval.item_chunk"})


def resolved_config(run: RunConfig, model_cfg: Any = None) -> dict[str, Any]:
    """What a run folder's ``config.json`` holds for ``run``: every default filled in, the model
    section through the method's config class (``model_cfg`` when already built)."""
    out = to_dict(run)
    out["model"] = to_dict(model_cfg if model_cfg is not None
                           else from_dict(get_method(run.method).Config, run.model, prefix="model."))
    return out


def _with_new_defaults(old: dict[str, Any], model_cls: type) -> dict[str, Any]:
    """A run folder's saved config read by this version: settings added since it was written get
    the behaviour the run had, their default or, where the default changed the behaviour, the
    old one (``_BEHAVIOUR_BEFORE``), so such a run can still be resumed as it was."""
    try:
        upgraded = to_dict(from_dict(RunConfig, old))
        upgraded["model"] = to_dict(from_dict(model_cls, old.get("model", {})))
    except ConfigError:
        return old
    for (section, key), before in _BEHAVIOUR_BEFORE.items():
        if key not in old.get(section, {}) and key in upgraded[section]:  # (the method has the setting)
            upgraded[section][key] = before(old)
    return upgraded


def check_saved_config(cfg_path: Path, resolved: dict[str, Any], model_cls: type, action: str) -> None:
    """Refuse to ``action`` (resume, reuse) the run folder of ``cfg_path`` when it was trained with
    other settings than ``resolved`` (resource settings aside: threads, device, evaluation batch)."""
    old = json.loads(cfg_path.read_text())
    if old == resolved:
        return
    a, b = _flatten(_with_new_defaults(old, model_cls), "."), _flatten(resolved, ".")
    diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in _RESOURCE_SETTINGS]
    if diff:
        raise ConfigError(f"{cfg_path} differs from this run's configuration ({'; '.join(diff[:5])}); "
                          f"to {action} it use the same settings (--set KEY=VALUE), or give another run folder")


def finished_results(run: RunConfig, run_dir: str | Path) -> dict[str, Any] | None:
    """The ``results.json`` of ``run_dir`` if a run with ``run``'s settings finished there; None
    if nothing finished there; ``ConfigError`` naming the differences if the run that finished there
    had other settings (so a rerun with changed settings never reports the old run)."""
    run_dir = Path(run_dir)
    res_path = run_dir / "results.json"
    if not res_path.is_file():
        return None
    if (run_dir / "config.json").is_file():
        check_saved_config(run_dir / "config.json", resolved_config(run), get_method(run.method).Config, "reuse")
    return json.loads(res_path.read_text())


def train_or_reuse(run: RunConfig, run_dir: str | Path, label: str, *, only_finished: bool = False,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
                   ) -> dict[str, Any] | None:
    """The results of ``run`` in ``run_dir`` for the ``bench/`` scripts: reused if it finished there
    (``finished_results``: refused if with other settings), else trained (an interrupted run
    resumes) unless ``only_finished``. None when it has not finished here: ``only_finished``, or
    another process is training the folder (``RunFolderBusy``: left to it, so the same command
    started twice shares its runs). ``log`` gets ``label`` with the seconds or the skip."""
    res = finished_results(run, run_dir)
    if res is not None or only_finished:
        return res
    holder = run_folder_holder(run_dir)
    if holder is not None:  # skip before loading data and model; the lock in fit covers a race
        log(f"{label}: left to the other process ({holder})")
        return None
    t = time.perf_counter()
    try:
        res = Trainer(run, run_dir, log=lambda m: None).fit(resume=True)
    except RunFolderBusy as busy:
        log(f"{label}: left to the other process ({busy.holder})")
        return None
    log(f"{label}: {time.perf_counter() - t:.0f}s")
    return res


def _lock_or_holder(f) -> str | None:
    """Take the exclusive lock of the open lock file ``f`` without waiting: None when taken, else
    the holder's line in the file (``"pid N on host"``)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        return f.read().strip() or "pid unknown"
    return None


def run_folder_holder(run_dir: str | Path) -> str | None:
    """Who holds ``run_dir/train.lock`` now (``"pid N on host"``), or None when nobody trains the
    folder (or locks are unavailable). A probe: the lock is let go at once."""
    path = Path(run_dir) / "train.lock"
    if fcntl is None or not path.exists():
        return None
    with open(path, "a+") as f:
        holder = _lock_or_holder(f)
        if holder is None:
            fcntl.flock(f, fcntl.LOCK_UN)
    return holder


def cold_items(n_items: int, cfg: ColdConfig) -> np.ndarray:
    """Bool mask ``[n_items + 1]`` of the held-out items: ``round(fraction * n_items)`` drawn uniformly."""
    mask = np.zeros(n_items + 1, dtype=bool)
    k = int(round(cfg.fraction * n_items))
    if k:
        mask[1 + np.random.default_rng([cfg.seed, 7177]).choice(n_items, size=k, replace=False)] = True
    return mask


def run_data(run: RunConfig) -> tuple[PreparedDataset, np.ndarray | None]:
    """The dataset a run trains and evaluates on, and its held-out (cold) items: with the
    cold-start protocol, a view without the held-out items' training events."""
    data = PreparedDataset(run.dataset)
    if run.cold.fraction <= 0:
        return data, None
    cold = cold_items(data.n_items, run.cold)
    return data.without_training_events_of(cold), cold


def improved(valid: dict[str, Any], state: dict[str, Any], metric: str, rule: str) -> bool:
    """Whether this validation beats the kept checkpoint. ``metric``: ``valid[metric]`` above the
    best so far. ``any`` (S3-Rec): any metric of ``valid`` above its value at the last kept epoch
    (``state["kept_scores"]``, updated here when it returns True), so a later epoch can be kept with
    a lower ``metric`` than an earlier one."""
    if rule == "metric":
        return valid[metric] > state["best_value"]
    scores = {k: float(v) for k, v in valid.items() if "@" in k}
    kept = state.get("kept_scores")
    if kept is None or any(scores[k] > kept.get(k, float("-inf")) for k in scores):
        state["kept_scores"] = scores
        return True
    return False


def build_model(run: RunConfig, data: PreparedDataset):
    from mmrec.features.aligned import check_slots, load_features

    cls = get_method(run.method)
    mcfg = from_dict(cls.Config, run.model, prefix="model.")
    if run.train.loss not in cls.losses:
        raise ConfigError(f"method {run.method} does not support train.loss={run.train.loss}; use one of {cls.losses}")
    check_slots(run.method, run.features, cls.modalities, cls.required_modalities, run.store)
    extra = cls.dataset_kwargs(mcfg, data)  # e.g. SyNCRec's item domains
    if not cls.modalities:
        return cls(mcfg, data.n_items, run.train.max_len, **extra), mcfg
    features = load_features(run.features, data, run.store)
    return cls(mcfg, data.n_items, run.train.max_len, features=features, **extra), mcfg


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _load_tensors(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``): a file
    that holds anything else, as a pickled payload from an untrusted source would, is refused
    without running it."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - pickle and torch raise several types
        raise DataError(f"refused to load: not a plain tensor file ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                        path=str(path),
                        hint="mmrec never unpickles code; if this run folder came from elsewhere, delete its "
                             "last/ folder and train again") from None


class Trainer:
    def __init__(self, run: RunConfig, run_dir: str | Path, *, log: Callable[[str], None] = print):
        self.run = run
        self.run_dir = Path(run_dir)
        self.log = log
        self.data, self.cold = run_data(run)
        tc = run.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        from accelerate import Accelerator

        cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
        if tc.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        self.accel = Accelerator(cpu=cpu, mixed_precision=tc.mixed_precision if not cpu else "no",
                                 log_with=list(tc.trackers) or None,
                                 project_dir=str(self.run_dir / "trackers") if tc.trackers else None)
        if not self.accel.is_main_process:  # one process speaks
            self.log = lambda msg: None
        torch.manual_seed(tc.seed)
        model, self.model_cfg = build_model(run, self.data)
        if self.cold is not None:
            model.exclude_from_training(torch.from_numpy(self.cold))
        model.item_popularity = torch.from_numpy(np.asarray(self.data.item_popularity, dtype=np.int64))
        opt = torch.optim.Adam(model.param_groups(tc.lr), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        self.model, self.opt = self.accel.prepare(model, opt)
        if tc.compile:  # here rather than Accelerate's dynamo_backend, which its process-wide state keeps
            self.model = torch.compile(self.model)  # from the first Trainer of a process
        self.samples = TrainSamples(self.data, tc.max_len, tc.windows, exclude=self.cold,
                                    negatives_avoid=tc.negatives_avoid)
        self.evaluator = Evaluator(self.data, run.eval, tc.max_len, self.accel.device, self.run_dir)

    @property
    def raw_model(self) -> torch.nn.Module:
        return self.accel.unwrap_model(self.model, keep_torch_compile=False)

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_last(self, state: dict[str, Any], with_rng: bool = False) -> None:
        """Write the resume point ``last/`` (model, optimizer, state; with ``with_rng`` each process's
        torch random state) as a whole: it is written to ``last.new/`` and swapped in by renames, so
        a process killed at any moment leaves a complete ``last/`` (or ``last.old/``) behind."""
        if with_rng:
            rank = self.accel.process_index
            tmp = self.run_dir / f".rng-{rank}.pt.tmp"
            torch.save(torch.get_rng_state(), tmp)
            os.replace(tmp, self.run_dir / f".rng-{rank}.pt")
            self.accel.wait_for_everyone()
        if not self.accel.is_main_process:
            return
        new, cur, old = self.run_dir / "last.new", self.run_dir / "last", self.run_dir / "last.old"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        _save_weights(self.raw_model, new / "model.safetensors")
        torch.save(self.opt.state_dict(), new / "optimizer.pt")
        if with_rng:
            for r in range(self.accel.num_processes):
                os.replace(self.run_dir / f".rng-{r}.pt", new / f"rng-{r}.pt")
        _atomic_json(new / "state.json", state)
        if cur.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(cur, old)
        os.replace(new, cur)
        shutil.rmtree(old, ignore_errors=True)

    def _last_dir(self) -> Path | None:
        """The complete resume point: ``last/``, or ``last.old/`` when a kill fell between the swap's
        two renames; None when there is none."""
        for d in (self.run_dir / "last", self.run_dir / "last.old"):
            if (d / "state.json").exists():
                return d
        return None

    def _load_last(self) -> dict[str, Any] | None:
        d = self._last_dir()
        if d is None:
            return None
        try:
            weights = load_file(str(d / "model.safetensors"), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DataError(f"cannot read the checkpoint's weights: {e}", path=str(d / "model.safetensors"),
                            hint="it is damaged: delete the run's last/ folder and rerun without --resume") from None
        self.raw_model.load_state_dict(weights)
        self.opt.load_state_dict(_load_tensors(d / "optimizer.pt"))
        return json.loads((d / "state.json").read_text())

    # -- training ---------------------------------------------------------------------------------
    def _epoch(self, epoch: int, partial: dict[str, Any] | None = None) -> tuple[float, int, dict[str, float]]:
        """One epoch; ``partial`` continues an epoch a stop request interrupted (its next batch, sums
        and random state), so the result is that of an uninterrupted epoch."""
        tc = self.run.train
        self.raw_model.on_epoch_start(epoch, self.opt)
        batches = self.samples.epoch_batches(tc.batch_size, np.random.default_rng([tc.seed, epoch]),
                                             tc.bucket_batches)
        n_batches = len(batches)
        rank, world = self.accel.process_index, self.accel.num_processes
        # loss_weighting=target: a batch's loss (a mean over its targets) times its targets over the
        # mean per batch, i.e. the sum over its targets / mean targets per batch
        mean_targets = float(self.samples.lengths().sum()) / max(n_batches, 1)
        self.model.train()
        if partial is None:
            torch.manual_seed(tc.seed * 100003 + epoch)
            first, total, count, parts = rank, 0.0, 0, {}
        else:
            torch.set_rng_state(_load_tensors(self._last_dir() / f"rng-{rank}.pt"))
            first, total, count = partial["next_batch"], partial["total"], partial["count"]
            parts = dict(partial["parts"])
        dev = self.accel.device
        n_neg = tc.negatives if tc.loss == "bce" else 0
        last_log = time.monotonic()
        for b in range(first, n_batches - (n_batches % world if world > 1 else 0), world):
            idx = batches[b]
            rng = np.random.default_rng([tc.seed, epoch, b])
            batch = self.samples.batch(idx, n_neg, rng)
            batch = {k: torch.as_tensor(v, device=dev) for k, v in batch.items()}
            with self.accel.autocast():
                loss = self.model(batch, tc)  # forward() is the loss; through DDP when distributed
            if tc.loss_weighting == "target":
                loss = loss * ((batch["targets"] > 0).sum() / mean_targets)  # on the device: no sync
            self.opt.zero_grad(set_to_none=True)
            self.accel.backward(loss)
            if tc.grad_clip:
                self.accel.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.opt.step()
            total += float(loss.detach())
            count += 1
            for k, v in self.raw_model.loss_parts.items():
                parts[k] = parts.get(k, 0.0) + float(v)
            if self._stop_agreed():
                nxt = b + world
                if nxt < n_batches - (n_batches % world if world > 1 else 0):  # else: the epoch is done anyway
                    self._partial = {"epoch": epoch, "next_batch": nxt, "total": total, "count": count,
                                     "parts": parts}
                    return total / max(count, 1), count, {}
            if time.monotonic() - last_log > tc.log_every_s:
                self.log(f"  epoch {epoch} batch {b + 1}/{n_batches} loss {total / count:.4f}")
                last_log = time.monotonic()
        return total / max(count, 1), count, {k: v / max(count, 1) for k, v in parts.items()}

    # -- stop requests (SIGTERM / SIGUSR1 from a batch scheduler) ---------------------------------
    def request_stop(self, reason: str = "a stop request") -> None:
        """Ask training to checkpoint and stop after the current step (what the signal handlers do)."""
        self._stop_reason = reason

    def _stop_agreed(self) -> bool:
        """Whether to stop now; with several processes, any one's request stops all at the same step."""
        asked = getattr(self, "_stop_reason", None) is not None
        if self.accel.num_processes == 1:
            return asked
        flag = torch.tensor([1.0 if asked else 0.0], device=self.accel.device)
        if self.accel.reduce(flag, "sum").item() > 0:
            self._stop_reason = getattr(self, "_stop_reason", None) or "a stop request on another process"
            return True
        return False

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGTERM and SIGUSR1 request a stop while ``fit`` runs (main thread only); the previous
        handlers come back afterwards."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                previous[sig] = signal.signal(sig, lambda num, frame: self.request_stop(signal.Signals(num).name))
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue, ``resume``) to the end and evaluate; returns the results. SIGTERM or
        SIGUSR1 (or ``request_stop``) makes it write a checkpoint after the current step and raise
        ``Preempted``; ``fit(resume=True)`` then continues to the same results as an uninterrupted run."""
        self._stop_reason = None
        with self._run_folder_lock(), self._stop_on_signals():
            return self._fit(resume)

    @contextlib.contextmanager
    def _run_folder_lock(self):
        """Hold ``train.lock`` in the run folder while training (the main process; an OS lock, so it
        is released when the process ends, however it ends): a second training of the same folder,
        e.g. the same bench command started twice to share its runs, gets ``RunFolderBusy``
        instead of overwriting the first one's checkpoints. No lock where ``fcntl`` is missing
        (Windows), nor across machines on file systems without ``flock`` (some NFS setups)."""
        if fcntl is None or not self.accel.is_main_process:
            yield
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "train.lock"
        with open(path, "a+") as f:
            holder = _lock_or_holder(f)
            if holder is not None:
                raise RunFolderBusy(str(self.run_dir), holder)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _fit(self, resume: bool) -> dict[str, Any]:
        tc, run = self.run.train, self.run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "config.json"
        resolved = resolved_config(run, self.model_cfg)
        if resume and cfg_path.exists():
            check_saved_config(cfg_path, resolved, type(self.model_cfg), "resume")
        if self.accel.is_main_process:
            _atomic_json(cfg_path, resolved)
        if tc.trackers:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                    for k, v in _flatten(resolved, ".").items()}
            self.accel.init_trackers(self.run_dir.name, config=flat)
        state = self._load_last() if resume else None
        if resume and state is None:
            self.log(f"no checkpoint in {self.run_dir / 'last'}; starting from scratch")
        if state is None:
            state = {"epoch": 0, "best_epoch": 0, "best_value": -1.0, "bad_epochs": 0,
                     "epoch_seconds": [], "done": False}
            if self.accel.is_main_process:
                (self.run_dir / "metrics.jsonl").write_text("")
        else:
            if self.accel.is_main_process:  # a kill after an epoch's line but before its checkpoint
                mpath = self.run_dir / "metrics.jsonl"
                lines = mpath.read_text().splitlines() if mpath.exists() else []
                kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] <= state["epoch"]]
                if len(kept) != len(lines):
                    mpath.write_text("".join(ln + "\n" for ln in kept))
            inside = (f", inside epoch {state['partial']['epoch']} at batch {state['partial']['next_batch']}"
                      if state.get("partial") else "")
            self.log(f"resuming after epoch {state['epoch']}{inside} (best {tc.valid_metric} "
                     f"{state['best_value']:.4f} at epoch {state['best_epoch']})")
        metric = tc.valid_metric
        while not state["done"] and state["epoch"] < tc.epochs:
            epoch = state["epoch"] + 1
            partial = state.pop("partial", None)
            self._partial = None
            t0 = time.perf_counter()
            loss, steps, parts = self._epoch(epoch, partial)
            train_s = time.perf_counter() - t0 + (partial["train_seconds"] if partial else 0.0)
            if self._partial is not None:  # stopped inside the epoch: checkpoint where it stands
                state["partial"] = {**self._partial, "train_seconds": train_s}
                self._save_last(state, with_rng=True)
                raise Preempted(self._stop_reason, str(self.run_dir), epoch, self._partial["next_batch"])
            row: dict[str, Any] = {"epoch": epoch, "loss": loss, "steps": steps, "train_seconds": round(train_s, 3)}
            if parts:
                row["loss_parts"] = parts
            row.update(self.raw_model.epoch_report())
            state["epoch_seconds"].append(train_s)
            if epoch % tc.eval_every == 0 or epoch == tc.epochs:
                t1 = time.perf_counter()
                valid = self.evaluator.evaluate(self.raw_model, "valid")
                row["eval_seconds"] = round(time.perf_counter() - t1, 3)
                row["valid"] = {k: v for k, v in valid.items()}
                value = valid[metric]
                if improved(valid, state, metric, tc.early_stop):
                    state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
                    if self.accel.is_main_process:
                        _save_weights(self.raw_model, self.run_dir / "best.safetensors")
                else:
                    state["bad_epochs"] += 1
                    if state["bad_epochs"] >= tc.patience:
                        state["done"] = True
                self.log(f"epoch {epoch:3d}  loss {loss:.4f}  {train_s:6.1f}s  valid {metric} {value:.4f}"
                         f"  (best {state['best_value']:.4f} @ {state['best_epoch']})")
            else:
                self.log(f"epoch {epoch:3d}  loss {loss:.4f}  {train_s:6.1f}s")
            state["epoch"] = epoch
            if self.accel.is_main_process:
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            if tc.trackers:
                self.accel.log(_scalars({k: v for k, v in row.items() if k != "epoch"}), step=epoch)
            self._save_last(state)
            if self._stop_agreed() and not state["done"] and state["epoch"] < tc.epochs:
                raise Preempted(self._stop_reason, str(self.run_dir), epoch, None)
        return self.finish(state)

    def _cold_breakdown(self, part: str, ranks: np.ndarray) -> dict[str, Any]:
        """Metrics over the cold (held-out target) and warm cases of ``part``, from the ranks of the
        whole part. Methods that score items by id only cannot rank an item they never trained on:
        their cold figures are left out (with a note)."""
        from mmrec.trainers.evaluation import metrics_from_ranks

        cases = self.data.eval_cases(part)
        is_cold = self.cold[np.asarray(self.data.items)[cases.pos]]
        ids_only = not self.raw_model.can_rank_unseen()
        out: dict[str, Any] = {}
        for name, sel in (("cold", is_cold), ("warm", ~is_cold)):
            n = int(sel.sum())
            if name == "cold" and ids_only:
                out[f"{part}_{name}"] = {"n_cases": n, "note": "method scores items by id only"}
            else:
                out[f"{part}_{name}"] = {"n_cases": n, **(metrics_from_ranks(ranks[sel], self.run.eval.ks) if n else {})}
        return out

    def _domain_breakdown(self, part: str, ranks: np.ndarray) -> dict[str, Any]:
        """Metrics over the cases of ``part`` whose target is in each domain, for methods that declare
        item domains (``evaluation_domains()``, e.g. SyNCRec); empty otherwise."""
        from mmrec.trainers.evaluation import metrics_by_group

        declared = self.raw_model.evaluation_domains()
        if declared is None:
            return {}
        codes, names = declared
        target = np.asarray(self.data.items)[self.data.eval_cases(part).pos]
        return {f"{part}_domains": metrics_by_group(ranks, np.asarray(codes)[target], names, self.run.eval.ks)}

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        best = self.run_dir / "best.safetensors"
        if best.exists():
            self.raw_model.load_state_dict(load_file(str(best), device="cpu"))
        t0 = time.perf_counter()
        valid = self.evaluator.evaluate(self.raw_model, "valid", return_ranks=True)
        test = self.evaluator.evaluate(self.raw_model, "test", return_ranks=True)
        breakdown: dict[str, Any] = {}
        if self.cold is not None:
            breakdown = {**self._cold_breakdown("valid", valid["ranks"]), **self._cold_breakdown("test", test["ranks"])}
            if self.accel.is_main_process:
                ids = self.data.raw_item_ids[np.flatnonzero(self.cold)]
                (self.run_dir / "cold_items.txt").write_text("".join(f"{i}\n" for i in ids))
        for part, res in (("valid", valid), ("test", test)):  # per domain, for methods that declare them
            breakdown.update(self._domain_breakdown(part, res["ranks"]))
        if self.accel.is_main_process:  # per-case ranks of the test part: paired tests between runs (mmrec report)
            np.save(self.run_dir / "test_ranks.npy", np.asarray(test["ranks"], dtype=np.int32))
        valid.pop("ranks")
        test.pop("ranks")
        variants: dict[str, Any] = {}
        for v in self.raw_model.eval_variants():  # e.g. each ODMT sub-network alone
            with self.raw_model.eval_variant(v):
                res = self.evaluator.evaluate(self.raw_model, "test", return_ranks=True)
                ranks = res.pop("ranks")
                variants[v] = res
                if self.cold is not None:
                    variants[v].update({k.removeprefix("test_"): x
                                        for k, x in self._cold_breakdown("test", ranks).items()})
        eval_s = time.perf_counter() - t0
        secs = state["epoch_seconds"]
        results = {
            "method": self.run.method,
            "dataset": self.data.name,
            "dataset_path": str(self.data.root),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "valid": valid,
            "test": test,
            **breakdown,
            **({"test_variants": variants} if variants else {}),
            "features": {slot: f.source for slot, f in getattr(self.raw_model, "features", {}).items()},
            "protocol": {
                "split": self.data.meta["split"],
                "filters": self.data.meta["filters"],
                "loss": self.run.train.loss,
                "train_negatives": self.run.train.negatives if self.run.train.loss == "bce" else None,
                "train_negatives_avoid": self.run.train.negatives_avoid if self.run.train.loss == "bce" else None,
                "train_windows": self.run.train.windows,
                "evaluation": self.evaluator.protocol(),
                "valid_metric": self.run.train.valid_metric,
                "cold_start": ({"fraction": self.run.cold.fraction, "seed": self.run.cold.seed,
                                "held_out_items": int(self.cold.sum()), "file": "cold_items.txt"}
                               if self.cold is not None else None),
            },
            "timing": {
                "seconds_per_epoch_mean": float(np.mean(secs)) if secs else None,
                "seconds_per_epoch_median": float(np.median(secs)) if secs else None,
                "final_eval_seconds": round(eval_s, 3),
                "device": str(self.accel.device),
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
            },
            "n_parameters": sum(p.numel() for p in self.raw_model.parameters()),
        }
        if self.accel.is_main_process:
            _atomic_json(self.run_dir / "results.json", results)
        if self.run.train.trackers:
            self.accel.log(_scalars({"final": {"valid": valid, "test": test}}), step=state["epoch"])
            self.accel.end_training()
        return results
