"""Helpers of the bench scripts: item geometry."""

import pytest
import torch


def test_item_geometry_mean_pairwise_cosine_by_hand():
    """bench/item_geometry.py: rows (1,0), (2,0), (0,3): pairs 1, 0, 0 -> mean 1/3; parallel rows -> 1."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "item_geometry.py"
    spec = importlib.util.spec_from_file_location("item_geometry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert mod.mean_pairwise_cosine(x, sample=3) == pytest.approx(1 / 3)
    assert mod.mean_pairwise_cosine(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), sample=10) == pytest.approx(1.0)
    assert mod.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), sample=2) == pytest.approx(-1.0)


def test_sampled_softmax_bench_times_every_variant_and_its_ratio_to_the_softmax():
    """bench/sampled_softmax.py at a tiny size: every variant (groups too) timed, ce / it from the medians."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "sampled_softmax.py"
    spec = importlib.util.spec_from_file_location("sampled_softmax_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = mod.losses.TABLE_ROUTE_ROWS_PER_COLUMN
    out = mod.one_size(60, [8], reps=2, batch=4, max_len=6, groups=(1, 3), pair_ks=(5,), hidden=16)
    assert set(out["s_per_step"]) == {"ce", "bce", "sampled_ce K=8", "sampled_ce K=8 G=3", "gbce k=5 gather",
                                      "gbce k=5 table"}
    assert mod.losses.TABLE_ROUTE_ROWS_PER_COLUMN == before  # the forced route is undone after every step
    assert all(len(v) == 2 for v in out["cpu_s"].values()) and out["positions"] == 24
    for name, ratio in out["ce_over"].items():
        assert ratio == pytest.approx(out["s_per_step"]["ce"] / out["s_per_step"][name], rel=0.06, abs=0.06)
