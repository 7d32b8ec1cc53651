import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec.data.schema import RawDataset, make_interactions

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MMREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test (with the reason) when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} does not exist (set MMREC_SHARED_DATA to its folder)")
    return p


def raw_from_sequences(seqs: dict[str, list[str]], name: str = "toy", times: dict[str, list[float]] | None = None) -> RawDataset:
    users, items, ts = [], [], []
    for u, seq in seqs.items():
        users += [u] * len(seq)
        items += list(seq)
        ts += list(times[u]) if times else list(range(len(seq)))
    return RawDataset(name, make_interactions({"user_id": users, "item_id": items, "timestamp": ts}))


@pytest.fixture
def successor_raw() -> RawDataset:
    """200 users walking a ring of 40 items (item k is followed by k+1): easy to learn."""
    rng = np.random.default_rng(0)
    seqs = {}
    for u in range(200):
        n = int(rng.integers(6, 20))
        s = int(rng.integers(0, 40))
        seqs[f"u{u}"] = [str((s + k) % 40 + 1) for k in range(n)]
    return raw_from_sequences(seqs)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is fastest (and much faster than two on a busy machine).
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_features(n_items: int, dims: dict, missing: dict | None = None, seed: int = 0) -> dict:
    """``{modality: FeatureTable}`` with standard-normal rows ``[n_items + 1, d]`` drawn modality by modality from
    one seeded generator; row 0 (padding) and the items in ``missing[modality]`` have no feature (zero
    rows, ``present`` False)."""
    from mmrec.features.aligned import FeatureTable

    g = torch.Generator().manual_seed(seed)
    out = {}
    for modality, d in dims.items():
        table = torch.randn(n_items + 1, d, generator=g)
        present = torch.ones(n_items + 1, dtype=torch.bool)
        present[0] = False
        for i in (missing or {}).get(modality, ()):
            present[i] = False
        table[~present] = 0.0
        out[modality] = FeatureTable(modality, table, present, {})
    return out


# ----------------------------------------------------------------- fault-injection tally
# The fault-injection tests (bad inputs, kills, full disks) add what they survived to one counter per
# pytest session, printed at the end of the run:
#   python -m pytest -q tests/test_bad_inputs.py tests/test_preemption.py tests/test_extract.py
FAULTS = pytest.StashKey[Counter]()


def pytest_configure(config):
    config.stash[FAULTS] = Counter()


@pytest.fixture
def faults(request) -> Counter:
    """The session's fault tally; a test adds to it only after its checks passed."""
    return request.config.stash[FAULTS]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tally = config.stash.get(FAULTS, None)
    if tally:
        terminalreporter.section("fault injection (survived, checks passed)")
        for what, n in sorted(tally.items()):
            terminalreporter.write_line(f"{n:6d}  {what}")


def prepared_with_text(tmp_path, seqs, n_items, dim=8, seed=0):
    """A dataset of ``seqs`` over items 1..n_items and a store with one random text entry (``dim``-d)."""
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.schema import Catalogue
    from mmrec.features.store import write_manifest, write_shard

    raw = raw_from_sequences(seqs)
    ids = [str(i) for i in range(1, n_items + 1)]
    raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids])
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    # a text "feature" that reveals the successor rule: item k's vector is a one-hot-ish code of k
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_items, dim)).astype(np.float32)
    entry = tmp_path / "store" / "text"
    (entry / "shards").mkdir(parents=True)
    info = write_shard(entry / "shards" / "part-00000.h5", ids, feats, fmt="h5", dtype="float32")
    write_manifest(entry, {"version": 1, "name": "text", "encoder": {"encoder": "synthetic"}, "modality": "text",
                           "format": "h5", "dtype": "float32", "shape_per_item": [dim], "n_items": n_items,
                           "n_rows": n_items, "shards": [info], "missing": {}, "catalogue_hash": "x",
                           "config_hash": "y", "library_versions": {}, "created": "now"})
    return ds, tmp_path / "store"


@pytest.fixture
def small(tmp_path):
    """A prepared dataset of three users over items 1-6 (item 6 never seen; item 3 without a price)."""
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.schema import Catalogue

    # u0: 1 2 3 4 5   u1: 2 3 1 5   u2: 3 4 5 1 2 3
    raw = raw_from_sequences({"u0": ["1", "2", "3", "4", "5"], "u1": ["2", "3", "1", "5"],
                              "u2": ["3", "4", "5", "1", "2", "3"]})
    raw.catalogue = Catalogue.build(["1", "2", "3", "4", "5", "6"], price=[1.0, 2.0, None, 4.0, 5.0, 6.0])
    return prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))


def loss_and_grads(model, fn):
    """``fn()``'s loss (detached) and the gradient it gives every parameter of ``model`` (from zero):
    what the tests that compare a faster computation with the per-use one read."""
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
