"""The contract between the extraction pipeline and the encoders.

An encoder turns catalogue rows into feature vectors in three steps, split so the slow CPU work
(decoding and resizing images, building and tokenising text) runs in DataLoader worker processes
while the model runs in the main process:

1. ``make_input(item) -> input | Missing``: one catalogue row (a dict with ``item_id``, ``title``,
   the text fields, ``images`` (absolute paths), ``price``, ``domain``) to a model input, on the CPU,
   in a worker. An item that cannot be encoded returns ``Missing(reason)``: the pipeline records it
   in the manifest and the errors file; no feature is invented for it.
2. ``collate(inputs) -> batch``: a list of inputs to one batch (a dict of tensors), in a worker.
3. ``encode(batch) -> Tensor``: ``[B, D]`` (pooled) or ``[B, T, D]`` (``pooling="tokens"``), float32
   on the CPU, in the main process, under ``torch.no_grad``.

``describe()`` returns what the manifest records about the encoder (model id or path, weights
hash, pooling, dim, preprocessing, library versions); ``config_key()`` the settings whose change
makes existing features stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class Missing:
    """An item this encoder cannot encode, and why (e.g. 'image file is truncated')."""

    reason: str


class Encoder:
    key: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # "text" | "image" | "price"

    dim: int
    pooling: str = "pooled"
    tokens: int | None = None  # T when pooling == "tokens"
    # attributes left out when the encoder is pickled (DataLoader workers started with 'spawn' get
    # the encoder without its model)
    unpicklable: ClassVar[tuple[str, ...]] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self.unpicklable:
            state[name] = None
        return state

    def load(self, device: torch.device) -> None:
        """Load weights and move to ``device`` (called once per process before encoding)."""

    def make_input(self, item: dict[str, Any]) -> Any:
        raise NotImplementedError

    def collate(self, inputs: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def sort_key(self, item: dict[str, Any]) -> int:
        """Items of similar cost (text length) are batched together; 0 means no grouping."""
        return 0

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def config_key(self) -> dict[str, Any]:
        return self.describe()
