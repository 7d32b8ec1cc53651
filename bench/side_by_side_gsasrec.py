"""gBCE (``train.loss=gbce``) side by side with gSASRec's released code (asash/gSASRec-pytorch).

Two checks, from a checkout the user passes with ``--official DIR`` (never copied into mmrec):

``loss``
    The loss lines of the checkout's ``train_gsasrec.py`` (from ``logits = torch.einsum`` to
    ``loss = loss_per_element.sum() / mask.sum()``, read from the file and run as they are) against
    ``mmrec.trainers.modules.losses.gbce`` on the same states, output embeddings, positives,
    negatives and padding mask: the loss and the gradients of the states and of the embedding table,
    for t in {0, 0.5, 0.75, 1} and k in {1, 16, 256}. Tolerance 1e-5 (the official computes the
    positive's term in float64 with probabilities clamped to [1e-10, 1 - 1e-10]; mmrec in float32 with
    ``softplus``: equal away from |logit| > 23).

``prepare`` / ``official`` / ``mmrec`` / ``table``
    MovieLens-1M as the gSASRec paper uses it. The checkout's ``datasets/ml1m/preprocess_ml1m.py``
    downloads SASRec's 5-core version; here it is rebuilt from ``ratings.dat`` (``--ml1m``, e.g.
    ``../shared/data/ml-1m``): every rating, each user's in time order (ties in file order), items
    with fewer than 5 ratings dropped, ids by first appearance. ``prepare`` writes it into a work folder
    beside a copy of the checkout's modules, splits it with the checkout's own
    ``train_val_test_split`` and writes the same sequences in the s3rec layout for ``mmrec data
    prepare`` (leave-one-out: the test item of every user is the official split's). ``official``
    trains with the checkout's ``train_gsasrec.py`` at ``config_ml1m.py``'s settings, capped at
    ``--epochs``, then evaluates its best checkpoint on the test part with ``evaluate_gsasrec.py``;
    ``mmrec`` trains mmrec's SASRec with the same loss, negatives, sizes, batch and epochs; ``table``
    prints both per-epoch validation NDCG@10 curves and the test figures.

Both rank every item but the user's history (the official ``filter_rated``, mmrec's
``eval.history_mask=whole``). Differences that stay (named in the table): the official validation part is 512 users (mmrec: every
user's second-last item); its 512 validation users train on one item less; its negatives are uniform
over every item (mmrec's avoid the user's training items, ``train.negatives_avoid``); the models are
each code's own SASRec (the official: pre-LN blocks, ReLU, one shared projection per head, an output
embedding table apart from the input one, torch's default N(0, 1) embedding initialisation; mmrec:
``model.output_embeddings`` chooses shared or separate tables).

Usage::

    python bench/side_by_side_gsasrec.py loss --official CHECKOUT
    python bench/side_by_side_gsasrec.py prepare --official CHECKOUT --ml1m ../shared/data/ml-1m --work W --python VENV/bin/python
    python bench/side_by_side_gsasrec.py official --work W --epochs 40 --max-len 50 --python VENV/bin/python  # ir_measures, torchinfo
    python bench/side_by_side_gsasrec.py mmrec --work W --epochs 40 --max-len 50
    python bench/side_by_side_gsasrec.py mmrec --work W --epochs 40 --max-len 50 --tag=-separate --set model.output_embeddings=separate
    python bench/side_by_side_gsasrec.py table --work W
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import Row, diff, print_table  # noqa: E402

from mmrec.runs.folder import RunFolder  # noqa: E402
from mmrec.trainers.modules.losses import gbce  # noqa: E402

OFFICIAL_STEPS_PER_EPOCH = 48  # 6,040 users in batches of 128: the official epoch is one pass (min(100, 48))
LOSS_START = "logits = torch.einsum"
LOSS_END = "loss = loss_per_element.sum() / mask.sum()"
# config_ml1m.py's settings (the official run reads that file; mmrec's run the same numbers)
ML1M = dict(sequence_length=200, embedding_dim=128, num_heads=1, num_blocks=2, dropout_rate=0.5, negs_per_pos=256,
            gbce_t=0.75, train_batch_size=128)


def official_loss_source(checkout: Path) -> str:
    """The loss lines of the checkout's train_gsasrec.py, dedented, ready to exec."""
    lines = (checkout / "train_gsasrec.py").read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith(LOSS_START)), None)
    end = next((i for i, ln in enumerate(lines) if ln.strip() == LOSS_END), None)
    if start is None or end is None or end < start:
        raise SystemExit(f"{checkout / 'train_gsasrec.py'}: cannot find the loss lines ({LOSS_START!r} .. "
                         f"{LOSS_END!r}); is this a checkout of asash/gSASRec-pytorch?")
    return textwrap.dedent("\n".join(lines[start:end + 1]))


def loss_rows(source: str, k: int, t: float, seed: int = 0, b: int = 4, s: int = 12, d: int = 16,
              n_items: int = 3000) -> list[Row]:
    g = torch.Generator().manual_seed(seed)
    pad = n_items + 1
    h0 = torch.randn(b, s, d, generator=g)
    emb0 = torch.randn(n_items + 2, d, generator=g) * 0.5
    pos = torch.randint(1, n_items + 1, (b, s), generator=g)
    neg = torch.randint(1, n_items + 1, (b, s, k), generator=g)
    model_input = torch.randint(1, n_items + 1, (b, s), generator=g)
    model_input[0, :5] = pad  # left padding, as the official data loader writes it
    model_input[1, :2] = pad
    mask_b = model_input != pad

    # the official lines, run as they are on its variable names
    h_o = h0.clone().requires_grad_(True)
    emb_o = emb0.clone().requires_grad_(True)
    pos_neg_concat = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
    scope = dict(torch=torch, last_hidden_state=h_o, pos_neg_embeddings=emb_o[pos_neg_concat],
                 mask=mask_b.float(), num_items=n_items, config=SimpleNamespace(negs_per_pos=k, gbce_t=t))
    exec(source, scope)  # noqa: S102 - the official lines, read from the user's checkout
    scope["loss"].backward()

    # mmrec: the rows under the mask (mmrec drops padded targets before the loss)
    h_m = h0.clone().requires_grad_(True)
    emb_m = emb0.clone().requires_grad_(True)
    loss_m = gbce(h_m[mask_b], pos[mask_b], neg[mask_b], emb_m, t, n_items=n_items)
    loss_m.backward()
    tag = f"k={k} t={t}"
    return [diff(f"{tag} loss", loss_m, scope["loss"].float()),
            diff(f"{tag} grad states", h_m.grad, h_o.grad),
            diff(f"{tag} grad item table", emb_m.grad, emb_o.grad)]


def cmd_loss(args: argparse.Namespace) -> int:
    source = official_loss_source(Path(args.official))
    rows = [r for k in (1, 16, 256) for t in (0.0, 0.5, 0.75, 1.0) for r in loss_rows(source, k, t)]
    return 0 if print_table("gBCE: mmrec's gbce against train_gsasrec.py's loss lines", rows) else 1


# ---------------------------------------------------------------------------------------------- data

def ml1m_sequences(ml1m: Path) -> list[list[int]]:
    """SASRec's MovieLens-1M: every rating, per user in time order (ties in file order), items rated
    fewer than 5 times dropped, item ids 1.. by first appearance (users in id order)."""
    path = ml1m / "ratings.dat"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --ml1m the MovieLens-1M folder (ratings.dat, '::' separated)")
    rows = []
    with open(path, encoding="latin-1") as f:
        for i, line in enumerate(f):
            u, it, _, ts = line.strip().split("::")
            rows.append((int(u), int(ts), i, int(it)))
    counts = Counter(r[3] for r in rows)
    rows = sorted(r for r in rows if counts[r[3]] >= 5)
    ids: dict[int, int] = {}
    seqs: dict[int, list[int]] = {}
    for u, _, _, it in rows:
        seqs.setdefault(u, []).append(ids.setdefault(it, len(ids) + 1))
    return [seqs[u] for u in sorted(seqs)]


def cmd_prepare(args: argparse.Namespace) -> int:
    checkout, work = Path(args.official), Path(args.work)
    off = work / "official"
    (off / "datasets" / "ml1m").mkdir(parents=True, exist_ok=True)
    for f in checkout.glob("*.py"):
        shutil.copy(f, off / f.name)
    shutil.copy(checkout / "datasets" / "ml1m" / "preprocess_ml1m.py", off / "datasets" / "ml1m" / "preprocess_ml1m.py")
    seqs = ml1m_sequences(Path(args.ml1m))
    with open(off / "datasets" / "ml1m" / "ml-1m.txt", "w") as f:
        for u, seq in enumerate(seqs, 1):
            f.writelines(f"{u} {it}\n" for it in seq)
    subprocess.run([args.python or sys.executable, "-c", "import preprocess_ml1m as p; p.train_val_test_split()"],
                   cwd=off / "datasets" / "ml1m", check=True)
    (work / "mmrec-raw").mkdir(exist_ok=True)
    with open(work / "mmrec-raw" / "ml-1m.txt", "w") as f:
        f.writelines(f"{u} " + " ".join(map(str, seq)) + "\n" for u, seq in enumerate(seqs, 1))
    subprocess.run(["mmrec", "data", "prepare", "-f", "s3rec", "-i", str(work / "mmrec-raw"),
                    "-o", str(work / "mmrec-data"), "--overwrite"], check=True)
    print(f"{len(seqs)} users, {max(max(s) for s in seqs)} items, {sum(map(len, seqs))} ratings; official data in "
          f"{off / 'datasets' / 'ml1m'}, mmrec's in {work / 'mmrec-data'}")
    return 0


# ---------------------------------------------------------------------------------------------- runs

def settings(args: argparse.Namespace) -> dict:
    """config_ml1m.py's settings, with ``--max-len`` in place of its 200 where given (on a CPU the official
    step at 200 gathers a [128, 200, 257, 128] embedding tensor: about 10 s a step)."""
    return {**ML1M, **({"sequence_length": args.max_len} if args.max_len else {})}


def cmd_official(args: argparse.Namespace) -> int:
    off = Path(args.work) / "official"
    settings_ = ", ".join(f"{k}={v!r}" for k, v in settings(args).items())
    (off / "config_side.py").write_text(
        "from config import GSASRecExperimentConfig\n"
        f"config = GSASRecExperimentConfig(dataset_name='ml1m', max_batches_per_epoch=100, {settings_}, "
        f"max_epochs={args.epochs}, early_stopping_patience={args.epochs})\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    py = args.python or sys.executable
    with open(off / "train.log", "w") as log:
        subprocess.run([py, "-u", "train_gsasrec.py", "--config", "config_side.py"], cwd=off, env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    best = sorted((off / "models").glob("*.pt"), key=lambda p: p.stat().st_mtime)[-1]
    with open(off / "test.log", "w") as log:
        subprocess.run([py, "-u", "evaluate_gsasrec.py", "--config", "config_side.py", "--checkpoint", str(best)],
                       cwd=off, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    print((off / "test.log").read_text()[-2000:])
    return 0


def mmrec_command(work: Path, epochs: int, threads: int, extra: list[str], ml1m: dict = ML1M) -> list[str]:
    sets = {"model.hidden": ml1m["embedding_dim"], "model.inner": ml1m["embedding_dim"],
            "model.layers": ml1m["num_blocks"], "model.heads": ml1m["num_heads"],
            "model.dropout": ml1m["dropout_rate"], "model.attn_dropout": ml1m["dropout_rate"], "model.act": "relu",
            "train.max_len": ml1m["sequence_length"], "train.batch_size": ml1m["train_batch_size"],
            "train.loss": "gbce", "train.negatives": ml1m["negs_per_pos"], "train.gbce_t": ml1m["gbce_t"],
            "train.lr": 0.001, "train.epochs": epochs, "train.patience": epochs, "train.threads": threads,
            "train.windows": "last", "eval.history_mask": "whole"}
    cmd = ["mmrec", "train", "-d", str(work / "mmrec-data"), "-m", "sasrec"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    for s in extra:
        cmd += ["--set", s]
    return cmd


def cmd_mmrec(args: argparse.Namespace) -> int:
    work = Path(args.work)
    run = work / f"mmrec-run{args.tag}"
    cmd = mmrec_command(work, args.epochs, args.threads, args.set or [], settings(args)) + ["--run-dir", str(run)]
    if run.exists():
        cmd.append("--resume")
    with open(work / f"mmrec{args.tag}.log", "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def official_curve(log: Path) -> list[float]:
    return [float(m) for m in re.findall(r"nDCG@10: ([0-9.]+)", log.read_text())] if log.exists() else []


def mmrec_curve(run: Path) -> list[float]:
    return [m["valid"]["ndcg@10"] for m in RunFolder(run).metrics() if "ndcg@10" in m.get("valid", {})]


def cmd_table(args: argparse.Namespace) -> int:
    work = Path(args.work)
    curves = {"official (512 valid users)": official_curve(work / "official" / "train.log")}
    for run in sorted(work.glob("mmrec-run*")):
        curves[f"mmrec {run.name[len('mmrec-run'):].lstrip('-') or 'gbce'}"] = mmrec_curve(run)
    n = max((len(c) for c in curves.values()), default=0)
    print("valid NDCG@10 by epoch")
    print("epoch " + " ".join(f"{k:>28}" for k in curves))
    for e in range(n):
        if e < 5 or (e + 1) % args.every == 0 or e == n - 1:
            print(f"{e + 1:5d} " + " ".join(f"{c[e]:28.4f}" if e < len(c) else " " * 28 for c in curves.values()))
    test = work / "official" / "test.log"
    if test.exists():
        kept = [m for p in (work / "official" / "models").glob("*.pt") for m in re.findall(r"step:(\d+)", p.name)]
        where = f" (the kept checkpoint: step {kept[-1]}, epoch {int(kept[-1]) // OFFICIAL_STEPS_PER_EPOCH})" if kept else ""
        print("official test:", " ".join(re.findall(r"(?:nDCG@10|R@10|R@1): [0-9.]+", test.read_text())[-3:]) + where)
    for run in sorted(work.glob("mmrec-run*")):
        r = RunFolder(run).results()
        if r is not None:
            print(f"{run.name} test: ndcg@10 {r['test']['ndcg@10']:.4f} hr@10 {r['test']['hr@10']:.4f} "
                  f"(best epoch {r['best_epoch']} of {r['epochs_run']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("loss")
    a.add_argument("--official", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--official", required=True)
    a.add_argument("--ml1m", required=True)
    a.add_argument("--work", required=True)
    a.add_argument("--python", help="the interpreter with the official code's requirements (its split imports requests)")
    a = sub.add_parser("official")
    a.add_argument("--work", required=True)
    a.add_argument("--epochs", type=int, default=40)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--python", help="the interpreter with the official code's requirements (ir_measures, torchinfo)")
    a.add_argument("--max-len", type=int, help="sequence length in place of config_ml1m.py's 200")
    a = sub.add_parser("mmrec")
    a.add_argument("--work", required=True)
    a.add_argument("--epochs", type=int, default=40)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--tag", default="", help="run folder suffix (mmrec-run<TAG>), e.g. --tag=-separate")
    a.add_argument("--set", action="append", help="an extra mmrec setting key=value (repeatable)")
    a.add_argument("--max-len", type=int, help="sequence length in place of config_ml1m.py's 200")
    a = sub.add_parser("table")
    a.add_argument("--work", required=True)
    a.add_argument("--every", type=int, default=5)
    args = p.parse_args(argv)
    return {"loss": cmd_loss, "prepare": cmd_prepare, "official": cmd_official, "mmrec": cmd_mmrec,
            "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
