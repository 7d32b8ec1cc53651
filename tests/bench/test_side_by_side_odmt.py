"""bench/side_by_side_odmt.py against a checkout of xyliugo/ODMT: skipped unless
MMREC_OFFICIAL_ODMT points to one (the authors' code is never a dependency of mmrec)."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_side_by_side_odmt_is_within_tolerance_or_explained(capsys):
    checkout = os.environ.get("MMREC_OFFICIAL_ODMT")
    if not checkout:
        pytest.skip("set MMREC_OFFICIAL_ODMT to a checkout of xyliugo/ODMT to run the side-by-side comparison")
    spec = importlib.util.spec_from_file_location("side_by_side_odmt", REPO / "bench" / "side_by_side_odmt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--official", checkout]) == 0, capsys.readouterr().out[-4000:]
