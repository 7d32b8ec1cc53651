"""Presets: named sets of settings for one method, each value with its source.

A method's presets live in ``mmrec/trainers/presets/<method>.py`` as data::

    PRESETS = {
        "paper": {"model.hidden": S(128, "paper Sec. 4.1.3: 'the embedding size is 128'"), ...},
        "code":  {"model.hidden": S(128, "HoldenHu/KDSR@<commit> main.py:31 (hidden_size=128)"), ...},
    }

``harmonised`` is implicit: mmrec's defaults (no values), so the tables made before presets existed
stay reproducible. A source of ``None`` marks a value that no source states (a choice mmrec made to
fill a gap); ``mmrec presets`` prints it as such. Keys are the ``--set`` keys (``model.*``,
``train.*``, ``eval.*``); ``prepare.*`` keys name how the dataset must be prepared for the preset's
protocol (they are printed, and checked against the prepared dataset, not set).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from mmrec.errors import ConfigError

HARMONISED = "harmonised"


@dataclass(frozen=True)
class S:
    """One preset value and where it comes from (``None``: no source states it)."""

    value: Any
    source: str | None = None


PAPER_SILENT = "paper silent; code: "


def silent(source: str | None) -> str | None:
    """The source of a ``paper`` value the paper does not state, taken from the code."""
    return PAPER_SILENT + source if source else None


def paper_from_code(code: dict[str, S], overrides: dict[str, S]) -> dict[str, S]:
    """A ``paper`` preset built from the ``code`` one: the paper's stated values (``overrides``) where
    it states them, else the code's value with its source marked "paper silent; code: ..."."""
    out = {k: overrides.get(k) or S(v.value, silent(v.source)) for k, v in code.items()}
    out.update({k: v for k, v in overrides.items() if k not in out})
    return out


def _module(method: str):
    try:
        return importlib.import_module(f"{__name__}.{method}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{method}":
            raise
        return None


def methods_with_presets() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def presets_of(method: str) -> dict[str, dict[str, S]]:
    """Every preset of ``method`` by name (``harmonised`` first, empty: mmrec's defaults)."""
    mod = _module(method)
    out: dict[str, dict[str, S]] = {HARMONISED: {}}
    if mod is not None:
        out.update(mod.PRESETS)
    return out


def preset(method: str, name: str) -> dict[str, S]:
    """The values of preset ``name`` of ``method``; a ConfigError listing what exists otherwise."""
    known = presets_of(method)
    if name not in known:
        raise ConfigError(f"method {method} has no preset {name!r}; its presets: {', '.join(known)}")
    return known[name]
