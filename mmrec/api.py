"""mmrec from Python (a notebook, a script): the command line's jobs as functions over the same typed
configs, so a setting means the same thing in both places.

    import mmrec

    data = mmrec.prepare("movielens", "path/to/ml-1m", "data/ml-1m")
    mmrec.extract("minilm", data, store="features", name="minilm")
    run = mmrec.train(data, "sasrec_lf", features={"text": "minilm"}, store="features",
                      settings={"train.epochs": 20}, run_dir="runs/lf")
    run.results["test"]["ndcg@10"]
    run.recommend(["1", "2"], k=5)          # a pyarrow Table: user_id, rank, item_id, score
    run.evaluate("test", {"eval.history_mask": "whole"})
    mmrec.report(["runs/lf"], "report.html")

``settings`` take the ``--set`` keys (``train.epochs``, ``model.hidden``, ``eval.history_mask``,
``prepare.min_user_interactions`` ...), checked as the command line checks them: an unknown key or a
wrong type is an error naming the key.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmrec.config import apply_overrides, from_dict, settings_overrides


def prepare(format: str, input: str | Path, output: str | Path, *, reader: dict[str, Any] | None = None,
            settings: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Read a public dataset (``format``: movielens, s3rec, unisrec, lcrec, amazon-raw, hm, recbole,
    table) and prepare it (``settings``: ``prepare.*`` keys, or the bare field names); returns the
    prepared folder."""
    from mmrec.data.prepare import PrepareConfig
    from mmrec.data.prepare import prepare as _prepare
    from mmrec.data.readers import read_dataset

    sets = {k.removeprefix("prepare."): v for k, v in (settings or {}).items()}
    cfg = from_dict(PrepareConfig, apply_overrides({}, settings_overrides(sets)), prefix="prepare.")
    raw = read_dataset(format, str(input), **(reader or {}))
    return Path(_prepare(raw, str(output), cfg, overwrite=overwrite))


def extract(encoder: str, dataset: str | Path, *, store: str | Path = "features", name: str | None = None,
            model: str | None = None, options: dict[str, Any] | None = None,
            settings: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> Path:
    """Encode the items of a prepared ``dataset`` with ``encoder`` (minilm, bert, swin, vit, clip,
    effnet, price ...) into the feature store; returns the entry folder. ``options``: the encoder's
    ``-o`` options; ``settings``: other ``mmrec extract`` settings (``batch_size``, ``dtype`` ...)."""
    from mmrec.pipeline.extract import ExtractConfig
    from mmrec.pipeline.extract import extract as _extract

    base = {"encoder": encoder, "dataset": str(dataset), "store": str(store), "name": name, "model": model,
            "options": dict(options or {})}
    cfg = from_dict(ExtractConfig, apply_overrides(base, settings_overrides(settings)))
    return Path(_extract(cfg, log=log).entry_dir)


@dataclass
class Run:
    """A trained run: its folder, results and settings; recommend and evaluate from it."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """A finished run folder (written by ``train`` or ``mmrec train``)."""
        from mmrec.errors import ConfigError
        from mmrec.runs.folder import RunFolder

        folder = RunFolder(path)
        results = folder.results()
        if results is None:
            raise ConfigError(f"{folder.path} has no results.json: train the run to the end first "
                              "(mmrec train ... --run-dir DIR --resume continues it)")
        return cls(folder.path, results, folder.require_config())

    def recommend(self, users: list[str] | None = None, k: int = 10, *, exclude_seen: bool = True,
                  history: str = "all", out: str | Path | None = None):
        """The top ``k`` items of ``users`` (raw ids; all users when None) as a pyarrow Table
        (user_id, rank, item_id, score); also written to ``out`` (Parquet) when given."""
        import pyarrow.parquet as pq

        from mmrec.runs.recommend import RecommendConfig
        from mmrec.runs.recommend import recommend as _recommend

        cfg = RecommendConfig(k=k, exclude_seen=exclude_seen, history=history)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(out) if out else Path(tmp) / "recommendations.parquet"
            _recommend(self.path, target, cfg, users=users, log=lambda m: None)
            return pq.read_table(target)

    def evaluate(self, part: str = "test", settings: dict[str, Any] | None = None,
                 checkpoint: str = "best") -> dict[str, Any]:
        """Evaluate the run again (``settings``: ``eval.*`` keys for another protocol)."""
        import torch

        from mmrec.runs.recommend import load_trained_model
        from mmrec.trainers.evaluation import Evaluator

        model, run, data = load_trained_model(self.path, settings_overrides(settings), checkpoint)
        ev = Evaluator(data, run.eval, run.train.max_len, torch.device("cpu"), self.path)
        t0 = time.perf_counter()
        res = ev.evaluate(model, part)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        res["protocol"] = ev.protocol()
        return res


def train(dataset: str | Path, method: str = "sasrec", *, preset: str | None = None,
          features: dict[str, str] | None = None, store: str | Path = "features",
          settings: dict[str, Any] | None = None, run_dir: str | Path | None = None, resume: bool = False,
          log: Callable[[str], None] = print) -> Run:
    """Train ``method`` on a prepared ``dataset`` (settings: defaults < ``preset`` < ``settings``);
    returns the finished ``Run``. ``resume`` continues an interrupted ``run_dir``."""
    from mmrec.runs.config import build_run, preset_base
    from mmrec.trainers.loop import Trainer

    flags: dict[str, Any] = {"dataset": str(dataset), "method": method, "store": str(store)}
    if features:
        flags["features"] = dict(features)
    base, label = preset_base(method, preset)
    run = build_run(flags, settings_overrides(settings), base=base, label=label)
    if run_dir is None:
        run_dir = Path(run.out) / (run.name or f"{Path(run.dataset).name}-{run.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = Trainer(run, run_dir, log=log).fit(resume=resume)
    return Run(Path(run_dir), results, json.loads((Path(run_dir) / "config.json").read_text()))


def report(runs: list[str | Path], out: str | Path = "report.html", *, baseline: str | None = None,
           metric: str = "ndcg@10") -> dict[str, Any]:
    """The HTML report over finished runs (or folders of them); returns its figures."""
    from mmrec.runs.report import build_report

    return build_report(list(runs), out, metric=metric, baseline=baseline)
