"""The cores a process was given: the smallest of affinity, cgroup quota, SLURM and OpenMP settings."""

import os

from mmrec.resources import available_cores


def test_the_smallest_limit_wins_and_is_named(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cores({}, tmp_path) == (affinity, "CPU affinity")
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores -> 2
    assert available_cores({}, tmp_path) == (min(2, affinity), "cgroup CPU quota" if affinity > 2 else "CPU affinity")
    assert available_cores({"SLURM_CPUS_PER_TASK": "1"}, tmp_path) == (1, "SLURM_CPUS_PER_TASK")
    assert available_cores({"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "x"}, tmp_path) == (1, "OMP_NUM_THREADS")
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota
    assert available_cores({"OMP_NUM_THREADS": "0"}, tmp_path) == (affinity, "CPU affinity")
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    assert available_cores({}, v1) == (1, "cgroup CPU quota" if affinity > 1 else "CPU affinity")
