"""Run a table of methods x seeds under one protocol and print mean and spread per column.

Each row is ``label=method[:key=value,...]`` (settings as ``mmrec train --set``); every row runs
with every seed, in its own run folder under ``--out`` (a finished run is not run again, so an
interrupted table resumes, and a run cut short continues from its last checkpoint; a folder that
finished with other settings is refused, naming them, not reported; a run another process is
training is left to it, so the same command started twice shares the runs). Columns: test NDCG@10 / HR@10 over all cases, over warm cases and over
cold cases (cold-start protocol, ``--cold``), and seconds per epoch. A method that reports evaluation
variants (ODMT's sub-networks alone) gets one more row per variant, from the same runs.

    python bench/methods_table.py -d data/scientific --store features/scientific --cold 0.1 \\
        --seeds 0 1 2 --out runs/table-sci --set train.epochs=100 --set eval.history_mask=whole \\
        --row sasrec=sasrec --row ef=sasrec_ef:features.text=minilm \\
        --row unisrec-ind=unisrec:features.text=minilm

``--preset paper`` starts each row from its method's preset (``mmrec presets``); a row whose method
has no such preset (SASRec) takes the ``train.*`` and ``eval.*`` values of ``--family``'s preset,
so baselines run under the same preset family (optimiser, schedule, batch, length, protocol).

Prints a Markdown table (mean ± sample standard deviation over the seeds) of the rows asked for and
updates ``<out>/table.json``, which keeps every row any call under ``--out`` has printed (several
calls, e.g. one per row in parallel, add up there; a row holds the seeds of the call that printed it
last, so print the whole table with ``--only-finished`` once the runs are done).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from _runs import train_or_reuse

from mmrec.config import apply_overrides, from_dict
from mmrec.runs.config import RunConfig, preset_base, preset_overrides
from mmrec.runs.report import mean_sd


def _row(spec: str) -> tuple[str, str, list[str]]:
    label, _, rest = spec.partition("=")
    method, _, sets = rest.partition(":")
    return label, method, [s for s in sets.split(",") if s]


def _preset_base(method: str, preset: str | None, family: str | None) -> tuple[dict, str | None]:
    """The settings a row starts from: its method's preset, or the train/eval part of the family's."""
    from mmrec.errors import ConfigError

    try:
        return preset_base(method, preset, family)
    except ConfigError:
        sys.exit(f"method {method} has no preset {preset!r}: give --family METHOD to take that method's "
                 "train.* and eval.* values for this row")


def _save_rows(path: Path, label: str, table: dict) -> None:
    """Put row ``label`` (and its variant rows) of ``table`` into the table file at ``path``, keeping the
    rows of earlier calls (other rows, other processes writing the same ``--out``): read just before
    writing, written to a temporary file and renamed."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    mine = {key for key in table if key == label or key.startswith(f"{label} [")}
    saved = {key: c for key, c in saved.items() if not (key == label or key.startswith(f"{label} ["))}
    saved.update({key: table[key] for key in mine})
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(saved, indent=1))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("--store", default="features")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cold", type=float, default=0.0, help="cold-start fraction (0: off)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="setting for every row")
    ap.add_argument("--row", dest="rows", action="append", required=True, help="label=method[:k=v,...]")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--preset", help="start every row from its method's preset of this name")
    ap.add_argument("--family", help="with --preset: rows whose method has no such preset take the train.* "
                                     "and eval.* values of this method's preset")
    ap.add_argument("--only-finished", action="store_true",
                    help="train nothing: print the table of the runs that have finished (seeds per row may differ)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = {}
    for spec in args.rows:
        label, method, sets = _row(spec)
        runs, seeds = [], []
        for seed in args.seeds:
            run_dir = out / f"{label}-s{seed}"
            preset_base, preset_name = _preset_base(method, args.preset, args.family)
            base = {**preset_base, "dataset": args.dataset, "method": method, "store": args.store,
                    "cold": {"fraction": args.cold, "seed": 0}}
            run = from_dict(RunConfig, apply_overrides(base, list(args.sets) + sets + [f"train.seed={seed}"]))
            if preset_name:
                run.preset = preset_name
                run.preset_overrides = preset_overrides(run, preset_base)
            res = train_or_reuse(run, run_dir, f"{label} seed {seed}", only_finished=args.only_finished)
            if res is None:
                continue
            runs.append(res)
            seeds.append(seed)
        if not runs:
            continue
        some_runs = runs
        k = args.metric
        hr = k.replace("ndcg", "hr")
        col = {
            "method": method, "settings": sets, "seeds": seeds,
            "all": [r["test"][k] for r in runs], "all_hr": [r["test"][hr] for r in runs],
            "warm": [r["test_warm"][k] for r in runs if k in r.get("test_warm", {})],
            "cold": [r["test_cold"][k] for r in runs if k in r.get("test_cold", {})],
            "s_per_epoch": [r["timing"]["seconds_per_epoch_mean"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs],
        }
        table[label] = col
        # methods with evaluation variants (ODMT's sub-networks): one more row each, same runs
        for v in runs[0].get("test_variants", {}):
            vs = [r["test_variants"][v] for r in runs]
            table[f"{label} [{v}]"] = {
                **col, "method": f"{method} ({v} alone)",
                "all": [x[k] for x in vs], "all_hr": [x[hr] for x in vs],
                "warm": [x["warm"][k] for x in vs if k in x.get("warm", {})],
                "cold": [x["cold"][k] for x in vs if k in x.get("cold", {})],
            }
        _save_rows(out / "table.json", label, table)
    if not table:
        sys.exit("no finished runs")
    cases = some_runs[0]
    print(f"\ndataset {args.dataset}; seeds {args.seeds}; cold fraction {args.cold}; test cases "
          f"{cases['test']['n_cases']} (warm {cases.get('test_warm', {}).get('n_cases', '-')}, "
          f"cold {cases.get('test_cold', {}).get('n_cases', '-')}); settings {' '.join(args.sets)}")
    print(f"| row | method | seeds | {k} (all) | HR@{k.split('@')[1]} (all) | {k} warm | {k} cold | s/epoch | best epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, c in table.items():
        print(f"| {label} | {c['method']} | {len(c['all'])} | {mean_sd(c['all'])} | {mean_sd(c['all_hr'])} | {mean_sd(c['warm'])} | "
              f"{mean_sd(c['cold']) if c['cold'] else 'n/a (ids only)'} | {statistics.fmean(c['s_per_epoch']):.1f} | "
              f"{', '.join(map(str, c['best_epoch']))} |")


if __name__ == "__main__":
    from _runs import exit_on_preemption

    exit_on_preemption(main)
