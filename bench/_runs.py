"""Helpers the bench scripts share (not part of mmrec): train a run or reuse its finished folder,
and end a script that a stop request interrupted with the exit code that says "resume me"."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from mmrec.errors import Preempted, RunFolderBusy
from mmrec.runs.config import RunConfig, finished_results
from mmrec.runs.folder import RunFolder
from mmrec.trainers.loop import Trainer


def train_or_reuse(run: RunConfig, run_dir: str | Path, label: str, *, only_finished: bool = False,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
                   ) -> dict[str, Any] | None:
    """The results of ``run`` in ``run_dir``: reused if it finished there (``finished_results``:
    refused if with other settings), else trained (an interrupted run resumes) unless
    ``only_finished``. None when it has not finished here: ``only_finished``, or another process is
    training the folder (left to it, so the same command started twice shares its runs). ``log``
    gets ``label`` with the seconds or the skip."""
    res = finished_results(run, run_dir)
    if res is not None or only_finished:
        return res
    holder = RunFolder(run_dir).holder()
    if holder is not None:  # skip before loading data and model; the lock in fit covers a race
        log(f"{label}: left to the other process ({holder})")
        return None
    t = time.perf_counter()
    try:
        res = Trainer(run, run_dir, log=lambda m: None, progress_bar=False).fit(resume=True)
    except RunFolderBusy as busy:
        log(f"{label}: left to the other process ({busy.holder})")
        return None
    log(f"{label}: {time.perf_counter() - t:.0f}s")
    return res


def exit_on_preemption(main: Callable[[], Any]) -> None:
    """Run a script's ``main()``; a training run stopped by SIGTERM / SIGUSR1 (``Preempted``, after
    its checkpoint) ends the script with the stop message and ``Preempted.EXIT_CODE`` rather than a
    traceback, so the same command resumes it (the CLI does the same itself)."""
    try:
        main()
    except Preempted as stop:
        print(stop, "\nRerun this command to resume.", file=sys.stderr)
        sys.exit(Preempted.EXIT_CODE)
