import os
from pathlib import Path

import numpy as np
import pytest

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
