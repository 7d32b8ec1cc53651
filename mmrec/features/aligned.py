"""Stored features aligned to a prepared dataset, as training reads them.

``load_features({"text": "minilm", "image": "effnet"}, data, store="features")`` finds each entry
(by name under the store, or by path), reads it aligned to the dataset's internal item ids and
returns one ``FeatureTable`` per modality: ``table`` ``[n_items + 1, *shape]`` (row 0 is the
padding item) and ``present`` ``[n_items + 1]``, False where the item has no feature (recorded as
missing, or never extracted). Rows of absent items are zeros in ``table``; a method must not read
them as features: it uses a learned "missing" vector or masks them (``FeatureTable.present``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mmrec.errors import ConfigError

MODALITIES = ("text", "image", "price")


@dataclass
class FeatureTable:
    modality: str  # text | image | price
    table: torch.Tensor  # float32 [n_items + 1, D] or [n_items + 1, T, D]
    present: torch.Tensor  # bool [n_items + 1]
    source: dict[str, Any]  # entry path, encoder, config hash, counts (written into results.json)

    @property
    def dim(self) -> int:
        return int(self.table.shape[-1])

    @property
    def tokens(self) -> int | None:
        return int(self.table.shape[1]) if self.table.dim() == 3 else None


def parse_features_option(text: str | None) -> dict[str, str]:
    """``"text=minilm,image=effnet"`` -> ``{"text": "minilm", "image": "effnet"}``."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        modality, eq, ref = part.partition("=")
        if not eq or not modality.strip() or not ref.strip():
            raise ConfigError(f"--features expects modality=entry pairs separated by commas (e.g. text=minilm,image=effnet), "
                              f"got {part!r}")
        out[modality.strip()] = ref.strip()
    return out


def _available(store: str | Path) -> str:
    from mmrec.features.store import FeatureEntry, list_entries

    names = []
    for name in list_entries(store):
        try:
            names.append(f"{name} ({FeatureEntry(Path(store) / name).modality})")
        except Exception:  # noqa: BLE001 - a broken entry is still worth naming
            names.append(f"{name} (unreadable)")
    return ", ".join(names) if names else f"none in {store} (run `mmrec extract` first)"


def check_modalities(method: str, wanted: Mapping[str, str], accepted: tuple[str, ...], required: tuple[str, ...],
                store: str | Path) -> None:
    """Errors that say what a method needs and what the store has."""
    unknown = sorted(set(wanted) - set(accepted))
    if unknown:
        if not accepted:
            raise ConfigError(f"method {method} uses no item features; drop --features "
                              f"({', '.join(unknown)})")
        raise ConfigError(f"method {method} has no feature modality {', '.join(unknown)}; its modalities: {', '.join(accepted)}")
    absent = [s for s in required if s not in wanted]
    if absent:
        example = ",".join(f"{s}=ENTRY" for s in required)
        raise ConfigError(f"method {method} needs features for {', '.join(absent)}: give them with --features {example} "
                          f"(store {store}: {_available(store)})")


def load_features(wanted: Mapping[str, str], data: Any, store: str | Path = "features") -> dict[str, FeatureTable]:
    """Each wanted entry aligned to ``data`` (a PreparedDataset) by raw item id (module docstring)."""
    from mmrec.features.store import find_entry

    out: dict[str, FeatureTable] = {}
    ids = data.raw_item_ids
    for modality, ref in wanted.items():
        if modality not in MODALITIES:
            raise ConfigError(f"unknown feature modality {modality!r}; modalities are {', '.join(MODALITIES)}")
        entry = find_entry(ref, store)  # a DataError that lists the store's entries
        if modality not in str(entry.modality).split("+"):
            raise ConfigError(f"feature entry {entry.path} holds {entry.modality} features, not {modality}; "
                              f"give a {modality} entry for --features {modality}=...")
        table, present = entry.aligned(ids)
        enc = entry.manifest.get("encoder") or {}
        rep = entry.alignment_report(ids)
        n = len(ids) - 1
        if int(present[1:].sum()) == 0:
            raise ConfigError(f"feature entry {entry.path} has features for none of the {n:,} items of {data.root}; "
                              "was it extracted from another catalogue?")
        out[modality] = FeatureTable(
            modality=modality,
            table=torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)),
            present=torch.from_numpy(present.astype(bool)),
            source={"entry": str(Path(entry.path).resolve()), "encoder": enc.get("encoder", enc.get("key")),
                    "model": enc.get("model"),
                    "config_hash": entry.manifest.get("config_hash"),
                    "shape_per_item": list(entry.shape_per_item), "items_with_feature": int(present[1:].sum()),
                    "items_without": int(n - present[1:].sum()), "alignment": rep},
        )
    return out
