"""``mmrec extract``: the batch encoder stage.

catalogue -> shard plan -> per-process shards -> DataLoader workers (decode, resize, tokenise) ->
encoder (main process of each rank) -> shard writer -> manifest.

- **Deterministic plan.** Items are sorted by raw id and cut into shards of ``shard_size``; shard i
  belongs to process ``i % num_processes``. Each process writes only its own shards: nothing is
  gathered, so no padded duplicates.
- **Atomic, resumable.** A shard file is written under a temporary name and renamed when complete;
  its sidecar ``part-XXXXX.json`` (checksum, rows, missing items) is written after it and is the
  commit point. A re-run skips every shard with a sidecar. The manifest is written, by the main
  process, once every shard is committed.
- **Stale features refused.** ``plan.json`` records a hash of the encoder configuration and one
  fingerprint per shard of its catalogue rows (ids, text fields, price, image paths with their size
  and modification time). A changed catalogue, model or setting is refused unless ``overwrite``.
- **Bad input.** An item the encoder cannot encode (no image, corrupt image, empty text, bad price)
  is recorded as missing with its reason (manifest, ``errors.jsonl``); the run goes on; nothing is
  invented for it.
- **Throughput.** Items in a shard are batched by the encoder's ``sort_key`` (text length) to cut
  padding; DataLoader workers prepare inputs while the model runs; autocast on GPU; the batch size is
  halved (with a message) on out-of-memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmrec.errors import ConfigError, DataError
from mmrec.features.encoders._common import hub_or_cache, probe_hub
from mmrec.progress import Progress


@dataclass
class ExtractConfig:
    encoder: str
    model: str | None = None
    weights: str | None = None
    pooling: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # a prepared dataset folder (its items.parquet is the catalogue)
    format: str | None = None  # or a reader format + input
    input: str | None = None
    reader: dict[str, Any] = field(default_factory=dict)
    image_root: str | None = None  # folder that relative image paths are under (default: the catalogue's)
    # a raw catalogue's item text (format + input) cleaned as `mmrec data prepare` cleans it (HTML
    # entities and tags, whitespace; mmrec.data.prepare.clean_items_text); a prepared dataset's is as prepared
    clean_text: bool = True
    store: str = "features"
    name: str | None = None
    out_format: Literal["h5", "parquet"] = "h5"
    dtype: Literal["float16", "float32"] = "float16"
    shard_size: int = 2048
    batch_size: int = 64
    num_workers: int | None = None  # None: image decoding in min(8, cores - 1) workers; text and price in-process
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    threads: int | None = None
    overwrite: bool = False
    limit: int | None = None  # encode only the first N items (smoke tests)
    quiet: bool = False  # no progress (bar or lines)
    log_every_s: float = 30.0

    def validate(self) -> None:
        if (self.dataset is None) == (self.format is None):
            raise ConfigError("give the catalogue either as dataset=<prepared folder> or as format=<reader> "
                              "with input=<path>")
        if self.format is not None and self.input is None:
            raise ConfigError("format is set but input (the dataset path) is not")
        if self.shard_size < 1 or self.batch_size < 1 or (self.num_workers is not None and self.num_workers < 0):
            raise ConfigError("shard_size and batch_size must be positive, num_workers >= 0")

    def entry_name(self) -> str:
        if self.name:
            return self.name
        parts = [self.encoder]
        if self.model:
            parts.append(Path(self.model).name.replace("/", "-"))
        if self.pooling:
            parts.append(self.pooling)
        if self.options.get("tower"):
            parts.append(str(self.options["tower"]))
        return "-".join(parts)


# ---------------------------------------------------------------------------------------------
# catalogue


def load_catalogue(cfg: ExtractConfig) -> pa.Table:
    """The catalogue as a table sorted by item_id, with image paths made absolute (and a raw
    catalogue's text cleaned, ``clean_text``)."""
    return load_catalogue_with_cleaning(cfg)[0]


def load_catalogue_with_cleaning(cfg: ExtractConfig) -> tuple[pa.Table, dict[str, Any]]:
    """``load_catalogue``'s table and the record of its text cleaning, which the entry's manifest
    keeps as ``text_cleaning``: for a raw catalogue, what ``clean_text`` did here; for a prepared
    dataset, what ``mmrec data prepare`` did (its ``dataset.json``)."""
    if cfg.dataset is not None:
        root = Path(cfg.dataset)
        meta_path = root / "dataset.json"
        if not meta_path.exists():
            raise DataError("not a prepared dataset (no dataset.json)", path=str(root),
                            hint="run `mmrec data prepare` first, or give format= and input= to read a catalogue")
        meta = json.loads(meta_path.read_text())
        table = pq.read_table(root / "items.parquet")
        if "iid" in table.column_names:
            table = table.drop(["iid"])
        image_root = (meta.get("catalogue") or {}).get("image_root")
        cleaning = ({**meta["text_cleaning"], "applied_by": "mmrec data prepare (the dataset's dataset.json)"}
                    if meta.get("text_cleaning") else
                    {"enabled": False, "note": "the dataset's dataset.json records no text cleaning (prepared before "
                                               "mmrec cleaned item text: prepare it again to clean it)"})
    else:
        from mmrec.data.readers import read_dataset

        raw = read_dataset(cfg.format, cfg.input, **cfg.reader)
        if raw.catalogue is None:
            raise DataError(f"the {cfg.format} reader found no item catalogue", path=cfg.input,
                            hint="extraction needs item text, images or prices")
        table = raw.catalogue.table
        image_root = raw.catalogue.image_root
        if cfg.clean_text:
            from mmrec.data.prepare import clean_items_text

            table, cleaning = clean_items_text(table, ["title", *raw.catalogue.text_fields])
            cleaning = {**cleaning, "applied_by": "mmrec extract (clean_text=true)",
                        "doc": "--set clean_text=false keeps the text as the reader read it"}
        else:
            cleaning = {"enabled": False, "applied_by": "mmrec extract (clean_text=false)"}
    table = table.sort_by("item_id")
    if cfg.image_root is not None:
        image_root = cfg.image_root
    if "images" in table.column_names:
        imgs = table["images"].to_pylist()
        relative = next((p for row in imgs for p in (row or []) if p and not os.path.isabs(p)), None)
        if relative is not None and not image_root:
            raise DataError(f"the catalogue's image paths are relative (e.g. {relative!r}) and no image folder is "
                            "known for them", path=cfg.dataset or cfg.input,
                            hint="pass --set image_root=DIR (the folder they are relative to), or prepare the "
                                 "dataset again with this mmrec, which records it in dataset.json")
    if image_root and "images" in table.column_names:
        from mmrec.features.encoders.images import within_root

        # relative paths stay inside the image folder: one that leaves it (../, a link) is refused
        fixed = [[p if p is None or os.path.isabs(p) else within_root(image_root, p) for p in (row or [])]
                 for row in imgs]
        table = table.set_column(table.column_names.index("images"), "images", pa.array(fixed, pa.list_(pa.string())))
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    return table, cleaning


def catalogue_text_fields(cfg: ExtractConfig) -> list[str]:
    """``title`` followed by the text fields the catalogue's reader declared (dataset.json for a
    prepared dataset), or [] when none is known."""
    if cfg.dataset is not None:
        meta_path = Path(cfg.dataset) / "dataset.json"
        declared = (json.loads(meta_path.read_text()).get("catalogue") or {}).get("text_fields") if meta_path.exists() else None
    else:
        from mmrec.data.readers import read_dataset

        raw = read_dataset(cfg.format, cfg.input, **cfg.reader)
        declared = raw.catalogue.text_fields if raw.catalogue is not None else None
    if not declared:
        return []
    return ["title"] + [f for f in declared if f != "title"]


def _shard_fingerprint(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        rec = dict(r)
        imgs = []
        for p in rec.get("images") or []:
            try:
                st = os.stat(p)
                imgs.append([p, st.st_size, st.st_mtime_ns])
            except OSError:
                imgs.append([p, None, None])
        rec["images"] = imgs
        h.update(json.dumps(rec, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the per-shard work


class _ShardInputs(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]], make_input: Callable[[dict[str, Any]], Any]):
        self.rows, self.make_input = rows, make_input

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.make_input(self.rows[i])
        except Exception as e:  # an encoder bug must not kill a long run: record it as missing
            from mmrec.features.base import Missing

            return i, Missing(f"could not prepare input: {type(e).__name__}: {e}")


class _Collate:
    """Runs in the workers: splits off Missing inputs, collates the rest."""

    def __init__(self, collate: Callable[[list[Any]], Any]):
        self.collate = collate

    def __call__(self, pairs: list[tuple[int, Any]]):
        from mmrec.features.base import Missing

        ok = [(i, x) for i, x in pairs if not isinstance(x, Missing)]
        missing = [(i, x.reason) for i, x in pairs if isinstance(x, Missing)]
        batch = self.collate([x for _, x in ok]) if ok else None
        return [i for i, _ in ok], batch, missing


def _batches_by_cost(costs: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _needs_hub(encoder: Any, cfg: ExtractConfig) -> bool:
    """Whether loading ``encoder`` may ask the model hub: not for price, nor for a model given as a
    local folder or weights file."""
    from mmrec.features.encoders._common import looks_local

    if encoder.modality == "price" or cfg.weights:
        return False
    ref = getattr(encoder, "model_ref", None) or cfg.model
    return not (ref and looks_local(str(ref)))


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


@dataclass
class ExtractResult:
    entry_dir: Path
    manifest: dict[str, Any] | None
    shards_written: int
    shards_skipped: int
    items_encoded: int
    items_missing: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        n = self.items_encoded + self.items_missing
        return n / self.seconds if self.seconds > 0 else 0.0


def extract(cfg: ExtractConfig, *, log: Callable[[str], None] = print,
            encoder: Any = None, on_shard_done: Callable[[int], None] | None = None) -> ExtractResult:
    """Run the extraction for this process (see the module docstring). Returns this process's result."""
    from accelerate import PartialState

    from mmrec.features.store import (
        clear_shard_debris,
        commit_shard,
        committed_shards,
        finish_entry,
        make_plan,
        shard_committed,
        start_entry,
        write_shard,
    )
    from mmrec.resources import end_process_group_at_exit

    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or auto")
    state = PartialState(cpu=cpu)
    rank, world = state.process_index, state.num_processes
    if world > 1:
        end_process_group_at_exit()
    device = state.device

    if encoder is None:
        from mmrec.features.encoders import build_encoder, encoder_options

        opts = dict(cfg.options)
        if cfg.weights is not None:
            opts["weights"] = cfg.weights
        encoder = build_encoder(cfg.encoder, model=cfg.model, pooling=cfg.pooling, **opts)
        if ("text" in str(encoder.modality) and "fields" in encoder_options(cfg.encoder)
                and opts.get("template") is None and opts.get("fields") is None):
            fields = catalogue_text_fields(cfg)
            if fields:  # the item's text is its title and the catalogue's text fields, in order
                encoder = build_encoder(cfg.encoder, model=cfg.model, pooling=cfg.pooling, **opts, fields=fields)
                log(f"item text from the catalogue's fields: {', '.join(fields)} (set -o template=... to choose)")
    table, text_cleaning = load_catalogue_with_cleaning(cfg)
    n = table.num_rows
    if n == 0:
        raise DataError("the catalogue is empty", path=cfg.dataset or cfg.input)
    entry = Path(cfg.store) / cfg.entry_name()
    shard_dir = entry / "shards"
    ext = {"h5": "h5", "parquet": "parquet"}[cfg.out_format]
    n_shards = -(-n // cfg.shard_size)
    spans = [(s * cfg.shard_size, min(n, (s + 1) * cfg.shard_size)) for s in range(n_shards)]

    # a hub that does not answer is found out once, in seconds; the cache is then used (or the load fails at once)
    hub_down = probe_hub(needs_hub=_needs_hub(encoder, cfg))
    with hub_or_cache(hub_down):
        config_key = {"encoder": encoder.config_key(), "out_format": cfg.out_format, "dtype": cfg.dtype,
                      "shard_size": cfg.shard_size}

    # fingerprints: every process computes them (cheap: text and file stats), so each can check its own shards
    def shard_rows(a: int, b: int) -> list[dict[str, Any]]:
        return table.slice(a, b - a).to_pylist()

    fingerprints = [_shard_fingerprint(shard_rows(a, b)) for a, b in spans]
    plan = make_plan(config_key, spans, fingerprints)
    config_hash = plan["config_hash"]
    if state.is_main_process:
        start_entry(entry, plan, overwrite=cfg.overwrite, log=log)
    state.wait_for_everyone()

    with hub_or_cache(hub_down):
        encoder.load(device)
    mine = [s for s in range(n_shards) if s % world == rank]
    todo = [s for s in mine if not shard_committed(entry, s)]
    skipped = len(mine) - len(todo)
    for s in todo:  # debris of a run killed mid-write (never visible as a shard: no commit file)
        clear_shard_debris(entry, s)
    if state.is_main_process:
        log(f"{entry}: {n:,} items in {n_shards} shards over {world} process(es) on {device}")
    if skipped:
        log(f"[rank {rank}] resuming: {skipped} of {len(mine)} shards already done")
    total_todo = sum(spans[s][1] - spans[s][0] for s in todo)
    progress = Progress(total_todo, unit="items", desc=f"[rank {rank}]" if world > 1 else "encoding", log=log,
                        every_s=cfg.log_every_s, quiet=cfg.quiet)
    encoded = missing_count = 0
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
    batch_size = cfg.batch_size
    for s in todo:
        a, b = spans[s]
        rows = shard_rows(a, b)
        while True:
            try:
                ids, feats, miss, secs = _encode_shard(encoder, rows, batch_size, cfg, device, autocast_dtype, progress)
                break
            except RuntimeError as e:
                if not _is_oom(e) or batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                log(f"out of memory: retrying shard {s} with batch_size={batch_size}")
        name = f"part-{s:05d}.{ext}"
        try:
            entry_info = write_shard(shard_dir / name, ids, feats, fmt=cfg.out_format, dtype=cfg.dtype,
                                     attrs={"encoder": cfg.encoder, "shard": s, "config_hash": config_hash})
            commit_shard(entry, s, entry_info, miss, fingerprints[s], secs, b - a, rank, world)
        except OSError as e:  # disk full, quota, a vanished mount: nothing half-written stays visible
            kept = committed_shards(entry)
            raise DataError(f"could not write shard {s} ({type(e).__name__}: {e})", path=str(shard_dir / name),
                            hint=f"the {kept} shard(s) already written are complete and kept; free space (or "
                                 "fix the folder) and run the same command again to resume") from e
        encoded += len(ids)
        missing_count += len(miss)
        if on_shard_done is not None:
            on_shard_done(s)
    progress.close()
    state.wait_for_everyone()

    manifest = None
    if state.is_main_process:
        shape = [encoder.dim] if encoder.pooling != "tokens" else [encoder.tokens, encoder.dim]
        manifest = finish_entry(entry, plan, encoder=encoder.describe(), modality=encoder.modality,
                                fmt=cfg.out_format, dtype=cfg.dtype, shape_per_item=shape,
                                source=cfg.dataset or cfg.input, log=log, extra={"text_cleaning": text_cleaning})
    secs = time.perf_counter() - t_start
    return ExtractResult(entry, manifest, len(todo), skipped, encoded, missing_count, secs)


def default_workers(encoder: Any) -> int:
    """Image decoding and resizing is worth worker processes (min(8, cores - 1)); tokenising a
    batch of text or parsing prices is cheaper than handing the result between processes."""
    if "image" not in str(encoder.modality):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _encode_shard(encoder, rows, batch_size, cfg, device, autocast_dtype, progress):
    t0 = time.perf_counter()
    costs = [encoder.sort_key(r) for r in rows]
    batches = _batches_by_cost(costs, batch_size)
    workers = default_workers(encoder) if cfg.num_workers is None else cfg.num_workers
    loader = torch.utils.data.DataLoader(
        _ShardInputs(rows, encoder.make_input), batch_sampler=batches, collate_fn=_Collate(encoder.collate),
        num_workers=workers, persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    out: dict[int, np.ndarray] = {}
    missing: dict[str, str] = {}
    for idx, batch, miss in loader:
        for i, reason in miss:
            missing[rows[i]["item_id"]] = reason
        if batch is not None:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.no_grad():
                if autocast_dtype is not None and device.type == "cuda":
                    with torch.autocast("cuda", dtype=autocast_dtype):
                        f = encoder.encode(batch)
                else:
                    f = encoder.encode(batch)
            f = f.float().cpu().numpy()
            # a feature that is not finite once stored (NaN, inf, or beyond float16's range) is missing
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(f.astype(cfg.dtype)).reshape(len(idx), -1).all(axis=1)
            for j, i in enumerate(idx):
                if finite[j]:
                    out[i] = f[j]
                else:
                    missing[rows[i]["item_id"]] = ("the encoder gave a non-finite feature (NaN or inf"
                                                   + (", or beyond float16's range; try dtype=float32)"
                                                      if cfg.dtype == "float16" else ")"))
        progress.update(len(idx) + len(miss))
    order = sorted(out)
    ids = [rows[i]["item_id"] for i in order]
    if order:
        feats = np.stack([out[i] for i in order])
    else:
        shape = [encoder.dim] if encoder.pooling != "tokens" else [encoder.tokens, encoder.dim]
        feats = np.zeros([0] + shape, dtype=np.float32)
    return ids, feats, missing, time.perf_counter() - t0
