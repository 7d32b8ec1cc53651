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
