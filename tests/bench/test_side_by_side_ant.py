"""bench/side_by_side_ant.py against a checkout of ninglab/ANT: skipped unless MMREC_OFFICIAL_ANT
points to one (the authors' code is never a dependency of mmrec). RecBole's MultiHeadAttention comes
from ``MMREC_RECBOLE`` (an unpacked recbole-1.1.1 wheel) when set, else the script's transcription."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_side_by_side_ant_is_within_tolerance_or_explained(capsys):
    checkout = os.environ.get("MMREC_OFFICIAL_ANT")
    if not checkout:
        pytest.skip("set MMREC_OFFICIAL_ANT to a checkout of ninglab/ANT to run the side-by-side comparison")
    spec = importlib.util.spec_from_file_location("side_by_side_ant", REPO / "bench" / "side_by_side_ant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--official", checkout]) == 0, capsys.readouterr().out[-4000:]
