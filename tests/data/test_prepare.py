import json

import numpy as np
import pytest
from conftest import raw_from_sequences

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.data.schema import Catalogue, RawDataset, make_interactions
from mmrec.errors import DataError


def _prep(raw, tmp_path, **kw):
    return PreparedDataset(prepare(raw, tmp_path / "p", PrepareConfig(**kw)))


def test_kcore_is_iterative_and_logged(tmp_path):
    # users are filtered first, then items, in each round. Round 1: item x (1 event) goes;
    # round 2: user c is left with 1 event and goes, then item 3 is left with 1 event and goes.
    seqs = {"a": ["1", "2"], "b": ["1", "2"], "c": ["3", "x"], "d": ["1", "2", "3"]}
    kw = dict(min_user_interactions=2, min_item_interactions=2)
    d = _prep(raw_from_sequences(seqs), tmp_path, **kw)
    assert d.n_users == 3 and d.n_items == 2
    steps = [(f["step"], f["rows_dropped"], f["round"]) for f in d.meta["filters"]]
    assert steps == [("kcore_item", 1, 1), ("kcore_user", 1, 2), ("kcore_item", 1, 2)]
    assert d.meta["kcore_rounds"] == 3
    d1 = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "q", PrepareConfig(kcore_iterative=False, **kw)))
    assert d1.n_items == 3 and d1.n_users == 4  # one pass: only x goes; c keeps a single event


def test_kcore_emptying_names_the_filter(tmp_path):
    seqs = {"a": ["1", "2"], "b": ["3", "4"]}
    with pytest.raises(DataError, match=r"user filter of the k-core \(min_user_interactions=5, round 1\) removed every"):
        prepare(raw_from_sequences(seqs), tmp_path / "p", PrepareConfig())


def test_time_order_with_stable_tie_break_and_id_maps(tmp_path):
    # rows out of time order; two events of user 10 share timestamp 5: file order must win
    raw = RawDataset("t", make_interactions({
        "user_id": ["10", "9", "10", "10", "9", "9"],
        "item_id": ["b", "z", "a", "c", "y", "x"],
        "timestamp": [5, 3, 5, 1, 2, 1],
    }))
    d = _prep(raw, tmp_path, min_user_interactions=1, min_item_interactions=1)
    # users ordered numerically by raw id: "9" -> 0, "10" -> 1; items a,b,c,x,y,z -> 1..6
    assert list(d.raw_user_ids) == ["9", "10"]
    assert list(d.raw_item_ids) == ["", "a", "b", "c", "x", "y", "z"]
    assert d.sequence(0).tolist() == [4, 5, 6]  # x(1) y(2) z(3)
    assert d.sequence(1).tolist() == [3, 2, 1]  # c(1) then b, a (both at 5, file order b before a)
    assert d.offsets.tolist() == [0, 3, 6]


def test_leave_one_out_split_and_cases(tmp_path):
    seqs = {"a": list("pqrst"), "b": list("pqr"), "c": list("pq")}
    d = _prep(raw_from_sequences(seqs), tmp_path, min_user_interactions=1, min_item_interactions=1)
    assert d.split.tolist() == [[3, 4], [1, 2], [2, 2]]  # c (2 events) only trains
    v, t = d.eval_cases("valid"), d.eval_cases("test")
    assert v.user.tolist() == [0, 1] and (v.pos - d.offsets[v.user]).tolist() == [3, 1]
    assert t.user.tolist() == [0, 1] and (t.pos - d.offsets[t.user]).tolist() == [4, 2]
    assert d.meta["stats"]["train_targets"] == 2 + 0 + 1


def test_ratio_and_time_splits(tmp_path):
    seqs = {"a": [str(i) for i in range(10)], "b": [str(i) for i in range(5)]}
    d = _prep(raw_from_sequences(seqs), tmp_path, min_user_interactions=1, min_item_interactions=1,
              split="ratio", ratios=[0.6, 0.2, 0.2])
    assert d.split.tolist() == [[6, 8], [3, 4]]
    # KDSR's code rounds the test part: 7 events at [0.8, 0, 0.2] -> the last floor(1.4) = 1 tests, 6 train
    # (rounding the train part gives floor(5.6) = 5 train, 2 test)
    seven = raw_from_sequences({"a": [str(i) for i in range(7)], "b": [str(i) for i in range(10)]})
    d3 = _prep(seven, tmp_path / "r", min_user_interactions=1, min_item_interactions=1, split="ratio",
               ratios=[0.8, 0.0, 0.2], ratio_rounding="test")
    d4 = _prep(seven, tmp_path / "r2", min_user_interactions=1, min_item_interactions=1, split="ratio",
               ratios=[0.8, 0.0, 0.2])
    assert d3.split.tolist() == [[6, 6], [8, 8]] and d4.split.tolist() == [[5, 5], [8, 8]]
    assert len(d3.eval_cases("test").pos) == 1 + 2 and len(d3.eval_cases("valid").pos) == 0
    times = {"a": [1, 2, 3, 4, 5, 6], "b": [1, 5, 9, 10, 11, 12]}
    raw = raw_from_sequences({"a": list("abcdef"), "b": list("abcdef")}, times=times)
    d2 = PreparedDataset(prepare(raw, tmp_path / "t", PrepareConfig(min_user_interactions=1, min_item_interactions=1,
                                                                     split="time", time_split=[5, 10])))
    assert d2.split.tolist() == [[4, 6], [1, 3]]  # a: t<5 -> 4 events, t<10 -> all; b: t<5 -> 1, t<10 -> 3
    assert d2.meta["split"]["valid_start"] == 5


def test_unknown_items_drop_error_keep(tmp_path):
    raw = raw_from_sequences({"a": ["1", "2", "3", "9"], "b": ["1", "2", "9", "9"]})
    raw.catalogue = Catalogue.build(["1", "2", "3"], title=["one", None, "three"])
    kw = dict(min_user_interactions=1, min_item_interactions=1)
    d = PreparedDataset(prepare(raw, tmp_path / "d", PrepareConfig(**kw)))
    f = d.meta["filters"][0]
    assert f["step"] == "unknown_items" and f["rows_dropped"] == 3 and f["examples"] == ["9"]
    assert d.n_items == 3
    titles = d.item_table().column("title").to_pylist()
    assert titles == ["one", None, "three"]  # missing stays missing
    with pytest.raises(DataError, match=r"3 interactions name items missing from the catalogue \(e.g. \['9'\]\)"):
        prepare(raw, tmp_path / "e", PrepareConfig(unknown_items="error", **kw))
    k = PreparedDataset(prepare(raw, tmp_path / "k", PrepareConfig(unknown_items="keep", **kw)))
    assert k.n_items == 4 and k.item_table().column("title").to_pylist()[-1] is None


def test_dedup_and_max_seq_len(tmp_path):
    seqs = {"a": ["1", "1", "2", "1", "3", "4"]}
    kw = dict(min_user_interactions=1, min_item_interactions=1)
    d = _prep(raw_from_sequences(seqs), tmp_path, dedup="consecutive", **kw)
    assert d.raw_item_ids[d.sequence(0)].tolist() == ["1", "2", "1", "3", "4"]
    d2 = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "f", PrepareConfig(dedup="first", **kw)))
    assert d2.raw_item_ids[d2.sequence(0)].tolist() == ["1", "2", "3", "4"]
    d3 = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "m", PrepareConfig(max_seq_len=3, **kw)))
    assert d3.raw_item_ids[d3.sequence(0)].tolist() == ["1", "3", "4"]
    assert [f["step"] for f in d3.meta["filters"]] == ["max_seq_len"]


def test_sample_users_keeps_whole_histories_of_a_seeded_sample(tmp_path):
    seqs = {f"u{k}": [str(k), str(k + 1), str(k + 2)] for k in range(10)}
    kw = dict(min_user_interactions=1, min_item_interactions=1)
    a = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "a", PrepareConfig(sample_users=4, **kw)))
    b = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "b", PrepareConfig(sample_users=4, **kw)))
    c = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "c",
                                PrepareConfig(sample_users=4, sample_seed=1, **kw)))
    assert a.n_users == 4 and list(a.raw_user_ids) == list(b.raw_user_ids)
    assert list(c.raw_user_ids) != list(a.raw_user_ids)
    for u in range(a.n_users):  # every kept user keeps its whole history, in order
        k = int(a.raw_user_ids[u][1:])
        assert a.raw_item_ids[a.sequence(u)].tolist() == [str(k), str(k + 1), str(k + 2)]
    f = a.meta["filters"][0]
    assert (f["step"], f["rows_before"], f["rows_after"], f["users_kept"]) == ("sample_users", 30, 12, 4)
    # more users asked for than there are: everything is kept, and the log says so
    d = PreparedDataset(prepare(raw_from_sequences(seqs), tmp_path / "d", PrepareConfig(sample_users=50, **kw)))
    assert d.n_users == 10 and d.meta["filters"][0]["rows_dropped"] == 0
    with pytest.raises(Exception, match="sample_users must be at least 1"):
        PrepareConfig(sample_users=0).validate()


def test_overwrite_protection_and_json(tmp_path, successor_raw):
    out = prepare(successor_raw, tmp_path / "p", PrepareConfig())
    with pytest.raises(Exception, match="--overwrite"):
        prepare(successor_raw, tmp_path / "p", PrepareConfig())
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["stats"]["n_interactions"] == int(np.load(out / "seq_offsets.npy")[-1])
    assert meta["tie_break"].startswith("events with equal timestamps keep their order")
    assert not (out / ".prepare-tmp").exists()


def test_memory_is_flat(tmp_path, successor_raw):
    d = PreparedDataset(prepare(successor_raw, tmp_path / "p", PrepareConfig()))
    assert d.items.ndim == 1 and len(d.items) == d.meta["stats"]["n_interactions"]
    assert isinstance(d.items, np.memmap)
