#!/usr/bin/env bash
# RecBole's source files, unpacked from its wheel on the package registry (no install, no
# dependencies): what the official-code side by sides execute file by file.
#
#   bash bench/envs/recbole-source.sh 1.1.1 ../recbole-1.1.1     # ANT:     --recbole ../recbole-1.1.1
#   bash bench/envs/recbole-source.sh 1.2.1 ../recbole-1.2.1     # UniSRec: --recbole ../recbole-1.2.1/recbole
#
# (bench/side_by_side_ant.py reads DIR/recbole/model/layers.py; bench/side_by_side_unisrec.py takes the
# package folder itself.) An environment made by bench/envs/recbole.sh holds RecBole 1.2.1 too:
# ENV/lib/python3.*/site-packages/recbole.
set -euo pipefail
version="${1:?usage: bash bench/envs/recbole-source.sh VERSION DIR}"
dest="${2:?usage: bash bench/envs/recbole-source.sh VERSION DIR}"
python="${PYTHON:-python3}"
mkdir -p "$dest"
if [ -f "$dest/recbole/__init__.py" ]; then
    echo "already there: $dest/recbole"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: "recbole==$version" -d "$tmp"
"$python" -m zipfile -e "$tmp"/recbole-"$version"-*.whl "$dest"
"$python" - "$dest" "$version" <<'EOF'
import re, sys
from pathlib import Path
init = (Path(sys.argv[1]) / "recbole" / "__init__.py").read_text()
found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", init)
assert found and found.group(1) == sys.argv[2], f"unpacked RecBole is {found and found.group(1)}, not {sys.argv[2]}"
print(f"RecBole {found.group(1)} source in {Path(sys.argv[1]) / 'recbole'}")
EOF
