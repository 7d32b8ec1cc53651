"""``mmrec features import``: bring features computed elsewhere into the feature store.

A user who already has item features (MMRec's ``text_feat.npy`` / ``image_feat.npy``, a Parquet of
CLIP vectors keyed by item id, an ``.npy`` / ``.pt`` matrix with an id list, an HDF5 file) stores them
as an entry without re-extracting. The entry is written through the same functions extraction uses
(``make_plan``, ``start_entry``, ``write_shard``, ``commit_shard``, ``finish_entry`` in
``mmrec.features.store``, which owns the format), so it is an ordinary entry: shards with checksums,
``manifest.json`` written last, items of the catalogue without a row listed in ``missing`` with a
reason. The manifest's ``import`` key records the source file, its sha256 and how rows were mapped
to item ids.

Sources (``format``, detected from the extension when not given):

``npy``      ``np.load`` (no pickle) of an ``[N, D]`` matrix; ``ids``: a text file, one raw item id a line,
             in row order.
``pt``       ``torch.load(weights_only=True)``: a tensor, or a dict of tensors (``key`` names the matrix
             when it holds several; ``id_column`` may name a list of ids in it); else ``ids``.
``parquet``  an id column (``id_column``, default ``item_id``) and either one list column of vectors
             (``key`` picks one of several) or one numeric column per dimension.
``h5``       an id dataset (``id_column``, default ``item_id``) and a features dataset (``key``, or the
             only other one). An mmrec shard is such a file.
``mmrec``    MMRec's dataset folder (github.com/enoche/MMRec): ``text_feat.npy`` / ``image_feat.npy``,
             whose row ``i`` is the item with MMRec ``itemID`` ``i``, and ``i_id_mapping.csv``
             (tab-separated, header ``asin<TAB>itemID`` as MMRec's preprocessing notebooks write it)
             that maps raw ids to those ``itemID``s. The raw-id column is ``id_column``, else ``asin``,
             else the one column besides ``itemID``. ``ids`` names another mapping file.

Refused, before anything is written: a matrix that is not 2-D (3-D ``[N, T, D]`` only with
``tokens``); a row count that differs from the id count; empty, duplicate (named) or, with a
``dataset``, unknown ids (counted, a few shown; ``drop_unknown`` leaves them out); NaN, inf or values
beyond the stored dtype's range (the first bad row and its id named).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmrec.errors import ConfigError, DataError

Modality = Literal["text", "image", "price"]
SourceFormat = Literal["npy", "pt", "parquet", "h5", "mmrec"]
NOT_IN_FILE = "not in the imported file"

_EXTENSIONS = {".npy": "npy", ".pt": "pt", ".pth": "pt", ".parquet": "parquet", ".pq": "parquet",
               ".h5": "h5", ".hdf5": "h5"}
_MMREC_FILES = {"text": "text_feat.npy", "image": "image_feat.npy"}
_MMREC_MAPPING = "i_id_mapping.csv"
_CHECK_ROWS = 65536  # rows checked for NaN / range at once (bounded memory on memory-mapped matrices)
_SHOW = 5  # ids shown in an error


@dataclass
class ImportConfig:
    """``mmrec features import`` settings (module docstring)."""

    source: str
    modality: Modality
    name: str | None = None
    store: str = "features"
    ids: str | None = None
    id_column: str | None = None
    key: str | None = None
    format: SourceFormat | None = None
    dtype: Literal["float16", "float32"] = "float16"
    dataset: str | None = None  # a prepared dataset folder, or a Parquet catalogue with an item_id column
    drop_unknown: bool = False
    tokens: bool = False
    overwrite: bool = False
    shard_size: int = 2048

    def validate(self) -> None:
        if self.shard_size < 1:
            raise ConfigError("shard_size must be positive")
        if self.format == "mmrec" and self.modality not in _MMREC_FILES:
            raise ConfigError(f"MMRec's folders hold text and image features only, not {self.modality}; "
                              "give the .npy file with --format npy --ids FILE instead")

    def entry_name(self, fmt: str) -> str:
        if self.name:
            return self.name
        src = Path(self.source)
        if fmt == "mmrec":
            folder = src if src.is_dir() else src.parent
            return f"{folder.resolve().name}-{self.modality}"
        return src.stem


@dataclass
class Source:
    """What was read: ids in row order, the matrix (possibly memory-mapped) and where both came from."""

    ids: list[str]
    matrix: Any  # np.ndarray or np.memmap, [N, D] or [N, T, D]
    path: Path
    format: str
    record: dict[str, Any] = field(default_factory=dict)  # how rows map to ids (for the manifest)


@dataclass
class ImportResult:
    entry_dir: Path
    manifest: dict[str, Any]
    n_rows: int
    n_missing: int
    dropped_unknown: int
    seconds: float


# ---------------------------------------------------------------------------------------------
# reading


def detect_format(path: Path) -> str:
    if path.is_dir():
        if any((path / f).exists() for f in _MMREC_FILES.values()):
            return "mmrec"
        raise ConfigError(f"{path} is a folder without MMRec's text_feat.npy / image_feat.npy; give a file "
                          "(.npy, .pt, .parquet, .h5) or an MMRec dataset folder")
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot tell the format of {path.name} from its extension; pass --format "
                          "npy|pt|parquet|h5|mmrec")
    return fmt


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def read_id_list(path: Path) -> list[str]:
    """One raw item id per line (surrounding spaces removed; trailing blank lines ignored)."""
    if not path.is_file():
        raise DataError("the id list does not exist", path=str(path), hint="pass --ids FILE, one item id a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"the id list is not UTF-8 text ({e})", path=str(path),
                        hint="write one item id a line, UTF-8") from e
    ids = [line.strip() for line in lines]
    while ids and not ids[-1]:
        ids.pop()
    for i, v in enumerate(ids):
        if not v:
            raise DataError("empty line in the id list (every row of the matrix needs an item id)", path=str(path),
                            line=i + 1, hint="remove the line, or give the id of that row")
    return ids


def _as_ids(values: Any, where: str) -> list[str]:
    """Ids from a column / dataset / list: strings, bytes or integers, as strings."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"the item ids are {arr.ndim}-D (shape {list(arr.shape)}); expected one id per row",
                        path=where)
    out: list[str] = []
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        if isinstance(v, bool) or v is None or isinstance(v, float):
            raise DataError(f"item id of row {i} is {v!r}; ids must be strings or integers", path=where,
                            hint="store the ids as a string (or integer) column")
        out.append(str(v).strip())
    return out


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(f"cannot read the .npy matrix: {e}", path=str(path),
                        hint="save a numeric array (np.save(path, matrix.astype('float32')))") from e
    except OSError as e:
        raise DataError(f"cannot read the .npy file: {e}", path=str(path)) from e


def _read_pt(path: Path, cfg: ImportConfig) -> tuple[np.ndarray, list[str] | None, dict[str, Any]]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"cannot read the .pt file with torch.load(weights_only=True): {type(e).__name__}: {e}",
                        path=str(path), hint="save a tensor (or a dict of tensors) with torch.save") from e
    rec: dict[str, Any] = {}
    ids = None
    if isinstance(obj, dict):
        if cfg.id_column is not None:
            if cfg.id_column not in obj:
                raise DataError(f"no {cfg.id_column!r} in the file; its keys: {', '.join(map(str, obj))}",
                                path=str(path))
            ids = _as_ids(obj[cfg.id_column], str(path))
            rec["id_key"] = cfg.id_column
        tensors = {k: v for k, v in obj.items() if torch.is_tensor(v) and k != cfg.id_column}
        if cfg.key is not None:
            if cfg.key not in tensors:
                raise DataError(f"no tensor {cfg.key!r} in the file; its tensors: {', '.join(map(str, tensors))}",
                                path=str(path))
            obj = tensors[cfg.key]
            rec["key"] = cfg.key
        elif len(tensors) == 1:
            rec["key"], obj = next(iter(tensors.items()))
        else:
            raise DataError(f"the file holds a dict with {len(tensors)} tensors ({', '.join(map(str, tensors))}); "
                            "say which is the feature matrix", path=str(path), hint="pass --key NAME")
    if not torch.is_tensor(obj):
        raise DataError(f"the file holds a {type(obj).__name__}, not a tensor", path=str(path),
                        hint="save the [N, D] feature matrix as a tensor (or a dict of tensors)")
    if obj.is_complex() or obj.dtype == torch.bool:
        raise DataError(f"the tensor is {obj.dtype}; expected real numbers", path=str(path))
    return obj.detach().float().numpy() if obj.dtype == torch.bfloat16 else obj.detach().numpy(), ids, rec


def _read_parquet(path: Path, cfg: ImportConfig) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataError(f"cannot read the Parquet file: {e}", path=str(path)) from e
    names = table.column_names
    id_col = cfg.id_column or "item_id"
    if id_col not in names:
        raise DataError(f"no id column {id_col!r}; columns: {', '.join(names)}", path=str(path),
                        hint="pass --id-column NAME")
    ids = _as_ids(table.column(id_col).to_pylist(), str(path))
    others = [c for c in names if c != id_col]
    if cfg.key is not None:
        if cfg.key not in others:
            raise DataError(f"no column {cfg.key!r}; columns: {', '.join(names)}", path=str(path))
        chosen = [cfg.key]
    else:
        lists = [c for c in others if pa.types.is_list(table.schema.field(c).type)
                 or pa.types.is_fixed_size_list(table.schema.field(c).type)
                 or pa.types.is_large_list(table.schema.field(c).type)]
        if len(lists) > 1:
            raise DataError(f"{len(lists)} list columns ({', '.join(lists)}); say which holds the features",
                            path=str(path), hint="pass --key COLUMN")
        chosen = lists or others
    rec: dict[str, Any] = {"id_column": id_col}
    if len(chosen) == 1 and not pa.types.is_floating(table.schema.field(chosen[0]).type) \
            and not pa.types.is_integer(table.schema.field(chosen[0]).type):
        col = table.column(chosen[0])
        rec["column"] = chosen[0]
        for i, v in enumerate(col.is_null().to_pylist()):
            if v:
                raise DataError(f"row {i} (item {ids[i]!r}) has no features (null)", path=str(path),
                                hint="leave items without features out of the file: they are recorded as missing")
        try:
            matrix = np.asarray(col.to_pylist(), dtype=np.float64)
        except (TypeError, ValueError) as e:
            lengths = [len(v) if v is not None else 0 for v in col.to_pylist()]
            bad = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
            where = (f": row {bad} (item {ids[bad]!r}) has {lengths[bad]} values, row 0 has {lengths[0]}"
                     if bad is not None else f" ({e})")
            raise DataError(f"column {chosen[0]!r} is not a matrix{where}", path=str(path),
                            hint="every item needs a vector of the same length") from e
        return matrix, ids, rec
    for c in chosen:  # one numeric column per dimension
        t = table.schema.field(c).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise DataError(f"column {c!r} is {t}; expected one list column of vectors or numeric columns, one "
                            "per dimension", path=str(path), hint="pass --key COLUMN to name the features' column")
    rec["columns"] = chosen if len(chosen) <= 8 else chosen[:4] + ["..."] + chosen[-2:]
    matrix = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in chosen], axis=1)
    return matrix, ids, rec


def _read_h5(path: Path, cfg: ImportConfig) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"cannot read the HDF5 file: {e}", path=str(path)) from e
    with f:
        datasets: list[str] = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        id_name = cfg.id_column or "item_id"
        if id_name not in datasets:
            raise DataError(f"no id dataset {id_name!r}; datasets: {', '.join(datasets)}", path=str(path),
                            hint="pass --id-column NAME")
        ds_ids = f[id_name]
        raw = ds_ids.asstr()[()] if h5py.check_string_dtype(ds_ids.dtype) else ds_ids[()]
        ids = _as_ids(raw, str(path))
        if cfg.key is not None:
            if cfg.key not in datasets:
                raise DataError(f"no dataset {cfg.key!r}; datasets: {', '.join(datasets)}", path=str(path))
            feat_name = cfg.key
        else:
            cands = [d for d in datasets if d != id_name and f[d].dtype.kind in "fiu"]
            if len(cands) != 1:
                raise DataError(f"{len(cands)} numeric datasets besides the ids ({', '.join(cands) or 'none'}); "
                                "say which holds the features", path=str(path), hint="pass --key DATASET")
            feat_name = cands[0]
        ds = f[feat_name]
        if ds.dtype.kind not in "fiu":
            raise DataError(f"dataset {feat_name!r} is {ds.dtype}; expected numbers", path=str(path))
        return ds[()], ids, {"id_dataset": id_name, "dataset": feat_name}


def _read_mmrec_mapping(path: Path, n_rows: int, id_column: str | None) -> tuple[list[str], dict[str, Any]]:
    """MMRec's ``i_id_mapping.csv``: raw id -> ``itemID`` (0-based row of the feature files)."""
    if not path.is_file():
        raise DataError(f"MMRec's item mapping {path.name} does not exist", path=str(path.parent),
                        hint=f"MMRec's preprocessing writes {_MMREC_MAPPING} (raw id -> itemID) beside the features; "
                             "pass it with --ids FILE")
    text = path.read_text(encoding="utf-8")
    first = text.split("\n", 1)[0]
    delim = "\t" if "\t" in first else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delim))
    header = [h.strip() for h in rows[0]] if rows else []
    if "itemID" not in header:
        raise DataError(f"no itemID column in the header ({', '.join(header) or 'empty file'})", path=str(path), line=1,
                        hint="MMRec's mapping has a header with asin and itemID, tab-separated")
    if id_column is not None:
        if id_column not in header:
            raise DataError(f"no column {id_column!r} in the header ({', '.join(header)})", path=str(path), line=1)
        raw_col = id_column
    elif "asin" in header:
        raw_col = "asin"
    elif len(header) == 2:
        raw_col = next(h for h in header if h != "itemID")
    else:
        raise DataError(f"which column holds the raw item ids? header: {', '.join(header)}", path=str(path), line=1,
                        hint="pass --id-column NAME")
    ri, ii = header.index(raw_col), header.index("itemID")
    by_row: dict[int, str] = {}
    for line, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        if len(r) <= max(ri, ii):
            raise DataError(f"{len(r)} fields, the header has {len(header)}", path=str(path), line=line)
        try:
            k = int(r[ii])
        except ValueError:
            raise DataError(f"itemID {r[ii]!r} is not an integer", path=str(path), line=line) from None
        if not 0 <= k < n_rows:
            raise DataError(f"itemID {k} is outside the feature matrix's rows 0..{n_rows - 1}", path=str(path),
                            line=line, hint="the mapping and the feature file come from different preprocessing runs")
        if k in by_row:
            raise DataError(f"itemID {k} is mapped twice ({by_row[k]!r} and {r[ri].strip()!r})", path=str(path),
                            line=line)
        by_row[k] = r[ri].strip()
    if len(by_row) != n_rows:
        absent = [k for k in range(n_rows) if k not in by_row]
        raise DataError(f"row-count mismatch: the mapping names {len(by_row):,} items, the feature matrix has "
                        f"{n_rows:,} rows (no raw id for itemID {absent[:_SHOW]})", path=str(path),
                        hint="use the mapping written with these features")
    return [by_row[k] for k in range(n_rows)], {"mapping": str(path.resolve()), "id_column": raw_col,
                                                "row_of_item": "MMRec itemID (row i = itemID i)"}


def read_source(cfg: ImportConfig) -> Source:
    """Read the user's file(s) into ids (row order) and a matrix (format per the module docstring)."""
    path = Path(cfg.source)
    if not path.exists():
        raise DataError("the file to import does not exist", path=str(path))
    fmt = cfg.format or detect_format(path)
    ids: list[str] | None = None
    rec: dict[str, Any] = {}
    ids_path = Path(cfg.ids) if cfg.ids else None
    if fmt == "mmrec":
        if cfg.modality not in _MMREC_FILES:
            raise ConfigError(f"MMRec's folders hold text and image features only, not {cfg.modality}")
        folder = path if path.is_dir() else path.parent
        if path.is_dir():
            path = folder / _MMREC_FILES[cfg.modality]
            if not path.is_file():
                raise DataError(f"MMRec's {cfg.modality} features ({path.name}) are not in the folder",
                                path=str(folder))
        matrix = _read_npy(path)
        mapping = ids_path or folder / _MMREC_MAPPING
        ids, rec = _read_mmrec_mapping(mapping, int(matrix.shape[0]) if matrix.ndim else 0, cfg.id_column)
        ids_path = mapping
    elif path.is_dir():
        raise ConfigError(f"{path} is a folder; --format {fmt} reads a file")
    elif fmt == "npy":
        matrix = _read_npy(path)
    elif fmt == "pt":
        matrix, ids, rec = _read_pt(path, cfg)
    elif fmt == "parquet":
        matrix, ids, rec = _read_parquet(path, cfg)
    elif fmt == "h5":
        matrix, ids, rec = _read_h5(path, cfg)
    else:
        raise ConfigError(f"unknown --format {fmt!r}; formats: npy, pt, parquet, h5, mmrec")
    if ids is None or (ids_path is not None and fmt != "mmrec"):
        if ids_path is None:
            raise ConfigError(f"a .{fmt} matrix carries no item ids: pass --ids FILE (one raw item id a line, in "
                              "the matrix's row order)")
        ids = read_id_list(ids_path)
        rec = {**rec, "ids_file": str(ids_path.resolve())}
    if ids_path is not None:
        rec["ids_sha256"] = _sha256(ids_path)
    return Source(ids=ids, matrix=matrix, path=path, format=fmt, record=rec)


# ---------------------------------------------------------------------------------------------
# checking


def catalogue_ids(dataset: str) -> list[str]:
    """Raw item ids of a prepared dataset folder, or of a Parquet catalogue's ``item_id`` column."""
    p = Path(dataset)
    if p.is_dir():
        from mmrec.data.prepared import PreparedDataset

        return [str(i) for i in PreparedDataset(p).raw_item_ids[1:]]
    if p.suffix.lower() in (".parquet", ".pq") and p.is_file():
        import pyarrow.parquet as pq

        names = pq.read_schema(p).names
        if "item_id" not in names:
            raise DataError(f"the catalogue has no item_id column (columns: {', '.join(names)})", path=str(p))
        return [str(v) for v in pq.read_table(p, columns=["item_id"]).column("item_id").to_pylist()]
    raise DataError("not a prepared dataset folder nor a Parquet catalogue", path=str(p),
                    hint="pass the folder `mmrec data prepare` wrote, or an items.parquet with an item_id column")


def _shape_problem(matrix: Any, tokens: bool) -> str | None:
    shape = list(matrix.shape)
    want = 3 if tokens else 2
    if len(shape) != want:
        if tokens:
            return (f"features are {len(shape)}-D (shape {shape}); --tokens expects [items, tokens, dim] (3-D)"
                    + ("; drop --tokens for pooled [items, dim] features" if len(shape) == 2 else ""))
        extra = ("; pass --tokens for token features [items, tokens, dim]" if len(shape) == 3 else
                 "; expected one vector per item" if len(shape) < 2 else "")
        return f"features are {len(shape)}-D (shape {shape}); expected [items, dim] (2-D){extra}"
    if any(d < 1 for d in shape):
        return f"features have shape {shape}; every axis must be at least 1"
    return None


def check_source(src: Source, cfg: ImportConfig, catalogue: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """The rows to import (``keep``, positions in the file) and the dropped unknown ids, or a
    ``DataError`` naming the first problem (module docstring). Reads the matrix once, in blocks."""
    where = str(src.path)
    m = src.matrix
    problem = _shape_problem(m, cfg.tokens)
    if problem:
        raise DataError(problem, path=where)
    if np.dtype(m.dtype).kind not in "fiu":
        raise DataError(f"features are {m.dtype}; expected real numbers", path=where)
    n, ids = int(m.shape[0]), src.ids
    if len(ids) != n:
        what = src.record.get("ids_file") or src.record.get("mapping") or "the file's id column"
        hint = " (a header line in the id list?)" if len(ids) == n + 1 else ""
        raise DataError(f"row-count mismatch: {n:,} feature rows but {len(ids):,} item ids in {what}{hint}",
                        path=where, hint="give one id per row, in the matrix's row order")
    empty = [i for i, v in enumerate(ids) if not v]
    if empty:
        raise DataError(f"{len(empty)} row(s) have an empty item id (first: row {empty[0]})", path=where)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(ids):
        rows_of[v].append(i)
    dup = {v: r for v, r in rows_of.items() if len(r) > 1}
    if dup:
        shown = "; ".join(f"{v!r} (rows {', '.join(map(str, r[:4]))}{', ...' if len(r) > 4 else ''})"
                          for v, r in list(dup.items())[:_SHOW])
        raise DataError(f"{len(dup):,} item id(s) appear more than once: {shown}"
                        + (f"; and {len(dup) - _SHOW:,} more" if len(dup) > _SHOW else ""), path=where,
                        hint="keep one row per item")
    keep = np.arange(n)
    dropped: list[str] = []
    if catalogue is not None:
        known = set(catalogue)
        unknown = [i for i, v in enumerate(ids) if v not in known]
        if unknown and not cfg.drop_unknown:
            shown = ", ".join(repr(ids[i]) for i in unknown[:_SHOW])
            raise DataError(f"{len(unknown):,} of {n:,} item ids are not in the dataset {cfg.dataset} (e.g. {shown})",
                            path=where, hint="pass --drop-unknown to leave them out, or check that the ids are "
                                             "the dataset's raw item ids")
        if unknown:
            dropped = [ids[i] for i in unknown]
            keep = np.setdiff1d(keep, np.array(unknown))
    limit = float(np.finfo(cfg.dtype).max)
    bad_rows, first_bad, big_rows, first_big = 0, None, 0, None
    for a in range(0, len(keep), _CHECK_ROWS):
        rows = keep[a:a + _CHECK_ROWS]
        block = np.asarray(m[rows[0]:rows[-1] + 1] if rows[-1] - rows[0] + 1 == len(rows) else m[rows])
        flat = block.reshape(len(rows), -1)
        finite = np.isfinite(flat).all(axis=1) if flat.dtype.kind == "f" else np.ones(len(rows), dtype=bool)
        with np.errstate(invalid="ignore", over="ignore"):
            big = finite & (np.abs(flat.astype(np.float64)).max(axis=1) > limit)
        if not finite.all():
            bad_rows += int((~finite).sum())
            first_bad = first_bad if first_bad is not None else int(rows[int(np.argmin(finite))])
        if big.any():
            big_rows += int(big.sum())
            first_big = first_big if first_big is not None else int(rows[int(np.argmax(big))])
    if first_bad is not None:
        raise DataError(f"{bad_rows:,} row(s) hold NaN or inf; the first is row {first_bad} (item {ids[first_bad]!r})",
                        path=where, hint="leave items without features out of the file (they are recorded as "
                                         "missing), or fix their vectors")
    if first_big is not None:
        raise DataError(f"{big_rows:,} row(s) hold values beyond {cfg.dtype}'s range (+-{limit:g}), which would be "
                        f"stored as inf; the first is row {first_big} (item {ids[first_big]!r})", path=where,
                        hint="pass --dtype float32" if cfg.dtype == "float16" else "scale the features")
    return keep, dropped


# ---------------------------------------------------------------------------------------------
# writing


def import_features(cfg: ImportConfig, *, log: Callable[[str], None] = print) -> ImportResult:
    """Check the source and write it as an entry ``<store>/<name>`` (module docstring). Nothing is
    written when a check fails; an interrupted import resumes like an extraction (same command)."""
    from mmrec.features.store import (
        clear_shard_debris,
        commit_shard,
        committed_shards,
        finish_entry,
        make_plan,
        shard_committed,
        shard_file,
        start_entry,
        write_shard,
    )

    t0 = time.perf_counter()
    src = read_source(cfg)
    catalogue = catalogue_ids(cfg.dataset) if cfg.dataset is not None else None
    keep, dropped = check_source(src, cfg, catalogue)
    source_sha = _sha256(src.path)

    row_of = {src.ids[int(r)]: int(r) for r in keep}
    items = sorted(set(catalogue)) if catalogue is not None else sorted(row_of)
    if not items:
        raise DataError("nothing to import: the catalogue is empty", path=cfg.dataset or str(src.path))
    spans = [(a, min(len(items), a + cfg.shard_size)) for a in range(0, len(items), cfg.shard_size)]
    fingerprints = [hashlib.sha256(json.dumps([[i, row_of.get(i, -1)] for i in items[a:b]]).encode()).hexdigest()
                    for a, b in spans]
    shape = [int(d) for d in src.matrix.shape[1:]]
    config = {"import": {"format": src.format, "source_sha256": source_sha, "ids_sha256": src.record.get("ids_sha256"),
                         "id_column": cfg.id_column, "key": cfg.key, "drop_unknown": cfg.drop_unknown},
              "modality": cfg.modality, "tokens": cfg.tokens, "shape": shape, "out_format": "h5", "dtype": cfg.dtype,
              "shard_size": cfg.shard_size}
    plan = make_plan(config, spans, fingerprints)
    entry = Path(cfg.store) / cfg.entry_name(src.format)
    start_entry(entry, plan, overwrite=cfg.overwrite, log=log)

    for s, (a, b) in enumerate(spans):
        if shard_committed(entry, s):
            continue
        clear_shard_debris(entry, s)
        ts = time.perf_counter()
        span = items[a:b]
        present = [i for i in span if i in row_of]
        missing = {i: NOT_IN_FILE for i in span if i not in row_of}
        rows = np.array([row_of[i] for i in present], dtype=np.int64)
        feats = np.asarray(src.matrix[rows]) if len(rows) else np.zeros([0, *shape], dtype=np.float32)
        path = shard_file(entry, s, "h5")
        try:
            info = write_shard(path, present, feats, fmt="h5", dtype=cfg.dtype,
                               attrs={"encoder": "import", "shard": s, "config_hash": plan["config_hash"]})
            commit_shard(entry, s, info, missing, fingerprints[s], time.perf_counter() - ts, b - a, 0, 1)
        except OSError as e:
            raise DataError(f"could not write shard {s} ({type(e).__name__}: {e})", path=str(path),
                            hint=f"the {committed_shards(entry)} shard(s) already written are complete and kept; "
                                 "free space (or fix the folder) and run the same command again to resume") from e

    record = {"source": str(src.path.resolve()), "source_sha256": source_sha, "format": src.format, **src.record,
              "rows_in_file": int(src.matrix.shape[0]), "dropped_unknown": len(dropped),
              "dropped_examples": dropped[:_SHOW]}
    encoder = {"encoder": "import", "model": str(src.path.resolve()), "source_sha256": source_sha,
               "source_format": src.format, "pooling": "tokens" if cfg.tokens else "pooled", "dim": shape[-1],
               "tokens": shape[0] if cfg.tokens else None}
    manifest = finish_entry(entry, plan, encoder=encoder, modality=cfg.modality, fmt="h5", dtype=cfg.dtype,
                            shape_per_item=shape, source=cfg.dataset, log=log, extra={"import": record})
    assert manifest is not None  # one process wrote every shard
    return ImportResult(entry, manifest, manifest["n_rows"], len(manifest["missing"]), len(dropped),
                        time.perf_counter() - t0)
