"""The sampled softmax against the softmax over every item: SASRec's training step time with
``train.loss=ce`` and ``train.loss=sampled_ce`` (K negatives shared by the step, uniform, log-Q), and
``train.loss=bce`` (one negative per position) for reference, per catalogue size, side by side in
one process: the variants alternate (rotated order each repetition) on one model and optimiser, and
each figure is the median over ``--reps`` steps after a warm-up step of each on a small batch. Seconds
are the process's CPU time (``time.process_time``, one thread), which a machine shared with other
jobs inflates far less than the wall clock (also in the JSON, ``wall_s``).

A step is what the training loop does per batch: the shared draw (``SharedNegatives``), SASRec's
forward and loss, the backward and one Adam step over every parameter (the item table included), on
``--batch`` full windows of ``--max-len`` items (256 x 50 = 12,800 target positions, the scale
table's step), item ids from a Zipf-like popularity (exponent 0.8), one thread. The default sizes
are the catalogues ``bench/scale.py`` keeps after its 5-core filter (10,000; 95,185; 439,651 items)
and one of about a million (1,046,868: what ``1100000:12000000:0.3`` keeps):

    python bench/sampled_softmax.py --items 10000 95185 --reps 5
    python bench/sampled_softmax.py --items 10000 --ks 1024 --groups 1 16 --reps 5   # train.sampled_groups
    python bench/sampled_softmax.py --items 439651 1046868 --reps 3 --ce-reps 1

(``--ce-reps``: fewer timed steps of the full softmax, whose step costs minutes of one core at
these sizes; the others still alternate with it.)

``--pair-negatives K ...`` adds ``train.loss=gbce`` with K negatives per position, once by each of
``pair_logits``'s routes (``gather``: the [N, K, d] rows; ``table``: every item scored, then gathered),
forced for the step; the automatic route takes ``table`` up to ``TABLE_ROUTE_ROWS_PER_COLUMN`` x (K + 1)
rows. The constant's measurement (ml-1m's catalogue and hidden 128, as gSASRec trains it)::

    python bench/sampled_softmax.py --items 1683 3417 12102 40000 --ks 1024 --pair-negatives 16 256 --hidden 128 --batch 128 --reps 3

Prints one Markdown table: seconds per step of each variant and the full softmax's time over each
sampled variant's (how many times cheaper), and writes JSON (``--out``). The whole epoch at a
million items is ``bench/scale.py --loss sampled_ce --epoch`` (docs/benchmarks.md, "Scale").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import mmrec.trainers.modules.losses as losses
from mmrec.config import from_dict
from mmrec.trainers.batching import SharedNegatives
from mmrec.trainers.methods import METHODS


def windows(n_items: int, batch: int, max_len: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``batch`` full windows of ``max_len`` inputs and their next items (Zipf-like item ids)."""
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    seq = rng.choice(n_items, size=(batch, max_len + 1), p=p / p.sum()) + 1
    return {"items": torch.as_tensor(seq[:, :-1]), "targets": torch.as_tensor(seq[:, 1:]),
            "lengths": torch.full((batch,), max_len, dtype=torch.int64)}


def one_size(n_items: int, ks: list[int], reps: int, batch: int, max_len: int, seed: int = 0,
             ce_reps: int | None = None, groups: tuple[int, ...] = (1,), pair_ks: tuple[int, ...] = (),
             hidden: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    cls = METHODS["sasrec"]
    model = cls(from_dict(cls.Config, {} if hidden is None else {"hidden": hidden}), n_items, max_len).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    data = windows(n_items, batch, max_len, rng)
    small = {k: v[:8] for k, v in data.items()}
    variants = {"ce": None, "bce": None,
                **{f"sampled_ce K={k}" + (f" G={g}" if g > 1 else ""): (SharedNegatives(n_items, k), g)
                   for k in ks for g in groups},
                **{f"gbce k={k} {route}": (k, route) for k in pair_ks for route in ("gather", "table")}}
    log_q = {name: torch.as_tensor(s[0].log_q) for name, s in variants.items() if isinstance(s, tuple)
             and isinstance(s[0], SharedNegatives)}

    def step(name: str, b: dict[str, torch.Tensor]) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        shared = variants[name]
        b = dict(b)
        route_rows = losses.TABLE_ROUTE_ROWS_PER_COLUMN
        if name.startswith("gbce"):  # K negatives a position, the route forced for this step
            k, route = shared
            b["negatives"] = torch.as_tensor(rng.integers(1, n_items + 1, size=(*b["items"].shape, k)))
            losses.TABLE_ROUTE_ROWS_PER_COLUMN = 0 if route == "gather" else 1 << 40
            tc = SimpleNamespace(loss="gbce", gbce_t=0.75)
        elif shared is not None:  # G draws (train.sampled_groups), each for a G-th of the rows
            draws = [shared[0].draw(rng) for _ in range(shared[1])]
            b["sampled_items"] = torch.as_tensor(draws[0] if shared[1] == 1 else np.stack(draws))
            b["sampled_log_q"] = log_q[name]
            tc = SimpleNamespace(loss="sampled_ce")
        elif name == "bce":
            b["negatives"] = torch.as_tensor(rng.integers(1, n_items + 1, size=b["items"].shape))
            tc = SimpleNamespace(loss="bce")
        else:
            tc = SimpleNamespace(loss="ce")
        try:
            loss = model.loss(b, tc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            losses.TABLE_ROUTE_ROWS_PER_COLUMN = route_rows
        opt.step()
        return time.process_time() - c, time.perf_counter() - t

    for name in variants:  # warm-up: allocations, Adam's state
        step(name, small)
    times: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name == "ce" and ce_reps is not None and len(times["ce"]) >= ce_reps:
                continue
            cpu, w = step(name, data)
            times[name].append(cpu)
            wall[name].append(w)
    out: dict = {"items": n_items, "positions": batch * max_len, "reps": reps, "ce_reps": len(times["ce"]),
                 "s_per_step": {k: round(statistics.median(v), 4) for k, v in times.items()},
                 "cpu_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
                 "wall_s": {k: [round(x, 4) for x in v] for k, v in wall.items()}}
    ce = out["s_per_step"]["ce"]
    out["ce_over"] = {k: round(ce / v, 1) for k, v in out["s_per_step"].items() if k != "ce"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", nargs="+", type=int, default=[10000, 95185, 439651, 1046868])
    ap.add_argument("--ks", nargs="+", type=int, default=[256, 1024], help="negatives shared by a step")
    ap.add_argument("--groups", nargs="+", type=int, default=[1],
                    help="draws a step, each for a G-th of the rows (train.sampled_groups)")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per variant (median)")
    ap.add_argument("--ce-reps", type=int, help="timed steps of the full softmax (default: --reps)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--pair-negatives", nargs="+", type=int, default=[],
                    help="also gbce with K negatives a position, by each pair_logits route")
    ap.add_argument("--hidden", type=int, help="SASRec's hidden size (default: its preset's)")
    ap.add_argument("--out", default="sampled_softmax.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.items:
        rows.append(one_size(n, args.ks, args.reps, args.batch, args.max_len, ce_reps=args.ce_reps,
                             groups=tuple(args.groups), pair_ks=tuple(args.pair_negatives), hidden=args.hidden))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    names = list(rows[0]["s_per_step"])
    head = ["items", "ce CPU s/step"] + [f"{n} CPU s/step (ce / it)" for n in names if n != "ce"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for r in rows:
        s = r["s_per_step"]
        cells = [f"{r['items']:,}", f"{s['ce']:.3g}"] + [f"{s[n]:.3g} ({r['ce_over'][n]:,}x)" for n in names if n != "ce"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
