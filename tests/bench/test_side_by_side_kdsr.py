"""bench/side_by_side_kdsr.py against a checkout of HoldenHu/KDSR: every row within 1e-5 or
explained. Skips unless MMREC_OFFICIAL_KDSR points to the checkout (it needs scikit-learn, as the
released code does)."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = os.environ.get("MMREC_OFFICIAL_KDSR")


@pytest.mark.skipif(not OFFICIAL, reason="set MMREC_OFFICIAL_KDSR to a checkout of HoldenHu/KDSR")
def test_side_by_side_kdsr_agrees_with_the_released_code(capsys):
    pytest.importorskip("sklearn", reason="the released KDSR code imports scikit-learn")
    spec = importlib.util.spec_from_file_location("side_by_side_kdsr", REPO / "bench" / "side_by_side_kdsr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--official", OFFICIAL]) == 0, capsys.readouterr().out
