"""mmrec recommend: top-K per user with raw ids, against a brute-force ranking of the same model."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import raw_from_sequences
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.runs.recommend import RecommendConfig, load_trained_model, recommend
from mmrec.trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SASRec on users walking a ring of 15 items (raw ids "i1".."i15", users "u00".."u39")."""
    tmp = tmp_path_factory.mktemp("rec")
    ring = {f"u{u:02d}": [f"i{(u + k) % 15 + 1}" for k in range(6)] for u in range(40)}
    ds = prepare(raw_from_sequences(ring), tmp / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec",
                                "model": {"hidden": 16, "inner": 32},
                                "train": {"epochs": 3, "threads": 1, "batch_size": 16}})
    Trainer(run, tmp / "run", log=lambda s: None).fit()
    return tmp / "run", PreparedDataset(ds)


def _brute_force(run_dir, data, user, k, exclude_seen=True):
    """Score every item for one user by hand: query on the last max_len events, seen items out."""
    model, run, _ = load_trained_model(run_dir)
    seq = np.array(data.sequence(user)[-run.train.max_len:])
    with torch.no_grad():
        q = model.query(torch.as_tensor(seq[None, :], dtype=torch.long), torch.tensor([len(seq)]))
        s = model.score(q, torch.arange(1, data.n_items + 1))[0].numpy().astype(np.float64)
    if exclude_seen:
        s[np.asarray(data.sequence(user)) - 1] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    return [data.raw_item_ids[i + 1] for i in order], s[order]


def test_top_k_per_user_matches_a_brute_force_ranking(trained, tmp_path):
    run_dir, data = trained
    stats = recommend(run_dir, tmp_path / "recs.parquet", RecommendConfig(k=4), log=lambda s: None)
    t = pq.read_table(tmp_path / "recs.parquet")
    assert t.column_names == ["user_id", "rank", "item_id", "score"]
    assert stats["rows"] == t.num_rows == 40 * 4
    df = t.to_pydict()
    by_user: dict[str, list] = {}
    for u, r, i, s in zip(df["user_id"], df["rank"], df["item_id"], df["score"]):
        by_user.setdefault(u, []).append((r, i, s))
    assert sorted(by_user) == sorted(data.raw_user_ids.tolist())
    for raw_user, rows in by_user.items():
        assert [r for r, _, _ in rows] == [1, 2, 3, 4]
        scores = [s for _, _, s in rows]
        assert scores == sorted(scores, reverse=True)
        user = data.raw_user_ids.tolist().index(raw_user)
        seen = {data.raw_item_ids[i] for i in data.sequence(user)}
        assert not seen & {i for _, i, _ in rows}  # raw ids, none already consumed
    for user in (0, 17, 39):
        items, scores = _brute_force(run_dir, data, user, 4)
        rows = by_user[data.raw_user_ids[user]]
        assert [i for _, i, _ in rows] == items
        assert [s for _, _, s in rows] == pytest.approx(scores.tolist(), rel=1e-5)


def test_item_chunks_and_batches_do_not_change_the_lists(trained, tmp_path):
    run_dir, _ = trained
    recommend(run_dir, tmp_path / "a.parquet", RecommendConfig(k=5), log=lambda s: None)
    recommend(run_dir, tmp_path / "b.parquet", RecommendConfig(k=5, item_chunk=4, batch_size=7), log=lambda s: None)
    a, b = pq.read_table(tmp_path / "a.parquet").to_pydict(), pq.read_table(tmp_path / "b.parquet").to_pydict()
    assert a["user_id"] == b["user_id"] and a["item_id"] == b["item_id"]
    assert a["score"] == pytest.approx(b["score"], abs=1e-6)  # other batch widths: float rounding only


def test_include_seen_and_history_train(trained, tmp_path):
    run_dir, data = trained
    recommend(run_dir, tmp_path / "s.parquet", RecommendConfig(k=15, exclude_seen=False), log=lambda s: None)
    t = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert len(t["item_id"]) == 40 * 15  # every item, seen ones included
    items, _ = _brute_force(run_dir, data, 3, 15, exclude_seen=False)
    assert t["item_id"][3 * 15:4 * 15] == items
    # history=train: the user's validation and test items are not in the history, so they may be
    # recommended; with the whole history they never are
    recommend(run_dir, tmp_path / "t.parquet", RecommendConfig(k=15, history="train"), log=lambda s: None)
    tt = pq.read_table(tmp_path / "t.parquet").to_pydict()
    assert len(tt["item_id"]) == 40 * (15 - 4)  # 6 events, 4 of them training
    u0 = [i for u, i in zip(tt["user_id"], tt["item_id"]) if u == data.raw_user_ids[0]]
    last_two = {data.raw_item_ids[i] for i in data.sequence(0)[-2:]}
    assert last_two <= set(u0)


def test_users_subset_and_errors(trained, tmp_path):
    run_dir, data = trained
    users = tmp_path / "users.txt"
    users.write_text("u05\nu07\n")
    r = CliRunner().invoke(app, ["recommend", str(run_dir), "-o", str(tmp_path / "u.parquet"), "-k", "3",
                                 "--users", str(users)])
    assert r.exit_code == 0, r.output
    assert "2 users, 6 rows" in r.output
    assert set(pq.read_table(tmp_path / "u.parquet").column("user_id").to_pylist()) == {"u05", "u07"}
    with pytest.raises(ConfigError, match=r"1 user id\(s\) not in dataset .*: nobody"):
        recommend(run_dir, tmp_path / "x.parquet", users=["u05", "nobody"], log=lambda s: None)
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.parquet.tmp").exists()
    r = CliRunner().invoke(app, ["recommend", str(tmp_path), "-o", str(tmp_path / "y.parquet")])
    assert r.exit_code == 2 and "not a run folder" in r.output
    with pytest.raises(ConfigError, match="positive"):
        recommend(run_dir, tmp_path / "z.parquet", RecommendConfig(k=0), log=lambda s: None)


def test_cold_start_run_of_an_id_method_never_recommends_held_out_items(tmp_path):
    ring = {f"u{u:02d}": [f"i{(u + k) % 20 + 1}" for k in range(6)] for u in range(60)}
    ds = prepare(raw_from_sequences(ring), tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec", "cold": {"fraction": 0.2, "seed": 0},
                                "model": {"hidden": 16, "inner": 32},
                                "train": {"epochs": 1, "threads": 1, "batch_size": 16}})
    Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    held_out = set((tmp_path / "run" / "cold_items.txt").read_text().split())
    assert len(held_out) == 4
    recommend(tmp_path / "run", tmp_path / "r.parquet", RecommendConfig(k=20, exclude_seen=False), log=lambda s: None)
    got = pq.read_table(tmp_path / "r.parquet").column("item_id").to_pylist()
    assert not held_out & set(got)
    assert len(got) == 60 * 16
