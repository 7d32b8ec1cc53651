"""Helpers of the bench scripts: item geometry, the methods table file."""

import json

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



def test_methods_table_file_keeps_rows_of_earlier_calls(tmp_path):
    """bench/methods_table.py: a call that prints one row (and its variant rows) leaves the other rows of
    the table file alone and replaces its own, variants included."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "methods_table.py"
    sys.path.insert(0, str(path.parent))  # its bench helpers (_runs)
    spec = importlib.util.spec_from_file_location("methods_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    f = tmp_path / "table.json"
    mod._save_rows(f, "a", {"a": {"all": [1]}, "a [id]": {"all": [2]}})
    mod._save_rows(f, "b", {"a": {"all": [9]}, "b": {"all": [3]}})  # only b's rows are b's to write
    assert json.loads(f.read_text()) == {"a": {"all": [1]}, "a [id]": {"all": [2]}, "b": {"all": [3]}}
    mod._save_rows(f, "a", {"a": {"all": [4]}})  # a again, now without variants: the old variant goes
    assert json.loads(f.read_text()) == {"b": {"all": [3]}, "a": {"all": [4]}}
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]  # no temporary file left behind


def test_methods_table_rows_start_from_their_preset_or_the_familys_train_and_eval():
    import importlib.util
    import sys
    from pathlib import Path

    import pytest

    from mmrec.runs.config import preset_settings

    path = Path(__file__).resolve().parents[2] / "bench" / "methods_table.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("methods_table_presets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    own, name = mod._preset_base("odmt", "paper", None)
    assert own == preset_settings("odmt", "paper") and name == "paper"
    fam, name = mod._preset_base("sasrec", "paper", "odmt")
    assert set(fam) == {"train", "eval"} and fam["train"] == own["train"] and fam["eval"] == own["eval"]
    assert name == "odmt:paper (train, eval)"
    assert mod._preset_base("sasrec", None, None) == ({}, None)
    with pytest.raises(SystemExit, match="give --family"):
        mod._preset_base("sasrec", "paper", None)
