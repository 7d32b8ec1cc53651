"""Cross-entropy over all items: one softmax over the whole ``[N, V]`` logits against the row-chunked
loss (``mmrec.trainers.modules.losses.ce_all_items``, which chunks above ``max_logits``), side by
side in one run: seconds per forward + backward step and the peak memory each adds.

    python bench/ce_memory.py                       # Beauty-like and ml-1m-like shapes, 1 thread
    python bench/ce_memory.py --shapes 12800:12101 --max-logits 28 22 20 --threads 2

Each (shape, max_logits) runs in its own subprocess so its peak RSS is its own. ``2^28`` never
chunks at these shapes (the old default); the default is ``2^22``. Prints a Markdown table with the
ratio of each setting to the unchunked one, and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time, torch
from mmrec.trainers.modules.losses import ce_all_items
n, v, ml, threads, reps = map(int, sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
h = torch.randn(n, 64, requires_grad=True)
w = torch.randn(v + 1, 64, requires_grad=True)
t = torch.randint(1, v + 1, (n,))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
times = []
for _ in range(reps):
    h.grad = w.grad = None
    t0 = time.perf_counter()
    loss = ce_all_items(h, t, w, max_logits=ml)
    loss.backward()
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "peak_mib": peak, "loss": loss.item()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["12800:12101", "12800:3416"],
                    help="positions:items (256 x 50 positions; Beauty's and ml-1m's catalogues)")
    ap.add_argument("--max-logits", nargs="+", type=int, default=[28, 22, 20], help="powers of two")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        n, v = map(int, shape.split(":"))
        ref = None
        for p in args.max_logits:
            r = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(v), str(2**p), str(args.threads), str(args.reps)],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            chunked = n * v > 2**p
            ref = ref or res
            rows.append({"positions": n, "items": v, "max_logits": f"2^{p}", "chunked": chunked, **res,
                         "time_ratio": res["seconds"] / ref["seconds"], "memory_ratio": res["peak_mib"] / ref["peak_mib"]})
    print(f"| positions | items | max_logits | chunked | s/step (median of {args.reps}) | peak MiB added | loss | time / first | memory / first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['positions']:,} | {r['items']:,} | {r['max_logits']} | {'yes' if r['chunked'] else 'no'} | "
              f"{r['seconds']:.3f} | {r['peak_mib']:,.0f} | {r['loss']:.5f} | {r['time_ratio']:.2f}x | {r['memory_ratio']:.2f}x |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
