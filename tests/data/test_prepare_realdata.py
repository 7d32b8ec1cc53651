"""prepare on the real datasets in ../shared/data (skipped where absent)."""

import pytest
from conftest import shared

from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.data.readers import read_dataset
from mmrec.errors import DataError

pytestmark = pytest.mark.realdata


def test_ml1m_5core_loo(tmp_path):
    d = PreparedDataset(prepare(read_dataset("movielens", shared("ml-1m")), tmp_path / "p"))
    s = d.meta["stats"]
    # every ml-1m user has >= 20 ratings; the item filter drops items with < 5 ratings
    assert (s["n_users"], s["n_interactions"] + d.meta["filters"][0]["rows_dropped"]) == (6040, 1000209)
    assert d.meta["filters"][0]["step"] == "kcore_item"
    assert s["valid_targets"] == s["test_targets"] == 6040
    assert (d.lengths >= 5).all()
    # time order within users
    t = d.times
    for u in (0, 17, 6039):
        seq_t = t[d.offsets[u]:d.offsets[u + 1]]
        assert (seq_t[1:] >= seq_t[:-1]).all()


def test_beauty_is_already_5core(tmp_path):
    d = PreparedDataset(prepare(read_dataset("s3rec", shared("amazon-beauty")), tmp_path / "p"))
    assert (d.n_users, d.n_items, d.meta["stats"]["n_interactions"]) == (22363, 12101, 198502)
    assert d.meta["filters"] == []


def test_hm_unknown_items_counted_or_fatal(tmp_path):
    raw = read_dataset("hm", shared("hm"))
    d = PreparedDataset(prepare(raw, tmp_path / "p", PrepareConfig(min_user_interactions=1, min_item_interactions=1)))
    f = d.meta["filters"][0]
    assert f["step"] == "unknown_items" and f["rows_dropped"] == 21737
    assert d.meta["stats"]["n_interactions"] == 31662 - 21737
    with pytest.raises(DataError, match="21737 interactions name items missing from the catalogue"):
        prepare(raw, tmp_path / "e", PrepareConfig(unknown_items="error"))
