"""SyNCRec training-step time: single-domain sequences packed into one row per user, against one
padded row per domain, side by side.

SyNCRec runs every expert over each user's single-domain sequences and the merged one. mmrec packs a
window's D single-domain sequences into one row (block-diagonal causal mask, ``pack_by_domain``):
two rows per user. ``single_input=inplace`` (the released code's layout) keeps one row of the
window's width per domain, D + 1 rows per user: about what compact inputs cost before packing (the
same expert passes; inplace pairs every target, so its SDSR losses read more positions). Both run
here on the same batches, alternating, with the default SyNCRec configuration (hidden 64, 5 experts
of 2 blocks) and BCE with one negative, on ``--device`` (default the CPU).

Synthetic data: items get one of D domains with the shares of ml-1m genres' first-genre rule (Drama
1,107 movies, Comedy 766, Action 318, Other 308, Thriller 203, Horror 168) when D = 6, else equal
shares; full windows of ``--max-len`` uniform items.

    python bench/syncrec_packing.py                      # D = 6, batch 64 x 50, 20 timed steps
    python bench/syncrec_packing.py --domains 3 --batch 128 --max-len 100 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from mmrec.config import from_dict
from mmrec.trainers.methods.syncrec import SyNCRec, SyNCRecConfig

ML1M_COUNTS = [1107, 766, 318, 308, 203, 168]  # movies per domain, docs/results.md


def build(single_input: str, n_items: int, max_len: int, codes: np.ndarray, n_domains: int) -> SyNCRec:
    torch.manual_seed(0)
    cfg = from_dict(SyNCRecConfig, {"single_input": single_input})
    return SyNCRec(cfg, n_items, max_len, item_domain=codes, domain_names=[f"d{i}" for i in range(1, n_domains + 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", type=int, default=6)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per layout (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    shares = list(np.array(ML1M_COUNTS) / sum(ML1M_COUNTS)) if args.domains == 6 else [1.0 / args.domains] * args.domains
    codes = np.r_[0, rng.choice(np.arange(1, args.domains + 1), size=args.items, p=shares)]
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    models = {name: build(name, args.items, args.max_len, codes, args.domains).to(dev)
              for name in ("compact", "inplace")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    tc = SimpleNamespace(loss="bce")
    times: dict[str, list[float]] = {k: [] for k in models}
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps + 2):
        seq = torch.randint(1, args.items + 1, (args.batch, args.max_len + 1), generator=g)
        batch = {"items": seq[:, :-1], "targets": seq[:, 1:], "lengths": torch.full((args.batch,), args.max_len),
                 "negatives": torch.randint(1, args.items + 1, (args.batch, args.max_len), generator=g)}
        batch = {k: v.to(dev) for k, v in batch.items()}
        order = list(models) if step % 2 == 0 else list(models)[::-1]
        for name in order:
            m, opt = models[name], opts[name]
            m.train()
            sync()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            m.loss(batch, tc).backward()
            opt.step()
            sync()
            if step >= 2:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SyNCRec step on {dev}, {args.domains} domains, batch {args.batch} x {args.max_len}, {args.threads} thread(s), "
          f"median of {args.steps} steps")
    print(f"  packed (compact)       {med['compact'] * 1000:8.1f} ms   rows per user 2")
    print(f"  one row per domain     {med['inplace'] * 1000:8.1f} ms   rows per user {args.domains + 1}")
    print(f"  ratio (per domain / packed) x{med['inplace'] / med['compact']:.2f}")


if __name__ == "__main__":
    main()
