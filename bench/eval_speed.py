"""Full-ranking evaluation, before and after the two changes that sped it up, side by side in one
process on the same model and cases:

- ``untiled``: the score matrix of a whole evaluation batch (``[1024, n_items]`` floats, 50 MB on
  Beauty) written and then re-read by the counting pass, and the query read from the states of
  every position of the window;
- ``tiled``: the same scores in tiles of about 2^20 values (at most 8,192 items wide), which stay
  in a CPU's last-level cache between the product and the count (``_TILE_ELEMENTS``,
  ``_CPU_MAX_CHUNK`` in ``mmrec.trainers.evaluation``), and the
  transformer's last block computed at each row's last position only (``TransformerEncoder.last``).

    python bench/prepare_bench_data.py beauty ml1m      # prepared from ../shared/data into out/bench-data
    python bench/eval_speed.py --data out/bench-data/beauty --data out/bench-data/ml1m --out eval_speed.json
    python bench/eval_speed.py --kernel-items 12101 100000 440000      # the tiles alone, large catalogues

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
    ap.add_argument("--data", action="append", default=[], help="prepared dataset folder (repeatable)")
    ap.add_argument("--kernel-items", type=int, nargs="*", default=[],
                    help="also time the score product and count alone for 1,024 users over this many "
                         "items (random 64-d vectors), in one block per 65,536-item chunk against tiles")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="on a GPU the batch is one block, so only the last-block change is measured")
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
        saved = evaluation._TILE_ELEMENTS, evaluation._CPU_MAX_CHUNK
        evaluation._TILE_ELEMENTS = 1 << 62  # one block: the whole batch, eval.item_chunk items wide
        evaluation._CPU_MAX_CHUNK = 1 << 62
        model.query = lambda items, lengths: gather_last(model.sequence_states(items, lengths), lengths)
        try:
            yield
        finally:
            evaluation._TILE_ELEMENTS, evaluation._CPU_MAX_CHUNK = saved
            del model.query

    rows = []
    for path in args.data:
        data = PreparedDataset(path)
        torch.manual_seed(0)
        dev = torch.device(args.device)
        model = SASRec(SASRecConfig(), data.n_items, 50).to(dev).eval()
        ev = Evaluator(data, EvalConfig(batch_size=args.batch_size), 50, dev)
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
    kernel = []
    for n in args.kernel_items:
        kernel.append(_kernel(n, args.batch_size, args.reps, evaluation))
    if kernel:
        print("| items | users | one block per 65,536 items s | tiles s | tile (users x items) | speed-up |")
        print("|---|---|---|---|---|---|")
        for k in kernel:
            print(f"| {k['n_items']:,} | {k['users']:,} | {k['untiled_s']:.2f} | {k['tiled_s']:.2f} | "
                  f"{k['tile_rows']} x {k['tile_cols']:,} | {k['speedup']:.2f}x |")
        print()
    if rows:
        print("| dataset | items | valid cases | untiled s | tiled s | speed-up | ranks differing |")
        print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['n_items']:,} | {r['cases']:,} | {r['untiled_s']:.2f} | {r['tiled_s']:.2f} "
              f"| {r['speedup']:.2f}x | {r['ranks_differing']} (max {r['max_rank_difference']}) |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "reps": args.reps, "batch_size": args.batch_size, "rows": rows,
                       "kernel": kernel}, f, indent=1)


def _kernel(n_items: int, users: int, reps: int, evaluation) -> dict:
    """Product + count of items scoring >= a threshold, 64-d: one [users, 65,536] block per chunk
    (before) against the evaluator's CPU tiles; both counts must agree."""
    import torch

    g = torch.Generator().manual_seed(0)
    emb, q, t = torch.randn(n_items, 64, generator=g), torch.randn(users, 64, generator=g), torch.randn(users, 1, generator=g)
    cols = min(evaluation._CPU_MAX_CHUNK, n_items)
    rows = max(evaluation._TILE_MIN_ROWS, evaluation._TILE_ELEMENTS // cols)

    def run(chunk: int, block: int) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        out = torch.zeros(users, dtype=torch.int32)
        for r0 in range(0, users, block):
            for lo in range(0, n_items, chunk):
                s = q[r0:r0 + block] @ emb[lo:lo + chunk].T
                out[r0:r0 + block] += (s >= t[r0:r0 + block]).sum(1, dtype=torch.int32)
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {"untiled": [], "tiled": []}
    for _ in range(reps):
        a, ca = run(65536, users)
        b, cb = run(cols, rows)
        assert torch.equal(ca, cb)
        times["untiled"].append(a)
        times["tiled"].append(b)
    u, ti = statistics.median(times["untiled"]), statistics.median(times["tiled"])
    return {"n_items": n_items, "users": users, "untiled_s": u, "tiled_s": ti, "speedup": u / ti,
            "tile_rows": rows, "tile_cols": cols, "times": times}


if __name__ == "__main__":
    main()
