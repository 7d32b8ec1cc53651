"""How many CPU cores this process was given: the smallest of what the operating system, a batch
scheduler and the user say (affinity mask, cgroup CPU quota, ``SLURM_CPUS_PER_TASK``,
``OMP_NUM_THREADS``), so a run that shares a machine does not start more threads than it has cores
(two runs that each take every core run several times slower than one after the other); and the
end of a multi-process run's process group before the interpreter shuts down."""

from __future__ import annotations

import atexit
import functools
import math
import os
import time
from pathlib import Path
from typing import Mapping


def _cgroup_quota(root: Path) -> int | None:
    """Cores allowed by the cgroup v2 ``cpu.max`` (``quota period``) or v1 ``cfs_quota_us/period``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(env: Mapping[str, str] | None = None, cgroup: str | Path = "/sys/fs/cgroup") -> tuple[int, str]:
    """(cores, what set the number): the minimum over the affinity mask, the cgroup quota,
    ``SLURM_CPUS_PER_TASK`` and ``OMP_NUM_THREADS`` (those that are set and valid)."""
    env = os.environ if env is None else env
    try:
        found = {"CPU affinity": len(os.sched_getaffinity(0))}
    except AttributeError:  # pragma: no cover - macOS, Windows
        found = {"CPU count": os.cpu_count() or 1}
    quota = _cgroup_quota(Path(cgroup))
    if quota:
        found["cgroup CPU quota"] = quota
    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        try:
            n = int(env.get(var, ""))
        except ValueError:
            continue
        if n > 0:
            found[var] = n
    source = min(found, key=lambda k: found[k])
    return found[source], source


def _end_process_group(settle_s: float = 0.1) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    # A gloo worker thread frees a finished collective's work after the caller has its result, and
    # freeing its tensors needs the GIL. The sleep releases the GIL so that thread can take it now:
    # once the interpreter finalises it cannot, and the process aborts.
    time.sleep(settle_s)
    dist.destroy_process_group()


@functools.cache
def end_process_group_at_exit() -> None:
    """Under ``accelerate launch`` with several processes: end torch.distributed's process group at
    exit, while the interpreter is still whole. Left to the interpreter's shutdown, a gloo worker
    thread that is still freeing the last collective's tensors (an all-gather's, say, when a process
    exits within milliseconds of its last collective) needs the GIL as Python finalises and the
    process aborts after its work is done (``terminate called without an active exception``,
    SIGABRT, which fails the launch and hides the exit code, 75 for a checkpointed stop;
    pytorch/pytorch#179291). The handler releases the GIL for 0.1 s, then destroys the group.
    Registered once a process (the cache); a no-op with no group or one already destroyed."""
    atexit.register(_end_process_group)
