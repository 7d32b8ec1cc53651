"""bench/side_by_side_mmsr.py against a checkout of MMSR23/MMSR (skips without one):
``MMREC_OFFICIAL_MMSR=/path/to/MMSR python -m pytest -q tests/bench/test_side_by_side_mmsr.py``."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not os.environ.get("MMREC_OFFICIAL_MMSR"),
                    reason="set MMREC_OFFICIAL_MMSR to a checkout of MMSR23/MMSR to compare against it")
def test_side_by_side_mmsr_is_within_tolerance_or_explained(capsys):
    spec = importlib.util.spec_from_file_location("side_by_side_mmsr", REPO / "bench" / "side_by_side_mmsr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--official", os.environ["MMREC_OFFICIAL_MMSR"]]) == 0
    out = capsys.readouterr().out
    assert "mmrec with the code flags: gradients" in out and "DIFFERENCES" not in out
