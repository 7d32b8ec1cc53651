"""How cost grows with scale: synthetic catalogues and interaction logs, one subprocess per size.

For each (items, interactions) size: prepare time (k-core, ordering, splitting, writing), training
seconds per step (SASRec, and SASRec with a 384-d text feature fused in; wall and the process's CPU
seconds, which a shared machine inflates less), full-ranking evaluation
time over every item, and peak memory (max RSS of the subprocess, which holds everything). Users
get Zipf-like item choices so k-core keeps most of the data. Each size runs in a fresh process so
peak memory is its own; a size that fails (e.g. out of memory) is reported with the error and the
next one still runs.

    python bench/scale.py --sizes 10000:1000000 100000:3000000 1000000:10000000 --steps 20

A size ``items:events:zipf`` sets the popularity exponent (default 0.8); a flatter one keeps more
items through the 5-core filter: ``1100000:12000000:0.3`` keeps about a million. ``--loss sampled_ce``
trains both models with the sampled softmax (``--sampled-negatives`` K shared by each step, uniform)
instead of the softmax over every item, and ``--epoch`` then also times one whole training epoch
of SASRec through the training loop (``Trainer``, one thread, no evaluation; wall seconds and the
process's CPU seconds, which a shared machine inflates less):

    python bench/scale.py --sizes 1100000:12000000:0.3 --steps 5 --loss sampled_ce --sampled-negatives 1024 --epoch

Prints a Markdown table and the growth ratios between consecutive sizes (a linear cost has a
ratio equal to the size ratio), and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_size(n_items: int, n_events: int, steps: int, seed: int = 0, device: str = "cpu", zipf: float = 0.8,
             loss: str = "ce", sampled_negatives: int = 1024, epoch: bool = False) -> dict:
    from types import SimpleNamespace

    import numpy as np
    import pyarrow as pa
    import torch

    from mmrec.config import from_dict
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.prepared import PreparedDataset
    from mmrec.data.schema import RawDataset, make_interactions
    from mmrec.features.aligned import FeatureTable
    from mmrec.trainers.batching import SharedNegatives, TrainSamples
    from mmrec.trainers.evaluation import EvalConfig, Evaluator
    from mmrec.trainers.methods import METHODS

    torch.set_num_threads(1)
    dev = torch.device(device)
    t0 = time.perf_counter()

    def say(msg: str) -> None:  # progress on stderr, which the parent passes through
        print(f"[{n_items}:{n_events}, {time.perf_counter() - t0:.0f}s] {msg}", file=sys.stderr, flush=True)

    rng = np.random.default_rng(seed)
    n_users = max(1000, n_events // 50)
    out: dict = {"items": n_items, "events": n_events, "users": n_users}
    # events: users with geometric-ish lengths, items from a Zipf-like popularity
    users = rng.integers(0, n_users, n_events)
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    items = rng.choice(n_items, size=n_events, p=pop / pop.sum())
    ts = rng.integers(0, 10**9, n_events)
    raw = RawDataset(name="synthetic", interactions=make_interactions({
        "user_id": pa.array(users.astype(str)), "item_id": pa.array(items.astype(str)),
        "timestamp": pa.array(ts.astype(np.float64))}))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        say(f"{n_events:,} synthetic events of {n_users:,} users; preparing (5-core)")
        folder = prepare(raw, Path(tmp) / "ds", PrepareConfig(min_user_interactions=5, min_item_interactions=5))
        out["prepare_s"] = round(time.perf_counter() - t, 2)
        say(f"prepared in {out['prepare_s']} s")
        data = PreparedDataset(folder)
        out["items_kept"], out["events_kept"] = data.n_items, int(data.offsets[-1])
        samples = TrainSamples(data, max_len=50)
        feats = {"text": FeatureTable("text", torch.randn(data.n_items + 1, 384), torch.ones(data.n_items + 1, dtype=torch.bool), {})}
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        tc = SimpleNamespace(loss=loss)
        shared = SharedNegatives(data.n_items, sampled_negatives) if loss == "sampled_ce" else None
        log_q = None if shared is None else torch.as_tensor(shared.log_q, device=dev)
        for name, kw in (("sasrec", {}), ("sasrec_ef", {"features": feats})):
            cls = METHODS[name]
            model = cls(from_dict(cls.Config, {}), data.n_items, 50, **kw).to(dev)
            opt = torch.optim.Adam(model.parameters(), 1e-3)
            batches = samples.epoch_batches(256, np.random.default_rng(0), True)[:steps]
            t, c = time.perf_counter(), time.process_time()
            for idx in batches:
                batch = {k: torch.as_tensor(v, device=dev) for k, v in samples.batch(idx, 0, rng).items()}
                if shared is not None:  # the loop's per-step draw, as in training
                    batch["sampled_items"] = torch.as_tensor(shared.draw(rng), device=dev)
                    batch["sampled_log_q"] = log_q
                loss = model.loss(batch, tc)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sync()
            out[f"{name}_step_s"] = round((time.perf_counter() - t) / max(len(batches), 1), 4)
            out[f"{name}_step_cpu_s"] = round((time.process_time() - c) / max(len(batches), 1), 4)
            say(f"{name}: {out[f'{name}_step_s']} s a step, {out[f'{name}_step_cpu_s']} CPU s ({len(batches)} steps)")
            if name == "sasrec":
                ev = Evaluator(data, from_dict(EvalConfig, {"item_chunk": 65536}), 50, dev)
                cases = data.eval_cases("test")
                sub = type(cases)(cases.user[:2000], cases.pos[:2000])  # 2,000 test users, every item ranked
                t = time.perf_counter()
                ev.evaluate(model, "test", cases=sub)
                sync()
                out["eval_s_per_1000_users"] = round((time.perf_counter() - t) / len(sub) * 1000, 3)
            del model, opt
        if epoch:  # one whole epoch of SASRec through the training loop
            from mmrec.runs.config import RunConfig
            from mmrec.trainers.loop import Trainer

            train = {"epochs": 1, "threads": 1, "device": device, "loss": tc.loss, "sampled_negatives": sampled_negatives,
                     "sampled_groups": 1}  # one draw a step, as the step times above
            trainer = Trainer(from_dict(RunConfig, {"dataset": str(folder), "method": "sasrec", "train": train}),
                              Path(tmp) / "run", log=say, progress_bar=False)
            say("one training epoch of SASRec")
            t, c = time.perf_counter(), time.process_time()
            mean_loss, n_steps, _ = trainer._epoch(1)
            sync()
            out["epoch_s"], out["epoch_cpu_s"] = round(time.perf_counter() - t, 1), round(time.process_time() - c, 1)
            out["epoch_steps"], out["epoch_loss"] = n_steps, round(mean_loss, 4)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if dev.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["10000:1000000", "100000:3000000", "1000000:10000000"],
                    help="items:interactions pairs, or items:interactions:zipf (popularity exponent, default 0.8)")
    ap.add_argument("--loss", default="ce", choices=["ce", "sampled_ce"], help="the training loss of the step times")
    ap.add_argument("--sampled-negatives", type=int, default=1024, help="K of --loss sampled_ce")
    ap.add_argument("--epoch", action="store_true", help="also time one whole SASRec training epoch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="scale.json")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where training and evaluation run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n_items, n_events, *z = args.one.split(":")
        print(json.dumps(one_size(int(n_items), int(n_events), args.steps, device=args.device,
                                  zipf=float(z[0]) if z else 0.8, loss=args.loss,
                                  sampled_negatives=args.sampled_negatives, epoch=args.epoch)))
        return
    rows = []
    for size in args.sizes:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--one", size, "--steps", str(args.steps), "--device", args.device,
                            "--loss", args.loss, "--sampled-negatives", str(args.sampled_negatives)]
                           + (["--epoch"] if args.epoch else []), stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:  # its traceback went to stderr, above
            rows.append({"size": size, "error": f"exit {p.returncode} (its messages are above)"})
        else:
            rows.append({"size": size, **json.loads(p.stdout.strip().splitlines()[-1])})
        rows[-1]["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    cols = ["items_kept", "events_kept", "prepare_s", "sasrec_step_s", "sasrec_ef_step_s", "sasrec_step_cpu_s",
            "sasrec_ef_step_cpu_s", "eval_s_per_1000_users", "peak_rss_mib"] + (["peak_gpu_mib"] if args.device == "cuda" else []) \
        + (["epoch_steps", "epoch_s", "epoch_cpu_s"] if args.epoch else [])
    if args.loss != "ce":
        print(f"step times with train.loss={args.loss} (K = {args.sampled_negatives} shared negatives per step, uniform)")
    print("| size | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | failed: {r['error']} |")
        else:
            print(f"| {r['size']} | " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |")
    ok = [r for r in rows if "error" not in r]
    for a, b in zip(ok, ok[1:]):
        ratios = {c: round(b[c] / a[c], 2) for c in ("prepare_s", "sasrec_step_s", "eval_s_per_1000_users", "peak_rss_mib") if a[c]}
        print(f"{a['size']} -> {b['size']}: items x{b['items_kept'] / a['items_kept']:.1f}, "
              f"events x{b['events_kept'] / a['events_kept']:.1f}; cost ratios {ratios}")


if __name__ == "__main__":
    main()
