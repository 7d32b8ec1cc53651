"""ODMT's in-batch loss with one column per target position (the released code's layout) against one
column per distinct target item (mmrec's default, the same loss and gradients): seconds per training
step (forward + backward) and the loss of each, side by side in one process.

    python bench/odmt_candidates.py                        # ml-1m-like: 3,416 items, 256 x 50 positions
    python bench/odmt_candidates.py --items 12101 --batch 256 --len 50 --out odmt_candidates.json

Synthetic pooled text (384-d) and image (1280-d) features and full windows whose items are drawn
from a Zipf-like popularity (exponent ``--zipf``), so targets repeat within a batch as on real data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3416)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--len", type=int, default=50)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mmrec.config import from_dict
    from mmrec.features.aligned import FeatureTable
    from mmrec.trainers.methods.odmt import ODMT, ODMTConfig

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.items
    feats = {}
    for modality, dim in (("text", 384), ("image", 1280)):
        table = torch.as_tensor(rng.normal(size=(n + 1, dim)).astype(np.float32))
        table[0] = 0
        present = torch.ones(n + 1, dtype=torch.bool)
        present[0] = False
        feats[modality] = FeatureTable(modality, table, present, {})
    p = 1.0 / np.arange(1, n + 1) ** args.zipf
    p /= p.sum()
    seq = rng.choice(np.arange(1, n + 1), size=(args.batch, args.len + 1), p=p)
    batch = {"items": torch.as_tensor(seq[:, :-1]), "targets": torch.as_tensor(seq[:, 1:]),
             "lengths": torch.full((args.batch,), args.len), "user": torch.arange(args.batch)}

    class Train:
        loss = "ce"

    res = {}
    for cand in ("positions", "items"):
        torch.manual_seed(0)
        m = ODMT(from_dict(ODMTConfig, {"candidates": cand}), n, args.len, features=feats).train()
        m.item_popularity = torch.as_tensor(np.concatenate([[0], np.bincount(seq[:, 1:].ravel(), minlength=n + 1)[1:]]))
        times, loss = [], None
        for step in range(args.steps + 1):
            m.zero_grad()
            t0 = time.perf_counter()
            loss = m.loss(batch, Train())
            loss.backward()
            if step:  # the first step warms up
                times.append(time.perf_counter() - t0)
        res[cand] = {"s_per_step": statistics.median(times), "loss": float(loss)}
    k = len(torch.unique(batch["targets"]))
    print(f"ODMT step, {args.batch} x {args.len} = {args.batch * args.len:,} positions, {k:,} distinct targets, "
          f"{n:,} items, {args.threads} thread(s)")
    print("| candidates | logits per sub-network | s/step | loss |")
    print("|---|---|---|---|")
    npos = args.batch * args.len
    for cand, cols in (("positions", npos), ("items", k)):
        print(f"| {cand} | {npos:,} x {cols:,} | {res[cand]['s_per_step']:.2f} | {res[cand]['loss']:.5f} |")
    print(f"speed-up: {res['positions']['s_per_step'] / res['items']['s_per_step']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "distinct_targets": k, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
