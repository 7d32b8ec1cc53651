"""The evaluator against hand-computed ranks, with a stub model whose scores are fixed."""

import numpy as np
import pytest
import torch
from conftest import raw_from_sequences

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.trainers import evaluation
from mmrec.trainers.evaluation import EvalConfig, Evaluator, metrics_from_ranks


class TableModel(torch.nn.Module):
    """Scores depend only on the last input item: score(item j | last i) = table[i, j]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def query(self, items, lengths):
        last = items.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        return self.table[last]

    def score(self, q, ids):
        if ids.dim() == 1:
            return q[:, ids]
        return q.gather(1, ids)


@pytest.fixture
def data(tmp_path):
    # items 1..6 (raw ids = internal ids, numeric order). user u0: 1 2 3 4 5; user u1: 2 6 2 4 3
    raw = raw_from_sequences({"u0": ["1", "2", "3", "4", "5"], "u1": ["2", "6", "2", "4", "3"]})
    return PreparedDataset(prepare(raw, tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1)))


def table():
    t = np.zeros((7, 7))
    # after item 4 (test inputs of both users end with 4):
    t[4] = [0, 9, 8, 7, 6, 5, 5]  # item1=9 item2=8 item3=7 item4=6 item5=5 item6=5
    return t


def test_full_ranking_hand_computed(data):
    ev = Evaluator(data, EvalConfig(history_mask="none", ks=[1, 2, 5]), 50, torch.device("cpu"))
    out = ev.evaluate(TableModel(table()), "test", return_ranks=True)
    # u0 target 5 (score 5): above it 1,2,3,4 -> 4; tie with 6 -> pessimistic +1 => rank 5
    # u1 target 3 (score 7): above it 1,2 => rank 2
    assert out["ranks"].tolist() == [5, 2]
    assert out["hr@5"] == 0.5 and out["hr@2"] == 0.0
    assert out["ndcg@5"] == pytest.approx(0.5 / np.log2(4))
    assert out["mrr@5"] == pytest.approx(0.5 / 3)


def test_ties_policies(data):
    m = TableModel(table())
    opt = Evaluator(data, EvalConfig(ties="optimistic"), 50, torch.device("cpu")).evaluate(m, "test", return_ranks=True)
    assert opt["ranks"].tolist() == [4, 2]
    flat = TableModel(np.ones((7, 7)))  # every item scores the same
    pess = Evaluator(data, EvalConfig(), 50, torch.device("cpu")).evaluate(flat, "test", return_ranks=True)
    assert pess["ranks"].tolist() == [5, 5]  # no credit for constant scores
    rnd = Evaluator(data, EvalConfig(ties="random", seed=3), 50, torch.device("cpu")).evaluate(flat, "test", return_ranks=True)
    rnd2 = Evaluator(data, EvalConfig(ties="random", seed=3), 50, torch.device("cpu")).evaluate(flat, "test", return_ranks=True)
    assert rnd["ranks"].tolist() == rnd2["ranks"].tolist()
    # random: the target's place among the items it ties with is uniform. Flat scores: 0..5 for both
    # users (mean 2.5, sd of a mean of 200 draws 0.12); the table: u0 ties with one item (4 or 5),
    # u1 ties with none (always 2)
    flat_ranks, table_ranks = [], []
    for seed in range(100):
        ev = Evaluator(data, EvalConfig(ties="random", seed=seed), 50, torch.device("cpu"))
        flat_ranks += ev.evaluate(flat, "test", return_ranks=True)["ranks"].tolist()
        table_ranks.append(ev.evaluate(m, "test", return_ranks=True)["ranks"].tolist())
    assert set(flat_ranks) == {0, 1, 2, 3, 4, 5} and abs(np.mean(flat_ranks) - 2.5) < 0.4
    assert {u0 for u0, _ in table_ranks} == {4, 5} and {u1 for _, u1 in table_ranks} == {2}


def test_history_masking(data):
    m = TableModel(table())
    whole = Evaluator(data, EvalConfig(history_mask="whole"), 50, torch.device("cpu")).evaluate(m, "test", return_ranks=True)
    # u0 history {1,2,3,4} masked: only 6 ties with target 5 -> rank 1
    # u1 history {2,6,4} masked (target 3 not in it): item 1 above -> rank 1
    assert whole["ranks"].tolist() == [1, 1]
    inp = Evaluator(data, EvalConfig(history_mask="input"), 2, torch.device("cpu")).evaluate(m, "test", return_ranks=True)
    # max_len 2: u0 input (3, 4) -> 1, 2 above target, 6 ties -> 3; u1 input (2, 4) -> 1 above -> 1
    assert inp["ranks"].tolist() == [3, 1]


def test_target_repeating_history_is_never_masked(tmp_path):
    raw = raw_from_sequences({"u": ["1", "2", "4", "1"]})
    d = PreparedDataset(prepare(raw, tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    t = np.zeros((4, 4))
    t[3] = [0, 1, 5, 0]  # after item "4" (internal 3): item 1 scores 1, item 2 scores 5
    out = Evaluator(d, EvalConfig(history_mask="whole"), 50, torch.device("cpu")).evaluate(TableModel(t), "test", return_ranks=True)
    assert out["ranks"].tolist() == [0]  # 2 and 4 are history, masked; the target 1 stays


def test_chunked_ranking_equals_unchunked(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    seqs = {f"u{u}": [str(x) for x in rng.integers(1, 60, size=8)] for u in range(40)}
    d = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "p",
                                PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    t = np.round(rng.normal(size=(d.n_items + 1, d.n_items + 1)), 1)  # rounding creates ties
    m = TableModel(t)
    for mask in ("none", "whole"):
        a = Evaluator(d, EvalConfig(history_mask=mask), 5, torch.device("cpu")).evaluate(m, "test", return_ranks=True)
        b = Evaluator(d, EvalConfig(history_mask=mask, item_chunk=7, batch_size=3), 5,
                      torch.device("cpu")).evaluate(m, "test", return_ranks=True)
        assert a["ranks"].tolist() == b["ranks"].tolist()
        # score tiles of 2 users: batches split in row blocks, each with its own history pairs
        with monkeypatch.context() as mp:
            mp.setattr(evaluation, "_TILE_ELEMENTS", 1)
            mp.setattr(evaluation, "_TILE_MIN_ROWS", 2)
            for chunk in (7, 65536):
                c = Evaluator(d, EvalConfig(history_mask=mask, item_chunk=chunk, batch_size=5), 5,
                              torch.device("cpu")).evaluate(m, "test", return_ranks=True)
                assert c["ranks"].tolist() == a["ranks"].tolist()
        # brute force
        cases = d.eval_cases("test")
        expect = []
        for u, p in zip(cases.user, cases.pos):
            hist = np.asarray(d.items[d.offsets[u]:p])
            s = t[hist[-1]].copy()
            s[0] = -np.inf
            tgt = int(d.items[p])
            if mask == "whole":
                s[[h for h in hist if h != tgt]] = -np.inf
            expect.append(int((s > s[tgt]).sum() + (s == s[tgt]).sum() - 1))
        assert a["ranks"].tolist() == expect


def test_sampled_negatives_are_seeded_saved_and_valid(data, tmp_path):
    with pytest.raises(Exception, match=r"interacted with all but 1 items \(e.g. user 'u0'\)"):
        Evaluator(data, EvalConfig(mode="sampled", negatives=2), 50, torch.device("cpu")).evaluate(TableModel(table()), "test")
    cfg = EvalConfig(mode="sampled", negatives=1, seed=5)
    ev = Evaluator(data, cfg, 50, torch.device("cpu"), tmp_path / "run")
    ev.evaluate(TableModel(table()), "test")
    neg = np.load(tmp_path / "run" / "negatives_test.npy")
    assert neg.shape == (2, 1)
    cases = data.eval_cases("test")
    for u, row in zip(cases.user, neg):
        assert not set(row) & set(data.sequence(u).tolist())  # never an item of the user
    # a new evaluator on the same run folder reuses the saved file
    ev2 = Evaluator(data, EvalConfig(mode="sampled", negatives=1, seed=99), 50, torch.device("cpu"), tmp_path / "run")
    assert (ev2.negatives_for(cases, "test") == neg).all()


def test_metrics_from_ranks_values():
    m = metrics_from_ranks(np.array([0, 1, 9, 10]), [1, 10])
    assert m["hr@1"] == 0.25 and m["hr@10"] == 0.75
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 4)
    assert m["hr@1"] <= m["hr@10"]


def _all_gather(world):
    """An all-gather among ``world`` threads (as ``Accelerator.gather`` among processes): each thread's
    tensor, concatenated in rank order, returned to every thread."""
    import threading

    barrier, parts = threading.Barrier(world), {}

    def gather_for(rank):
        def gather(t):
            parts[rank] = t.clone()
            barrier.wait()
            out = torch.cat([parts[r] for r in range(world)])
            barrier.wait()
            return out
        return gather
    return gather_for


@pytest.mark.parametrize("world,mode", [(2, "full"), (3, "full"), (2, "sampled")])
def test_split_ranking_over_processes_equals_one_process(tmp_path, world, mode):
    """With ``world`` processes each ranks every world-th case and the gathered ranks are one
    process's, in the cases' order, on every process (41 cases: not a multiple of 2 or 3); sampled
    negatives are the same seeded draw, saved by the first process only."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    seqs = {f"u{u}": [str(x) for x in rng.integers(1, 30, size=6)] for u in range(41)}
    d = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "p",
                                PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    m = TableModel(np.round(rng.normal(size=(d.n_items + 1, d.n_items + 1)), 1))
    cfg = EvalConfig(history_mask="whole", batch_size=4, mode=mode, negatives=6)
    one = Evaluator(d, cfg, 5, torch.device("cpu"), tmp_path / "one").evaluate(m, "test", return_ranks=True)
    gather_for = _all_gather(world)
    ranked = []

    def process(rank):
        ev = Evaluator(d, cfg, 5, torch.device("cpu"), tmp_path / "split", rank=rank, world=world,
                       gather=gather_for(rank))
        calls = []
        if mode == "full":
            real = ev._rank_full
            ev._rank_full = lambda model, cases: (calls.append(len(cases)), real(model, cases))[1]
        else:
            real = ev._rank_sampled
            ev._rank_sampled = lambda model, cases, part, subset=None: (
                calls.append(len(subset)), real(model, cases, part, subset))[1]
        out = ev.evaluate(m, "test", return_ranks=True)
        ranked.append(calls)
        return out

    with ThreadPoolExecutor(world) as pool:
        outs = list(pool.map(process, range(world)))
    assert one["n_cases"] == 41
    for out in outs:
        assert out["ranks"].tolist() == one["ranks"].tolist() and out["ndcg@10"] == one["ndcg@10"]
    assert sorted(c[0] for c in ranked) == sorted(len(range(r, 41, world)) for r in range(world))  # 1/world each
    if mode == "sampled":
        assert np.array_equal(np.load(tmp_path / "split" / "negatives_test.npy"),
                              np.load(tmp_path / "one" / "negatives_test.npy"))
        assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["negatives_test.npy"]  # no .tmp left
    with pytest.raises(ValueError, match="needs the processes' gather"):
        Evaluator(d, cfg, 5, torch.device("cpu"), rank=0, world=2)
