"""The cores a process was given: the smallest of affinity, cgroup quota, SLURM and OpenMP settings."""

import os

from mmrec.resources import available_cores


def test_the_smallest_limit_wins_and_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # 8 cores, whatever the host has
    assert available_cores({}, tmp_path) == (8, "CPU affinity")
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores -> 2
    assert available_cores({}, tmp_path) == (2, "cgroup CPU quota")
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core -> 1
    assert available_cores({}, tmp_path) == (1, "cgroup CPU quota")
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert available_cores({"SLURM_CPUS_PER_TASK": "1"}, tmp_path) == (1, "SLURM_CPUS_PER_TASK")
    assert available_cores({"OMP_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "x"}, tmp_path) == (2, "OMP_NUM_THREADS")
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota
    assert available_cores({"OMP_NUM_THREADS": "0"}, tmp_path) == (8, "CPU affinity")
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    assert available_cores({}, v1) == (3, "cgroup CPU quota")
    (v1 / "cpu.cfs_quota_us").write_text("-1")  # cgroup v1's "no quota"
    assert available_cores({}, v1) == (8, "CPU affinity")


_GROUP_AT_EXIT = r"""
import atexit, sys, tempfile
import torch.distributed as dist
from mmrec.resources import end_process_group_at_exit

# atexit runs last-registered first: this handler, registered before mmrec's, sees the state after it
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
before = atexit._ncallbacks()
for _ in range(int(sys.argv[1])):
    end_process_group_at_exit()
print("registered:", atexit._ncallbacks() - before, flush=True)
"""


def test_the_process_group_is_destroyed_at_exit_once_registered_and_registered_once(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "group.py"
    script.write_text(_GROUP_AT_EXIT)
    for calls, registered, alive in ((0, 0, True), (1, 1, False), (3, 1, False)):
        out = subprocess.run([sys.executable, str(script), str(calls)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.splitlines()[-2:] == [f"registered: {registered}", f"initialized at exit: {alive}"]
