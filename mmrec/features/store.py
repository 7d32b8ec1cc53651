"""The feature store: frozen item features on disk, one entry per encoder run.

Layout
======

::

    <store_root>/<entry_name>/
        manifest.json             what the entry holds (schema below). Written last and atomically:
                                  a folder without it is an unfinished run and is not read.
        shards/part-00000.h5      the features, one file per shard, all in one format
        shards/part-00001.h5      (``.h5`` or ``.parquet``)
        ...

Other files the extraction pipeline keeps in the entry (``plan.json``, ``errors.jsonl``, the
per-shard sidecars ``shards/part-XXXXX.json``) are for resuming and for people; the store does
not read them.

Every row carries the raw ``item_id``. Features are joined to a prepared dataset **by id, never by
position**: the same entry serves any dataset (or subset, or re-split) built from the catalogue.

Shard files
===========

A shard is written under a temporary name in the same folder (``.part-00000.h5.tmp``), flushed and
fsync'ed, then renamed to its final name, so a shard file that exists is complete. A shard may
have zero rows (every item in it was missing). Shards hold no compression: embeddings are
close to random bits and do not compress, and uncompressed data is read fastest.

HDF5 (``.h5``)
    ``item_id``   1-D dataset, variable-length UTF-8 strings, one per row
    ``features``  ``[N, D]`` (pooled) or ``[N, T, D]`` (token features), float16 or float32,
                  chunked by rows (about 1 MiB per chunk, at most 1024 rows), no filters
    file attributes: ``mmrec_shard_version`` and whatever the writer passed as ``attrs``
    (strings and numbers as they are, anything else as JSON text).

Parquet (``.parquet``)
    ``item_id``   string
    ``features``  ``fixed_size_list<float16|float32>`` of ``D`` values per row; for token features
                  of ``T * D`` values (row-major: token after token)
    schema metadata: ``mmrec.shape_per_item`` (JSON, ``[D]`` or ``[T, D]``), ``mmrec.dtype``,
    ``mmrec.shard_version`` and ``mmrec.attrs`` (JSON). No compression, no dictionary encoding;
    row groups of at most about 64 MiB. float16 is stored as Parquet's FLOAT16 logical type and
    round-trips bit for bit.

manifest.json
=============

A JSON object. Keys marked * are required; reading an entry checks them.

=====================  ==========================================================================
``version`` *          int, the manifest format version (``MANIFEST_VERSION``)
``name``               str, the entry name (defaults to the folder name)
``encoder`` *          object: what produced the features -- ``encoder`` (its name, as ``mmrec extract
                       --encoder`` spells it), ``model`` (id or
                       path), ``weights_sha256`` or revision, ``pooling``, ``dim``, ``tokens``,
                       ``preprocessing`` ... (free-form; shown by ``mmrec features info``)
``modality`` *         str: ``text``, ``image``, ``price``, ...
``format`` *           ``"h5"`` or ``"parquet"``
``dtype`` *            ``"float16"`` or ``"float32"``: the stored dtype
``shape_per_item`` *   ``[D]`` or ``[T, D]``
``catalogue_hash`` *   str, content hash of the catalogue the features were computed from
``config_hash`` *      str, hash of the encoder settings (a change makes the features stale)
``n_items`` *          int, catalogue items considered
``n_rows`` *           int, rows stored (= the sum of the shards' ``rows``)
``shards`` *           list of shard entries, in order: ``{"file": "part-00000.h5"`` (the name
                       inside ``shards/``), ``"rows": N, "sha256": hex digest of the file's bytes,
                       "bytes": file size, "shape": [N, D] or [N, T, D]}``
``missing`` *          object ``{item_id: reason}``: catalogue items not encoded and why (no image,
                       image file is truncated, empty text, ...). They have no row: nothing is
                       invented for them. ``n_rows + len(missing) == n_items``.
``library_versions`` * object ``{library: version}``
``created`` *          str, UTC time, ISO 8601
=====================  ==========================================================================

Further keys (``catalogue_source``, ``stats``, ``import``: the file ``mmrec features import`` read,
its sha256 and how its rows were mapped to item ids, ...) are kept and ignored.

Reading
=======

``find_entry(name_or_path, store_root)`` opens an entry; ``FeatureEntry.aligned(raw_item_ids)``
returns the ``[len(ids), *shape_per_item]`` matrix whose row ``i`` holds item ``raw_item_ids[i]``
and a ``present`` mask (False for padding ``""``, missing and unknown items, whose rows are
zeros); ``FeatureEntry.validate()`` checks the files against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.errors import ConfigError, DataError

MANIFEST_VERSION = 1
"""Version of the manifest and shard layout this module writes and reads."""

SHARD_VERSION = 1
DEFAULT_STORE_ROOT = Path("features")
"""Where ``mmrec extract`` writes entries when no store is given (relative to the working folder)."""

MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"

Format = Literal["h5", "parquet"]
DType = Literal["float16", "float32"]
_FORMATS: dict[str, str] = {"h5": ".h5", "parquet": ".parquet"}
_DTYPES: dict[str, np.dtype] = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}

_H5_CHUNK_BYTES = 1 << 20  # HDF5 chunk target: about 1 MiB (fits the default chunk cache)
_H5_CHUNK_ROWS_MAX = 1024
_BLOCK_BYTES = 64 << 20  # rows read at once when aligning/validating; also the Parquet row group
_HASH_BLOCK = 4 << 20

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "encoder": dict,
    "modality": str,
    "format": str,
    "dtype": str,
    "shape_per_item": list,
    "catalogue_hash": str,
    "config_hash": str,
    "n_items": int,
    "n_rows": int,
    "shards": list,
    "missing": dict,
    "library_versions": dict,
    "created": str,
}
_SHARD_KEYS: dict[str, type | tuple[type, ...]] = {"file": str, "rows": int, "sha256": str, "bytes": int, "shape": list}
_ENTRY_HINT = ("run `mmrec extract` to create the entry (a folder without manifest.json is an unfinished run: "
               "run the same command again to finish it), or pass the entry folder itself")


# ---------------------------------------------------------------------------------------------
# writing


def write_shard(
    path: str | Path,
    item_ids: Sequence[str],
    features: np.ndarray,
    *,
    fmt: Format,
    dtype: DType,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one shard atomically and return its entry for the manifest's ``shards`` list.

    ``features`` is ``[N, D]`` or ``[N, T, D]`` with row ``i`` belonging to ``item_ids[i]``; it is
    cast to ``dtype`` (float32 -> float16 rounds to nearest; values beyond +-65504 become inf, which
    ``FeatureEntry.validate`` reports). ``N`` may be 0. The file appears at ``path`` only once it
    is complete (temporary name, fsync, rename); on any error the temporary file is removed.

    Returns ``{"file": path.name, "rows": N, "sha256": ..., "bytes": ..., "shape": [N, ...]}``.
    """
    path = Path(path)
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {sorted(_FORMATS)}, not {fmt!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    feats = np.asarray(features)
    if feats.ndim not in (2, 3) or any(d < 1 for d in feats.shape[1:]):
        raise ValueError(f"features must be [N, D] or [N, T, D] with D, T >= 1, got shape {feats.shape}")
    ids = _check_ids(item_ids, feats.shape[0])
    feats = np.ascontiguousarray(feats, dtype=_DTYPES[dtype])

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "h5":
            _write_h5(tmp, ids, feats, attrs or {})
        else:
            _write_parquet(tmp, ids, feats, attrs or {})
        digest, size = _sha256_and_fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return {"file": path.name, "rows": int(feats.shape[0]), "sha256": digest, "bytes": size,
            "shape": [int(d) for d in feats.shape]}


def write_manifest(entry_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``<entry_dir>/manifest.json`` atomically (temporary file, fsync, rename).

    The manifest is checked first (required keys and types, see the module docstring); an
    incomplete one raises ``ValueError`` and nothing is written.
    """
    problems = _manifest_problems(manifest)
    if problems:
        raise ValueError("invalid manifest: " + "; ".join(problems))
    entry_dir = Path(entry_dir)
    entry_dir.mkdir(parents=True, exist_ok=True)
    final = entry_dir / MANIFEST_NAME
    tmp = entry_dir / f".{MANIFEST_NAME}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(entry_dir)


def _check_ids(item_ids: Sequence[str], n: int) -> list[str]:
    ids = list(item_ids)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} item ids for {n} feature rows")
    for i in ids:
        if not isinstance(i, str) or i == "":
            raise ValueError(f"item ids must be non-empty strings ('' is the padding id), got {i!r}")
    if len(set(ids)) != n:
        dup = [k for k, c in Counter(ids).items() if c > 1]
        raise ValueError(f"duplicate item ids in one shard: {dup[:5]}")
    return ids


def _h5_attr(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


def _write_h5(tmp: Path, ids: list[str], feats: np.ndarray, attrs: dict[str, Any]) -> None:
    n = feats.shape[0]
    row_bytes = feats[0:1].nbytes if n else int(np.prod(feats.shape[1:])) * feats.itemsize
    chunk_rows = max(1, min(n, _H5_CHUNK_ROWS_MAX, _H5_CHUNK_BYTES // row_bytes))
    with h5py.File(tmp, "w") as f:
        f.create_dataset("item_id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"),
                         track_times=False)
        # chunked by rows, no compression filter: embeddings do not compress. A zero-row dataset
        # cannot be chunked with a zero-sized chunk, so it stays contiguous. No modification times:
        # the same features give the same bytes (a resumed run is byte-identical to an uninterrupted one).
        f.create_dataset("features", data=feats, chunks=(chunk_rows, *feats.shape[1:]) if n else None,
                         track_times=False)
        f.attrs["mmrec_shard_version"] = SHARD_VERSION
        for k, v in attrs.items():
            f.attrs[str(k)] = _h5_attr(v)


def _write_parquet(tmp: Path, ids: list[str], feats: np.ndarray, attrs: dict[str, Any]) -> None:
    n = feats.shape[0]
    shape = [int(d) for d in feats.shape[1:]]
    width = int(np.prod(shape))
    values = pa.array(feats.reshape(-1))  # float16 -> halffloat, float32 -> float
    table = pa.table({
        "item_id": pa.array(ids, type=pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(values, width),
    })
    table = table.replace_schema_metadata({
        "mmrec.shard_version": str(SHARD_VERSION),
        "mmrec.shape_per_item": json.dumps(shape),
        "mmrec.dtype": str(feats.dtype),
        "mmrec.attrs": json.dumps(attrs, default=str),
    })
    group_rows = max(1, min(n, _BLOCK_BYTES // (width * feats.itemsize)))
    pq.write_table(table, tmp, row_group_size=group_rows, compression="none", use_dictionary=False,
                   write_statistics=False)


def _sha256_and_fsync(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
            size += len(block)
        os.fsync(f.fileno())
    return h.hexdigest(), size


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# reading one shard


class _ShardReader:
    """An open shard: its ids, its shape, and its features block by block (context manager)."""

    def __init__(self, path: Path):
        self.path = path
        self._h5: h5py.File | None = None
        self._pq: pq.ParquetFile | None = None
        if path.suffix in (".h5", ".hdf5"):
            self._h5 = h5py.File(path, "r")
            ds = self._h5["features"]
            self.n_rows = int(ds.shape[0])
            self.shape_per_item = tuple(int(d) for d in ds.shape[1:])
            self.dtype = np.dtype(ds.dtype)
            row_bytes = max(1, int(np.prod(self.shape_per_item)) * self.dtype.itemsize)
            step = max(1, _BLOCK_BYTES // row_bytes)
            if ds.chunks:
                step = max(ds.chunks[0], step // ds.chunks[0] * ds.chunks[0])
            self.blocks = [(a, min(a + step, self.n_rows)) for a in range(0, self.n_rows, step)]
        elif path.suffix == ".parquet":
            self._pq = pq.ParquetFile(pa.memory_map(str(path), "r"))
            schema = self._pq.schema_arrow
            meta = schema.metadata or {}
            ftype = schema.field("features").type
            if b"mmrec.shape_per_item" in meta:
                self.shape_per_item = tuple(json.loads(meta[b"mmrec.shape_per_item"]))
            elif pa.types.is_fixed_size_list(ftype):
                self.shape_per_item = (ftype.list_size,)
            else:
                raise ValueError("features column is not a fixed_size_list and the schema has no shape")
            self.dtype = np.dtype(ftype.value_type.to_pandas_dtype())
            md = self._pq.metadata
            self.n_rows = int(md.num_rows)
            self.blocks = []
            a = 0
            for g in range(md.num_row_groups):
                b = a + md.row_group(g).num_rows
                self.blocks.append((a, b))
                a = b
        else:
            raise ValueError(f"unknown shard file type {path.suffix!r} (expected .h5 or .parquet)")

    def __enter__(self) -> _ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if self._pq is not None:
            self._pq.close()
            self._pq = None

    def ids(self) -> pa.Array:
        if self._h5 is not None:
            return pa.array(self._h5["item_id"].asstr()[()], type=pa.string())
        assert self._pq is not None
        col = self._pq.read(columns=["item_id"]).column("item_id")
        return col.cast(pa.string()).combine_chunks()

    def read_block(self, k: int) -> np.ndarray:
        """Rows ``blocks[k]`` as ``[rows, *shape_per_item]`` in the stored dtype."""
        a, b = self.blocks[k]
        if self._h5 is not None:
            return self._h5["features"][a:b]
        assert self._pq is not None
        col = self._pq.read_row_group(k, columns=["features"]).column("features")
        parts = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]  # no copy when no nulls
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        return flat.reshape(b - a, *self.shape_per_item)

    def read_all(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros((0, *self.shape_per_item), dtype=self.dtype)
        parts = [self.read_block(k) for k in range(len(self.blocks))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_shard(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A shard's ``(item_ids, features)``: an object array of str and ``[N, *shape]`` in the stored dtype."""
    with _ShardReader(Path(path)) as r:
        ids = np.array(r.ids().to_pylist(), dtype=object)
        return ids, r.read_all()


# ---------------------------------------------------------------------------------------------
# manifest checks


def _manifest_problems(m: Any) -> list[str]:
    if not isinstance(m, dict):
        return ["the manifest is not a JSON object"]
    out: list[str] = []
    for key, typ in _REQUIRED.items():
        if key not in m:
            out.append(f"required key {key!r} is absent")
        elif not isinstance(m[key], typ) or (typ is int and isinstance(m[key], bool)):
            out.append(f"{key!r} should be {_tname(typ)}, not {type(m[key]).__name__}")
    if out:
        return out
    if m["version"] > MANIFEST_VERSION:
        out.append(f"manifest version {m['version']} is newer than this mmrec reads ({MANIFEST_VERSION}); "
                   "upgrade mmrec")
    if m["format"] not in _FORMATS:
        out.append(f"format {m['format']!r} is not one of {sorted(_FORMATS)}")
    if m["dtype"] not in _DTYPES:
        out.append(f"dtype {m['dtype']!r} is not one of {sorted(_DTYPES)}")
    shape = m["shape_per_item"]
    if not (1 <= len(shape) <= 2 and all(isinstance(d, int) and d >= 1 for d in shape)):
        out.append(f"shape_per_item should be [D] or [T, D] of positive ints, not {shape}")
    for i, s in enumerate(m["shards"]):
        if not isinstance(s, dict):
            out.append(f"shards[{i}] is not an object")
            continue
        for key, typ in _SHARD_KEYS.items():
            if not isinstance(s.get(key), typ):
                out.append(f"shards[{i}].{key} is absent or not {_tname(typ)}")
        f = s.get("file")
        if isinstance(f, str) and (not f or Path(f).name != f or f.startswith(".")):
            out.append(f"shards[{i}].file {f!r} must be a plain file name inside {SHARD_DIR}/")
    return out


def _tname(typ: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", dict: "an object", list: "a list"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# an entry


@dataclass
class _IdIndex:
    ids: pa.Array  # every stored id, shard after shard
    offsets: np.ndarray  # int64 [n_shards + 1]: shard s holds global rows offsets[s]:offsets[s+1]


class FeatureEntry:
    """One entry of the feature store (see the module docstring), opened read-only."""

    def __init__(self, entry_dir: str | Path):
        self.path = Path(entry_dir)
        mpath = self.path / MANIFEST_NAME
        if not self.path.is_dir():
            raise DataError("no such feature store entry (folder does not exist)", path=str(self.path),
                            hint=_ENTRY_HINT)
        if not mpath.is_file():
            raise DataError("not a feature store entry (no manifest.json)", path=str(self.path), hint=_ENTRY_HINT)
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"manifest.json cannot be read: {e}", path=str(mpath),
                            hint="the file is damaged; run `mmrec extract` again with --overwrite") from e
        problems = _manifest_problems(manifest)
        if problems:
            raise DataError("invalid manifest: " + "; ".join(problems), path=str(mpath),
                            hint="it was not written by this version of mmrec, or was edited by hand; "
                                 "run `mmrec extract` again with --overwrite")
        self.manifest: dict[str, Any] = manifest

    def __repr__(self) -> str:
        return (f"FeatureEntry({str(self.path)!r}, modality={self.modality!r}, shape={list(self.shape_per_item)}, "
                f"rows={self.n_rows})")

    # -- what the manifest says --------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.path.name)

    @property
    def modality(self) -> str:
        return str(self.manifest["modality"])

    @property
    def shape_per_item(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.manifest["shape_per_item"])

    @property
    def dim(self) -> int:
        """D, the size of the last axis."""
        return self.shape_per_item[-1]

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype."""
        return _DTYPES[self.manifest["dtype"]]

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def missing(self) -> dict[str, str]:
        """``{item_id: reason}`` of the catalogue items that have no features."""
        return self.manifest["missing"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    def shard_path(self, shard: dict[str, Any]) -> Path:
        return self.path / SHARD_DIR / shard["file"]

    # -- reading -----------------------------------------------------------------------------

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(item_ids, features)`` of each shard in manifest order, in the stored dtype."""
        for s in self.shards:
            yield read_shard(self._existing(s))

    def _existing(self, shard: dict[str, Any]) -> Path:
        p = self.shard_path(shard)
        if not p.is_file():
            raise DataError("a shard listed in the manifest is missing", path=str(p),
                            hint="run `mmrec features validate` on the entry, and `mmrec extract --overwrite` to "
                                 "rebuild it")
        return p

    def _open(self, shard: dict[str, Any]) -> _ShardReader:
        p = self._existing(shard)
        try:
            return _ShardReader(p)
        except (OSError, ValueError, KeyError) as e:  # ArrowInvalid is a ValueError
            raise DataError(f"shard cannot be read: {e}", path=str(p),
                            hint="run `mmrec features validate` on the entry") from e

    @staticmethod
    def _read(reader: _ShardReader, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"shard cannot be read: {e}", path=str(reader.path),
                            hint="run `mmrec features validate` on the entry") from e

    @cached_property
    def _index(self) -> _IdIndex:
        parts: list[pa.Array] = []
        counts = [0]
        for s in self.shards:
            with self._open(s) as r:
                ids = self._read(r, r.ids)
            parts.append(ids)
            counts.append(len(ids))
        ids = pa.concat_arrays(parts) if parts else pa.array([], type=pa.string())
        return _IdIndex(ids, np.cumsum(counts, dtype=np.int64))

    def _locate(self, raw_item_ids: Sequence[str] | np.ndarray | pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """(requested ids as Arrow, padding mask, global stored row of each id or -1)."""
        req = _as_id_array(raw_item_ids)
        pad = pc.fill_null(pc.equal(req, ""), True).to_numpy(zero_copy_only=False)
        idx = self._index
        rows = pc.fill_null(pc.index_in(req, value_set=idx.ids), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        rows[pad] = -1
        return req, pad, rows

    def aligned(self, raw_item_ids: Sequence[str] | np.ndarray | pa.Array,
                dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Features in the caller's item order.

        Returns ``(matrix, present)``: ``matrix`` is ``[len(raw_item_ids), *shape_per_item]`` in
        ``dtype`` and its row ``i`` holds the features of item ``raw_item_ids[i]``; ``present[i]``
        is False, and the row all zeros, for the padding id ``""``, for items the store recorded as
        missing and for ids the store never saw (``alignment_report`` counts them). Pass
        ``PreparedDataset.raw_item_ids`` to get a matrix indexed by internal item id.

        Each shard is read once, block by block, straight into its destination rows; shards
        holding none of the requested ids are not read at all.
        """
        _, _, rows = self._locate(raw_item_ids)
        out = np.zeros((len(rows), *self.shape_per_item), dtype=dtype)
        present = rows >= 0
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        offsets = self._index.offsets
        bounds = np.searchsorted(sorted_rows, offsets)
        for s, shard in enumerate(self.shards):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if lo == hi:
                continue
            dest = order[lo:hi]
            local = sorted_rows[lo:hi] - offsets[s]
            with self._open(shard) as r:
                if r.shape_per_item != self.shape_per_item:
                    raise DataError(f"shard rows are {list(r.shape_per_item)} per item, the manifest says "
                                    f"{list(self.shape_per_item)}", path=str(r.path),
                                    hint="run `mmrec features validate` on the entry")
                starts = np.array([a for a, _ in r.blocks] + [r.n_rows], dtype=np.int64)
                cuts = np.searchsorted(local, starts)
                for k, (a, _) in enumerate(r.blocks):
                    i, j = int(cuts[k]), int(cuts[k + 1])
                    if i < j:
                        out[dest[i:j]] = self._read(r, r.read_block, k)[local[i:j] - a]
        return out, present

    def alignment_report(self, raw_item_ids: Sequence[str] | np.ndarray | pa.Array) -> dict[str, Any]:
        """How the requested ids match the entry.

        ``{"requested", "padding", "found", "missing", "unknown", "coverage", "missing_reasons":
        {reason: count}, "unknown_examples": [up to 5 ids]}``; ``coverage`` is found / non-padding.
        """
        req, pad, rows = self._locate(raw_item_ids)
        found = rows >= 0
        if self.missing:
            miss_set = pa.array(list(self.missing), type=pa.string())
            is_missing = pc.fill_null(pc.is_in(req, value_set=miss_set), False).to_numpy(zero_copy_only=False)
            is_missing &= ~found & ~pad
        else:
            is_missing = np.zeros(len(rows), dtype=bool)
        unknown = ~(found | pad | is_missing)
        reasons = Counter(self.missing[i] for i in req.filter(pa.array(is_missing)).to_pylist())
        n_real = int(len(rows) - pad.sum())
        return {
            "requested": int(len(rows)),
            "padding": int(pad.sum()),
            "found": int(found.sum()),
            "missing": int(is_missing.sum()),
            "unknown": int(unknown.sum()),
            "coverage": float(found.sum() / n_real) if n_real else 1.0,
            "missing_reasons": dict(reasons.most_common()),
            "unknown_examples": req.filter(pa.array(unknown)).slice(0, 5).to_pylist(),
        }

    # -- checking ----------------------------------------------------------------------------

    def validate(self, check_checksums: bool = True) -> list[str]:
        """Problems found in the entry; an empty list means it is sound.

        Checks: each shard file exists with the manifest's byte size and (``check_checksums``)
        sha256; it can be read; its rows, shape and dtype match the manifest; no item id is stored
        twice (within or across shards); no missing item also has a row; no NaN or inf (read in
        blocks); ``n_rows`` is the sum of the shards' rows and ``n_rows + len(missing) == n_items``.
        """
        m = self.manifest
        problems: list[str] = []
        shape = self.shape_per_item
        all_ids: list[pa.Array] = []
        seen_files: set[str] = set()
        for s in self.shards:
            label = f"{SHARD_DIR}/{s['file']}"
            if s["file"] in seen_files:
                problems.append(f"{label}: listed twice in the manifest")
                continue
            seen_files.add(s["file"])
            p = self.shard_path(s)
            if not p.is_file():
                problems.append(f"{label}: file does not exist")
                continue
            size = p.stat().st_size
            if size != s["bytes"]:
                problems.append(f"{label}: {size} bytes, the manifest says {s['bytes']}")
            if check_checksums and _sha256(p) != s["sha256"]:
                problems.append(f"{label}: sha256 does not match the manifest (the file was changed or is corrupted)")
            try:
                with _ShardReader(p) as r:
                    ids = r.ids()
                    if list(s["shape"]) != [r.n_rows, *r.shape_per_item]:
                        problems.append(f"{label}: shape {[r.n_rows, *r.shape_per_item]}, the manifest says {s['shape']}")
                    if r.n_rows != s["rows"]:
                        problems.append(f"{label}: {r.n_rows} rows, the manifest says {s['rows']}")
                    if len(ids) != r.n_rows:
                        problems.append(f"{label}: {len(ids)} item ids for {r.n_rows} feature rows")
                    if r.shape_per_item != shape:
                        problems.append(f"{label}: {list(r.shape_per_item)} per item, the manifest says {list(shape)}")
                    if r.dtype != self.dtype:
                        problems.append(f"{label}: stored as {r.dtype}, the manifest says {self.dtype}")
                    bad_rows = 0
                    first_bad: int | None = None
                    for k, (a, _) in enumerate(r.blocks):
                        block = r.read_block(k)
                        if len(block) == 0:
                            continue
                        ok = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
                        if not ok.all():
                            bad_rows += int((~ok).sum())
                            if first_bad is None:
                                first_bad = a + int(np.argmin(ok))
                    if bad_rows:
                        example = ids[first_bad].as_py() if first_bad is not None and first_bad < len(ids) else "?"
                        problems.append(f"{label}: {bad_rows} row(s) hold NaN or inf (first: item {example!r})")
                    all_ids.append(ids)
            except Exception as e:  # a damaged file fails in many ways (OSError, ArrowInvalid, KeyError, ...)
                problems.append(f"{label}: cannot be read ({type(e).__name__}: {e})")

        stored = pa.concat_arrays(all_ids) if all_ids else pa.array([], type=pa.string())
        if len(stored):
            counts = pc.value_counts(stored)
            dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
            if dup:
                problems.append(f"{len(dup)} item id(s) stored more than once, e.g. {dup[:5]}")
        if self.missing and len(stored):
            both = pa.array(list(self.missing), type=pa.string())
            both = both.filter(pc.is_in(both, value_set=stored)).to_pylist()
            if both:
                problems.append(f"{len(both)} item id(s) are recorded missing but also stored, e.g. {both[:5]}")
        total = sum(int(s["rows"]) for s in self.shards)
        if m["n_rows"] != total:
            problems.append(f"n_rows is {m['n_rows']} but the shards hold {total} rows")
        if m["n_rows"] + len(self.missing) != m["n_items"]:
            problems.append(f"n_items is {m['n_items']} but n_rows + missing = {m['n_rows']} + {len(self.missing)}"
                            f" = {m['n_rows'] + len(self.missing)}")
        return problems

    # -- for people --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """A summary for people (``format_info`` prints it)."""
        m = self.manifest
        enc = m["encoder"]
        return {
            "name": self.name,
            "path": str(self.path),
            "encoder": enc.get("encoder"),
            "model": enc.get("model"),
            "pooling": enc.get("pooling"),
            "modality": self.modality,
            "shape_per_item": list(self.shape_per_item),
            "dtype": m["dtype"],
            "format": m["format"],
            "n_items": m["n_items"],
            "n_rows": m["n_rows"],
            "n_missing": len(self.missing),
            "missing_reasons": dict(Counter(self.missing.values()).most_common()),
            "n_shards": len(self.shards),
            "total_bytes": int(sum(int(s["bytes"]) for s in self.shards)),
            "created": m["created"],
            "catalogue_hash": m["catalogue_hash"],
            "config_hash": m["config_hash"],
            "library_versions": dict(m["library_versions"]),
        }


def format_info(entry: FeatureEntry | dict[str, Any], max_reasons: int = 10) -> str:
    """``FeatureEntry.info()`` as aligned text lines."""
    info = entry.info() if isinstance(entry, FeatureEntry) else entry
    shape = " x ".join(str(d) for d in info["shape_per_item"])
    rows = [
        ("entry", f"{info['name']}  ({info['path']})"),
        ("encoder", f"{info['encoder']}  ({info['modality']}, pooling {info['pooling']})"),
        ("model", str(info["model"])),
        ("features", f"{shape} per item, {info['dtype']}, {info['format']}"),
        ("rows", f"{info['n_rows']:,} of {info['n_items']:,} catalogue items"),
        ("missing", f"{info['n_missing']:,}"),
    ]
    lines = [f"{k:<10}{v}" for k, v in rows]
    reasons = list(info["missing_reasons"].items())
    for reason, count in reasons[:max_reasons]:
        lines.append(f"{'':<12}{reason}: {count:,}")
    if len(reasons) > max_reasons:
        rest = sum(c for _, c in reasons[max_reasons:])
        lines.append(f"{'':<12}... {len(reasons) - max_reasons} more reasons: {rest:,}")
    lines += [
        f"{'shards':<10}{info['n_shards']}, {_human_bytes(info['total_bytes'])}",
        f"{'created':<10}{info['created']}",
        f"{'hashes':<10}catalogue {info['catalogue_hash'][:12]}, config {info['config_hash'][:12]}",
    ]
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


def _as_id_array(ids: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        return ids.cast(pa.string())
    try:
        return pa.array(np.asarray(ids, dtype=object), type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
        raise TypeError(f"item ids must be strings (raw ids, e.g. PreparedDataset.raw_item_ids): {e}") from e


# ---------------------------------------------------------------------------------------------
# finding entries


# -- the extraction's side of an entry: plan, per-shard commit files, manifest -----------------------
#
# plan.json            what an extraction into this entry encodes: settings hash, catalogue hash, shard
#                      spans and each shard's content fingerprint (a re-run checks it; a change is an error
#                      unless --overwrite)
# shards/part-N.json   a shard's commit file, written after its data file: the shard's manifest row,
#                      its missing items with their reasons, its fingerprint, timing. A shard without one
#                      does not exist (a re-run encodes it again)
# errors.jsonl         one line per item that could not be encoded, with the reason


def shard_file(entry_dir: str | Path, shard: int, ext: str) -> Path:
    return Path(entry_dir) / "shards" / f"part-{shard:05d}.{ext}"


def _commit_path(entry_dir: str | Path, shard: int) -> Path:
    return Path(entry_dir) / "shards" / f"part-{shard:05d}.json"


def make_plan(config: dict[str, Any], spans: list[tuple[int, int]], fingerprints: list[str]) -> dict[str, Any]:
    """The ``plan.json`` of an extraction: ``config`` (encoder settings) and the catalogue's shards."""
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    catalogue_hash = hashlib.sha256("".join(fingerprints).encode()).hexdigest()
    return {"config_hash": config_hash, "config": config, "catalogue_hash": catalogue_hash,
            "n_items": spans[-1][1] if spans else 0,
            "shards": [{"span": list(sp), "fingerprint": fp} for sp, fp in zip(spans, fingerprints)]}


def start_entry(entry_dir: str | Path, plan: dict[str, Any], *, overwrite: bool,
                log: Callable[[str], None]) -> None:
    """Make ``entry_dir`` ready for ``plan``: a new entry, or one whose plan matches (an interrupted
    extraction resumes), or, with ``overwrite``, a replaced one. Another plan without ``overwrite``
    is an error naming what changed."""
    entry = Path(entry_dir)
    plan_path = entry / "plan.json"
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old.get("config_hash") != plan["config_hash"] or old.get("catalogue_hash") != plan["catalogue_hash"]:
            what = []
            if old.get("config_hash") != plan["config_hash"]:
                what.append("encoder or settings")
            if old.get("catalogue_hash") != plan["catalogue_hash"]:
                changed = sum(1 for a, b in zip(old.get("shards", []), plan["shards"])
                              if a.get("fingerprint") != b["fingerprint"])
                n = plan["n_items"]
                what.append(f"catalogue ({changed} of {len(plan['shards'])} shards differ"
                            f"{', item count ' + str(old.get('n_items')) + ' -> ' + str(n) if old.get('n_items') != n else ''})")
            if not overwrite:
                raise ConfigError(f"{entry} holds features from another {' and '.join(what)}; pass --overwrite "
                                  "to replace them, or --name to write a new entry")
            log(f"overwriting {entry}: the {' and '.join(what)} changed")
            shutil.rmtree(entry)
    elif entry.exists() and any(entry.iterdir()) and not overwrite:
        raise ConfigError(f"{entry} exists but has no plan.json; pass --overwrite or choose another --name")
    elif entry.exists() and overwrite:
        shutil.rmtree(entry)
    (entry / "shards").mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, plan_path)


def shard_committed(entry_dir: str | Path, shard: int) -> bool:
    return _commit_path(entry_dir, shard).exists()


def clear_shard_debris(entry_dir: str | Path, shard: int) -> None:
    """Remove what a run killed while writing ``shard`` left (never visible as a shard: no commit file)."""
    for junk in (Path(entry_dir) / "shards").glob(f".part-{shard:05d}.*.tmp"):
        junk.unlink(missing_ok=True)


def commit_shard(entry_dir: str | Path, shard: int, shard_info: dict[str, Any], missing: dict[str, str],
                 fingerprint: str, seconds: float, items: int, process: int, processes: int) -> None:
    """Write ``shard``'s commit file (after its data file, ``write_shard``): from now on it exists."""
    sidecar = {"shard": shard, "entry": shard_info, "missing": missing, "fingerprint": fingerprint,
               "seconds": round(seconds, 3), "items": items, "process": process, "processes": processes}
    final = _commit_path(entry_dir, shard)
    tmp = final.with_name(f".part-{shard:05d}.json.tmp")
    try:
        tmp.write_text(json.dumps(sidecar))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def committed_shards(entry_dir: str | Path) -> int:
    return sum(1 for _ in (Path(entry_dir) / "shards").glob("part-*.json"))


def finish_entry(entry_dir: str | Path, plan: dict[str, Any], *, encoder: dict[str, Any], modality: str,
                 fmt: str, dtype: str, shape_per_item: list[int], source: str | None,
                 log: Callable[[str], None], extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Assemble and write ``manifest.json`` (and ``errors.jsonl``) from the shards' commit files, or
    None (with a log line) while some shard is not finished. ``encoder``: the encoder's description
    (its ``describe()``: ``encoder`` is its name). ``extra``: further top-level manifest keys (e.g.
    ``import``: the imported file and its sha256, ``mmrec features import``); they may not replace
    the keys written here."""
    entry = Path(entry_dir)
    sidecars, absent = [], []
    for s in range(len(plan["shards"])):
        p = _commit_path(entry, s)
        if not p.exists():
            absent.append(s)
            continue
        sidecars.append(json.loads(p.read_text()))
    if absent:
        log(f"{len(absent)} shard(s) are not finished (e.g. {absent[:5]}); run the same command again to resume")
        return None
    missing: dict[str, str] = {}
    for sc in sidecars:
        missing.update(sc["missing"])
    with open(entry / ".errors.jsonl.tmp", "w") as f:
        for item_id, reason in sorted(missing.items()):
            f.write(json.dumps({"item_id": item_id, "reason": reason}) + "\n")
    os.replace(entry / ".errors.jsonl.tmp", entry / "errors.jsonl")
    import importlib.metadata as md

    versions = {}
    for lib in ("torch", "transformers", "timm", "open_clip_torch", "h5py", "pyarrow", "accelerate", "mmrec"):
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    secs = sum(sc["seconds"] for sc in sidecars)
    manifest = {
        "version": MANIFEST_VERSION,
        "name": entry.name,
        "encoder": encoder,
        "modality": modality,
        "format": fmt,
        "dtype": dtype,
        "shape_per_item": list(shape_per_item),
        "catalogue_hash": plan["catalogue_hash"],
        "config_hash": plan["config_hash"],
        "catalogue_source": source,
        "n_items": plan["n_items"],
        "n_rows": sum(sc["entry"]["rows"] for sc in sidecars),
        "shards": [sc["entry"] for sc in sidecars],
        "missing": missing,
        "library_versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stats": {"encode_seconds_sum": round(secs, 3),
                  "items_per_s": round(plan["n_items"] / secs, 2) if secs > 0 else None,
                  "machine": platform.machine()},
    }
    clash = sorted(set(extra or {}) & set(manifest))
    if clash:
        raise ValueError(f"extra manifest keys {clash} would replace the ones finish_entry writes")
    manifest.update(extra or {})
    write_manifest(entry, manifest)
    if missing and manifest["n_rows"] == 0:
        some = next(iter(missing.values()))
        log(f"warning: none of the {plan['n_items']:,} items could be encoded (e.g. {some}); check the inputs "
            "(for images: the image folder) before training on this entry")
    return manifest


def list_entries(store_root: str | Path) -> list[str]:
    """Names of the finished entries (folders with manifest.json) under ``store_root``."""
    root = Path(store_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def find_entry(name_or_path: str | Path, store_root: str | Path | None = None) -> FeatureEntry:
    """Open an entry given as a folder (or its manifest.json), or as a name under ``store_root``.

    ``store_root`` defaults to ``DEFAULT_STORE_ROOT``. On failure the ``DataError`` lists the
    entries that exist under the store root.
    """
    root = Path(store_root) if store_root is not None else DEFAULT_STORE_ROOT
    given = Path(name_or_path)
    if given.name == MANIFEST_NAME and given.is_file():
        return FeatureEntry(given.parent)
    if (given / MANIFEST_NAME).is_file():
        return FeatureEntry(given)
    named = root / str(name_or_path)
    if (named / MANIFEST_NAME).is_file():
        return FeatureEntry(named)
    inner = list_entries(given) if given.is_dir() else []
    if inner:
        raise DataError(f"{str(name_or_path)!r} is a store root, not an entry", path=str(given),
                        hint=f"pass one of its entries: {', '.join(inner)}")
    names = list_entries(root)
    if names:
        hint = f"entries under {root}: {', '.join(names)}"
    else:
        hint = f"there are no finished entries under {root}; run `mmrec extract` first, or pass the entry folder"
    if given.is_dir() or named.is_dir():
        what = "is an unfinished entry (no manifest.json): run the same `mmrec extract` command again to finish it"
    else:
        what = "is neither an entry folder nor an entry name"
    raise DataError(f"{str(name_or_path)!r} {what}", path=str(root), hint=hint)


def as_torch_embedding(matrix: np.ndarray, *, freeze: bool = True, padding_idx: int | None = 0):
    """A ``torch.nn.Embedding`` holding ``matrix`` ([n, D], e.g. from ``aligned``), frozen by default."""
    import torch

    if matrix.ndim != 2:
        raise ValueError(f"an embedding table needs a [n, D] matrix, got shape {matrix.shape}")
    return torch.nn.Embedding.from_pretrained(torch.from_numpy(np.ascontiguousarray(matrix)), freeze=freeze,
                                              padding_idx=padding_idx)


# ---------------------------------------------------------------------------------------------
# merging entries (for merged datasets: `mmrec data merge`)


def merge_entries(parts: dict[str, str | Path], out_dir: str | Path, *, store_root: str | Path | None = None,
                  overwrite: bool = False) -> FeatureEntry:
    """One entry holding the features of several entries, item ids prefixed with the part's name
    (``"office:B00..."``), matching ``mmrec data merge``. The parts must share modality, shape per
    item and dtype; the shards are rewritten (one per source shard) in the first part's format.
    A merged dataset's part that has no entry for this modality is simply not given: its items are
    absent from the merged entry, i.e. missing that feature (one part alone is allowed for this)."""
    out = Path(out_dir)
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise DataError("the merged entry exists", path=str(out), hint="pass --overwrite to replace it")
    if not parts:
        raise ValueError("give at least one entry (name=entry)")
    entries = {name: find_entry(ref, store_root) for name, ref in parts.items()}
    first = next(iter(entries.values()))
    for name, e in entries.items():
        if ":" in name or "/" in name or not name:
            raise ValueError(f"part name {name!r} must be non-empty and contain no ':' or '/'")
        if (e.modality, e.shape_per_item, e.manifest["dtype"]) != (first.modality, first.shape_per_item,
                                                                    first.manifest["dtype"]):
            raise DataError(f"entry {name} holds {e.modality} {list(e.shape_per_item)} {e.manifest['dtype']} features, "
                            f"the first holds {first.modality} {list(first.shape_per_item)} {first.manifest['dtype']}",
                            path=str(e.path), hint="merge entries made by the same encoder and settings")
    if out.exists():
        shutil.rmtree(out)
    (out / SHARD_DIR).mkdir(parents=True)
    fmt, dtype = first.manifest["format"], first.manifest["dtype"]
    ext = "h5" if fmt == "h5" else "parquet"
    shards, missing, k = [], {}, 0
    for name, e in entries.items():
        for ids, feats in e.iter_shards():
            info = write_shard(out / SHARD_DIR / f"part-{k:05d}.{ext}", [f"{name}:{i}" for i in ids], feats,
                               fmt=fmt, dtype=dtype, attrs={"merged_from": name})
            shards.append(info)
            k += 1
        missing.update({f"{name}:{i}": r for i, r in e.missing.items()})
    m = dict(first.manifest)
    m.update({
        "name": out.name, "shards": shards, "missing": missing,
        "n_items": sum(int(e.manifest["n_items"]) for e in entries.values()),
        "n_rows": sum(s["rows"] for s in shards),
        "catalogue_hash": hashlib.sha256("".join(e.manifest["catalogue_hash"] for e in entries.values()).encode()).hexdigest(),
        "config_hash": first.manifest["config_hash"],
        "merged_from": {name: {"entry": str(Path(e.path).resolve()), "config_hash": e.manifest["config_hash"],
                               "encoder": e.manifest.get("encoder")} for name, e in entries.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    write_manifest(out, m)
    return FeatureEntry(out)
