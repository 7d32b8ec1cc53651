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
    """``{slot: ItemFeatures}`` with standard-normal rows ``[n_items + 1, d]`` drawn slot by slot from
    one seeded generator; row 0 (padding) and the items in ``missing[slot]`` have no feature (zero
    rows, ``present`` False)."""
    from mmrec.features.aligned import ItemFeatures

    g = torch.Generator().manual_seed(seed)
    out = {}
    for slot, d in dims.items():
        table = torch.randn(n_items + 1, d, generator=g)
        present = torch.ones(n_items + 1, dtype=torch.bool)
        present[0] = False
        for i in (missing or {}).get(slot, ()):
            present[i] = False
        table[~present] = 0.0
        out[slot] = ItemFeatures(slot, table, present, {})
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
