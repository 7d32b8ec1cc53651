"""Training and extraction in two processes (``accelerate launch --multi_gpu --num_processes 2`` on the
CPU): the epoch loss is over both processes' batches, a run stopped inside an epoch resumes to the
same weights as one never stopped, and bench/processes.py's quick mode (byte-identical extraction)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# each process records the loss of every batch it trains on (what the loop adds to the epoch's sum)
_WORKER = r'''
import json, os, sys
from pathlib import Path
from mmrec.config import from_dict
from mmrec.errors import Preempted
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer

ds, run_dir, resume, stop_at = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "resume", int(sys.argv[4])
run = from_dict(RunConfig, {"dataset": ds, "method": "sasrec",
                            "model": {"hidden": 16, "inner": 32, "dropout": 0.3, "attn_dropout": 0.3},
                            "train": {"epochs": 2, "threads": 1, "batch_size": 16, "patience": 10}})
t = Trainer(run, run_dir, log=lambda s: None, progress_bar=False)
rank = t.accel.process_index
seen = {"batches": 0, "epoch": 0}
record = []
real_epoch, real_batch, real_backward = t._epoch, t.samples.batch, t.accel.backward

def epoch(e, partial=None):
    seen["epoch"] = e
    return real_epoch(e, partial)

def batch(idx, n_neg, rng):
    seen["batches"] += 1
    if rank == 1 and seen["batches"] == stop_at:  # a stop asked on one process stops both
        t.request_stop("test")
    return real_batch(idx, n_neg, rng)

def backward(loss, **kw):
    record.append([seen["epoch"], float(loss.detach())])
    return real_backward(loss, **kw)

t._epoch, t.samples.batch, t.accel.backward = epoch, batch, backward
try:
    t.fit(resume=resume)
    code = 0
except Preempted:
    code = 75
with open(run_dir / f"losses-{'resume' if resume else 'first'}-{rank}.json", "w") as f:
    json.dump(record, f)
sys.exit(code)
'''


def _tiny(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("processes_bench", REPO / "bench" / "processes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, mod.tiny_dataset(tmp_path / "tiny")


def _launch(tmp_path, *args):
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "0", str(worker), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_report_the_loss_of_every_batch_and_resume_to_the_same_weights(tmp_path):
    _, ds = _tiny(tmp_path)
    ref = _launch(tmp_path, ds, tmp_path / "ref", "first", 0)
    assert ref.returncode == 0, ref.stderr
    rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    rec = [json.loads((tmp_path / "ref" / f"losses-first-{r}.json").read_text()) for r in (0, 1)]
    n0 = len([1 for e, _ in rec[0] if e == 1])
    assert n0 > 3 and len([1 for e, _ in rec[1] if e == 1]) == n0  # each process its own half of the batches
    for row in rows:  # the epoch's loss: the mean over both processes' batches, not the main process's alone
        mine = [v for r in rec for e, v in r if e == row["epoch"]]
        assert row["loss"] == pytest.approx(sum(mine) / len(mine), rel=1e-12)
        assert row["steps"] == len(mine) // 2
        main_only = [v for e, v in rec[0] if e == row["epoch"]]
        assert abs(row["loss"] - sum(main_only) / len(main_only)) > 1e-9  # (what was logged before)

    # stopped by process 1 inside epoch 2, then resumed: the same weights, losses and metrics
    stop_at = n0 + 3
    cut = _launch(tmp_path, ds, tmp_path / "cut", "first", stop_at)
    assert cut.returncode != 0, cut.stderr[-3000:]  # the processes exit 75 (checkpointed); the launcher fails
    state = json.loads((tmp_path / "cut" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["partial"]["next_batch"] == 2 * 3  # the 4th step starts at batch 6
    assert not (tmp_path / "cut" / "results.json").exists()
    res = _launch(tmp_path, ds, tmp_path / "cut", "resume", 0)
    assert res.returncode == 0, res.stderr
    # after the resume each process trained the batches it would have: none twice, none left out
    before = [json.loads((tmp_path / "cut" / f"losses-first-{r}.json").read_text()) for r in (0, 1)]
    after = [json.loads((tmp_path / "cut" / f"losses-resume-{r}.json").read_text()) for r in (0, 1)]
    for r in (0, 1):
        assert [v for _, v in before[r] + after[r]] == [v for _, v in rec[r]]
    a = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "ref"), rel=1e-12)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "ref", tmp_path / "cut"))
    assert ra["test"] == rb["test"] and ra["valid"] == rb["valid"]
    # the two processes split the ranking (each ranked half the cases); one process ranks the same
    from mmrec.api import Run

    for part in ("test", "valid"):
        again = Run.open(tmp_path / "ref").evaluate(part)
        assert {k: again[k] for k in ra[part]} == ra[part], part
    ranks = np.load(tmp_path / "ref" / "test_ranks.npy")
    assert len(ranks) == ra["test"]["n_cases"] and (ranks >= 0).all()


def test_processes_quick_mode_extracts_byte_identical_shards_and_trains_on_both_sides(tmp_path, capsys):
    mod, _ = _tiny(tmp_path)
    doc = mod.main(["--quick", "--cores", "2", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "p.json")])
    ex, tr = doc["extract"], doc["train"]
    # 80 items in shards of 10: 8 shards, each written by one process, the same bytes as one process's
    assert ex["shards"] == 8 and ex["byte_identical"] is True and ex["shards_differing"] == []
    assert ex["threads"] == {"1": 2, "2": 1}
    assert all(r["items_per_s"] > 0 and r["loop_items_per_s"] > 0 for r in ex["runs"].values())
    # two processes: half the optimizer steps an epoch (each takes every other batch)
    one, two = tr["runs"]["1"], tr["runs"]["2"]
    assert two["steps_per_epoch"] == one["steps_per_epoch"] // 2
    for procs in (1, 2):  # `mmrec train` names its run folder once, not once per process
        log = (tmp_path / "work" / f"train-{procs}-s0.log").read_text()
        assert log.count("run folder:") == 1, log[-2000:]
    assert tr["ndcg10_within_noise"]["judged"] is None  # one seed: not judged
    out = capsys.readouterr().out
    assert "shard files byte-identical (sha256 of each of the 8 shards, 1 process vs 2): yes" in out
    assert "| 2 / 1 |" in out and "one seed: not judged" in out
    assert json.loads((tmp_path / "p.json").read_text())["extract"]["byte_identical"] is True


def test_within_noise_is_twice_the_standard_error_of_the_difference():
    spec = importlib.util.spec_from_file_location("processes_bench2", REPO / "bench" / "processes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # means 0.10 and 0.13, sd 0.01 and 0.02 over 3 seeds: 2 * sqrt(0.0001/3 + 0.0004/3) = 0.02582
    ok, diff, bound = mod.within_noise([0.09, 0.10, 0.11], [0.11, 0.13, 0.15])
    assert diff == pytest.approx(0.03) and bound == pytest.approx(2 * (0.0005 / 3) ** 0.5) and ok is False
    ok, _, _ = mod.within_noise([0.09, 0.10, 0.11], [0.10, 0.12, 0.14])
    assert ok is True  # 0.02 <= 0.0258
    assert mod.within_noise([0.1], [0.2])[0] is None
