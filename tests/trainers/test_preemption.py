"""Stopping on SIGTERM / SIGUSR1 (what batch schedulers send) and resuming to the same results."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.errors import DataError, Preempted
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ds(tmp_path, successor_raw):
    return prepare(successor_raw, tmp_path / "ds", PrepareConfig())


def _run(ds, **train):
    # small batches: several steps per epoch, so a stop can land inside one
    return from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec",
                                 "model": {"hidden": 16, "inner": 32, "dropout": 0.3, "attn_dropout": 0.3},
                                 "train": {"epochs": 4, "threads": 1, "batch_size": 8, "patience": 10, **train}})


def _signal_at(trainer, calls, sig):
    """Send ``sig`` to this process from inside the ``calls``-th training batch."""
    real = trainer.samples.batch
    seen = {"n": 0}

    def batch(*a, **k):
        seen["n"] += 1
        if seen["n"] == calls:
            os.kill(os.getpid(), sig)
        return real(*a, **k)

    trainer.samples.batch = batch


@pytest.mark.parametrize("sig,calls", [(signal.SIGTERM, 3), (signal.SIGUSR1, 14)])
def test_a_signal_inside_an_epoch_checkpoints_and_resume_matches_an_uninterrupted_run(ds, tmp_path, sig, calls, faults):
    ref = Trainer(_run(ds), tmp_path / "ref", log=lambda s: None).fit()
    t = Trainer(_run(ds), tmp_path / "cut", log=lambda s: None)
    steps_per_epoch = len(t.samples.epoch_batches(8, np.random.default_rng(0), True))
    assert steps_per_epoch > 3
    _signal_at(t, calls, sig)
    with pytest.raises(Preempted) as info:
        t.fit()
    epoch, batch = (calls - 1) // steps_per_epoch + 1, (calls - 1) % steps_per_epoch + 1
    assert (info.value.signal_name, info.value.epoch, info.value.batch) == (signal.Signals(sig).name, epoch, batch)
    assert f"--run-dir {tmp_path / 'cut'} --resume" in str(info.value)
    state = json.loads((tmp_path / "cut" / "last" / "state.json").read_text())
    assert state["epoch"] == epoch - 1 and state["partial"]["next_batch"] == batch
    assert not (tmp_path / "cut" / "results.json").exists()
    # the handlers are restored once fit is left
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    res = Trainer(_run(ds), tmp_path / "cut", log=lambda s: None).fit(resume=True)
    assert res["test"] == ref["test"] and res["valid"] == ref["valid"]
    a = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")
    faults["training stopped by a signal mid-epoch, resumed to identical weights and metrics"] += 1


def test_a_stop_on_the_last_step_of_an_epoch_stops_at_its_end(ds, tmp_path):
    t = Trainer(_run(ds), tmp_path / "r", log=lambda s: None)
    n = len(t.samples.epoch_batches(8, np.random.default_rng(0), True))
    _signal_at(t, n, signal.SIGTERM)  # during the last batch of epoch 1
    with pytest.raises(Preempted) as info:
        t.fit()
    assert (info.value.epoch, info.value.batch) == (1, None)
    state = json.loads((tmp_path / "r" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and "partial" not in state


def test_cli_exits_75_on_sigterm_and_resumes(ds, tmp_path, faults):
    """A real `mmrec train` process gets SIGTERM while training: it exits with 75 and a message
    saying how to continue; the same command with --resume finishes."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmrec.cli", "train", "-d", str(ds), "-m", "sasrec", "--run-dir", str(run_dir),
           "--set", "train.epochs=400", "--set", "train.patience=400", "--set", "train.batch_size=4",
           "--set", "train.threads=1", "--set", "model.hidden=16", "--set", "model.inner=32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # wait until training is under way (an epoch logged), then ask it to stop
    metrics = run_dir / "metrics.jsonl"
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 75, (out, err)
    assert "stopped by SIGTERM" in err and "--resume" in err
    state = json.loads((run_dir / "last" / "state.json").read_text())
    assert 1 <= state["epoch"] < 400
    cmd[cmd.index("train.epochs=400")] = f"train.epochs={state['epoch'] + 1}"
    cmd[cmd.index("train.patience=400")] = f"train.patience={state['epoch'] + 1}"
    # a changed epoch count is a changed config: write it as the run's config, as a user would rerun
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train"]["epochs"] = cfg["train"]["patience"] = state["epoch"] + 1
    (run_dir / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "results.json").read_text())["epochs_run"] == state["epoch"] + 1
    faults["`mmrec train` processes stopped by SIGTERM (exit 75), resumed"] += 1


def test_slurm_train_script_forwards_usr1_and_exits_75(ds, tmp_path):
    """examples/slurm/train.sbatch run by bash (no Slurm here): SIGUSR1 to the job shell, as
    ``--signal=B:USR1`` sends it, reaches mmrec, which checkpoints; the script exits with 75."""
    import time
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "train.sbatch"
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SLURM_JOB_ID", None)
    p = subprocess.Popen(["bash", str(script), str(ds), "sasrec", str(run_dir), "--set", "train.epochs=400",
                          "--set", "train.batch_size=4", "--set", "train.threads=1", "--set", "model.hidden=16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 75, (out, err)
    assert "stopped by SIGUSR1" in err
    assert json.loads((run_dir / "last" / "state.json").read_text())["epoch"] >= 1


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_results(ds, tmp_path, faults):
    """`mmrec train` killed with SIGKILL (no chance to checkpoint) three times at random moments,
    resumed each time: the final results equal an uninterrupted run's, and metrics.jsonl has each
    epoch once."""
    import random
    import time

    args = ["--set", "train.epochs=6", "--set", "train.patience=6", "--set", "train.batch_size=4",
            "--set", "train.threads=1", "--set", "model.hidden=16", "--set", "model.inner=32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "mmrec.cli", "train", "-d", str(ds), "-m", "sasrec"]
    ref = subprocess.run(base + ["--run-dir", str(tmp_path / "ref")] + args, capture_output=True, text=True,
                         env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "run"
    cmd = base + ["--run-dir", str(run_dir), "--resume"] + args
    metrics = run_dir / "metrics.jsonl"
    rnd = random.Random(7)
    kills = 0
    for target in (1, 3, 5):  # kill somewhere after this many epochs were logged
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and \
                (not metrics.exists() or len(metrics.read_text().splitlines()) < target):
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.3))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
    assert kills >= 2
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads((run_dir / "results.json").read_text())
    want = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert got["test"] == want["test"] and got["valid"] == want["valid"]
    epochs = [json.loads(l)["epoch"] for l in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    faults["`mmrec train` processes SIGKILLed at random moments, resumed to identical results"] += kills


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("target", ["optimizer.pt", "model.safetensors"])
def test_an_untrusted_checkpoint_is_refused_without_running_code(ds, tmp_path, target, faults):
    """A run folder from elsewhere whose checkpoint holds a pickled payload (or damaged weights):
    --resume refuses it with an error naming the file, and the payload never runs."""
    t = Trainer(_run(ds), tmp_path / "run", log=lambda s: None)
    _signal_at(t, 3, signal.SIGTERM)  # a resumable run: stopped inside epoch 1
    with pytest.raises(Preempted):
        t.fit()
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "run" / "last" / target
    if target == "optimizer.pt":
        torch.save({"state": _Payload(marker)}, bad)  # torch.save pickles the object as is
    else:
        bad.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match=target.replace(".", r"\.")) as e:
        Trainer(_run(ds), tmp_path / "run", log=lambda s: None).fit(resume=True)
    assert "last/" in str(e.value)
    assert not marker.exists()
    faults["untrusted checkpoints (pickled code, damaged weights), refused without running code"] += 1
