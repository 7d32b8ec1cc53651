"""Are a feature method's item vectors telling items apart? Geometry of trained (and fresh) item tables.

For each run folder: the mean norm of the scoring table's item vectors, their mean pairwise cosine
over a sample of items (near 1: the items have collapsed onto one direction and the softmax over
them is near uniform), the same for each feature modality's adapted vectors where the method keeps them
(``FeatureItemEncoder``), and, for a freshly built model of the same config, the item and query norms and
the spread of the initial logits per row (how confident, and how wrong, the untrained softmax is):

    python bench/item_geometry.py runs/table-ml1m/mmsr_merged-s0 runs/table-ml1m/mmsr_sum-s0

Prints a Markdown table; reads the runs' best checkpoints on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F


def mean_pairwise_cosine(x: torch.Tensor, sample: int, seed: int = 0) -> float:
    """Mean cosine over distinct pairs of (a sample of) the rows of ``x``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:sample]
    n = F.normalize(x[idx].float(), dim=-1)
    c = n @ n.T
    off = ~torch.eye(len(idx), dtype=torch.bool)
    return float(c[off].mean())


def geometry(run_dir: Path, sample: int) -> dict[str, str]:
    from mmrec.runs.recommend import load_trained_model
    from mmrec.trainers.loop import build_model

    model, run, data = load_trained_model(run_dir)
    row = {"run": run_dir.name}
    with torch.no_grad():
        table = model.item_embeddings()[1:]
        row["item norm"] = f"{float(table.norm(dim=-1).mean()):.2f}"
        row["item cosine"] = f"{mean_pairwise_cosine(table, sample):.3f}"
        items = getattr(model, "items", None)
        modalities = []
        if items is not None and hasattr(items, "modality_vectors"):
            for s, v in items.modality_vectors(None).items():
                v = v[1:]
                modalities.append(f"{s} {float(v.norm(dim=-1).mean()):.2f} / {mean_pairwise_cosine(v, sample):.3f}")
        row["modality norm / cosine"] = ", ".join(modalities) or "-"
        torch.manual_seed(0)
        fresh, _ = build_model(run, data)
        fresh.eval()
        t0 = fresh.item_embeddings()[1:]
        g = torch.Generator().manual_seed(0)
        seqs = torch.randint(1, len(t0) + 1, (64, run.train.max_len), generator=g)
        q = fresh.query(seqs, torch.full((64,), run.train.max_len))
        logits = q @ t0.T
        row["fresh item / query norm"] = f"{float(t0.norm(dim=-1).mean()):.2f} / {float(q.norm(dim=-1).mean()):.2f}"
        row["fresh item cosine"] = f"{mean_pairwise_cosine(t0, sample):.3f}"
        row["fresh logit sd"] = f"{float(logits.std(-1).mean()):.2f}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--sample", type=int, default=1000, help="items sampled for the pairwise cosines")
    args = ap.parse_args()
    rows = [geometry(r, args.sample) for r in args.runs]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
