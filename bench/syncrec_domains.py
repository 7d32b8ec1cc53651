"""Per-domain comparison on a multi-domain dataset: single-domain SASRec per domain, a cross-domain
SASRec, SyNCRec and its ablations.

    python bench/syncrec_domains.py -d data/ml-1m-genres --out runs/syncrec-ml1m --seeds 0 1 2 \\
        --epochs 200 --top-domains 5 --set train.loss=bce --set train.batch_size=128

The dataset is a prepared dataset whose catalogue has a ``domain`` per item, e.g. MovieLens genres
(``mmrec data prepare -f movielens -i raw/ml-1m -o data/ml-1m-genres -r domain=first``, optionally
``-r "domain_genres=[Drama, Comedy, Action, Thriller, Horror]"``), H&M product groups (``-f hm ...
-r domain_field=product_group_name`` or ``garment_group_name``), or ``mmrec data merge`` of several
datasets (each part is a domain). Domains are those
SyNCRec uses (``mmrec.trainers.methods.syncrec.item_domains``; ``--top-domains N`` keeps the N
largest and merges the rest into ``(other)``). Rows, each trained with every seed:

- ``sasrec-single``: one SASRec per domain d, trained on the domain-d events alone (a derived
  prepared dataset under ``<out>/data/domain-<k>``: each user's domain-d events in time order, the
  same item ids, each event keeping its train / valid / test part);
- ``sasrec-cross``: SASRec on every event (the merged sequences);
- ``syncrec``, ``syncrec-no-lcntg`` (``model.lc_ntg=false``), ``syncrec-no-scmim``
  (``model.sc_mim=false``), ``syncrec-shared`` (``model.shared_experts=true``, the released code's
  shared experts).

Test cases of domain d: the merged test events whose item is in d and whose user has an earlier
domain-d event (the single-domain model needs a history), so every row is scored on the same cases;
the single-domain model sees the earlier domain-d events, the others every earlier event. ``all``
pools the cases of every domain (for ``sasrec-single`` each case is ranked by its domain's model).
Ranks come from each run's best checkpoint (saved as ``test_ranks.npy`` in the run folder).

Prints two Markdown tables (NDCG@10 and HR@10 per domain, mean ± sample sd over the seeds), then
SyNCRec's negative-transfer gaps and LC-NTG weights per domain at the best epoch (from
metrics.jsonl), and writes ``<out>/syncrec_domains.json``. Every run has its folder
``<out>/<row>[-d<k>]-s<seed>``; a run with ``results.json`` is not run again (a folder that
finished with other settings is refused), an interrupted one resumes from ``last/``, one another
process is training is left to it (its row is then left out of this call's table);
``--only-finished`` trains nothing and prints the rows whose runs finished. ``--set`` applies to every run (``train.*``, ``eval.*``); ``--syncrec-set`` to the
SyNCRec rows only (``model.*``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mmrec.config import apply_overrides, from_dict
from mmrec.data.prepare import _stats
from mmrec.data.prepared import PreparedDataset
from mmrec.trainers.evaluation import Evaluator, metrics_from_ranks
from _runs import train_or_reuse
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import build_model
from mmrec.trainers.methods.syncrec import item_domains

SYNCREC_ROWS = {
    "syncrec": [],
    "syncrec-no-lcntg": ["model.lc_ntg=false"],
    "syncrec-no-scmim": ["model.sc_mim=false"],
    "syncrec-shared": ["model.shared_experts=true"],
}
KS = (10,)


def within_domain_rank(data: PreparedDataset, codes: np.ndarray) -> np.ndarray:
    """For every event, how many earlier events of its user are in the same domain."""
    items = np.asarray(data.items)
    dom = codes[items]
    user_of = np.repeat(np.arange(data.n_users, dtype=np.int64), data.lengths)
    key = user_of * (int(codes.max()) + 1) + dom  # events grouped by (user, domain), time order kept
    order = np.argsort(key, kind="stable")
    k = key[order]
    first = np.r_[0, np.flatnonzero(np.diff(k)) + 1]
    run_start = np.repeat(first, np.diff(np.r_[first, len(k)]))
    out = np.empty(len(items), dtype=np.int64)
    out[order] = np.arange(len(k)) - run_start
    return out


def single_domain_dataset(data: PreparedDataset, codes: np.ndarray, code: int, name: str, out: Path) -> Path:
    """Write the domain-``code`` part of ``data`` as a prepared dataset at ``out`` (once) and return it.
    ``source_positions.npy`` maps each of its events to the event's index in ``data``."""
    if (out / "dataset.json").exists():
        return out
    items = np.asarray(data.items)
    keep = codes[items] == code
    lengths = data.lengths
    user_of = np.repeat(np.arange(data.n_users, dtype=np.int64), lengths)
    pos = np.arange(len(items), dtype=np.int64) - np.repeat(data.offsets[:-1], lengths)
    counts = np.bincount(user_of[keep], minlength=data.n_users)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    split = np.stack([np.bincount(user_of[keep & (pos < np.repeat(data.split[:, j], lengths))],
                                  minlength=data.n_users) for j in (0, 1)], axis=1).astype(np.int64)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    times = np.asarray(data.times)[keep]
    np.save(tmp / "seq_items.npy", items[keep].astype(np.int32))
    np.save(tmp / "seq_times.npy", times.astype(np.float64))
    np.save(tmp / "seq_offsets.npy", offsets)
    np.save(tmp / "split.npy", split)
    np.save(tmp / "source_positions.npy", np.flatnonzero(keep).astype(np.int64))
    for f in data.root.glob("event_*.npy"):
        np.save(tmp / f.name, np.load(f)[keep])
    for f in ("items.parquet", "users.parquet"):
        shutil.copy(data.root / f, tmp / f)
    meta = dict(data.meta)
    meta["name"] = f"{data.name}-{name}"
    meta["stats"] = _stats(data.n_users, data.n_items, np.diff(offsets), split, times)
    meta["derived"] = {"from": str(data.root), "domain": name, "doc": "the events of one domain; each "
                       "event keeps its train / valid / test part (bench/syncrec_domains.py)"}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    tmp.rename(out)
    return out


def train(run_dir: Path, base: dict[str, Any], sets: list[str], label: str, only_finished: bool = False) -> bool:
    """Whether the run has finished here, training it first unless ``only_finished`` (``train_or_reuse``:
    False also when another process is training it)."""
    run = from_dict(RunConfig, apply_overrides(base, sets))
    return train_or_reuse(run, run_dir, label, only_finished=only_finished) is not None


def best_test_ranks(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(absolute positions of the run dataset's test cases, their ranks) at the best checkpoint."""
    path = run_dir / "test_ranks.npy"
    run = from_dict(RunConfig, json.loads((run_dir / "config.json").read_text()))
    data = PreparedDataset(run.dataset)
    cases = data.eval_cases("test")
    if path.exists():
        return cases.pos, np.load(path)
    model, _ = build_model(run, data)
    model.load_state_dict(load_file(str(run_dir / "best.safetensors"), device="cpu"))
    dev = torch.device("cuda" if torch.cuda.is_available() and run.train.device != "cpu" else "cpu")
    model.to(dev)
    ranks = Evaluator(data, run.eval, run.train.max_len, dev, run_dir).evaluate(model, "test", return_ranks=True)["ranks"]
    np.save(path, ranks)
    return cases.pos, ranks


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--top-domains", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="setting for every run")
    ap.add_argument("--syncrec-set", dest="syncrec_sets", action="append", default=[], help="SyNCRec rows only")
    ap.add_argument("--rows", nargs="+", help="only these rows (default: all): sasrec-single, sasrec-cross, "
                                               + ", ".join(SYNCREC_ROWS))
    ap.add_argument("--only-finished", action="store_true",
                    help="train nothing: tables from the runs that finished (a row needs all its seeds' runs)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = PreparedDataset(args.dataset)
    codes, names = item_domains(data, args.top_domains)
    common = list(args.sets) + [f"train.epochs={args.epochs}"]

    # the common test cases: domain-d targets with an earlier domain-d event of the same user
    cases = data.eval_cases("test")
    tdom = codes[np.asarray(data.items)[cases.pos]]
    has_history = within_domain_rank(data, codes)[cases.pos] >= 1
    case_pos = {c: cases.pos[(tdom == c) & has_history] for c in range(1, len(names) + 1)}

    # rows -> seed -> {domain code: ranks over case_pos[code]}
    ranks: dict[str, list[dict[int, np.ndarray]]] = {}
    unfinished: set[str] = set()
    known = {"sasrec-single", "sasrec-cross", *SYNCREC_ROWS}
    if args.rows and set(args.rows) - known:
        ap.error(f"unknown row(s) {sorted(set(args.rows) - known)}; rows are {', '.join(sorted(known))}")

    def wanted(label: str) -> bool:
        return not args.rows or label in args.rows

    for seed in args.seeds:
        seed_sets = [f"train.seed={seed}"]
        per_dom: dict[int, np.ndarray] = {}
        for c, name in enumerate(names if wanted("sasrec-single") else [], start=1):
            sub = single_domain_dataset(data, codes, c, name, out / "data" / f"domain-{c}")
            run_dir = out / f"sasrec-single-d{c}-s{seed}"
            if not train(run_dir, {"dataset": str(sub), "method": "sasrec"}, common + seed_sets,
                         f"sasrec-single {name} seed {seed}", args.only_finished):
                unfinished.add("sasrec-single")
                continue
            pos, r = best_test_ranks(run_dir)
            src = np.load(sub / "source_positions.npy")[pos]  # the same events, as positions in the merged data
            if not np.array_equal(np.sort(src), np.sort(case_pos[c])):
                raise RuntimeError(f"domain {name}: the single-domain test cases differ from the common ones")
            at = {p: i for i, p in enumerate(src)}
            per_dom[c] = r[[at[p] for p in case_pos[c]]]
        if wanted("sasrec-single") and "sasrec-single" not in unfinished:
            ranks.setdefault("sasrec-single", []).append(per_dom)
        cross_rows = {"sasrec-cross": ("sasrec", [])}
        cross_rows.update({k: ("syncrec", v + [f"model.top_domains={args.top_domains}"] + list(args.syncrec_sets))
                           for k, v in SYNCREC_ROWS.items()})
        for label, (method, sets) in cross_rows.items():
            if not wanted(label):
                continue
            run_dir = out / f"{label}-s{seed}"
            if not train(run_dir, {"dataset": str(data.root), "method": method}, common + sets + seed_sets,
                         f"{label} seed {seed}", args.only_finished):
                unfinished.add(label)
                continue
            pos, r = best_test_ranks(run_dir)
            at = {p: i for i, p in enumerate(pos)}
            ranks.setdefault(label, []).append({c: r[[at[p] for p in case_pos[c]]] for c in case_pos})

    table: dict[str, Any] = {"dataset": str(data.root), "domains": names, "seeds": args.seeds,
                             "n_cases": {names[c - 1]: int(len(p)) for c, p in case_pos.items()}, "rows": {}}
    for label in unfinished:  # --only-finished: a row is shown only with every seed
        ranks.pop(label, None)
    if unfinished:
        print(f"not finished (left out): {', '.join(sorted(unfinished))}", file=sys.stderr)
    for label, per_seed in ranks.items():
        row: dict[str, Any] = {}
        for c, name in [*enumerate(names, start=1), (0, "all")]:
            ms = [metrics_from_ranks(np.concatenate(list(s.values())) if c == 0 else s[c], list(KS)) for s in per_seed]
            row[name] = {k: [m[k] for m in ms] for k in ("ndcg@10", "hr@10")}
        table["rows"][label] = row
    # SyNCRec's gaps and weights at the best epoch
    ntg: dict[str, dict[str, list[float]]] = {n: {"gap": [], "weight": []} for n in names}
    for seed in args.seeds if "syncrec" in ranks else []:
        d = out / f"syncrec-s{seed}"
        best = json.loads((d / "results.json").read_text())["best_epoch"]
        for line in (d / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["epoch"] == best:
                for n in names:
                    if row["ntg_gap"].get(n) is not None:
                        ntg[n]["gap"].append(row["ntg_gap"][n])
                    ntg[n]["weight"].append(row["ntg_weight"][n])
    table["ntg_at_best_epoch"] = ntg
    (out / "syncrec_domains.json").write_text(json.dumps(table, indent=1))

    print(f"\ndataset {data.root}; seeds {args.seeds}; settings {' '.join(common)}")
    cols = [*names, "all"]
    for metric in ("ndcg@10", "hr@10"):
        print(f"\n{metric.upper()} per domain of the test target (cases: "
              + ", ".join(f"{n} {table['n_cases'][n]}" for n in names) + ")\n")
        print("| row | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for label, row in table["rows"].items():
            print(f"| {label} | " + " | ".join(_fmt(row[n][metric]) for n in cols) + " |")
    print("\nSyNCRec (full) at the best epoch: negative-transfer gap (mean SDSR loss - mean CDSR loss) and LC-NTG weight\n")
    print("| domain | gap | weight |")
    print("|---|---|---|")
    for n in names:
        print(f"| {n} | {_fmt(ntg[n]['gap'])} | {_fmt(ntg[n]['weight'])} |")


if __name__ == "__main__":
    from _runs import exit_on_preemption

    exit_on_preemption(main)
