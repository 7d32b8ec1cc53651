#!/usr/bin/env bash
# The RecBole environment of bench/recbole_side_by_side.py (and of bench/gpu_suite.py's RecBole rows):
# a virtual environment of its own, never a dependency of mmrec. Everything comes from the package
# registry by name (torch included), at pinned versions (bench/envs/recbole-requirements.txt).
#
#   bash bench/envs/recbole.sh [VENV_DIR]        # default: ../venv-recbole (beside the repository)
#
# Then, from the repository root with mmrec's environment active:
#   python bench/recbole_side_by_side.py --recbole-python ../venv-recbole/bin/python --data beauty --timing-only
# (`--data beauty` / `ml1m` / `ml100k` prepares that dataset from ../shared/data on first use; see
# bench/prepare_bench_data.py). Running it again on an existing folder only checks and completes it.
#
# torch 2.14.1 is the release the README pins for mmrec: a CUDA build that also runs on a CPU, so the
# same environment serves the GPU suite. Python 3.10-3.12 (numpy 1.26 has no wheel for 3.13).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/../../../venv-recbole}"   # default: venv-recbole beside the repository
venv="$(realpath -m "$venv" 2>/dev/null || echo "$venv")"
python="${PYTHON:-python3}"
torch_pin="${RECBOLE_TORCH:-torch==2.14.1}"   # another build for another machine: RECBOLE_TORCH=...

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
echo "installing $torch_pin"
"${pip[@]}" "$torch_pin"
echo "installing recbole==1.2.1 without ray and plotly, and its pinned dependencies"
"${pip[@]}" -r "$here/recbole-requirements.txt"
"${pip[@]}" --no-deps "recbole==1.2.1"   # pip may say ray and plotly are missing: left out on purpose
# the same check the side by side's child makes before it trains: the modules it imports
"$venv/bin/python" - <<'EOF'
import numpy as np
for alias, builtin in (("float", float), ("int", int), ("bool", bool), ("long", int)):
    if alias not in np.__dict__:
        setattr(np, alias, builtin)  # as bench/recbole_side_by_side.py does at import time
import recbole, torch
from recbole.config import Config  # noqa: F401
from recbole.data import create_dataset, data_preparation  # noqa: F401
from recbole.model.sequential_recommender import SASRec  # noqa: F401
from recbole.trainer import Trainer  # noqa: F401
print(f"RecBole {recbole.__version__}, torch {torch.__version__}, numpy {np.__version__}: imports ok")
EOF
echo "ready: $venv/bin/python (pass it as --recbole-python)"
