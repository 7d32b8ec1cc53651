"""bench/side_by_side_syncrec.py against a checkout of cpark88/SyNCRec: every row within 1e-5 or
explained. Skips unless MMREC_OFFICIAL_SYNCREC points to the checkout."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = os.environ.get("MMREC_OFFICIAL_SYNCREC")


@pytest.mark.skipif(not OFFICIAL, reason="set MMREC_OFFICIAL_SYNCREC to a checkout of cpark88/SyNCRec")
def test_side_by_side_syncrec_agrees_with_the_released_code(capsys):
    spec = importlib.util.spec_from_file_location("side_by_side_syncrec", REPO / "bench" / "side_by_side_syncrec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--official", OFFICIAL]) == 0, capsys.readouterr().out
