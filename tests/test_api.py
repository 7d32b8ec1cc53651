"""The Python API: the README's example runs as written, and the functions check their settings."""

import re
from pathlib import Path

import pytest

import mmrec
from mmrec.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- python-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its Python example block"
    return m.group(1)


def test_the_readme_python_example_runs_as_written(capsys):
    exec(compile(_readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    ndcg, best = out[0].split()
    assert 0.0 <= float(ndcg) <= 1.0 and 1 <= int(best) <= 3
    recs = eval(out[1])  # noqa: S307 - our own printed list
    assert [r["rank"] for r in recs] == [1, 2, 3] and all(r["user_id"] == "u1" for r in recs)
    assert 0.0 <= float(out[2]) <= 1.0


def test_importing_mmrec_loads_no_torch_and_settings_are_checked(tmp_path):
    import subprocess
    import sys

    code = "import sys, mmrec; assert 'torch' not in sys.modules; print(sorted(set(dir(mmrec)) & {'train', 'Run'}))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "['Run', 'train']"
    with pytest.raises(ConfigError, match="train.epoch"):
        mmrec.train(tmp_path, "sasrec", settings={"train.epoch": 3})
    with pytest.raises(ConfigError, match="no results.json"):
        mmrec.Run.open(tmp_path)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmrec.nope  # noqa: B018
