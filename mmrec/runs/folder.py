"""The run folder: the one module that reads and writes what a training run leaves on disk.

::

    config.json         the resolved configuration (every default filled in; ``mmrec.runs.config``)
    metrics.jsonl       one JSON line per epoch: loss, seconds, validation metrics
    last/               model.safetensors, optimizer.pt (tensors only), state.json, rng-<rank>.pt
                        (a stop inside an epoch): the resume point, swapped in whole
    best.safetensors    weights of the best validation epoch
    epochs/             epoch-N.safetensors: the weights after epoch N, every train.keep_every epochs
    results.json        best epoch, validation and test metrics, the protocol, timings
    results.superseded.json  a finished run's results.json, moved aside when the run is resumed to a
                        higher epoch cap or patience (until it finishes again the folder is unfinished)
    test_ranks.npy      per test case, the rank of its target (paired tests in ``mmrec report``)
    cold_items.txt      the held-out items of a cold-start run
    negatives_*.npy     sampled-evaluation negatives (eval.mode=sampled only)
    train.lock          held by the process training the folder ("pid N on host")

Checkpoints are state dicts: safetensors, or ``torch.load(weights_only=True)`` for the optimizer
and random states, so a folder from elsewhere never runs code when it is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run-folder lock
    fcntl = None

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmrec.errors import ConfigError, DataError, RunFolderBusy


def atomic_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> Any:
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


def _lock_or_holder(f) -> str | None:
    """Take the exclusive lock of the open lock file ``f`` without waiting: None when taken, else
    the holder's line in the file (``"pid N on host"``)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        return f.read().strip() or "pid unknown"
    return None


class RunFolder:
    """One run folder (it need not exist yet): paths, lock, checkpoints, metrics and results."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- files ------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def best_path(self) -> Path:
        return self.path / "best.safetensors"

    def is_run(self) -> bool:
        """A folder some run wrote its configuration to."""
        return self.config_path.is_file()

    def is_finished(self) -> bool:
        return self.results_path.is_file()

    def supersede_results(self) -> None:
        """Move ``results.json`` aside (``results.superseded.json``, replacing an older one) before a
        finished run trains on, so that the folder reads as unfinished until it writes new results:
        a stop half-way leaves it to be resumed, not reported with the old figures."""
        if self.results_path.is_file():
            os.replace(self.results_path, self.path / "results.superseded.json")

    def config(self) -> dict[str, Any] | None:
        """The saved ``config.json`` as written (None when there is none)."""
        return json.loads(self.config_path.read_text()) if self.config_path.is_file() else None

    def require_config(self) -> dict[str, Any]:
        cfg = self.config()
        if cfg is None:
            raise ConfigError(f"{self.path} is not a run folder (no config.json); give the folder `mmrec train` wrote")
        return cfg

    def write_config(self, resolved: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_json(self.config_path, resolved)

    def results(self) -> dict[str, Any] | None:
        return json.loads(self.results_path.read_text()) if self.results_path.is_file() else None

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_json(self.results_path, results)

    def metrics(self) -> list[dict[str, Any]]:
        """The epochs' rows of ``metrics.jsonl`` (empty when there is none)."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def start_metrics(self) -> None:
        self.metrics_path.write_text("")

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop the rows after ``last_epoch`` (a kill after an epoch's line but before its checkpoint)."""
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] <= last_epoch]
        if len(kept) != len(lines):
            self.metrics_path.write_text("".join(ln + "\n" for ln in kept))

    def write_test_ranks(self, ranks: np.ndarray) -> None:
        np.save(self.path / "test_ranks.npy", np.asarray(ranks, dtype=np.int32))

    def test_ranks(self) -> np.ndarray | None:
        p = self.path / "test_ranks.npy"
        return np.load(p) if p.is_file() else None

    def write_cold_items(self, raw_ids: Any) -> None:
        (self.path / "cold_items.txt").write_text("".join(f"{i}\n" for i in raw_ids))

    # -- weights ----------------------------------------------------------------------------------
    def save_best(self, model: torch.nn.Module) -> None:
        save_weights(model, self.best_path)

    def epoch_path(self, epoch: int) -> Path:
        return self.path / "epochs" / f"epoch-{epoch}.safetensors"

    def save_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        """Keep the weights after ``epoch`` (``train.keep_every``)."""
        self.epoch_path(epoch).parent.mkdir(exist_ok=True)
        save_weights(model, self.epoch_path(epoch))

    def kept_epochs(self) -> list[int]:
        """The epochs whose weights ``save_epoch`` kept, in order."""
        d = self.path / "epochs"
        found = (re.fullmatch(r"epoch-(\d+)\.safetensors", p.name) for p in d.iterdir()) if d.is_dir() else ()
        return sorted(int(m.group(1)) for m in found if m)

    def weights(self, checkpoint: str | int = "best", *, purpose: str = "") -> dict[str, torch.Tensor]:
        """The model weights of ``checkpoint`` (``best``: ``best.safetensors``; ``last``: the resume
        point's; an epoch number: ``epochs/epoch-N.safetensors``); an error naming the folder when the
        file is missing or damaged."""
        if isinstance(checkpoint, int):
            path = self.epoch_path(checkpoint)
        else:
            path = self.best_path if checkpoint == "best" else (self.last_dir() or self.path / "last") / "model.safetensors"
        where = f"{purpose}: " if purpose else ""
        if isinstance(checkpoint, int) and not path.is_file():
            kept = self.kept_epochs()
            raise ConfigError(f"{where}no weights of epoch {checkpoint} in {self.path} (kept: "
                              f"{', '.join(map(str, kept)) if kept else 'none; train it with train.keep_every=N'})")
        if not path.is_file():
            raise ConfigError(f"{where}no {path.relative_to(self.path)} in {self.path}; give the folder of a "
                              "finished run (or train it first)")
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DataError(f"cannot read the checkpoint's weights: {e}", path=str(path),
                            hint="it is damaged: train the run again") from None

    # -- the resume point -------------------------------------------------------------------------
    def last_dir(self) -> Path | None:
        """The complete resume point: ``last/``, or ``last.old/`` when a kill fell between the swap's
        two renames; None when there is none."""
        for d in (self.path / "last", self.path / "last.old"):
            if (d / "state.json").exists():
                return d
        return None

    def stash_rng(self, rank: int) -> None:
        """Save this process's torch random state for the next ``save_last(..., n_rng=...)``."""
        tmp = self.path / f".rng-{rank}.pt.tmp"
        torch.save(torch.get_rng_state(), tmp)
        os.replace(tmp, self.path / f".rng-{rank}.pt")

    def save_last(self, model: torch.nn.Module, optimizer_state: dict[str, Any], state: dict[str, Any],
                  n_rng: int = 0) -> None:
        """Write the resume point ``last/`` (model, optimizer, state and the ``n_rng`` stashed random
        states) as a whole: it is written to ``last.new/`` and swapped in by renames, so a process
        killed at any moment leaves a complete ``last/`` (or ``last.old/``) behind."""
        new, cur, old = self.path / "last.new", self.path / "last", self.path / "last.old"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        save_weights(model, new / "model.safetensors")
        torch.save(optimizer_state, new / "optimizer.pt")
        for r in range(n_rng):
            os.replace(self.path / f".rng-{r}.pt", new / f"rng-{r}.pt")
        atomic_json(new / "state.json", state)
        if cur.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(cur, old)
        os.replace(new, cur)
        shutil.rmtree(old, ignore_errors=True)

    def load_last(self) -> tuple[dict[str, torch.Tensor], Any, dict[str, Any]] | None:
        """The resume point: (model weights, optimizer state, loop state), or None when there is none."""
        d = self.last_dir()
        if d is None:
            return None
        try:
            weights = load_file(str(d / "model.safetensors"), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DataError(f"cannot read the checkpoint's weights: {e}", path=str(d / "model.safetensors"),
                            hint="it is damaged: delete the run's last/ folder and rerun without --resume") from None
        return weights, load_tensors(d / "optimizer.pt"), json.loads((d / "state.json").read_text())

    def rng_state(self, rank: int) -> torch.Tensor:
        return load_tensors(self.last_dir() / f"rng-{rank}.pt")

    # -- one training at a time -------------------------------------------------------------------
    def holder(self) -> str | None:
        """Who holds ``train.lock`` now (``"pid N on host"``), or None when nobody trains the
        folder (or locks are unavailable). A probe: the lock is let go at once."""
        path = self.path / "train.lock"
        if fcntl is None or not path.exists():
            return None
        with open(path, "a+") as f:
            holder = _lock_or_holder(f)
            if holder is None:
                fcntl.flock(f, fcntl.LOCK_UN)
        return holder

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``train.lock`` while training (an OS lock, so it is released when the process ends,
        however it ends): a second training of the same folder gets ``RunFolderBusy`` instead of
        overwriting the first one's checkpoints. No lock where ``fcntl`` is missing (Windows), nor
        across machines on file systems without ``flock`` (some NFS setups)."""
        if fcntl is None:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "train.lock", "a+") as f:
            holder = _lock_or_holder(f)
            if holder is not None:
                raise RunFolderBusy(str(self.path), holder)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
