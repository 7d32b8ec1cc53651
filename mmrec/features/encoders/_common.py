"""Helpers shared by the encoders: option checking, weight hashing, hub look-ups, version records.

Nothing here imports a model library at module level: ``import mmrec.features.encoders`` stays cheap
and works without the optional ``vision`` extra.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import importlib.metadata as md
import logging
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from mmrec.errors import ConfigError

# sha256 of files already hashed in this process, keyed by (absolute path, size, mtime): a weights
# file of several hundred MB is hashed once, however often describe() / config_key() are called.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file (hex), cached per process while the file's size and mtime stay the same."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def sha256_files(paths: Sequence[str | os.PathLike[str]]) -> str | None:
    """One digest for a set of files: the file's own sha256 for one file, else the sha256 of the
    sorted ``name:sha256`` lines (so a sharded checkpoint gets one stable value). None for no files."""
    files = sorted(Path(p) for p in paths)
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name}:{sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def library_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the given distributions (absent ones are left out)."""
    out = {}
    for d in dists:
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return out


def require(module: str, *, extra: str | None = None, dist: str | None = None) -> Any:
    """Import an optional dependency, or raise a ConfigError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        how = f"pip install 'mmrec[{extra}]'" if extra else f"pip install {dist or module}"
        raise ConfigError(f"this encoder needs the Python package {dist or module!r}, which cannot be imported "
                          f"({e}); install it with: {how}") from e


def looks_local(ref: str) -> bool:
    """True when ``ref`` names something on disk rather than a hub id (an existing path, or a path spelled
    as one: absolute, ``./``, ``../``, ``~``)."""
    return os.path.exists(os.path.expanduser(ref)) or ref.startswith(("/", "./", "../", "~", "\\")) or ref == "."


def local_path(ref: str, what: str) -> Path:
    """``ref`` as an absolute existing path, or a ConfigError."""
    p = Path(os.path.expanduser(ref)).resolve()
    if not p.exists():
        raise ConfigError(f"{what} {ref!r} does not exist")
    return p


def hub_cached_file(repo_id: str, filenames: Iterable[str], revision: str | None = None) -> tuple[Path, str] | None:
    """(path, revision) of the first of ``filenames`` found in the local Hugging Face cache for
    ``repo_id``, without any network access; None when none is cached or huggingface_hub is absent."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id, name, revision=revision)
        except Exception:  # noqa: BLE001 - a malformed id or cache: we only lose the record
            continue
        if isinstance(found, str) and os.path.isfile(found):
            m = re.search(r"[\\/]snapshots[\\/]([^\\/]+)[\\/]", found)
            return Path(found), (m.group(1) if m else "unknown")
    return None


def hub_offline() -> bool:
    """Whether Hugging Face hub access is switched off (``HF_HUB_OFFLINE``, as huggingface_hub reads it)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


# set while ``hub_or_cache`` found the hub unreachable and switched huggingface_hub to its cache
_HUB_UNREACHABLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mmrec_hub_unreachable", default=None)


def hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the hub's host accepts a connection within ``timeout`` seconds, else why not."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
        url = urlparse(constants.ENDPOINT)
    except ImportError:
        return None
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} could not be reached within {timeout:g} s ({type(e).__name__}: {e})"


def probe_hub(needs_hub: bool = True, timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (``hub_reachable``), or None: reachable, switched off already
    (``HF_HUB_OFFLINE=1``: huggingface_hub uses its cache without trying), or not needed (a local
    folder)."""
    if not needs_hub or hub_offline():
        return None
    return hub_reachable(timeout)


@contextlib.contextmanager
def hub_or_cache(unreachable: str | None) -> Iterator[None]:
    """Loading models inside this block does not wait for a hub that ``probe_hub`` found unreachable
    (``unreachable``: its reason): huggingface_hub works from its local cache for the block (a cached
    model loads, a missing one fails at once and ``hub_failure`` says why, with the hint), instead of
    retrying for about a minute. Nothing changes when ``unreachable`` is None."""
    if unreachable is None:
        yield
        return
    from huggingface_hub import constants

    before, token = constants.HF_HUB_OFFLINE, _HUB_UNREACHABLE.set(unreachable)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        _HUB_UNREACHABLE.reset(token)


def hub_failure(what: str, ref: str, err: BaseException, *, local_hint: str) -> ConfigError:
    """The error for a model that could not be fetched or loaded from the hub: says how to use a local copy."""
    unreachable = _HUB_UNREACHABLE.get()
    offline = hub_offline()
    if unreachable:
        why = (f"the hub is not reachable ({unreachable}) and it is not in the local cache; set HF_HUB_OFFLINE=1 "
               "where there is no network, so mmrec does not probe the hub at all")
    elif offline:
        why = "the hub is switched off (HF_HUB_OFFLINE=1) and it is not in the local cache"
    else:
        why = "it is not in the local cache and could not be downloaded (no network, or no such model)"
    detail = f"{type(err).__name__}: {err}".strip()
    if len(detail) > 400:
        detail = detail[:400] + "..."
    return ConfigError(f"cannot load {what} {ref!r}: {why}.\n  what to do: {local_hint}\n  (underlying error: {detail})")


# ------------------------------------------------------------------------------------------------
# option parsing (values may arrive as strings or YAML scalars from the CLI)


def opt_int(name: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"encoder option {name} is required")
    if isinstance(value, bool):
        raise ConfigError(f"encoder option {name} must be an integer, got {value!r}")
    try:
        iv = int(value)
        if isinstance(value, float) and iv != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"encoder option {name} must be an integer, got {value!r}") from None
    if iv < minimum:
        raise ConfigError(f"encoder option {name} must be >= {minimum}, got {iv}")
    return iv


def opt_float(name: str, value: Any, *, positive: bool = True) -> float:
    try:
        fv = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"encoder option {name} must be a number, got {value!r}") from None
    if not math.isfinite(fv) or (positive and fv <= 0):
        raise ConfigError(f"encoder option {name} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return fv


def opt_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.strip().lower() in ("true", "yes", "1", "on")
    raise ConfigError(f"encoder option {name} must be true or false, got {value!r}")


def opt_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"encoder option {name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def opt_dict(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"encoder option {name} must be a mapping (e.g. {{embed_dim: 96}}), got {value!r}")
    return dict(value)


# ------------------------------------------------------------------------------------------------
# small tensor and logging helpers


def mean_by_owner(feats: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Average the rows of ``feats`` ([N, ...]) that share an owner index in ``[0, n)``: [n, ...] float32.
    Owners with no row get zeros (callers never produce them)."""
    feats = feats.float()
    out = torch.zeros((n,) + tuple(feats.shape[1:]), dtype=feats.dtype, device=feats.device)
    out.index_add_(0, owner, feats)
    counts = torch.zeros(n, dtype=feats.dtype, device=feats.device)
    counts.index_add_(0, owner, torch.ones_like(owner, dtype=feats.dtype))
    return out / counts.clamp(min=1).view((n,) + (1,) * (feats.dim() - 1))


class _DropBelow(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


@contextmanager
def quiet_logger(name: str = "", level: int = logging.ERROR) -> Iterator[None]:
    """Drop records below ``level`` logged directly on logger ``name`` (root by default) while the block
    runs; used around library calls that log misleading warnings (e.g. 'initialized randomly' for a
    model we are about to fill with weights)."""
    logger = logging.getLogger(name)
    f = _DropBelow(level)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)
