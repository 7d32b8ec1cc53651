"""``price``: a sinusoidal encoding of an item's price (ANT's price modality), no weights.

ANT describes its 64-d price feature as sinusoidal but does not publish the formula (methods-reference
section 3.1). mmrec uses the transformer positional formula applied to a scaled log price:

    p' = log1p(price) * scale
    PE(p', 2i)   = sin(p' / 10000^(2i/dim))
    PE(p', 2i+1) = cos(p' / 10000^(2i/dim))        for i = 0 .. dim/2 - 1

The log makes equal price *ratios* equally far apart; ``scale`` (default 100) spreads typical log prices
(0 to ~10) over the frequencies: a 1% price change moves the fastest pair by about 1 radian while the
slowest pairs stay monotonic over the whole range. Output: ``[B, dim]`` float32 (``dim`` default 64,
even). A missing, NaN, infinite, negative or non-numeric price gives ``Missing`` with the reason.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from mmrec.errors import ConfigError
from mmrec.features.base import Encoder, Missing

from ._common import library_versions, opt_float, opt_int

MAX_BASE = 10000.0


def parse_price(value: Any) -> float | str:
    """The price as a finite non-negative float, or the reason it is not one."""
    if value is None:
        return "no price"
    if isinstance(value, bool):
        return f"price is not a number: {value!r}"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return f"price is not a number: {value[:40]!r}"
    try:
        p = float(value)
    except (TypeError, ValueError):
        return f"price is not a number: {type(value).__name__}"
    if math.isnan(p):
        return "price is NaN"
    if math.isinf(p):
        return "price is infinite"
    if p < 0:
        return f"price is negative: {p}"
    return p


def sinusoidal(p: float, dim: int, scale: float) -> np.ndarray:
    """The encoding of one price (see the module docstring), float64 ``[dim]``."""
    x = math.log1p(p) * scale
    i = np.arange(dim // 2, dtype=np.float64)
    angle = x / np.power(MAX_BASE, 2.0 * i / dim)
    out = np.empty(dim, dtype=np.float64)
    out[0::2] = np.sin(angle)
    out[1::2] = np.cos(angle)
    return out


class PriceEncoder(Encoder):
    """``price``: ``[B, dim]`` sinusoidal encoding of log1p(price) * scale (module docstring)."""

    key: ClassVar[str] = "price"
    modality: ClassVar[str] = "price"

    def __init__(self, model: str | None = None, pooling: str | None = None, *, dim: int = 64, scale: float = 100.0):
        if model is not None:
            raise ConfigError("the price encoder has no model; do not pass --model")
        if pooling not in (None, "pooled"):
            raise ConfigError("the price encoder only has pooling=pooled")
        self.pooling = "pooled"
        self.dim = opt_int("dim", dim, minimum=2)  # type: ignore[assignment]
        if self.dim % 2:
            raise ConfigError(f"encoder option dim must be even (sin/cos pairs), got {self.dim}")
        self.scale = opt_float("scale", scale)

    def load(self, device: torch.device) -> None:
        """Nothing to load."""

    def make_input(self, item: dict[str, Any]) -> torch.Tensor | Missing:
        p = parse_price(item.get("price"))
        if isinstance(p, str):
            return Missing(p)
        return torch.from_numpy(sinusoidal(p, self.dim, self.scale).astype(np.float32))

    def collate(self, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pe": torch.stack(inputs)}

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["pe"].float()

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.key, "modality": self.modality, "model": None, "weights_sha256": None,
                "pooling": self.pooling, "dim": self.dim, "tokens": None, "dtype": "float32",
                "preprocessing": {"formula": "PE(log1p(price)*scale), sin at even, cos at odd indices, base 10000",
                                  "scale": self.scale},
                "libraries": library_versions("torch", "numpy")}

    def config_key(self) -> dict[str, Any]:
        return {"encoder": self.key, "dim": self.dim, "scale": self.scale, "formula": "log1p-sinusoidal-v1"}
