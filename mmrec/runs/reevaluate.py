"""``mmrec evaluate``: a finished run evaluated again, optionally under another protocol.

With ``out``, the evaluation is written as a run folder of its own (``config.json`` with the
overrides, ``results.json``, ``test_ranks.npy``, the original ``metrics.jsonl`` for the curves; no
weights), so ``mmrec report`` can put it beside runs trained under that protocol and test them
pairwise on the same cases. Checkpoint selection is not redone: the kept epoch is the one the run
chose under its own protocol, and ``results.json`` says so (``re_evaluated``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from mmrec.config import apply_overrides
from mmrec.errors import ConfigError
from mmrec.runs.folder import RunFolder


def reevaluate(run_dir: str | Path, overrides: list[str] | None = None, checkpoint: str = "best",
               part: str = "test", out: str | Path | None = None) -> dict[str, Any]:
    """The metrics of ``part`` of ``run_dir``'s ``checkpoint`` with ``overrides``; with ``out``,
    both parts (and the model's evaluation variants, e.g. ODMT's sub-networks) are evaluated and
    written to the run folder ``out``. Returns the part's metrics with ``seconds`` and ``protocol``."""
    import torch

    from mmrec.runs.recommend import load_trained_model
    from mmrec.trainers.evaluation import Evaluator

    if part not in ("valid", "test"):
        raise ConfigError(f"--part {part!r}: use valid or test")
    src = RunFolder(run_dir)
    overrides = list(overrides or [])
    dest = None
    if out is not None:
        dest = RunFolder(out)
        original = src.results()
        if original is None:
            raise ConfigError(f"{src.path}: not a finished run (no results.json); --out writes a finished run's "
                              "evaluation, so train it to the end first")
        if dest.path.resolve() == src.path.resolve():
            raise ConfigError(f"--out {dest.path} is the run folder itself; give a new folder (e.g. "
                              f"{src.path.parent / (src.path.name + '-masked')})")
        if dest.path.exists() and any(dest.path.iterdir()):
            raise ConfigError(f"--out {dest.path} exists and is not empty; give a new folder or remove it")
    # with the cold-start protocol: the same data view the run was trained on
    model, run, data = load_trained_model(src.path, overrides, checkpoint)
    ev = Evaluator(data, run.eval, run.train.max_len, torch.device("cpu"), dest.path if dest else src.path)
    if dest is not None:
        dest.path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = ev.evaluate(model, part, return_ranks=dest is not None)
    seconds = round(time.perf_counter() - t0, 3)
    if dest is not None:
        other = ev.evaluate(model, "valid" if part == "test" else "test", return_ranks=True)
        valid, test = (res, other) if part == "valid" else (other, res)
        dest.write_test_ranks(test.pop("ranks"))
        valid.pop("ranks")
        variants = {}
        for v in model.eval_variants():
            with model.eval_variant(v):
                variants[v] = ev.evaluate(model, "test")
        _write_folder(src, original, dest, overrides, checkpoint, valid, test, variants, ev.protocol())
    res["seconds"] = seconds
    res["protocol"] = ev.protocol()
    return res


def _write_folder(src: RunFolder, original: dict[str, Any], dest: RunFolder, overrides: list[str], checkpoint: str,
                  valid: dict[str, Any],
                  test: dict[str, Any], variants: dict[str, Any], protocol: dict[str, Any]) -> None:
    """``dest`` as a finished run folder: the source's config with ``overrides``, its results with
    the new metrics (breakdowns the re-evaluation does not compute are left out, not left stale)."""
    dest.write_config(apply_overrides(src.require_config(), overrides))
    if src.metrics_path.exists():
        shutil.copyfile(src.metrics_path, dest.metrics_path)
    results = {k: v for k, v in original.items()
               if not (k.startswith(("valid_", "test_")) or k in ("valid", "test"))}
    results["valid"], results["test"] = valid, test
    if variants:
        results["test_variants"] = variants
    results["protocol"] = {**original.get("protocol", {}), "evaluation": protocol}
    if checkpoint != "best":
        results["best_epoch"] = original.get("epochs_run")
    results["re_evaluated"] = {
        "from": str(src.path.resolve()),
        "overrides": overrides,
        "checkpoint": checkpoint,
        "selection": ("the epoch the run kept under its own evaluation protocol (source_evaluation)"
                      if checkpoint == "best" else "the last epoch"),
        "source_evaluation": original.get("protocol", {}).get("evaluation"),
        "left_out": sorted(k for k in original if k.startswith(("valid_", "test_")) and k != "test_variants"),
    }
    dest.write_results(results)
