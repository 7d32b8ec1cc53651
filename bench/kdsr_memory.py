"""Peak memory of KDSR training for two catalogue sizes, side by side.

KDSR's released code keeps dense N x N teacher matrices (float64 scores and int64 codes for each of
two modalities: 32 N^2 bytes). mmrec's KDSR computes the teacher per batch, so memory should grow
with N (feature tables, embeddings, the all-items softmax), not with N^2.

Each size runs in a fresh subprocess (peak RSS from ``resource.getrusage``, which torch allocations
count in, unlike ``tracemalloc``): synthetic features (text 384-d, image 256-d, 5% of the items
without an image), the default KDSR configuration (hidden 64, SASRec, codebook of 50 codes fitted on
100,000 pairs), then a few Adam steps on random sequences with a fixed batch, on the CPU.

    python bench/kdsr_memory.py                      # 10,000 and 100,000 items
    python bench/kdsr_memory.py --sizes 10000 50000 --steps 3 --batch 32 --max-len 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(n_items: int, steps: int, batch: int, max_len: int, threads: int, seed: int) -> dict:
    import torch

    from mmrec.config import from_dict
    from mmrec.features.aligned import FeatureTable
    from mmrec.trainers.methods.kdsr import KDSR, KDSRConfig

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rss_import = _rss_mb()
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for modality, dim, missing in (("text", 384, 0.0), ("image", 256, 0.05)):
        table = torch.randn(n_items + 1, dim, generator=g)
        present = torch.rand(n_items + 1, generator=g) >= missing
        present[0] = False
        table[~present] = 0.0
        feats[modality] = FeatureTable(modality, table, present, {})
    feature_mb = sum(f.table.numel() * 4 for f in feats.values()) / 2**20
    rss_features = _rss_mb()

    t0 = time.perf_counter()
    model = KDSR(from_dict(KDSRConfig, {}), n_items, max_len, features=feats)
    build_s = time.perf_counter() - t0
    rss_built = _rss_mb()

    class Train:
        loss = "ce"

    opt = torch.optim.Adam(model.param_groups(1e-3), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        lengths = torch.randint(5, max_len + 1, (batch,), generator=g)
        seq = torch.randint(1, n_items + 1, (batch, max_len + 1), generator=g)
        pos = torch.arange(max_len)[None, :]
        items = torch.where(pos < lengths[:, None], seq[:, :-1], 0)
        targets = torch.where(pos < lengths[:, None], seq[:, 1:], 0)
        loss = model.loss({"items": items, "targets": targets, "lengths": lengths}, Train())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step_s = (time.perf_counter() - t0) / steps
    return {"n_items": n_items, "rss_after_import_mb": rss_import, "rss_after_features_mb": rss_features,
            "rss_after_build_mb": rss_built, "peak_rss_mb": _rss_mb(), "feature_tables_mb": feature_mb,
            "build_s": build_s, "step_s": step_s, "loss_parts": model.loss_parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.steps, a.batch, a.max_len, a.threads, a.seed)))
        return
    rows = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(a.steps), "--batch", str(a.batch),
               "--max-len", str(a.max_len), "--threads", str(a.threads), "--seed", str(a.seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"KDSR training memory (CPU, {a.threads} thread(s), batch {a.batch} x max_len {a.max_len}, "
          f"{a.steps} Adam steps, default config; text 384-d + image 256-d features)")
    head = (f"{'items':>8} {'peak RSS MiB':>12} {'after build':>12} {'after import':>13} {'feat tables':>12} "
            f"{'build s':>8} {'s/step':>7} {'dense teacher (code)':>21}")
    print(head)
    for r in rows:
        dense_gb = 32 * r["n_items"] ** 2 / 2**30
        print(f"{r['n_items']:>8} {r['peak_rss_mb']:>12.0f} {r['rss_after_build_mb']:>12.0f} "
              f"{r['rss_after_import_mb']:>13.0f} {r['feature_tables_mb']:>12.0f} {r['build_s']:>8.2f} "
              f"{r['step_s']:>7.2f} {dense_gb:>17.1f} GiB")
    if len(rows) >= 2:
        a0, a1 = rows[0], rows[-1]
        size = a1["n_items"] / a0["n_items"]
        peak = a1["peak_rss_mb"] / a0["peak_rss_mb"]
        net = (a1["peak_rss_mb"] - a1["rss_after_import_mb"]) / (a0["peak_rss_mb"] - a0["rss_after_import_mb"])
        print(f"catalogue x{size:.0f}: peak RSS x{peak:.2f}, above the after-import baseline x{net:.2f} "
              f"(linear would be x{size:.0f}, a dense N x N teacher x{size ** 2:.0f})")


if __name__ == "__main__":
    main()
