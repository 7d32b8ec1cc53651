"""bench/side_by_side_unisrec.py against a checkout of RUCAIBox/UniSRec: skipped unless
MMREC_OFFICIAL_UNISREC points to one (the authors' code and RecBole are never dependencies of mmrec;
RecBole's package folder comes from MMREC_RECBOLE, an importable ``recbole`` or /work/venvs/unisrec)."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_side_by_side_unisrec_is_within_tolerance_or_explained(capsys):
    checkout = os.environ.get("MMREC_OFFICIAL_UNISREC")
    if not checkout:
        pytest.skip("set MMREC_OFFICIAL_UNISREC to a checkout of RUCAIBox/UniSRec to run the side-by-side comparison")
    spec = importlib.util.spec_from_file_location("side_by_side_unisrec", REPO / "bench" / "side_by_side_unisrec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recbole = mod._default_recbole()
    if not (recbole / "model" / "sequential_recommender" / "sasrec.py").is_file():
        pytest.skip(f"no RecBole package folder at {recbole}: set MMREC_RECBOLE (pip install --no-deps recbole==1.2.1 "
                    "into a separate environment)")
    assert mod.main(["--official", checkout, "--summary"]) == 0, capsys.readouterr().out[-4000:]
