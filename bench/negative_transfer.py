"""Negative transfer: does starting from a pre-trained ANT run help or hurt a target dataset?

Trains ANT on the target dataset once per adaptation policy (``mmrec.trainers.transfer``) and seed,
each from the same pre-training run (``model.init_from``, ``model.adapt=POLICY``), and compares the
test metrics with ``scratch`` (the same model and command, nothing loaded):

    python bench/negative_transfer.py --pretrained runs/ant-pre -d data/scientific \\
        --store features/scientific --features text=bert,image=swin,price=price \\
        --seeds 0 1 2 --out runs/nt-scientific --set train.epochs=100 --set eval.history_mask=input

The model settings of the pre-training run's ``config.json`` (hidden, layers, heads, inner, experts,
dropouts, ...) and its ``train.max_len`` are inherited, so every policy can load it; ``--set`` applies
on top (``model.*`` / ``train.*``). ``model.objective`` is ``target``.

Columns: test NDCG@10 and HR@10 (mean ± sample sd over the seeds), the gap of the mean NDCG@10 to
``scratch`` (absolute and in %), and "negative transfer": **yes** when the gap is negative and larger
than the two seed spreads together (``gap < -(sd_policy + sd_scratch)``), **no (within spread)** when
it is negative but not beyond them, **no** otherwise; with a single seed there is no spread and any
negative gap counts. Every run has its folder ``<out>/<policy>-s<seed>``; a run with ``results.json``
is not run again (a folder that finished with other settings is refused, not reported), an
interrupted one resumes from its ``last/`` checkpoint, and a run another process is training is
left to it, so the same command started twice shares the runs; ``--only-finished`` trains nothing
and prints the table of what has finished. The table goes to stdout and, with every per-seed
figure, to ``<out>/negative_transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from mmrec.config import apply_overrides, from_dict
from mmrec.errors import ConfigError
from _runs import train_or_reuse
from mmrec.runs.config import RunConfig

POLICIES = ("relearn", "finetune", "freeze", "scratch")
_NOT_INHERITED = ("objective", "init_from", "adapt")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def base_config(pretrained: str | Path, dataset: str, store: str, features: dict[str, str]) -> dict[str, Any]:
    """A target-run configuration that inherits the pre-training run's model settings and max_len."""
    cfg_path = Path(pretrained) / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{pretrained} is not a run folder (no config.json); give a finished ANT pre-training run")
    pre = json.loads(cfg_path.read_text())
    if pre.get("method") != "ant":
        raise ConfigError(f"{pretrained} is a {pre.get('method')} run, not an ANT one")
    model = {k: v for k, v in pre.get("model", {}).items() if k not in _NOT_INHERITED}
    model.update(objective="target", init_from=str(pretrained))
    return {"dataset": dataset, "method": "ant", "store": store, "features": dict(features), "model": model,
            "train": {"max_len": pre.get("train", {}).get("max_len", 50)}}


def run_policies(pretrained: str | Path, dataset: str, store: str, features: dict[str, str], out: str | Path,
                 seeds: list[int], policies: tuple[str, ...] = POLICIES, sets: list[str] | None = None,
                 log=lambda m: print(m, file=sys.stderr, flush=True), only_finished: bool = False
                 ) -> dict[str, list[dict[str, Any]]]:
    """Train (or reuse) every policy x seed run; returns ``{policy: [results.json per seed]}``.
    ``only_finished``: train nothing, return the runs that finished (a policy with none is left out).
    A folder that finished with other settings is refused (``ConfigError``), not reported."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(pretrained, dataset, store, features)
    results: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        for seed in seeds:
            run_dir = out / f"{policy}-s{seed}"
            data = apply_overrides(base, list(sets or []) + [f"model.adapt={policy}", f"train.seed={seed}"])
            run = from_dict(RunConfig, data)
            res = train_or_reuse(run, run_dir, f"{policy} seed {seed}", only_finished=only_finished, log=log)
            if res is None:
                continue
            res["seed"] = seed
            results.setdefault(policy, []).append(res)
    return results


def summarise(results: dict[str, list[dict[str, Any]]], metric: str = "ndcg@10") -> dict[str, dict[str, Any]]:
    """Mean, sd, gap to scratch and the negative-transfer verdict per policy (module docstring)."""
    hr = metric.replace("ndcg", "hr")
    table: dict[str, dict[str, Any]] = {}
    for policy, runs in results.items():
        vals, hrs = [r["test"][metric] for r in runs], [r["test"][hr] for r in runs]
        m, sd = _mean_sd(vals)
        table[policy] = {"seeds": [r.get("seed") for r in runs], "values": vals, "mean": m, "sd": sd,
                         "hr_values": hrs, "hr_mean": _mean_sd(hrs)[0],
                         "hr_sd": _mean_sd(hrs)[1], "best_epoch": [r["best_epoch"] for r in runs]}
    ref = table.get("scratch")
    for policy, row in table.items():
        if ref is None or policy == "scratch":
            row.update(gap=None, gap_pct=None, negative_transfer=None)
            continue
        gap = row["mean"] - ref["mean"]
        spread = row["sd"] + ref["sd"]
        verdict = "yes" if gap < 0 and -gap > spread else ("no (within spread)" if gap < 0 else "no")
        row.update(gap=gap, gap_pct=100.0 * gap / ref["mean"] if ref["mean"] else None, negative_transfer=verdict)
    return table


def markdown(table: dict[str, dict[str, Any]], metric: str = "ndcg@10") -> str:
    hr = metric.replace("ndcg", "HR")
    lines = [f"| policy | seeds | test {metric} | test {hr} | gap vs scratch | gap % | negative transfer |",
             "|---|---|---|---|---|---|---|"]
    for policy, r in table.items():
        gap = "—" if r["gap"] is None else f"{r['gap']:+.4f}"
        pct = "—" if r["gap_pct"] is None else f"{r['gap_pct']:+.1f}%"
        lines.append(f"| {policy} | {len(r['values'])} | {r['mean']:.4f} ± {r['sd']:.4f} | "
                     f"{r['hr_mean']:.4f} ± {r['hr_sd']:.4f} | {gap} | {pct} | {r['negative_transfer'] or '—'} |")
    return "\n".join(lines)


def main() -> None:
    from mmrec.features.aligned import parse_features_option

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", required=True, help="folder of a finished ANT pre-training run")
    ap.add_argument("-d", "--dataset", required=True, help="the target prepared dataset")
    ap.add_argument("--store", default="features")
    ap.add_argument("--features", required=True, help="modality=entry pairs, e.g. text=bert,image=swin")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="setting for every run")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--only-finished", action="store_true",
                    help="train nothing: print the table of the runs that have finished (seeds per policy may differ)")
    args = ap.parse_args()
    policies = tuple(args.policies) + (() if "scratch" in args.policies else ("scratch",))
    results = run_policies(args.pretrained, args.dataset, args.store, parse_features_option(args.features),
                           args.out, args.seeds, policies, args.sets, only_finished=args.only_finished)
    if not results:
        sys.exit(f"no finished runs in {args.out}")
    table = summarise(results, args.metric)
    first = next(iter(results.values()))[0]
    report = {"pretrained": str(args.pretrained), "dataset": args.dataset, "features": args.features,
              "seeds": args.seeds, "settings": args.sets, "metric": args.metric,
              "test_cases": first["test"].get("n_cases"), "policies": table}
    (Path(args.out) / "negative_transfer.json").write_text(json.dumps(report, indent=1))
    print(f"\npre-trained {args.pretrained} -> {args.dataset}; seeds {args.seeds}; test cases "
          f"{report['test_cases']}; settings {' '.join(args.sets)}")
    print(markdown(table, args.metric))


if __name__ == "__main__":
    from _runs import exit_on_preemption

    exit_on_preemption(main)
