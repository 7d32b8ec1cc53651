"""The training loop shared by every method: Accelerate for devices, early stopping on a
validation metric, the test part evaluated once at the best checkpoint, resumable. What a run
leaves on disk is owned by ``mmrec.runs.folder`` (the loop asks it to save and load) and its
settings by ``mmrec.runs.config``.

Randomness is derived from (seed, epoch, batch number), so a run resumed from ``last/`` takes
the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmrec.config import from_dict
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError, OutOfMemory, Preempted, is_out_of_memory
from mmrec.progress import Progress
from mmrec.resources import available_cores, end_process_group_at_exit
from mmrec.runs.config import (
    ColdConfig,
    RunConfig,
    check_saved_config,
    flatten,
    lr_factor,
    preset_prepare_differences,
    resolved_config,
    reusable,
    scalars,
)
from mmrec.runs.folder import RunFolder
from mmrec.trainers.batching import SharedNegatives, TrainSamples
from mmrec.trainers.evaluation import Evaluator
from mmrec.trainers.methods import get_method


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
    a lower ``metric`` than an earlier one. ``any_best`` (KDSR's code): any metric above its own best
    over every epoch so far (``state["metric_bests"]``, each updated here on its own)."""
    if rule == "metric":
        return valid[metric] > state["best_value"]
    scores = {k: float(v) for k, v in valid.items() if "@" in k}
    if rule == "any_best":
        bests = state.setdefault("metric_bests", {})
        better = [k for k in scores if scores[k] > bests.get(k, float("-inf"))]
        for k in better:
            bests[k] = scores[k]
        return bool(better)
    kept = state.get("kept_scores")
    if kept is None or any(scores[k] > kept.get(k, float("-inf")) for k in scores):
        state["kept_scores"] = scores
        return True
    return False


def build_model(run: RunConfig, data: PreparedDataset):
    from mmrec.features.aligned import check_modalities, load_features

    cls = get_method(run.method)
    mcfg = from_dict(cls.Config, run.model, prefix="model.")
    if run.train.loss not in cls.losses:
        raise ConfigError(f"method {run.method} does not support train.loss={run.train.loss}; use one of {cls.losses}")
    check_modalities(run.method, run.features, cls.modalities, cls.required_modalities, run.store)
    extra = cls.dataset_kwargs(mcfg, data, run.store)  # e.g. SyNCRec's item domains
    if not cls.modalities:
        return cls(mcfg, data.n_items, run.train.max_len, **extra), mcfg
    features = load_features(run.features, data, run.store)
    return cls(mcfg, data.n_items, run.train.max_len, features=features, **extra), mcfg


class Trainer:
    def __init__(self, run: RunConfig, run_dir: str | Path, *, log: Callable[[str], None] = print,
                 progress_bar: bool | None = None):
        """``log`` gets the epoch lines (and, without a bar, a progress line every
        ``train.log_every_s``); ``progress_bar``: a tqdm bar inside each epoch (None: when stderr is
        a terminal; False: never, as ``mmrec train --quiet`` and the experiment runner ask)."""
        self.run = run
        self.progress_bar = progress_bar
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.log = log
        self.data, self.cold = run_data(run)
        tc = run.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        else:  # the cores this process was given (affinity, cgroup quota, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS)
            cores, source = available_cores()
            if cores < torch.get_num_threads():
                torch.set_num_threads(cores)
                self.log(f"threads: {cores} ({source}); set train.threads to choose")
        from accelerate import Accelerator

        cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
        if tc.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        self.accel = Accelerator(cpu=cpu, mixed_precision=tc.mixed_precision if not cpu else "no",
                                 log_with=list(tc.trackers) or None,
                                 project_dir=str(self.run_dir / "trackers") if tc.trackers else None)
        if self.accel.num_processes > 1:
            end_process_group_at_exit()
        if not self.accel.is_main_process:  # one process speaks
            self.log = lambda msg: None
        torch.manual_seed(tc.seed)
        model, self.model_cfg = build_model(run, self.data)
        if self.cold is not None:
            model.exclude_from_training(torch.from_numpy(self.cold))
        model.item_popularity = torch.from_numpy(np.asarray(self.data.item_popularity, dtype=np.int64))
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(model.param_groups(tc.lr), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        self._group_lrs = [g["lr"] for g in opt.param_groups]  # each group's rate before any schedule
        self.model, self.opt = self.accel.prepare(model, opt)
        if tc.compile:  # here rather than Accelerate's dynamo_backend, which its process-wide state keeps
            self.model = torch.compile(self.model)  # from the first Trainer of a process
        self.samples = TrainSamples(self.data, tc.max_len, tc.windows, exclude=self.cold,
                                    negatives_avoid=tc.negatives_avoid)
        # train.loss=sampled_ce: K negatives per step for the whole batch, drawn from each batch's own
        # generator (so a resumed run draws the same), popularity from the training part only
        self.shared_negatives = self._log_q = None
        if tc.loss == "sampled_ce":
            self.shared_negatives = SharedNegatives(self.data.n_items, tc.sampled_negatives, tc.sampled_distribution,
                                                    self.data.item_popularity, tc.sampled_power, exclude=self.cold)
            self._log_q = torch.as_tensor(self.shared_negatives.log_q, device=self.accel.device)
        if tc.loss == "gbce" and not tc.negatives < self.data.n_items:
            raise ConfigError(f"train.negatives={tc.negatives} must be below the {self.data.n_items:,} items with "
                              "train.loss=gbce (its sampling rate k / (n_items - 1) is at most 1)")
        self.evaluator = Evaluator(self.data, run.eval, tc.max_len, self.accel.device, self.run_dir,
                                   rank=self.accel.process_index, world=self.accel.num_processes,
                                   gather=self.accel.gather)
        self.prepare_differences = preset_prepare_differences(run.method, run.preset, self.data.meta.get("config", {}))
        if self.prepare_differences:
            self.log(f"note: the dataset was not prepared as preset {run.preset} says ("
                     + "; ".join(f"{k}={d['preset']!r} there, {d['dataset']!r} here" for k, d in self.prepare_differences.items())
                     + "); results.json records it")

    @property
    def raw_model(self) -> torch.nn.Module:
        return self.accel.unwrap_model(self.model, keep_torch_compile=False)

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_last(self, state: dict[str, Any], with_rng: bool = False) -> None:
        """Write the resume point (with ``with_rng`` each process's torch random state too)."""
        if with_rng:
            self.folder.stash_rng(self.accel.process_index)
            self.accel.wait_for_everyone()
        if self.accel.is_main_process:
            self.folder.save_last(self.raw_model, self.opt.state_dict(), state,
                                  n_rng=self.accel.num_processes if with_rng else 0)

    def _load_last(self) -> dict[str, Any] | None:
        last = self.folder.load_last()
        if last is None:
            return None
        weights, opt_state, state = last
        self.raw_model.load_state_dict(weights)
        self.opt.load_state_dict(opt_state)
        return state

    # -- training ---------------------------------------------------------------------------------
    def _epoch(self, epoch: int, partial: dict[str, Any] | None = None) -> tuple[float, int, dict[str, float]]:
        """One epoch; ``partial`` continues an epoch a stop request interrupted (its next batch, sums
        and random state), so the result is that of an uninterrupted epoch."""
        tc = self.run.train
        for g, lr in zip(self.opt.param_groups, self._group_lrs):
            g["lr"] = lr
        self.raw_model.on_epoch_start(epoch, self.opt)  # may set a group's rate for this epoch (KDSR)
        epoch_lrs = [g["lr"] for g in self.opt.param_groups]
        batches = self.samples.epoch_batches(tc.batch_size, np.random.default_rng([tc.seed, epoch]),
                                             tc.bucket_batches)
        n_batches = len(batches)
        rank, world = self.accel.process_index, self.accel.num_processes
        # loss_weighting=target: a batch's loss (a mean over its targets) times its targets over the
        # mean per batch, i.e. the sum over its targets / mean targets per batch
        mean_targets = float(self.samples.targets_per_sample().sum()) / max(n_batches, 1)
        steps_per_epoch = (n_batches - (n_batches % world if world > 1 else 0)) // world
        scheduled = tc.lr_schedule != "constant" or tc.warmup_steps > 0
        self.model.train()
        if partial is None:
            torch.manual_seed(tc.seed * 100003 + epoch)
            first, total, count, parts = rank, 0.0, 0, {}
        else:
            torch.set_rng_state(self.folder.rng_state(rank))
            # next_batch is the first batch of the next step (the main process's); the sums saved at the
            # stop are over every process, so the main process alone carries them on
            first = partial["next_batch"] + rank
            total, count, parts = ((partial["total"], partial["count"], dict(partial["parts"])) if rank == 0
                                   else (0.0, 0, {}))
        dev = self.accel.device
        n_neg = tc.negatives if tc.loss in ("bce", "gbce") else 0
        last = n_batches - (n_batches % world if world > 1 else 0)
        progress = Progress(len(range(first, last, world)), unit="steps", desc=f"epoch {epoch}", log=self.log,
                            every_s=tc.log_every_s, bar=self.progress_bar and self.accel.is_main_process,
                            quiet=not self.accel.is_main_process)
        for b in range(first, last, world):
            idx = batches[b]
            rng = np.random.default_rng([tc.seed, epoch, b])
            batch = self.samples.batch(idx, n_neg, rng)
            if self.shared_negatives is not None:  # after the batch's own draws, from the same generator
                draws = [self.shared_negatives.draw(rng) for _ in range(tc.sampled_groups)]
                batch["sampled_items"] = draws[0] if tc.sampled_groups == 1 else np.stack(draws)
            batch = {k: torch.as_tensor(v, device=dev) for k, v in batch.items()}
            if self._log_q is not None:
                batch["sampled_log_q"] = self._log_q
            try:
                with self.accel.autocast():
                    loss = self.model(batch, tc)  # forward() is the loss; through DDP when distributed
                if tc.loss_weighting == "target":
                    loss = loss * ((batch["targets"] > 0).sum() / mean_targets)  # on the device: no sync
                self.opt.zero_grad(set_to_none=True)
                self.accel.backward(loss)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                raise self._out_of_memory(e, epoch, b, batch) from None
            if tc.grad_clip:
                self.accel.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            if scheduled:
                f = lr_factor(tc, (epoch - 1) * steps_per_epoch + b // world, steps_per_epoch)
                for g, lr in zip(self.opt.param_groups, epoch_lrs):
                    g["lr"] = lr * f
            self.opt.step()
            total += float(loss.detach())
            count += 1
            for k, v in self.raw_model.loss_parts.items():
                parts[k] = parts.get(k, 0.0) + float(v)
            if self._stop_agreed():
                nxt = b + world
                if nxt < last:  # else: the epoch is done anyway (the same on every process: last % world == 0)
                    progress.close()
                    total, count, parts = self._sum_over_processes(total, count, parts)
                    self._partial = {"epoch": epoch, "next_batch": nxt - rank, "total": total, "count": count,
                                     "parts": parts}
                    return total / max(count, 1), count // world, {}
            progress.update(1, loss=total / count)
        progress.close()
        total, count, parts = self._sum_over_processes(total, count, parts)  # the loss over every batch
        return total / max(count, 1), count // world, {k: v / max(count, 1) for k, v in parts.items()}

    def _out_of_memory(self, e: BaseException, epoch: int, b: int, batch: dict[str, torch.Tensor]) -> OutOfMemory:
        """The error for a step that ran out of memory: where, the batch's size, what to lower, and
        what is kept (the weights stepped by this epoch's earlier batches are not saved)."""
        tc = self.run.train
        targets = batch["targets"]
        n_targets = int((targets > 0).sum())
        kept = (f"the checkpoint after epoch {epoch - 1} in {self.run_dir}/last is kept" if epoch > 1 else
                "no epoch had finished")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return OutOfMemory(
            f"epoch {epoch}, batch {b}: out of memory on {self.accel.device} for a batch of {targets.shape[0]} "
            f"sequences x {targets.shape[-1]} positions ({n_targets} targets): {first}\n"
            f"  what to do: lower train.batch_size (now {tc.batch_size}) or train.max_len (now {tc.max_len}); a "
            f"loss that scores every target against every other in the batch (in-batch softmax, e.g. ANT's and "
            f"UniSRec's pre-training with every position a target) needs memory growing with the square of "
            f"the targets. Start a new run folder for the smaller batch ({kept}; a resume keeps its batch size)")

    def _sum_over_processes(self, total: float, count: int, parts: dict[str, float]) -> tuple[float, int, dict[str, float]]:
        """An epoch's loss sums over every process (each trained on its own batches): the sum of the
        batch losses, the number of batches and each loss part's sum; as they are with one process."""
        if self.accel.num_processes == 1:
            return total, count, parts
        from accelerate.utils import gather_object

        every = gather_object([(total, count, parts)])
        summed: dict[str, float] = {}
        for _, _, p in every:
            for k, v in p.items():
                summed[k] = summed.get(k, 0.0) + v
        return sum(t for t, _, _ in every), sum(c for _, c, _ in every), summed

    # -- stop requests (SIGTERM / SIGUSR1 from a batch scheduler) ---------------------------------
    def request_stop(self, reason: str = "a stop request") -> None:
        """Ask training to checkpoint and stop after the current step (what the signal handlers do)."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> str | None:
        """The stop asked during the last ``fit`` (a signal's name), also when it came too late to
        cut the run short (in the final evaluation, or at the epoch that ended training): a caller
        that goes on to other runs (an experiment) stops there."""
        return getattr(self, "_stop_reason", None)

    def _stop_agreed(self) -> bool:
        """Whether to stop now; with several processes, any one's request stops all at the same step."""
        asked = self.stop_requested is not None
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

    def fit(self, resume: bool = False, on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
            reuse_finished: bool = False) -> dict[str, Any]:
        """Train (or continue, ``resume``) to the end and evaluate; returns the results. SIGTERM or
        SIGUSR1 (or ``request_stop``) makes it write a checkpoint after the current step and raise
        ``Preempted``; ``fit(resume=True)`` then continues to the same results as an uninterrupted run.
        ``on_epoch(epoch, row)``: called after each epoch's checkpoint with its ``metrics.jsonl`` row
        (``row["valid"]`` on evaluated epochs), e.g. a hyper-parameter search's pruner; an exception
        it raises ends training there (the run resumes from that checkpoint). ``reuse_finished``: if
        the run finished in the folder before this process got its lock (another process trained it
        meanwhile), return its saved results (``self.reused`` is then True) instead of evaluating again;
        one that finished with a lower epoch cap or patience is resumed to this run's."""
        self._stop_reason = None
        self._on_epoch = on_epoch
        self.reused = False
        with self._run_folder_lock(), self._stop_on_signals():
            if reuse_finished and self.folder.is_finished() and reusable(
                    self.folder, resolved_config(self.run, self.model_cfg), type(self.model_cfg)):
                self.reused = True
                return self.folder.results()
            return self._fit(resume)

    @contextlib.contextmanager
    def _run_folder_lock(self):
        """The run folder's lock (``RunFolder.lock``), held by the main process while training."""
        if not self.accel.is_main_process:
            yield
            return
        with self.folder.lock():
            yield

    def _fit(self, resume: bool) -> dict[str, Any]:
        tc, run = self.run.train, self.run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = resolved_config(run, self.model_cfg)
        if resume:
            check_saved_config(self.folder, resolved, type(self.model_cfg), "resume")
        if self.accel.is_main_process:
            if resume and self.folder.is_finished() and self.folder.config() != resolved:
                self.folder.supersede_results()  # trains on to a higher cap or patience: unfinished till then
            self.folder.write_config(resolved)
        if tc.trackers:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                    for k, v in flatten(resolved, ".").items()}
            self.accel.init_trackers(self.run_dir.name, config=flat)
        state = self._load_last() if resume else None
        if resume and state is None:
            self.log(f"no checkpoint in {self.run_dir / 'last'}; starting from scratch")
        if state is None:
            state = {"epoch": 0, "best_epoch": 0, "best_value": -1.0, "bad_epochs": 0,
                     "epoch_seconds": [], "done": False}
            if self.accel.is_main_process:
                self.folder.start_metrics()
        else:
            if self.accel.is_main_process:  # a kill after an epoch's line but before its checkpoint
                self.folder.truncate_metrics(state["epoch"])
            # ``done`` is the patience rule at save time; this run's patience may differ (raised: train on;
            # lowered, continued to a raised cap: already spent); select_on=last never counts bad epochs
            stop = state["bad_epochs"] >= tc.patience and not state.get("partial")
            if stop != state["done"]:
                state["done"] = stop
                self.log(f"patience {tc.patience}: already {state['bad_epochs']} evaluations without improvement "
                         f"since epoch {state['best_epoch']}, so no epoch is trained" if stop else
                         f"patience raised to {tc.patience}: {state['bad_epochs']} evaluations without "
                         f"improvement so far, training goes on")
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
                chosen_on = valid
                if tc.select_on == "test_leak":  # the released code's way: a leak, named in results.json
                    chosen_on = row["test_leak"] = self.evaluator.evaluate(self.raw_model, "test")
                value = chosen_on[metric]
                if tc.select_on == "last" or improved(chosen_on, state, metric, tc.early_stop):
                    state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
                    if self.accel.is_main_process:
                        self.folder.save_best(self.raw_model)
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
                self.folder.append_metrics(row)
                if tc.keep_every and epoch % tc.keep_every == 0:
                    self.folder.save_epoch(self.raw_model, epoch)
            if tc.trackers:
                self.accel.log(scalars({k: v for k, v in row.items() if k != "epoch"}), step=epoch)
            self._save_last(state)
            if getattr(self, "_on_epoch", None) is not None:
                self._on_epoch(epoch, row)
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
        self.accel.wait_for_everyone()  # the main process has written the best weights the others read
        if self.folder.best_path.exists():
            self.raw_model.load_state_dict(self.folder.weights("best"))
        t0 = time.perf_counter()
        valid = self.evaluator.evaluate(self.raw_model, "valid", return_ranks=True)
        test = self.evaluator.evaluate(self.raw_model, "test", return_ranks=True)
        breakdown: dict[str, Any] = {}
        if self.cold is not None:
            breakdown = {**self._cold_breakdown("valid", valid["ranks"]), **self._cold_breakdown("test", test["ranks"])}
            if self.accel.is_main_process:
                self.folder.write_cold_items(self.data.raw_item_ids[np.flatnonzero(self.cold)])
        for part, res in (("valid", valid), ("test", test)):  # per domain, for methods that declare them
            breakdown.update(self._domain_breakdown(part, res["ranks"]))
        if self.accel.is_main_process:  # per-case ranks of the test part: paired tests between runs (mmrec report)
            self.folder.write_test_ranks(test["ranks"])
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
            "preset": self.run.preset,
            "preset_overrides": self.run.preset_overrides,
            "dataset": self.data.name,
            "dataset_path": str(self.data.root),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "valid": valid,
            "test": test,
            **breakdown,
            **({"test_variants": variants} if variants else {}),
            "features": {modality: f.source for modality, f in getattr(self.raw_model, "features", {}).items()},
            "protocol": {
                "split": self.data.meta["split"],
                "filters": self.data.meta["filters"],
                "loss": self.run.train.loss,
                "train_negatives": self.run.train.negatives if self.run.train.loss in ("bce", "gbce") else None,
                "train_negatives_avoid": (self.run.train.negatives_avoid if self.run.train.loss in ("bce", "gbce")
                                          else None),
                **({"gbce_t": self.run.train.gbce_t} if self.run.train.loss == "gbce" else {}),
                **({"sampled_softmax": {"negatives_per_step": self.run.train.sampled_negatives,
                                        "distribution": self.run.train.sampled_distribution,
                                        "power": self.run.train.sampled_power,
                                        "correction": f"log-Q on {self.run.train.sampled_correction}",
                                        **({"groups": self.run.train.sampled_groups}
                                           if self.run.train.sampled_groups > 1 else {})}}
                   if self.run.train.loss == "sampled_ce" else {}),
                "train_windows": self.run.train.windows,
                "evaluation": self.evaluator.protocol(),
                "valid_metric": self.run.train.valid_metric,
                **({"preset_prepare_differences": self.prepare_differences} if self.prepare_differences else {}),
                "checkpoint_selection": {
                    "valid": "validation part",
                    "last": "the last epoch (train.select_on=last)",
                    "test_leak": "TEST part (train.select_on=test_leak, as the released code: a leak; "
                                 "the test figures are optimistic)"}[self.run.train.select_on],
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
            self.folder.write_results(results)
        if self.run.train.trackers:
            self.accel.log(scalars({"final": {"valid": valid, "test": test}}), step=state["epoch"])
            self.accel.end_training()
        return results
