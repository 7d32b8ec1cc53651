"""Errors meant for users: each says what was wrong, where, and what to do."""

from __future__ import annotations


class MMRecError(Exception):
    """Base class of every error mmrec raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(MMRecError):
    """A configuration value or key is invalid."""


class DataError(MMRecError):
    """Input data is malformed. Carries the file and, when known, the 1-based line (or row) number."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        text = where + message
        if hint:
            text += f"\n  what to do: {hint}"
        super().__init__(text)


class RunFolderBusy(MMRecError):
    """Another live process is training in this run folder (it holds ``train.lock`` there)."""

    def __init__(self, run_dir: str, holder: str):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(f"{run_dir} is being trained by another process ({holder}); wait for it to end, "
                         "or give another run folder (two trainings in one folder would overwrite each other)")


class OutOfMemory(MMRecError):
    """A training step needed more memory than the device had; says which step, how large its batch
    was, and what to lower."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: torch's ``OutOfMemoryError`` (CUDA) or the CPU
    allocator's ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory")."""
    import torch

    if isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


class Preempted(Exception):
    """Training stopped on request (SIGTERM or SIGUSR1, as a batch scheduler sends before it ends a
    job) after writing a checkpoint; the same command with ``--resume`` continues from it. The CLI
    exits with ``EXIT_CODE`` so a job script can tell it from success and from errors."""

    EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"

    def __init__(self, signal_name: str, run_dir: str, epoch: int, batch: int | None, finished: bool = False):
        self.signal_name, self.run_dir, self.epoch, self.batch = signal_name, run_dir, epoch, batch
        self.finished = finished  # the stop came as the run finished: its results are written, nothing to resume
        if finished:
            super().__init__(f"stopped by {signal_name} as {run_dir} finished (its results are written); "
                             f"nothing was started after it")
            return
        where = f"epoch {epoch}" + (f", batch {batch}" if batch is not None else " (at its end)")
        super().__init__(f"stopped by {signal_name} in {where}; checkpoint written to {run_dir}/last. "
                         f"Run the same command with --run-dir {run_dir} --resume to continue")
