"""The contract every method follows, and the default next-item loss.

A method is an ``nn.Module`` with a typed ``Config`` dataclass. The shared loop, evaluator and
checkpointing only use:

- ``loss(batch, train_cfg) -> scalar``: the training objective on a batch of windows
  (``items``/``targets`` right-padded ``[B, L]``, ``lengths``, optional ``negatives``);
- ``query(items, lengths) -> [B, d]``: the representation used to score the next item;
- ``score(query, item_ids) -> [B, C]``: scores of the items ``item_ids`` (a 1-D range of ids shared
  by the batch, or a ``[B, C]`` matrix of candidates per row).

Writing a method whose states are one causal encoder (``self.encoder(x, lengths)``) over per-position
inputs takes two hooks and a table: ``encoder_input(items) -> [B, L, d]``, optionally
``encoder_output(states)`` (e.g. a normalisation), and ``item_embeddings() -> [n_items + 1, d]``;
``sequence_states``, ``query`` (the transformer's last block at the last position only), ``score``
and the default ``loss`` (``train.loss``: CE over all items, BCE or gBCE with sampled negatives, or a
sampled softmax; ``next_item_loss``) follow. Anything else
(two streams, a graph, several sub-networks) overrides ``sequence_states`` and, where it can skip
work at evaluation, ``query``. Register the class in ``mmrec.trainers.methods``.

Class attributes declare what a method needs: ``uses_item_ids``, ``modalities`` (the feature modalities
it can use, e.g. ``("text", "image")``) and ``required_modalities`` (those it cannot run without),
``losses`` (the values of ``train.loss`` it supports). A method with modalities receives
``features={modality: FeatureTable}`` (``mmrec.features.aligned``) in its constructor.

A method whose items come from features can spare a sampled loss the whole table (a catalogue of a
million items): ``loss_items`` returns ``ItemRows`` over its ``item_rows(ids)``, and the step's
feature rows are computed only for ``step_item_ids(batch)`` (``FeatureItemEncoder.one_table(ids)``).

Cold-start runs exclude held-out items from training: ``train_exclusion`` (a bool buffer over item
ids, or None) marks them; ``train_logits`` applies it to full-softmax logits, and the sampled
negatives never include them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.modules.losses import NEXT_ITEM_LOSSES, loss_kind, next_item_loss
from mmrec.trainers.modules.sequence import encode, gather_last


class ItemRows:
    """An item table read by rows: ``rows[ids]`` (ids of any shape) computes ``fn`` for the distinct ids
    only, ``len(rows)`` is the table's row count (``n_items + 1``). What the sampled losses
    (``bce``, ``gbce``, ``sampled_ce``) read where a full ``[n_items + 1, d]`` table would cost a pass
    over the catalogue."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_rows: int):
        self.fn, self.n_rows = fn, n_rows

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        u, inv = torch.unique(ids, return_inverse=True)
        return self.fn(u)[inv]


def step_item_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every item id a training step of the shared loss reads (inputs, targets, per-position
    negatives, the step's shared negatives), distinct, padding (0) included."""
    parts = [batch[k].reshape(-1) for k in ("items", "targets", "negatives", "sampled_items") if k in batch]
    return torch.unique(torch.cat([parts[0].new_zeros(1), *parts]))


class SequentialRecommender(nn.Module):
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    uses_item_ids: ClassVar[bool] = True
    modalities: ClassVar[tuple[str, ...]] = ()
    required_modalities: ClassVar[tuple[str, ...]] = ()
    # whether an item never seen in training can still be ranked (its score comes from features);
    # None: decided from ``modalities`` (a method with feature modalities builds its items from them)
    ranks_unseen_items: ClassVar[bool | None] = None
    losses: ClassVar[tuple[str, ...]] = NEXT_ITEM_LOSSES  # ce, bce, sampled_ce, gbce
    # the attribute holding the ``FeatureItemEncoder`` that ``item_rows`` reads (None: no such rows)
    row_encoder: ClassVar[str | None] = None

    def __init__(self, cfg: Any, n_items: int, max_len: int, features: dict[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.max_len = max_len
        self.features = features or {}
        self.train_exclusion: torch.Tensor | None
        self.register_buffer("train_exclusion", None, persistent=False)  # moves with the model
        # training-part interaction count per item id ([n_items + 1], row 0 = 0), set by the loop
        # before training (log-popularity corrections); None outside training
        self.item_popularity: torch.Tensor | None
        self.register_buffer("item_popularity", None, persistent=False)

    # --- hooks the shared loop calls (defaults do nothing special) ------------------------------
    @classmethod
    def dataset_kwargs(cls, cfg: Any, data: Any, store: str | None = None) -> dict[str, Any]:
        """More constructor arguments taken from the prepared dataset (``build_model`` passes them;
        e.g. SyNCRec's item domains); ``store``: the run's feature store (``--store``), where entries
        named in the model's settings are looked up."""
        return {}

    def can_rank_unseen(self) -> bool:
        """Whether items never seen in training get a meaningful score (``ranks_unseen_items``, or by
        default: the method builds items from feature modalities)."""
        return self.ranks_unseen_items if self.ranks_unseen_items is not None else bool(self.modalities)

    def evaluation_domains(self) -> tuple[Any, list[str]] | None:
        """Item domain codes ``[n_items + 1]`` (1..D) and names for per-domain metrics; None: no domains."""
        return None

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (e.g. a slower learning rate for some parameters, as KDSR's
        asynchronous rate). Frozen parameters are left out."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "all"}]

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Called before each training epoch (1-based), e.g. to change a group's learning rate."""

    @property
    def loss_parts(self) -> dict[str, float]:
        """Components of the last training loss (logged per epoch in metrics.jsonl as loss_parts).
        A method sets ``self._loss_parts`` in ``loss``."""
        return getattr(self, "_loss_parts", {})

    def epoch_report(self) -> dict[str, Any]:
        """Extra per-epoch values for metrics.jsonl (e.g. learning rates, loss weights)."""
        return {}

    def eval_variants(self) -> tuple[str, ...]:
        """Other ways this model can score (e.g. ODMT's sub-networks alone): after training, the
        loop evaluates the test part once more under each, inside ``eval_variant(name)``, and writes
        the figures to ``results.json`` under ``test_variants``."""
        return ()

    @contextlib.contextmanager
    def eval_variant(self, name: str) -> Iterator[None]:
        """Score as variant ``name`` (one of ``eval_variants()``) inside the block."""
        raise ConfigError(f"{type(self).__name__} has no evaluation variant {name!r}")
        yield  # pragma: no cover

    def exclude_from_training(self, mask: torch.Tensor | None) -> None:
        """Items (bool ``[n_items + 1]``) that training must not see, not even as softmax negatives."""
        self.train_exclusion = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)

    def train_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[N, n_items]`` over items 1..n with the excluded items set to -inf (training only)."""
        if self.train_exclusion is None or not self.training:
            return logits
        return logits.masked_fill(self.train_exclusion[1:], float("-inf"))

    # --- to implement: either encoder_input (one encoder over per-position inputs) or ------------
    # --- sequence_states (anything else); and item_embeddings ------------------------------------
    def encoder_input(self, items: torch.Tensor) -> torch.Tensor | None:
        """The input ``[B, L, d]`` of ``self.encoder`` for item ids ``items`` ``[B, L]``. A method that
        implements it gets ``sequence_states`` and ``query`` from it (``query`` then runs the
        encoder's last block at the last position only, where the encoder can); None (the default):
        the method computes its states another way and implements ``sequence_states``."""
        return None

    def encoder_output(self, states: torch.Tensor) -> torch.Tensor:
        """Applied to the encoder's states, all of them or the last ones (e.g. a normalisation)."""
        return states

    def _encoded(self, items: torch.Tensor, lengths: torch.Tensor, last: bool) -> torch.Tensor | None:
        """``encoder_output`` of the encoder over ``encoder_input``: every position, or with ``last``
        the last real one only; None for a method without ``encoder_input``."""
        x = self.encoder_input(items)
        return None if x is None else self.encoder_output(encode(self.encoder, x, lengths, last))

    def sequence_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """States ``[B, L, d]``; position t sees only positions <= t."""
        h = self._encoded(items, lengths, last=False)
        if h is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither encoder_input nor sequence_states")
        return h

    def item_embeddings(self) -> torch.Tensor:
        """Item representations ``[n_items + 1, d]`` used for scoring (row 0 = padding)."""
        raise NotImplementedError

    # --- defaults -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        return self.loss(batch, train_cfg)

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The state ``[B, d]`` at each row's last real position, which scores the next item."""
        h = self._encoded(items, lengths, last=True)
        return gather_last(self.sequence_states(items, lengths), lengths) if h is None else h

    def train(self, mode: bool = True) -> "SequentialRecommender":
        self._eval_table = None  # item tables computed from features are cached only while evaluating
        return super().train(mode)

    def scoring_table(self) -> torch.Tensor:
        """``item_embeddings()``, computed once per evaluation (methods whose items come from
        features rebuild the table from the features at every call)."""
        if self.training:
            return self.item_embeddings()
        cached = getattr(self, "_eval_table", None)
        if cached is None:
            cached = self._eval_table = self.item_embeddings().detach()
        return cached

    def score_range(self, query: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Scores ``[B, hi - lo]`` of items ``lo..hi-1`` (a slice of the table, no gather)."""
        return query @ self.scoring_table()[lo:hi].T

    def score(self, query: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        emb = self.scoring_table()
        if item_ids.dim() == 1:
            return query @ emb[item_ids].T
        return torch.einsum("bd,bcd->bc", query, emb[item_ids])

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of ``item_embeddings()`` (``[*ids.shape, d]``); a method that can compute some
        rows without the whole table overrides it (and ``loss_items``)."""
        return self.item_embeddings()[ids]

    def loss_items(self, train_cfg: Any) -> torch.Tensor | ItemRows:
        """The item table the shared loss reads: ``item_embeddings()``, or for the sampled losses of a
        method with a ``row_encoder``, ``ItemRows`` over ``item_rows``."""
        if self.row_encoder is not None and self.sampled_rows(train_cfg):
            return ItemRows(self.item_rows, self.n_items + 1)
        return self.item_embeddings()

    def sampled_rows(self, train_cfg: Any) -> bool:
        """Whether ``train.loss`` reads only some rows of the item table (bce, gbce, sampled_ce)."""
        return loss_kind(train_cfg) != "ce"

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        """``next_item_loss`` at every target position. With a ``row_encoder`` and a sampled loss, the
        step computes the feature rows of ``step_item_ids(batch)`` only, once, for inputs and candidates."""
        rows = self.row_encoder is not None and self.sampled_rows(train_cfg)
        with getattr(self, self.row_encoder).one_table(step_item_ids(batch)) if rows else contextlib.nullcontext():
            h = self.sequence_states(batch["items"], batch["lengths"])
            mask = batch["targets"] > 0
            hs = h[mask]
            emb = self.loss_items(train_cfg)
            neg = batch.get("negatives")
            return next_item_loss(hs, batch["targets"][mask], emb, train_cfg, batch,
                                  None if neg is None else neg[mask],
                                  exclude=self.train_exclusion if self.training else None)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation used by SASRec implementations: N(0, std) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
