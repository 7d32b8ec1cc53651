"""The shared loop: learning, early stopping, checkpoints, resume, repeatability."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raw_from_sequences
from safetensors.torch import load_file

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError, Preempted, RunFolderBusy
from mmrec.runs.config import RunConfig, finished_results
from mmrec.trainers.batching import TrainSamples, cut_windows
from mmrec.trainers.loop import Trainer


@pytest.fixture
def ds(tmp_path, successor_raw):
    return prepare(successor_raw, tmp_path / "ds", PrepareConfig())


def _run(ds, **train):
    model = train.pop("model", {"dropout": 0.1, "attn_dropout": 0.1})
    method = train.pop("method", "sasrec")
    return from_dict(RunConfig, {"dataset": str(ds), "method": method, "model": model if method == "sasrec" else {},
                                 "train": {"epochs": 3, "threads": 1, **train}})


def test_cut_windows_right_pads_and_keeps_the_last_items():
    flat = np.arange(1, 11)
    rows, n = cut_windows(flat, np.array([0, 5]), np.array([3, 10]), 4)
    assert rows.tolist() == [[1, 2, 3, 0], [7, 8, 9, 10]] and n.tolist() == [3, 4]


def test_train_windows_cover_every_target(tmp_path):
    raw = raw_from_sequences({"a": [str(i) for i in range(1, 13)]})  # 12 events: a=10 -> targets at 1..9
    d = PreparedDataset(prepare(raw, tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    last = TrainSamples(d, max_len=4, windows="last").batch(np.array([0]))
    assert last["items"].tolist() == [[6, 7, 8, 9]] and last["targets"].tolist() == [[7, 8, 9, 10]]
    s = TrainSamples(d, max_len=4, windows="all")
    b = s.batch(np.arange(len(s)))
    targets = sorted(t for row in b["targets"].tolist() for t in row if t)
    assert targets == list(range(2, 11))  # every training target exactly once
    neg = s.sample_negatives(np.array([0]), (1, 50), np.random.default_rng(0))
    assert set(neg.ravel()) <= {11, 12}  # items 1..10 are the user's training items


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_learns_a_successor_rule(ds, tmp_path, loss):
    res = Trainer(_run(ds, loss=loss, epochs=25, lr=0.01, patience=25), tmp_path / "run", log=lambda s: None).fit()
    assert res["test"]["hr@5"] > 0.8, res["test"]  # popularity alone gets ~0.12 on this ring
    pop = Trainer(_run(ds, method="pop", epochs=10, lr=0.05), tmp_path / "pop", log=lambda s: None).fit()
    assert pop["test"]["hr@5"] < 0.4


def test_gru4rec_learns(ds, tmp_path):
    res = Trainer(_run(ds, method="gru4rec", epochs=25, lr=0.01), tmp_path / "gru", log=lambda s: None).fit()
    assert res["test"]["hr@5"] > 0.8


def test_run_folder_contents_and_results_protocol(ds, tmp_path):
    res = Trainer(_run(ds, epochs=2), tmp_path / "r", log=lambda s: None).fit()
    r = tmp_path / "r"
    for f in ("config.json", "metrics.jsonl", "best.safetensors", "results.json", "last/state.json", "last/optimizer.pt"):
        assert (r / f).exists(), f
    cfg = json.loads((r / "config.json").read_text())
    assert cfg["model"]["hidden"] == 64 and cfg["train"]["epochs"] == 2  # defaults resolved
    lines = (r / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "ndcg@10" in json.loads(lines[0])["valid"]
    p = res["protocol"]
    assert p["split"]["kind"] == "loo" and p["loss"] == "ce" and p["evaluation"]["history_mask"] == "none"
    assert "filters" in p
    # checkpoints are plain tensors: loadable without pickle
    torch.load(r / "last" / "optimizer.pt", weights_only=True)
    assert set(load_file(str(r / "best.safetensors"))) >= {"item.weight"}


def test_seeded_runs_repeat_and_resume_matches_uninterrupted(ds, tmp_path):
    a = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "a", log=lambda s: None).fit()
    b = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "b", log=lambda s: None).fit()
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    # interrupted after 2 epochs, then resumed to 4
    Trainer(_run(ds, epochs=2, patience=10), tmp_path / "c", log=lambda s: None).fit()
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["train"]["epochs"] = 4
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    state = json.loads((tmp_path / "c" / "last" / "state.json").read_text())
    assert state["epoch"] == 2
    c = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "c", log=lambda s: None).fit(resume=True)
    assert c["test"] == a["test"]
    wa = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    wc = load_file(str(tmp_path / "c" / "last" / "model.safetensors"))
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_refuses_a_changed_config(ds, tmp_path):
    Trainer(_run(ds, epochs=1), tmp_path / "a", log=lambda s: None).fit()
    with pytest.raises(ConfigError, match="differs from this run's configuration"):
        Trainer(_run(ds, epochs=1, lr=0.5), tmp_path / "a", log=lambda s: None).fit(resume=True)


def test_finished_results_reuses_only_a_run_with_the_same_settings(ds, tmp_path):
    """A finished run folder is reused for the same settings (resource settings aside) and refused,
    naming the folder and the setting, for others: a rerun never reports the old run as the new one."""
    assert finished_results(_run(ds, epochs=1), tmp_path / "a") is None  # nothing there yet
    res = Trainer(_run(ds, epochs=1), tmp_path / "a", log=lambda s: None).fit()
    assert finished_results(_run(ds, epochs=1), tmp_path / "a") == json.loads(json.dumps(res))
    assert finished_results(_run(ds, epochs=1, threads=2), tmp_path / "a")["best_epoch"] == res["best_epoch"]
    with pytest.raises(ConfigError, match=r"a/config.json differs .*train.lr: 0.001 there, 0.5 now.*to reuse it"):
        finished_results(_run(ds, epochs=1, lr=0.5), tmp_path / "a")


def test_a_finished_run_with_a_higher_epoch_cap_is_resumed_to_it(ds, tmp_path):
    """A run that finished at its cap of 2 epochs, asked for with a cap of 4 (an experiment file
    raised to reach convergence): not reused but resumed to 4 epochs, the first two kept; with
    another setting changed as well, refused as before."""
    Trainer(_run(ds, epochs=2, patience=10), tmp_path / "a", log=lambda s: None).fit()
    first = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert finished_results(_run(ds, epochs=4, patience=10), tmp_path / "a") is None
    with pytest.raises(ConfigError, match="train.lr: 0.001 there, 0.5 now"):
        finished_results(_run(ds, epochs=4, patience=10, lr=0.5), tmp_path / "a")
    t = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "a", log=lambda s: None)
    res = t.fit(resume=True, reuse_finished=True)
    assert not t.reused and res["epochs_run"] == 4
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and lines[:2] == first
    whole = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "b", log=lambda s: None).fit()
    assert res["test"] == whole["test"]  # as a run that had the cap of 4 from the start
    assert finished_results(_run(ds, epochs=4, patience=10), tmp_path / "a")["epochs_run"] == 4  # reused now


def test_a_run_stopped_by_patience_is_resumed_to_a_raised_patience(ds, tmp_path):
    """A run that early stopping ended (patience 1 at a learning rate too small to improve), asked
    for with patience 3: it trains on from its last epoch (it had stayed done: seen on an experiment
    whose patience was raised) to where a run with patience 3 from the start stops, with its results."""
    first = Trainer(_run(ds, epochs=30, lr=1e-6, patience=1), tmp_path / "a", log=lambda s: None).fit()
    assert first["epochs_run"] < 30
    said = []
    t = Trainer(_run(ds, epochs=30, lr=1e-6, patience=3), tmp_path / "a", log=said.append)
    res = t.fit(resume=True, reuse_finished=True)
    whole = Trainer(_run(ds, epochs=30, lr=1e-6, patience=3), tmp_path / "b", log=lambda s: None).fit()
    assert not t.reused and any("patience raised to 3" in s for s in said)
    assert res["epochs_run"] == whole["epochs_run"] > first["epochs_run"]
    assert res["best_epoch"] == whole["best_epoch"] and res["test"] == whole["test"]
    lines = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "a") == lines(tmp_path / "b")


def test_a_run_continued_to_a_raised_cap_under_a_lower_patience_stops_without_training(ds, tmp_path):
    """A run that ran to its cap of 4 epochs with no gain after its best (a learning rate too small to
    improve), continued to a cap of 8 with a patience its evaluations without improvement already
    reach: it ends as it is, no epoch trained (it spent one for nothing before: seen on ANT's H&M runs
    continued from the code's 100 epochs with patience 20)."""
    first = Trainer(_run(ds, epochs=4, lr=1e-6, patience=10), tmp_path / "a", log=lambda s: None).fit()
    best = first["best_epoch"]
    assert first["epochs_run"] == 4 and best < 4  # evaluations without improvement since: 4 - best
    said = []
    res = Trainer(_run(ds, epochs=8, lr=1e-6, patience=4 - best), tmp_path / "a", log=said.append).fit(resume=True)
    assert any(f"patience {4 - best}: already {4 - best} evaluations without improvement since epoch {best}, "
               "so no epoch is trained" in s for s in said), said
    assert res["epochs_run"] == 4 and res["best_epoch"] == best and res["test"] == first["test"]
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 4
    assert finished_results(_run(ds, epochs=8, lr=1e-6, patience=4 - best), tmp_path / "a")["epochs_run"] == 4


def test_a_finished_run_stopped_while_it_trains_on_to_a_new_cap_is_unfinished_not_reported(ds, tmp_path):
    """Resumed to a higher cap, the folder's old results.json is moved aside at once: a stop before the
    new end leaves a folder that is resumed again (seen: `experiment show` printed the old figures as
    the final ones of the new settings, and a stop there would have been taken for finished)."""
    old = Trainer(_run(ds, epochs=2, patience=10), tmp_path / "a", log=lambda s: None).fit()
    t = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "a", log=lambda s: None)
    real = t.folder.append_metrics

    def stop_after_epoch_3(row):
        real(row)
        if row["epoch"] == 3:
            t.request_stop("test")

    t.folder.append_metrics = stop_after_epoch_3
    with pytest.raises(Preempted):
        t.fit(resume=True, reuse_finished=True)
    folder = tmp_path / "a"
    assert not (folder / "results.json").exists()
    assert json.loads((folder / "results.superseded.json").read_text())["epochs_run"] == old["epochs_run"] == 2
    assert finished_results(_run(ds, epochs=4, patience=10), folder) is None  # to be resumed, not reused
    res = Trainer(_run(ds, epochs=4, patience=10), folder, log=lambda s: None).fit(resume=True, reuse_finished=True)
    whole = Trainer(_run(ds, epochs=4, patience=10), tmp_path / "b", log=lambda s: None).fit()
    assert res["epochs_run"] == 4 and res["test"] == whole["test"]
    assert finished_results(_run(ds, epochs=4, patience=10), folder)["epochs_run"] == 4


def test_a_run_folder_is_trained_by_one_process_at_a_time(ds, tmp_path):
    """While a process holds the run folder's lock, a second training of the folder is refused
    (nothing written), and once the lock is let go it trains."""
    import fcntl

    run_dir = tmp_path / "a"
    run_dir.mkdir()
    with open(run_dir / "train.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        with pytest.raises(RunFolderBusy, match=r"a is being trained by another process \(pid 4242 on elsewhere\)"):
            Trainer(_run(ds, epochs=1), run_dir, log=lambda s: None).fit()
        assert sorted(p.name for p in run_dir.iterdir()) == ["train.lock"]
        fcntl.flock(held, fcntl.LOCK_UN)
    assert Trainer(_run(ds, epochs=1), run_dir, log=lambda s: None).fit()["epochs_run"] == 1
    with open(run_dir / "train.lock", "a+") as again:  # released at the end of fit
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_another_process_finished_meanwhile_is_reused_not_evaluated_again(ds, tmp_path):
    """The race of two ``--jobs`` workers: one looks (not finished, no holder), the other finishes the
    run before the first gets the lock. With ``reuse_finished`` the first returns the saved results
    and writes nothing; without it, a resume evaluates the finished run again."""
    late = Trainer(_run(ds, epochs=2), tmp_path / "a", log=lambda s: None)  # built before the other finished
    first = Trainer(_run(ds, epochs=2), tmp_path / "a", log=lambda s: None).fit()
    stamp = (tmp_path / "a" / "results.json").stat().st_mtime_ns
    res = late.fit(resume=True, reuse_finished=True)
    assert late.reused and res == first
    assert (tmp_path / "a" / "results.json").stat().st_mtime_ns == stamp  # not written again
    with pytest.raises(ConfigError, match="lr"):  # a finished run with other settings is not passed off as this one
        Trainer(_run(ds, epochs=2, lr=0.5), tmp_path / "a", log=lambda s: None).fit(resume=True, reuse_finished=True)
    again = Trainer(_run(ds, epochs=2), tmp_path / "a", log=lambda s: None)
    again.fit(resume=True)
    assert not again.reused


def test_a_busy_folder_is_skipped_before_anything_is_loaded(ds, tmp_path, monkeypatch):
    """``train_or_reuse`` probes the folder's lock first: a folder another process trains is left
    to it without building a Trainer (data and model loading), and the log names the holder."""
    import fcntl
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import _runs

    from mmrec.runs.folder import RunFolder

    run_dir = tmp_path / "a"
    assert RunFolder(run_dir).holder() is None  # no folder yet
    run_dir.mkdir()
    said = []
    with open(run_dir / "train.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        assert RunFolder(run_dir).holder() == "pid 4242 on elsewhere"

        def no_trainer(*a, **k):
            raise AssertionError("a Trainer was built for a busy folder")

        monkeypatch.setattr(_runs, "Trainer", no_trainer)
        assert _runs.train_or_reuse(_run(ds, epochs=1), run_dir, "row seed 0", log=said.append) is None
        monkeypatch.undo()
    assert said == ["row seed 0: left to the other process (pid 4242 on elsewhere)"]
    assert RunFolder(run_dir).holder() is None  # let go: the probe itself holds nothing
    assert _runs.train_or_reuse(_run(ds, epochs=1), run_dir, "row seed 0", log=said.append)["epochs_run"] == 1


def test_resume_accepts_a_run_saved_before_a_setting_existed(ds, tmp_path):
    """A run folder written by an older version lacks settings added since; they take their
    defaults (what that run did), so it resumes; a setting away from its default still differs."""
    Trainer(_run(ds, epochs=1), tmp_path / "a", log=lambda s: None).fit()
    cfg_path = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["train"]["early_stop"], cfg["model"]["position"]  # as if saved before these existed
    cfg_path.write_text(json.dumps(cfg))
    res = Trainer(_run(ds, epochs=2), tmp_path / "a", log=lambda s: None)
    cfg["train"]["epochs"] = 2
    cfg_path.write_text(json.dumps(cfg))
    assert res.fit(resume=True)["epochs_run"] == 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="differs from this run's configuration"):
        Trainer(_run(ds, epochs=2, early_stop="any"), tmp_path / "a", log=lambda s: None).fit(resume=True)


def test_a_run_saved_before_loss_weighting_resumes_only_with_its_old_behaviour(ds, tmp_path):
    """loss_weighting's default (target) is not what runs did before it existed (batch): such a run
    folder resumes with --set train.loss_weighting=batch, and the error says so otherwise."""
    Trainer(_run(ds, epochs=1, loss_weighting="batch"), tmp_path / "a", log=lambda s: None).fit()
    cfg_path = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["train"]["loss_weighting"]
    cfg["train"]["epochs"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"train.loss_weighting: 'batch' there, 'target' now"):
        Trainer(_run(ds, epochs=2), tmp_path / "a", log=lambda s: None).fit(resume=True)
    cfg_path.write_text(json.dumps(cfg))
    res = Trainer(_run(ds, epochs=2, loss_weighting="batch"), tmp_path / "a", log=lambda s: None).fit(resume=True)
    assert res["epochs_run"] == 2


def _saved_with(folder, **train):
    """Rewrite the saved config of ``folder`` with ``train`` settings (None: as if saved before it existed)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in train.items():
        if v is None:
            del cfg["train"][k]
        else:
            cfg["train"][k] = v
    path.write_text(json.dumps(cfg))


def test_a_setting_the_run_does_not_read_may_differ(ds, tmp_path):
    """The sampled softmax's settings are read only with train.loss=sampled_ce (sampled_power only with
    popularity draws, gbce_t only with gbce): a ce run saved under other values of them is reused, while
    a sampled_ce run that differs in one is refused, naming it."""
    res = Trainer(_run(ds, epochs=1), tmp_path / "a", log=lambda s: None).fit()
    _saved_with(tmp_path / "a", sampled_negatives=256, sampled_correction="all", sampled_groups=1, gbce_t=0.5)
    assert finished_results(_run(ds, epochs=1), tmp_path / "a")["test"] == json.loads(json.dumps(res["test"]))
    with pytest.raises(ConfigError, match=r"train.loss: 'ce' there, 'sampled_ce' now"):
        finished_results(_run(ds, epochs=1, loss="sampled_ce", sampled_negatives=8), tmp_path / "a")

    Trainer(_run(ds, epochs=1, loss="sampled_ce", sampled_negatives=8, sampled_groups=2), tmp_path / "s",
            log=lambda s: None).fit()
    assert finished_results(_run(ds, epochs=1, loss="sampled_ce", sampled_negatives=8, sampled_groups=2,
                                 sampled_power=0.5, gbce_t=0.1), tmp_path / "s") is not None
    with pytest.raises(ConfigError, match=r"train.sampled_groups: 2 there, 3 now"):
        finished_results(_run(ds, epochs=1, loss="sampled_ce", sampled_negatives=8, sampled_groups=3), tmp_path / "s")
    with pytest.raises(ConfigError, match=r"train.sampled_power: 1.0 there, 0.5 now"):
        finished_results(_run(ds, epochs=1, loss="sampled_ce", sampled_negatives=8, sampled_groups=2,
                              sampled_distribution="popularity", sampled_power=0.5), tmp_path / "s")


def test_a_sampled_run_saved_before_its_settings_existed_keeps_one_draw_and_the_full_correction(ds, tmp_path):
    """train.sampled_correction and train.sampled_groups came after the sampled softmax with defaults
    other than its behaviour then (every logit corrected, one draw a step): a sampled_ce run saved
    without them resumes only as it was, and the error names the new defaults otherwise."""
    Trainer(_run(ds, epochs=1, loss="sampled_ce", sampled_negatives=8, sampled_correction="all", sampled_groups=1),
            tmp_path / "a", log=lambda s: None).fit()
    _saved_with(tmp_path / "a", sampled_correction=None, sampled_groups=None, epochs=2)
    with pytest.raises(ConfigError, match=r"train.sampled_correction: 'all' there, 'negatives' now; "
                                          r"train.sampled_groups: 1 there, 16 now"):
        Trainer(_run(ds, epochs=2, loss="sampled_ce", sampled_negatives=8), tmp_path / "a",
                log=lambda s: None).fit(resume=True)
    res = Trainer(_run(ds, epochs=2, loss="sampled_ce", sampled_negatives=8, sampled_correction="all",
                       sampled_groups=1), tmp_path / "a", log=lambda s: None).fit(resume=True)
    assert res["epochs_run"] == 2


def test_early_stopping_uses_patience(ds, tmp_path):
    res = Trainer(_run(ds, epochs=50, lr=1e-6, patience=2), tmp_path / "a", log=lambda s: None).fit()
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    vals = [json.loads(l)["valid"]["ndcg@10"] for l in lines]
    assert res["epochs_run"] == len(lines) < 50
    best = int(np.argmax(vals))
    assert res["best_epoch"] == best + 1 and len(lines) - 1 - best == 2


def test_negatives_avoid_train_part_or_whole_sequence(tmp_path):
    # user u0: items 1..6, train part 1 2 3 4, valid 5, test 6; a catalogue of 40 items
    raw = raw_from_sequences({"u0": ["1", "2", "3", "4", "5", "6"], "u1": [str(i) for i in range(7, 41)]})
    ds = PreparedDataset(prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    rng = np.random.default_rng(0)
    user = np.zeros(4000, dtype=np.int64)
    train_only = TrainSamples(ds, 5).sample_negatives(user, (4000,), rng)
    assert set(train_only.tolist()) == set(range(5, 41))  # the future items 5 and 6 can be negatives
    leak = TrainSamples(ds, 5, negatives_avoid="sequence").sample_negatives(user, (4000,), rng)
    assert set(leak.tolist()) == set(range(7, 41))


def test_early_stop_any_keeps_an_epoch_when_any_metric_beats_the_kept_one():
    """S3-Rec's rule: the kept checkpoint moves whenever any metric beats its value at the last kept
    epoch, even when valid_metric is lower than an earlier epoch's; ``metric`` keeps the best one."""
    from mmrec.trainers.loop import improved

    epochs = [
        {"n_cases": 9, "hr@10": 0.30, "ndcg@10": 0.20},
        {"n_cases": 9, "hr@10": 0.32, "ndcg@10": 0.18},  # hr up, ndcg down: kept under "any"
        {"n_cases": 9, "hr@10": 0.31, "ndcg@10": 0.19},  # ndcg 0.19 beats epoch 2 kept 0.18: kept
        {"n_cases": 9, "hr@10": 0.31, "ndcg@10": 0.185},  # below epoch 3 on both: not kept
    ]
    kept = {"any": [], "metric": [], "any_best": []}
    for rule in kept:
        state = {"best_value": -1.0}
        for e, v in enumerate(epochs, start=1):
            if improved(v, state, "ndcg@10", rule):
                kept[rule].append(e)
                state["best_value"] = v["ndcg@10"]
    # KDSR's rule: epoch 3's ndcg 0.19 is below the best ndcg (0.20, epoch 1) and its hr below epoch 2's
    assert kept == {"any": [1, 2, 3], "metric": [1], "any_best": [1, 2]}
    assert state["metric_bests"] == {"hr@10": 0.32, "ndcg@10": 0.20}


def test_early_stop_any_best_counts_each_metric_against_its_own_best():
    """KDSR's main.py: each metric keeps its own best; an epoch counts when one of them is beaten,
    even if the others fell; the bests move independently (a metric beaten later by itself counts)."""
    from mmrec.trainers.loop import improved

    state = {"best_value": -1.0}
    seq = [({"hr@5": 0.10, "ndcg@5": 0.05}, True), ({"hr@5": 0.09, "ndcg@5": 0.06}, True),
           ({"hr@5": 0.095, "ndcg@5": 0.055}, False),  # both below their bests (0.10, 0.06)
           ({"hr@5": 0.11, "ndcg@5": 0.01}, True)]
    assert [improved(v, state, "ndcg@5", "any_best") for v, _ in seq] == [want for _, want in seq]
    assert state["metric_bests"] == {"hr@5": 0.11, "ndcg@5": 0.06}


def test_trackers_are_checked_and_off_by_default(ds, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'; use any of tensorboard, wandb"):
        _run(ds, trackers=["tensorbord"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb needs the wandb package \(pip install wandb\)"):
        _run(ds, trackers=["wandb"])
    monkeypatch.undo()
    Trainer(_run(ds, epochs=1), tmp_path / "plain", log=lambda s: None).fit()
    assert not (tmp_path / "plain" / "trackers").exists()


def test_tensorboard_tracker_gets_the_epoch_metrics(ds, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(_run(ds, epochs=2, trackers=["tensorboard"]), tmp_path / "tb", log=lambda s: None).fit()
    events = list((tmp_path / "tb" / "trackers").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "valid/ndcg@10" in tags and "loss" in tags
    vals = [e.value for e in acc.Scalars("valid/ndcg@10")]
    lines = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert vals == pytest.approx([l["valid"]["ndcg@10"] for l in lines])


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one_and_saves_plain_weights(ds, tmp_path):
    """train.compile=true goes through torch.compile (inductor) and changes nothing a user sees: the
    same per-epoch losses as the eager run (to float tolerance), and checkpoints with the plain
    parameter names (no ``_orig_mod.`` prefix), so an eager run can load them."""
    no_dropout = {"dropout": 0.0, "attn_dropout": 0.0}  # inductor draws its own dropout masks
    eager = Trainer(_run(ds, epochs=1, batch_size=64, model=no_dropout), tmp_path / "eager", log=lambda s: None)
    eager.fit()
    comp = Trainer(_run(ds, epochs=1, batch_size=64, compile=True, model=no_dropout), tmp_path / "comp",
                   log=lambda s: None)
    assert comp.model is not comp.raw_model  # the compiled wrapper
    comp.fit()
    loss = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert loss(tmp_path / "comp") == pytest.approx(loss(tmp_path / "eager"), rel=1e-4)
    a = load_file(str(tmp_path / "eager" / "best.safetensors"))
    b = load_file(str(tmp_path / "comp" / "best.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


@pytest.mark.parametrize("weighting, expect", [("batch", 5.0), ("target", 8.2)])
def test_loss_weighting_by_batch_or_by_target(tmp_path, monkeypatch, weighting, expect):
    """Two users whose windows hold 1 and 9 training targets, one per batch. A stub loss equal to
    the batch's number of targets gives the epoch loss each weighting implies: "batch" averages
    the two batches, (1 + 9) / 2 = 5; "target" scales each by its targets over the mean per batch
    (5), so (1 * 1/5 + 9 * 9/5) / 2 = 8.2."""
    from mmrec.trainers.methods.sasrec import SASRec

    raw = raw_from_sequences({"a": ["1", "2", "3", "4"], "b": [str(i) for i in range(1, 13)]})
    d = prepare(raw, tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1))

    def stub(self, batch, train_cfg):
        return (batch["targets"] > 0).sum().float() + 0.0 * self.item.weight.sum()

    monkeypatch.setattr(SASRec, "loss", stub)
    run = from_dict(RunConfig, {"dataset": str(d), "method": "sasrec", "model": {"hidden": 8, "inner": 16},
                                "train": {"epochs": 1, "batch_size": 1, "threads": 1, "loss_weighting": weighting}})
    Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(expect)


def test_a_step_out_of_memory_says_where_how_large_and_what_to_lower(tmp_path, monkeypatch):
    """The CPU allocator's error in epoch 2's second batch (stubbed: no real allocation) becomes an
    ``OutOfMemory`` naming the epoch, the batch, its shape and targets, the settings to lower and the
    kept checkpoint of epoch 1; the CLI prints it without a traceback and exits 2. Other errors pass."""
    from typer.testing import CliRunner

    from mmrec.cli import app
    from mmrec.errors import OutOfMemory
    from mmrec.trainers.methods.sasrec import SASRec

    raw = raw_from_sequences({u: [str((k + i) % 9 + 1) for i in range(8)] for k, u in enumerate("abcd")})
    d = prepare(raw, tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    real, calls = SASRec.loss, []

    def failing(self, batch, train_cfg):
        calls.append(int((batch["targets"] > 0).sum()))
        if len(calls) == 4:  # epoch 2 (two batches an epoch), batch 1
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                               "allocate memory: you tried to allocate 41943040000 bytes. Error code 12")
        return real(self, batch, train_cfg)

    monkeypatch.setattr(SASRec, "loss", failing)
    run = from_dict(RunConfig, {"dataset": str(d), "method": "sasrec", "model": {"hidden": 8, "inner": 16},
                                "train": {"epochs": 3, "batch_size": 2, "max_len": 6, "threads": 1}})
    with pytest.raises(OutOfMemory) as err:
        Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    msg = str(err.value)
    # 8 events a user, the last two held out: 6 training events, 5 targets, batches cut to 5 positions
    assert "epoch 2, batch 1: out of memory on cpu for a batch of 2 sequences x 5 positions (10 targets)" in msg, msg
    assert calls[-1] == 10
    assert "you tried to allocate 41943040000 bytes" in msg and "lower train.batch_size (now 2) or train.max_len (now 6)" in msg
    assert f"the checkpoint after epoch 1 in {tmp_path / 'run'}/last is kept" in msg
    assert json.loads((tmp_path / "run" / "last" / "state.json").read_text())["epoch"] == 1
    # through the CLI: the message, no traceback
    calls.clear()
    res = CliRunner().invoke(app, ["train", "-d", str(d), "-m", "sasrec", "--run-dir", str(tmp_path / "cli"),
                                   "--set", "model.hidden=8", "--set", "model.inner=16", "--set", "train.epochs=3",
                                   "--set", "train.batch_size=2", "--set", "train.max_len=6", "--set", "train.threads=1"])
    assert res.exit_code == 2 and "error: epoch 2, batch 1: out of memory" in res.output and "Traceback" not in res.output
    # any other error is not dressed up as one
    monkeypatch.setattr(SASRec, "loss", lambda self, batch, cfg: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Trainer(run, tmp_path / "other", log=lambda s: None).fit()


# -- optimiser, schedules, samples, checkpoint selection ---------------------------------------------

def test_lr_schedules_by_hand():
    import math

    from mmrec.runs.config import TrainConfig, lr_factor

    step = TrainConfig(epochs=10, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.5)
    # 4 steps an epoch: epochs 1-2 (steps 0-7) x1, epochs 3-4 x0.5, epoch 5 x0.25
    assert [lr_factor(step, s, 4) for s in (0, 7, 8, 15, 16)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    warm = TrainConfig(epochs=2, lr_schedule="cosine", warmup_steps=4)
    # 2 epochs x 6 steps = 12 steps, 4 of warm-up then 8 of cosine from 1 to 0
    assert lr_factor(warm, 0, 6) == pytest.approx(0.25) and lr_factor(warm, 2, 6) == pytest.approx(0.75)
    assert lr_factor(warm, 4, 6) == pytest.approx(1.0)
    assert lr_factor(warm, 8, 6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(warm, 12, 6) == pytest.approx(0.0)
    assert lr_factor(TrainConfig(), 12345, 6) == 1.0


def test_adamw_decays_decoupled_and_the_schedule_reaches_the_optimizer(ds, tmp_path, monkeypatch):
    """train.optimizer picks the optimizer the trainer steps (adamw: decoupled decay, w <- w - lr *
    (adam_update + wd * w); adam: L2 added to the gradient), with train.weight_decay, and the step
    schedule's rate is what it steps with in every epoch."""
    import numpy as np
    import torch

    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)):
        tr = Trainer(_run(ds, epochs=1, optimizer=name, weight_decay=0.5, batch_size=8), tmp_path / name, log=lambda s: None)
        assert type(tr.opt.optimizer if hasattr(tr.opt, "optimizer") else tr.opt) is cls
        assert {g["weight_decay"] for g in tr.opt.param_groups} == {0.5}
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    run = _run(ds, epochs=3, optimizer="adamw", weight_decay=0.1, lr_schedule="step", lr_gamma=0.5, batch_size=8)
    tr = Trainer(run, tmp_path / "a", log=lambda s: None)
    per_epoch = len(tr.samples.epoch_batches(8, np.random.default_rng(0), run.train.bucket_batches))
    tr.fit()
    assert per_epoch > 0 and len(seen) == 3 * per_epoch
    for epoch, lr in enumerate((1e-3, 5e-4, 2.5e-4)):
        assert seen[epoch * per_epoch:(epoch + 1) * per_epoch] == [(pytest.approx(lr), 0.1)] * per_epoch


def test_prefix_samples_train_each_target_once_with_its_own_history(tmp_path):
    from conftest import raw_from_sequences

    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.prepared import PreparedDataset
    from mmrec.trainers.batching import TrainSamples

    raw = raw_from_sequences({"u0": ["1", "2", "3", "4", "5", "6"], "u1": ["3", "4", "5", "6"]})
    path = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    data = PreparedDataset(path)
    s = TrainSamples(data, max_len=3, windows="prefixes")
    # training parts (leave-one-out): u0 1 2 3 4 (3 targets), u1 3 4 (1 target)
    assert len(s) == 4 and s.targets_per_sample().tolist() == [1, 1, 1, 1]
    b = s.batch(np.arange(4))
    raw_ids = np.asarray(data.raw_item_ids)
    got = [([raw_ids[i] for i in row if i], [raw_ids[t] for t in trow if t])
           for row, trow in zip(b["items"], b["targets"])]
    assert got == [(["1"], ["2"]), (["1", "2"], ["3"]), (["1", "2", "3"], ["4"]), (["3"], ["4"])]


def test_checkpoint_chosen_on_test_is_named_a_leak(ds, tmp_path):
    res = Trainer(_run(ds, epochs=2, select_on="test_leak"), tmp_path / "a", log=lambda s: None).fit()
    assert "TEST part" in res["protocol"]["checkpoint_selection"] and "leak" in res["protocol"]["checkpoint_selection"]
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("test_leak" in r for r in rows)
    best = max(rows, key=lambda r: r["test_leak"]["ndcg@10"])
    assert res["best_epoch"] == best["epoch"]
    plain = Trainer(_run(ds, epochs=1), tmp_path / "b", log=lambda s: None).fit()
    assert plain["protocol"]["checkpoint_selection"] == "validation part" and plain["preset"] is None


def test_select_on_last_keeps_the_last_epoch(ds, tmp_path):
    res = Trainer(_run(ds, epochs=3, select_on="last", patience=1), tmp_path / "a", log=lambda s: None).fit()
    assert res["best_epoch"] == 3 and res["epochs_run"] == 3
    assert res["protocol"]["checkpoint_selection"] == "the last epoch (train.select_on=last)"


def test_a_run_that_hit_its_epoch_cap_continues_with_a_higher_cap(ds, tmp_path):
    """Resuming with a higher train.epochs (or patience) continues the run: the same first epochs as
    a run trained to the higher cap at once; other settings stay refused; reuse does not pass the
    shorter run off as the longer one (it is to be resumed)."""
    Trainer(_run(ds, epochs=2), tmp_path / "a", log=lambda s: None).fit()
    longer = Trainer(_run(ds, epochs=4), tmp_path / "a", log=lambda s: None).fit(resume=True)
    whole = Trainer(_run(ds, epochs=4), tmp_path / "b", log=lambda s: None).fit()
    assert longer["epochs_run"] == 4 and longer["test"] == whole["test"]
    with pytest.raises(ConfigError, match="train.lr"):
        Trainer(_run(ds, epochs=6, lr=0.5), tmp_path / "a", log=lambda s: None).fit(resume=True)
    assert finished_results(_run(ds, epochs=6), tmp_path / "a") is None
    with pytest.raises(ConfigError, match="train.epochs: 4 there, 6 now; train.lr: 0.001 there, 0.5 now.*to reuse it"):
        finished_results(_run(ds, epochs=6, lr=0.5), tmp_path / "a")
