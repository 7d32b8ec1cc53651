"""Full-ranking evaluation, before and after the two changes that sped it up, side by side in one
process on the same model and cases:

- ``untiled``: the score matrix of a whole evaluation batch (``[1024, n_items]`` floats, 50 MB on
  Beauty) written and then re-read by the counting pass, and the query read from the states of
  every position of the window;
- ``tiled``: the same scores in row blocks of about 2^20 values, which stay in a CPU's last-level
  cache between the product and the count (``mmrec.trainers.evaluation._TILE_ELEMENTS``), and the
  transformer's last block computed at each row's last position only (``TransformerEncoder.last``).

    python bench/eval_speed.py --data /work/exp/beauty --data /work/exp/ml1m --out eval_speed.json

SASRec with random weights (the cost does not depend on the weights); the valid part of each
dataset; ``--reps`` alternating repetitions, median seconds. The ranks of the two ways are compared:
the last-position read-out changes float rounding, so a handful of ties may break differently.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="prepared dataset folder (repeatable)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1024, help="eval.batch_size")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mmrec.data.prepared import PreparedDataset
    from mmrec.trainers import evaluation
    from mmrec.trainers.evaluation import EvalConfig, Evaluator
    from mmrec.trainers.methods.sasrec import SASRec, SASRecConfig
    from mmrec.trainers.modules.sequence import gather_last

    torch.set_num_threads(args.threads)

    @contextlib.contextmanager
    def untiled(model):
        saved = evaluation._TILE_ELEMENTS
        evaluation._TILE_ELEMENTS = 1 << 62  # one block: the whole batch
        model.query = lambda items, lengths: gather_last(model.sequence_states(items, lengths), lengths)
        try:
            yield
        finally:
            evaluation._TILE_ELEMENTS = saved
            del model.query

    rows = []
    for path in args.data:
        data = PreparedDataset(path)
        torch.manual_seed(0)
        model = SASRec(SASRecConfig(), data.n_items, 50).eval()
        ev = Evaluator(data, EvalConfig(batch_size=args.batch_size), 50, torch.device("cpu"))
        cases = data.eval_cases("valid")
        times: dict[str, list[float]] = {"untiled": [], "tiled": []}
        ranks = {}
        ev.evaluate(model, "valid", cases)  # warm-up
        for _ in range(args.reps):
            for way in ("untiled", "tiled"):
                ctx = untiled(model) if way == "untiled" else contextlib.nullcontext()
                with ctx:
                    t0 = time.perf_counter()
                    out = ev.evaluate(model, "valid", cases, return_ranks=True)
                    times[way].append(time.perf_counter() - t0)
                ranks[way] = out["ranks"]
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            "dataset": Path(path).name, "path": str(path), "n_items": int(data.n_items), "cases": len(cases),
            "untiled_s": med["untiled"], "tiled_s": med["tiled"], "speedup": med["untiled"] / med["tiled"],
            "ranks_differing": int((ranks["untiled"] != ranks["tiled"]).sum()),
            "max_rank_difference": int(np.abs(ranks["untiled"] - ranks["tiled"]).max()),
            "times": times,
        })
    print("| dataset | items | valid cases | untiled s | tiled s | speed-up | ranks differing |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['n_items']:,} | {r['cases']:,} | {r['untiled_s']:.2f} | {r['tiled_s']:.2f} "
              f"| {r['speedup']:.2f}x | {r['ranks_differing']} (max {r['max_rank_difference']}) |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "reps": args.reps, "batch_size": args.batch_size, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
