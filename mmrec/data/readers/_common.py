"""Helpers shared by the readers: option checking, file finding, text clean-up, fast grouping.

Nothing here is a reader; see the sibling modules for the formats.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrec.data.schema import ReadReport
from mmrec.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


# --------------------------------------------------------------------------- options and files


def check_options(fmt: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Return ``defaults`` updated with ``options``; an unknown option raises ConfigError listing the valid ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise ConfigError(
            f"format {fmt!r} has no option {', '.join(repr(u) for u in unknown)}; valid options: {valid}"
        )
    out = dict(defaults)
    out.update(options)
    return out


def check_choice(fmt: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"format {fmt!r}: option {name!r} must be one of {list(choices)}, got {value!r}")


def list_form(value: Any) -> str:
    """The ``[a, b]`` spelling of a list, built from what the user wrote (``"a,b"`` -> ``[a, b]``)."""
    from mmrec.config import list_form as _form

    return _form(value)


def check_list_option(fmt: str, name: str, value: Any, what: str, *, allow_empty: bool = True) -> list[Any]:
    """``value`` as a list of non-blank strings; anything else raises ConfigError showing the ``[a, b]`` form.

    ``name`` is the option as the user writes it (``items.text_cols``); ``what`` says what the list
    holds ("column names").
    """
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value)
    if ok and (value or allow_empty):
        return list(value)
    form = list_form(value)
    got = "an empty list" if isinstance(value, (list, tuple)) and not value else repr(value)
    raise ConfigError(
        f"format {fmt!r}: option {name} must be a list of {what} in brackets, got {got}; "
        f"write {name}={form} (on the command line: -r '{name}={form}'; in a config file: "
        f"{name.rsplit('.', 1)[-1]}: {form})"
    )


def several_datasets(fmt: str, folder: Path, found: dict[str, list[str]]) -> ConfigError:
    """The error for a folder holding several datasets of one format: ``found`` maps each dataset's
    name to its files; the user picks one with the reader option ``name``."""
    listed = "; ".join(f"{n} ({', '.join(files)})" for n, files in found.items())
    first = next(iter(found))
    return ConfigError(
        f"{folder} holds {len(found)} {fmt} datasets: {listed}; pick one with the reader option name, "
        f"e.g. -r name={first}"
    )


def as_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser()


def require_dir(path: Path, fmt: str, layout: str) -> Path:
    if not path.exists():
        raise DataError(f"no such folder for format {fmt!r}", path=str(path), hint=f"expected {layout}")
    if not path.is_dir():
        raise DataError(f"format {fmt!r} reads a folder, not a file", path=str(path), hint=f"expected {layout}")
    return path


def require_file(path: Path, what: str, hint: str | None = None) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found", path=str(path), hint=hint or "check the path and the file name")
    return path


def resolve_option_path(value: str | os.PathLike[str], base: Path) -> Path:
    """An option path: absolute, or relative to ``base`` (the dataset folder)."""
    p = as_path(value)
    return p if p.is_absolute() else base / p


def find_one(folder: Path, patterns: Sequence[str], what: str, option: str, *, required: bool = True) -> Path | None:
    """The single file in ``folder`` matching the first pattern that matches anything.

    Several matches raise ConfigError naming them and the option that picks one; none raises DataError
    (or returns None when not ``required``).
    """
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ConfigError(f"{folder}: several {what} files match {pattern!r} ({names}); pick one with option {option!r}")
    if required:
        raise DataError(
            f"no {what} file found (looked for {', '.join(patterns)})",
            path=str(folder),
            hint=f"put the file in this folder or name it with option {option!r}",
        )
    return None


class _CheckedText:
    """A text file whose decoding errors become ``DataError`` naming the file and line."""

    def __init__(self, fh: IO[str], path: Path, encoding: str):
        self._fh, self._path, self._encoding, self._line = fh, path, encoding, 0

    def __enter__(self) -> "_CheckedText":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()

    def close(self) -> None:
        self._fh.close()

    def _fail(self, e: UnicodeDecodeError, line: int | None) -> DataError:
        return DataError(f"not valid {self._encoding} text: {e.reason}", path=str(self._path), line=line,
                         hint="save the file as UTF-8 (or re-download it: it may be damaged)")

    def readline(self, *a: Any) -> str:
        try:
            line = self._fh.readline(*a)
        except UnicodeDecodeError as e:
            raise self._fail(e, self._line + 1) from None
        if line:
            self._line += 1
        return line

    def read(self, *a: Any) -> str:
        try:
            return self._fh.read(*a)
        except UnicodeDecodeError as e:
            raise self._fail(e, None) from None

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def open_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Open a text file, gunzipping ``*.gz`` transparently; undecodable bytes raise ``DataError``
    with the file and line."""
    if path.suffix == ".gz":
        fh: IO[str] = io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors=errors, newline=None)
    else:
        fh = open(path, encoding=encoding, errors=errors, newline=None)
    return _CheckedText(fh, path, encoding)  # type: ignore[return-value]


@contextlib.contextmanager
def parsing(path: Path, hint: str = "the file is cut, damaged or not in this reader's layout: re-download or fix it"):
    """Turn pyarrow's CSV errors and decoding errors met while reading ``path`` into ``DataError``."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 text ({e.reason} at byte {e.start})", path=str(path),
                        hint="save the file as UTF-8 (or re-download it: it may be damaged)") from None
    except pa.ArrowInvalid as e:
        raise DataError(f"cannot parse: {e}", path=str(path), hint=hint) from None


def read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def decode(data: bytes, path: Path, encoding: str) -> str:
    """Decode bytes; ``encoding="auto"`` tries UTF-8 and falls back to latin-1 (old GroupLens files)."""
    if encoding == "auto":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"cannot decode the file as {encoding}: {e.reason}",
            path=str(path),
            line=line,
            hint="set option 'encoding' to the file's encoding (e.g. latin-1)",
        ) from None


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every line, blank ones included."""
    for i, line in enumerate(text.splitlines(), start=1):
        yield i, line


# --------------------------------------------------------------------------- text columns


def clean_text(values: Any) -> pa.Array:
    """A string array where empty or whitespace-only values are null (missing), others unchanged."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.string())
    blank = pc.equal(pc.utf8_trim_whitespace(arr), "")
    return pc.if_else(blank, pa.scalar(None, pa.string()), arr)


def none_if_blank(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if s.strip() else None


def join_text(values: Iterable[Any] | None, sep: str = ", ") -> str | None:
    """Join the non-blank values; None when there are none."""
    if values is None:
        return None
    parts = [str(v).strip() for v in values if v is not None and str(v).strip()]
    return sep.join(parts) if parts else None


# --------------------------------------------------------------------------- ids, order, duplicates


def positions_within_groups(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """For each row, how many earlier rows share its key (0, 1, 2, ... in row order)."""
    codes = dictionary_codes(keys)
    n = len(codes)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    pos = np.empty(n, dtype=np.float64)
    pos[order] = np.arange(n) - group_start
    return pos


def dictionary_codes(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Integer codes of the distinct values of ``keys`` (nulls share one code)."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    enc = pc.dictionary_encode(keys, null_encoding="encode")
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def first_occurrence_mask(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True for the first row of each distinct key."""
    codes = dictionary_codes(keys)
    mask = np.zeros(len(codes), dtype=bool)
    if len(codes):
        _, first = np.unique(codes, return_index=True)
        mask[first] = True
    return mask


def drop_duplicate_ids(
    table: pa.Table, column: str, report: ReadReport, file: Path | str, what: str = "item"
) -> pa.Table:
    """Keep the first row of each id in ``column``; report how many were dropped."""
    mask = first_occurrence_mask(table.column(column))
    dropped = int(len(mask) - mask.sum())
    if dropped:
        report.add("read", dropped, f"duplicate {what} ids in {Path(file).name}: kept the first row of each", file=str(file))
        table = table.filter(pa.array(mask))
    return table


def drop_null_ids(table: pa.Table, columns: Sequence[str], report: ReadReport, file: Path | str) -> pa.Table:
    """Drop rows whose id columns are null or blank; report how many."""
    keep = None
    for c in columns:
        col = clean_text(table.column(c))
        ok = pc.is_valid(col)
        keep = ok if keep is None else pc.and_(keep, ok)
        table = table.set_column(table.schema.get_field_index(c), c, col)
    if keep is None:
        return table
    dropped = len(keep) - pc.sum(keep).as_py() if len(keep) else 0
    if dropped:
        report.add("read", dropped, f"rows with a missing {' or '.join(columns)} in {Path(file).name}", file=str(file))
        table = table.filter(keep)
    return table


# --------------------------------------------------------------------------- images


def list_images(folder: Path) -> dict[str, str]:
    """Map file stem -> path relative to ``folder`` for the images in ``folder`` and its direct subfolders."""
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        entries = list(it)
    for e in sorted(entries, key=lambda e: e.name):
        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS):
            out.setdefault(os.path.splitext(e.name)[0], e.name)
    for e in sorted(entries, key=lambda e: e.name):
        if e.is_dir():
            with os.scandir(e.path) as sub:
                for f in sorted(sub, key=lambda f: f.name):
                    if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS):
                        out.setdefault(os.path.splitext(f.name)[0], f"{e.name}/{f.name}")
    return out


def image_lists(ids: Sequence[str | None], found: dict[str, str], prefix: str = "") -> list[list[str]]:
    """``[prefix + path]`` for ids that have an image in ``found``, ``[]`` for the others."""
    return [[prefix + found[i]] if i is not None and i in found else [] for i in ids]


# --------------------------------------------------------------------------- numbers and times


_PRICE_RE = re.compile(r"^\s*[$€£]?\s*([0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)\s*$")


def parse_price(value: Any) -> tuple[float | None, bool]:
    """(price, ok). ``"$1,299.99"`` -> 1299.99; None/blank -> (None, True); anything else -> (None, False)."""
    if value is None:
        return None, True
    if isinstance(value, bool):
        return None, False
    if isinstance(value, (int, float)):
        v = float(value)
        return (v, True) if np.isfinite(v) else (None, False)
    s = str(value)
    if not s.strip():
        return None, True
    m = _PRICE_RE.match(s)
    if not m:
        return None, False
    return float(m.group(1).replace(",", "")), True


_TZ_RE = r"\d\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$"  # a zone after a time of day


def iso_to_seconds(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """ISO 8601 strings (date, date-time, optional fraction and zone; naive means UTC) -> float seconds.

    Raises ``ValueError`` with the index of the first value that does not parse.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    zoned = pc.fill_null(pc.match_substring_regex(arr, _TZ_RE), False)
    out = np.full(len(arr), np.nan)
    valid = np.zeros(len(arr), dtype=bool)
    for is_zoned, typ in ((False, pa.timestamp("us")), (True, pa.timestamp("us", tz="UTC"))):
        mask = zoned if is_zoned else pc.invert(zoned)
        idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        if not len(idx):
            continue
        part = arr.take(pa.array(idx))
        try:
            ts = pc.cast(part, typ)
        except pa.ArrowInvalid:
            for j, v in zip(idx, part.to_pylist()):
                if v is None:
                    continue
                try:
                    pc.cast(pa.array([v]), typ)
                except pa.ArrowInvalid:
                    raise ValueError(int(j), v) from None
            raise
        micros = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
        out[idx] = micros / 1e6
        valid[idx] = ts.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(out, mask=~valid)


def strptime_to_seconds(arr: pa.Array | pa.ChunkedArray, fmt: str) -> pa.Array:
    """Strings in the strptime format ``fmt`` -> float seconds (naive times are UTC).

    Raises ``ValueError(index, value)`` for the first value that does not parse.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.string())
    try:
        ts = pc.strptime(arr, format=fmt, unit="us", error_is_null=False)
    except pa.ArrowInvalid:
        for i, v in enumerate(arr.to_pylist()):
            if v is None:
                continue
            try:
                pc.strptime(pa.array([v]), format=fmt, unit="us")
            except pa.ArrowInvalid:
                raise ValueError(i, v) from None
        raise
    if ts.type.tz is not None:
        ts = ts.cast(pa.timestamp("us", tz="UTC"))
    micros = ts.cast(pa.int64())
    return pc.divide(micros.cast(pa.float64()), 1e6)


def temporal_to_seconds(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A date/timestamp column (e.g. from Parquet) -> float seconds since the epoch."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_date(t):
        days = arr.cast(pa.date32()).cast(pa.int32()).cast(pa.float64())
        return pc.multiply(days, 86400.0)
    if pa.types.is_timestamp(t):
        micros = arr.cast(pa.timestamp("us", tz=t.tz)).cast(pa.int64()).cast(pa.float64())
        return pc.divide(micros, 1e6)
    raise TypeError(f"not a temporal type: {t}")
