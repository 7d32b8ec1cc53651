"""UniSRec (Hou et al., KDD 2022): universal sequence representations from item text.

An item is its text feature (BERT [CLS] of "title. categories. brand." in the paper) passed through
a mixture of parametric-whitening experts with a Gaussian-routed gate; a SASRec encoder (RecBole's:
hidden 300, 2 layers, 2 heads, inner 256, dropout 0.5, learned positions) reads the sequence:

    v(i) = sum_k g_k(x_i) W_k (x_i - b_k)            (+ e_id(i) in transductive mode)
    s    = SASRec(v(i_1), ..., v(i_L))_L
    fine-tuning loss: softmax over all items of cos(s, v(i)) / tau, tau = 0.07; scores cos(s, v(i))

``model.mode``: ``inductive`` (text only: a cold item can be ranked) or ``transductive`` (an id
embedding added on the input and the candidate side).

``model.objective=pretrain``: ``L = L_SI + seq_seq_weight * L_SS`` (paper Sec. 3.2.1, Eqs. 7-9):

- ``L_SI``, the sequence-item task: in-batch InfoNCE between the last state of each window and its
  target (other windows' targets are the negatives);
- ``L_SS``, the sequence-sequence task: in-batch InfoNCE between the last state of each window and
  the last state of an augmented copy of it (the other windows' augmented copies are the negatives).
  Each batch is augmented one way (the code draws once per batch): with probability
  ``item_drop_prob`` (0.9) by **item drop**, else by **word drop**. Both start from one Bernoulli draw
  per position, kept with probability ``1 - drop_ratio`` (0.8):

  - item drop: the dropped items are removed and the rest packed to the left (a shorter sequence).
    ``item_drop_rule=keep`` (default): the kept items, the first item always kept (the code's
    ``mask[:, 0] = True``). ``item_drop_rule=scatter`` reproduces the released code, which packs by
    ``scatter`` with the index of the last kept position for a dropped one: each run of dropped items
    overwrites the kept item before it (on the CPU the last write wins), so the survivor of a run is
    its last item: the *most recent* item is always kept, the first only when the second was drawn
    as kept. The length is the same under both rules (1 + kept draws among positions 2..n).
  - word drop: "words" are not tokens here, the item text is already one PLM vector: the code keeps a
    second feature table, the same encoder's vector of the item text after dropping each word with
    probability 0.15 (``feat2CLS``, made once by the preprocessing), and a dropped *position* takes
    its item's vector from that table instead (same ids, same length; the first position is not
    protected). ``model.word_drop_features``: the feature-store entry (a folder, or a name in the
    run's ``--store``, as ``--features`` names are) of that second text table. Without it there is nothing to swap in and every batch
    uses item drop (``loss_parts.word_drop``, the share of word-drop batches, says which was used).

  Windows with the same target as window i are masked out of row i of both tasks
  (``model.same_target_logit``: ``-inf`` by default, ``0`` reproduces the released code, where each
  still adds exp(0) = 1 to the denominator). ``seq_seq_weight=0`` is the sequence-item task alone
  (mmrec before the sequence-sequence task was built; no augmentation is drawn).

Pre-train on one dataset, then fine-tune on another with ``model.init_from=<pre-training run
folder>``: the encoder, the adaptor and the input LayerNorm are loaded (item id embeddings never are)
and, with ``model.freeze_encoder=true`` (the default, as UniSRec's ``fix_enc``), the positions and
Transformer blocks are frozen: only the MoE adaptor, the input LayerNorm and the id embeddings
(transductive) train. To pre-train on several datasets at once, merge them (``mmrec data merge`` and
``mmrec features merge``): batches then mix the datasets and the in-batch negatives come from all of
them, as UniSRec's multi-domain pre-training.

``model.pad_candidate`` (fine-tuning; default false): the released code's softmax runs over its whole
item table, the padding row 0 included, whose vector is the adaptor of a zero feature
(``-sum_k g_k W_k b_k``, plus the padding row of the id table in transductive mode); true reproduces
it (one more class in the denominator, never a target). Scores at evaluation are unaffected (RecBole
masks item 0).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureItemEncoder
from mmrec.trainers.modules.losses import infonce_in_batch, loss_kind, next_item_loss
from mmrec.trainers.modules.sequence import TransformerConfig, encode, gather_last


@dataclass
class UniSRecConfig(TransformerConfig):
    hidden: int = 300  # RecBole's UniSRec: hidden 300, inner 256, forward positions
    position: Literal["forward", "reverse"] = "forward"
    n_experts: int = 8
    adaptor_dropout: float = 0.2
    temperature: float = 0.07
    mode: Literal["inductive", "transductive"] = "inductive"
    objective: Literal["finetune", "pretrain"] = "finetune"
    same_target_logit: Literal["-inf", "0"] = "-inf"
    # pre-training, sequence-sequence task (module docstring): lambda (0: the sequence-item task alone)
    seq_seq_weight: float = 1e-3
    # each batch: item drop with this probability, else word drop (code: item_drop_coefficient)
    item_drop_prob: float = 0.9
    # share of positions dropped (item drop) or given their word-dropped vector (word drop); code: item_drop_ratio
    drop_ratio: float = 0.2
    # "keep": the kept items, the first always kept; "scatter": the released code's packing (the last always kept)
    item_drop_rule: Literal["keep", "scatter"] = "keep"
    # feature-store entry of the word-dropped text vectors (code: feat2CLS); None: item drop only
    word_drop_features: str | None = None
    # fine-tuning: the padding row is a class of the training softmax (the released code)
    pad_candidate: bool = False
    init_from: str | None = None
    freeze_encoder: bool = True


def item_drop(items: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor,
              rule: str = "keep") -> tuple[torch.Tensor, torch.Tensor]:
    """Item-drop augmentation of right-padded ``items`` ``[B, L]`` (``lengths`` ``[B]``) by the
    per-position draws ``keep`` ``[B, L]`` (True: kept). Returns the augmented ids, packed to the
    left and right-padded with 0, and their lengths.

    ``keep`` rule: the positions drawn as kept, plus the first. ``scatter`` rule (the released
    code's ``scatter`` packing, module docstring): position j survives when position j + 1 was drawn
    as kept, and the last real position always survives. Both give ``1 + keep[:, 1:n].sum()`` items.
    """
    b, width = items.shape
    pos = torch.arange(width, device=items.device)[None, :]
    valid = pos < lengths[:, None]
    if rule == "keep":
        kept = (keep | (pos == 0)) & valid
    elif rule == "scatter":
        after = torch.cat([keep[:, 1:], torch.ones_like(keep[:, :1])], dim=1)
        kept = (after | (pos == lengths[:, None] - 1)) & valid
    else:
        raise ConfigError(f"model.item_drop_rule must be keep or scatter, not {rule!r}")
    index = torch.where(kept, kept.long().cumsum(1) - 1, width)  # dropped ones go to a spare column
    out = items.new_zeros(b, width + 1).scatter_(1, index, torch.where(kept, items, 0))
    return out[:, :width], kept.sum(1)


class UniSRec(SequentialRecommender):
    name = "unisrec"
    Config = UniSRecConfig
    modalities = ("text",)
    required_modalities = ("text",)
    losses = ("ce", "sampled_ce")  # fine-tuning; pre-training is an in-batch InfoNCE (ce only)

    @classmethod
    def dataset_kwargs(cls, cfg: UniSRecConfig, data: Any, store: str | None = None) -> dict[str, Any]:
        """The word-drop text table (``model.word_drop_features``: an entry folder, or a name in the
        run's ``store`` as ``--features`` names are), aligned to the dataset, when the
        sequence-sequence task can use it."""
        if not (cfg.word_drop_features and cfg.objective == "pretrain" and cfg.seq_seq_weight
                and cfg.item_drop_prob < 1):
            return {}
        from mmrec.features.aligned import load_features
        from mmrec.features.store import DEFAULT_STORE_ROOT

        return {"word_drop": load_features({"text": cfg.word_drop_features}, data, store or DEFAULT_STORE_ROOT)["text"]}

    def __init__(self, cfg: UniSRecConfig, n_items: int, max_len: int, features=None, word_drop=None):
        super().__init__(cfg, n_items, max_len, features)
        if not 0.0 <= cfg.drop_ratio <= 1.0 or not 0.0 <= cfg.item_drop_prob <= 1.0 or cfg.seq_seq_weight < 0:
            raise ConfigError("model.drop_ratio and model.item_drop_prob must lie in [0, 1] and "
                              "model.seq_seq_weight must be >= 0")
        if cfg.item_drop_rule not in ("keep", "scatter"):
            raise ConfigError(f"model.item_drop_rule must be keep or scatter, not {cfg.item_drop_rule!r}")
        self.encoder = cfg.encoder(max_len)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0) if cfg.mode == "transductive" else None
        init_weights(self, cfg.init_std)
        if self.item is not None:
            with torch.no_grad():
                self.item.weight[0].zero_()
        self.text = FeatureItemEncoder(self.features, ["text"], cfg.hidden, adaptor="moe", dropout=cfg.adaptor_dropout,
                                 n_experts=cfg.n_experts)
        self.has_word_drop = word_drop is not None
        if word_drop is not None:
            table = word_drop.table.float()
            if tuple(table.shape) != tuple(self.text.feat_text.shape):
                raise ConfigError(f"model.word_drop_features has shape {list(table.shape)}, the text features "
                                  f"{list(self.text.feat_text.shape)}: extract both with the same encoder")
            self.register_buffer("feat_word_drop", table, persistent=False)
            self.register_buffer("present_word_drop", word_drop.present.bool(), persistent=False)
        if cfg.init_from:
            self.load_pretrained(cfg.init_from)

    @property
    def ranks_unseen_items(self) -> bool:  # type: ignore[override]
        return self.cfg.mode == "inductive"

    # -- transfer --------------------------------------------------------------------------------
    def load_pretrained(self, run_dir: str) -> dict[str, Any]:
        """Start from a pre-training run: the transfer policy ``finetune`` (UniSRec's ``fix_enc``:
        positions and blocks frozen) or, without ``freeze_encoder``, ``finetune_all``; item ids are
        never loaded."""
        from mmrec.trainers.transfer import adapt_from_run

        report = adapt_from_run(self, run_dir, "finetune" if self.cfg.freeze_encoder else "finetune_all")
        self.loaded_from = {"run": str(run_dir), "tensors": report["counts"]["loaded"],
                            "frozen": self.cfg.freeze_encoder}
        return self.loaded_from

    # -- model -----------------------------------------------------------------------------------
    def _items(self, ids: torch.Tensor | None) -> torch.Tensor:
        v = self.text.table() if ids is None else self.text.lookup(ids)
        if self.item is not None:
            v = v + (self.item.weight if ids is None else self.item(ids))
        return v

    def _items_from(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors of ``ids`` computed from the raw text vectors ``x`` ``[*ids.shape, D]`` in
        place of the stored ones (word drop); as ``_items(ids)`` otherwise."""
        v = self.text._adapt("text", x)
        present = self.text.present_text[ids]
        v = torch.where(present.unsqueeze(-1), v, self.text.missing["text"].to(v.dtype))
        if self.item is not None:
            v = v + self.item(ids)
        return v.masked_fill((ids == 0).unsqueeze(-1), 0.0)

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self._items(items)

    def encoder_output(self, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(states, dim=-1)

    def item_embeddings(self) -> torch.Tensor:
        return F.normalize(self._items(None), dim=-1)

    def _candidates_with_padding(self) -> torch.Tensor:
        """``[n_items + 1, d]`` normalised, row 0 the code's padding candidate (``pad_candidate``)."""
        table = self._items(None)
        zero = self.text.feat_text.new_zeros(1, self.text.feat_text.shape[-1])
        row0 = self.text._adapt("text", zero)
        if self.item is not None:
            row0 = row0 + self.item.weight[:1]
        return F.normalize(torch.cat([row0, table[1:]]), dim=-1)

    # -- pre-training augmentation ----------------------------------------------------------------
    def augmentation_draw(self, items: torch.Tensor) -> tuple[bool, torch.Tensor]:
        """One batch's draws: whether it uses word drop, and ``keep`` ``[B, L]`` (True w.p.
        ``1 - drop_ratio``). Word drop only where a word-drop table was given."""
        keep = torch.bernoulli(torch.full(items.shape, 1.0 - self.cfg.drop_ratio, device=items.device)).bool()
        word = bool(torch.rand(()) >= self.cfg.item_drop_prob) if self.cfg.item_drop_prob < 1 else False
        return word and self.has_word_drop, keep

    def augmented_last(self, items: torch.Tensor, lengths: torch.Tensor, word: bool,
                       keep: torch.Tensor) -> torch.Tensor:
        """The normalised last state ``[B, d]`` of the augmented windows (module docstring)."""
        if word:
            x = self.text.feat_text[items]
            swap = (~keep & self.present_word_drop[items]).unsqueeze(-1)
            x = torch.where(swap, self.feat_word_drop[items], x)
            inp, aug_lengths = self._items_from(x, items), lengths
        else:
            aug, aug_lengths = item_drop(items, lengths, keep, self.cfg.item_drop_rule)
            inp = self._items(aug)
        return self.encoder_output(encode(self.encoder, inp, aug_lengths, last=True))

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        """The objective of a step; fine-tuning computes the text items once for the whole step
        (``FeatureItemEncoder.one_table``): the input items read the rows of the candidates' table."""
        with self.text.one_table() if self.cfg.objective == "finetune" else contextlib.nullcontext():
            return self._loss(batch, train_cfg)

    def _loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        if self.cfg.objective == "finetune":
            h = self.sequence_states(batch["items"], batch["lengths"])
            mask = batch["targets"] > 0
            if self.cfg.pad_candidate:
                if loss_kind(train_cfg) != "ce":
                    raise ConfigError(f"unisrec: model.pad_candidate=true is the code's softmax over every item and the "
                                      f"padding row; it takes train.loss=ce only, not {loss_kind(train_cfg)}")
                logits = h[mask] @ self._candidates_with_padding().T / self.cfg.temperature
                if self.train_exclusion is not None:
                    logits = logits.masked_fill(self.train_exclusion, float("-inf"))
                return F.cross_entropy(logits.float(), batch["targets"][mask])
            return next_item_loss(h[mask], batch["targets"][mask], self.item_embeddings(), train_cfg, batch,
                                  temperature=self.cfg.temperature, exclude=self.train_exclusion)
        if loss_kind(train_cfg) != "ce":
            raise ConfigError(f"unisrec pre-training (model.objective=pretrain) is an in-batch InfoNCE: it takes "
                              f"train.loss=ce only, not {loss_kind(train_cfg)}")
        # pre-training: the last position of each window against the in-batch targets
        items, lengths = batch["items"], batch["lengths"]
        last = gather_last(self.sequence_states(items, lengths), lengths)
        tgt = batch["targets"].gather(1, (lengths.clamp(min=1) - 1)[:, None]).squeeze(1)
        keep = tgt > 0
        mask_value = float(self.cfg.same_target_logit)
        pos = F.normalize(self._items(tgt[keep]), dim=-1)
        l_si = infonce_in_batch(last[keep], pos, self.cfg.temperature, target_ids=tgt[keep], mask_value=mask_value)
        if not self.cfg.seq_seq_weight:
            self._loss_parts = {"seq_item": float(l_si.detach())}
            return l_si
        items, lengths = items[keep], lengths[keep]
        word, drop_keep = self.augmentation_draw(items)
        last_aug = self.augmented_last(items, lengths, word, drop_keep)
        l_ss = infonce_in_batch(last[keep], last_aug, self.cfg.temperature, target_ids=tgt[keep], mask_value=mask_value)
        self._loss_parts = {"seq_item": float(l_si.detach()), "seq_seq": float(l_ss.detach()),
                            "word_drop": float(word)}
        return l_si + self.cfg.seq_seq_weight * l_ss
