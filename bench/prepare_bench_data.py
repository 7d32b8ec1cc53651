"""The benchmark datasets, prepared from ``../shared/data`` with mmrec's readers (no network).

    python bench/prepare_bench_data.py beauty ml1m              # into out/bench-data/<name>
    python bench/prepare_bench_data.py --list                   # the names and what each is
    python bench/prepare_bench_data.py all --shared /data/public --out /scratch/bench-data

Each name is one ``mmrec data prepare`` of a folder of the shared data with the settings of the
tables in docs/benchmarks.md and docs/results.md (5-core, leave-one-out), e.g. ``beauty`` is
``mmrec data prepare -f s3rec -i ../shared/data/amazon-beauty -o out/bench-data/beauty``. A dataset
already there (its ``dataset.json`` exists) is reused; one is prepared into ``<name>.partial`` and
renamed when complete, so an interrupted run leaves nothing that looks finished.

The bench scripts take these names wherever they take a prepared folder (``--data beauty`` in
``bench/recbole_side_by_side.py``, ``bench/eval_speed.py``, ``bench/gpu_suite.py``, ``bench/processes.py``):
``resolve(name)`` prepares on first use. Defaults are relative to the repository root (``../shared/data``
beside it, ``out/`` inside it, which git ignores); ``MMREC_SHARED_DATA`` and ``MMREC_BENCH_DATA`` set
them for every script at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

# name: (reader format, folder under the shared data, prepare settings, what it is)
DATASETS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "beauty": ("s3rec", "amazon-beauty", {}, "Amazon Beauty 5-core (S3-Rec layout): 22,363 users, 12,101 items"),
    "sports": ("s3rec", "amazon-sports", {}, "Amazon Sports 5-core (S3-Rec layout): 35,598 users, 18,357 items"),
    "ml1m": ("movielens", "ml-1m", {}, "MovieLens-1M, 5-core: 6,040 users, 3,416 items, posters and titles"),
    "ml1m-1k": ("movielens", "ml-1m", {"sample_users": 1000},
                "MovieLens-1M, 1,000 users drawn with seed 0, 5-core: a small real dataset"),
    "ml100k": ("recbole", "ml-100k", {}, "MovieLens-100k (RecBole atomic files), 5-core: 943 users"),
    "scientific": ("unisrec", "amazon-scientific/unisrec", {},
                   "Amazon Industrial & Scientific (UniSRec layout): 8,442 users, 4,385 items with text"),
}


def shared_root(shared: str | Path | None = None) -> Path:
    return Path(shared or os.environ.get("MMREC_SHARED_DATA") or REPO.parent / "shared" / "data")


def data_root(out: str | Path | None = None) -> Path:
    return Path(out or os.environ.get("MMREC_BENCH_DATA") or REPO / "out" / "bench-data")


def prepare_one(name: str, shared: str | Path | None = None, out: str | Path | None = None,
                log: Callable[[str], None] = print) -> Path:
    """The prepared folder of benchmark dataset ``name`` (prepared now when it is not there yet)."""
    if name not in DATASETS:
        raise SystemExit(f"unknown benchmark dataset {name!r}; one of {', '.join(DATASETS)} (or a prepared folder)")
    fmt, sub, settings, _ = DATASETS[name]
    dest = data_root(out) / name
    if (dest / "dataset.json").exists():
        return dest
    src = shared_root(shared) / sub
    if not src.exists():
        raise SystemExit(f"{name}: {src} does not exist; pass --shared (or set MMREC_SHARED_DATA) to the folder "
                         "holding the shared datasets (ml-1m/, amazon-beauty/, ...)")
    import mmrec

    tmp = dest.with_name(name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sets = " ".join(f"--set prepare.{k}={v}" for k, v in settings.items())
    log(f"preparing {name}: mmrec data prepare -f {fmt} -i {src} -o {dest} {sets}".rstrip())
    mmrec.prepare(fmt, src, tmp, settings=settings)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log(f"{name}: prepared in {time.perf_counter() - t:.1f}s")
    return dest


def resolve(data: str | Path, shared: str | Path | None = None, out: str | Path | None = None,
            log: Callable[[str], None] = print) -> Path:
    """``data`` as a prepared folder: a folder holding ``dataset.json`` as it is, else a name of
    ``DATASETS`` (prepared on first use)."""
    p = Path(data)
    if (p / "dataset.json").exists():
        return p
    if str(data) in DATASETS:
        return prepare_one(str(data), shared, out, log)
    raise SystemExit(f"{data}: neither a prepared dataset folder (no dataset.json) nor a benchmark dataset name "
                     f"({', '.join(DATASETS)})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"dataset names ({', '.join(DATASETS)}) or 'all'")
    ap.add_argument("--shared", help="the shared data folder (default ../shared/data beside the repository, "
                                     "or MMREC_SHARED_DATA)")
    ap.add_argument("--out", help="where the prepared datasets go (default out/bench-data, or MMREC_BENCH_DATA)")
    ap.add_argument("--list", action="store_true", help="print the names and what each is")
    args = ap.parse_args(argv)
    if args.list or not args.names:
        for name, (fmt, sub, settings, what) in DATASETS.items():
            print(f"{name:<11} {what}  [-f {fmt} -i <shared>/{sub}{''.join(f' {k}={v}' for k, v in settings.items())}]")
        return
    names = list(DATASETS) if args.names == ["all"] else args.names
    for name in names:
        print(f"{name}: {prepare_one(name, args.shared, args.out)}")


if __name__ == "__main__":
    main()
