"""UniSRec (Hou et al., KDD 2022): universal sequence representations from item text.

An item is its text feature (BERT [CLS] of "title. categories. brand." in the paper) passed through
a mixture of parametric-whitening experts with a Gaussian-routed gate; a SASRec encoder (RecBole's:
hidden 300, 2 layers, 2 heads, inner 256, dropout 0.5, learned positions) reads the sequence:

    v(i) = sum_k g_k(x_i) W_k (x_i - b_k)            (+ e_id(i) in transductive mode)
    s    = SASRec(v(i_1), ..., v(i_L))_L
    fine-tuning loss: softmax over all items of cos(s, v(i)) / tau, tau = 0.07; scores cos(s, v(i))

``model.mode``: ``inductive`` (text only: a cold item can be ranked) or ``transductive`` (an id
embedding added on the input and the candidate side).

``model.objective=pretrain``: the sequence-item contrastive task, in-batch InfoNCE between the
last state of each window and its target (other windows' targets are the negatives; windows with
the same target are masked out, ``model.same_target_logit``: ``-inf`` by default, ``0`` reproduces
the released code). Pre-train on one dataset, then fine-tune on another with
``model.init_from=<pre-training run folder>``: the encoder, the adaptor and the input LayerNorm are
loaded (item id embeddings never are) and, with ``model.freeze_encoder=true`` (the default, as
UniSRec's ``fix_enc``), the positions and Transformer blocks are frozen: only the MoE adaptor, the
input LayerNorm and the id embeddings (transductive) train. To pre-train on several datasets at
once, merge them (``mmrec data merge`` and ``mmrec features merge``): batches then mix the datasets
and the in-batch negatives come from all of them, as UniSRec's multi-domain pre-training. The
sequence-sequence task (lambda = 1e-3, with item- and word-drop augmentation) is not built yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.items import FeatureItemEncoder
from mmrec.trainers.modules.losses import ce_all_items
from mmrec.trainers.modules.sequence import TransformerConfig, gather_last


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
    init_from: str | None = None
    freeze_encoder: bool = True


class UniSRec(SequentialRecommender):
    name = "unisrec"
    Config = UniSRecConfig
    modalities = ("text",)
    required_modalities = ("text",)
    losses = ("ce",)

    def __init__(self, cfg: UniSRecConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        self.encoder = cfg.encoder(max_len)
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0) if cfg.mode == "transductive" else None
        init_weights(self, cfg.init_std)
        if self.item is not None:
            with torch.no_grad():
                self.item.weight[0].zero_()
        self.text = FeatureItemEncoder(self.features, ["text"], cfg.hidden, adaptor="moe", dropout=cfg.adaptor_dropout,
                                 n_experts=cfg.n_experts)
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

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self._items(items)

    def encoder_output(self, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(states, dim=-1)

    def item_embeddings(self) -> torch.Tensor:
        return F.normalize(self._items(None), dim=-1)

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        h = self.sequence_states(batch["items"], batch["lengths"])
        if self.cfg.objective == "finetune":
            mask = batch["targets"] > 0
            return ce_all_items(h[mask], batch["targets"][mask], self.item_embeddings(),
                                temperature=self.cfg.temperature, exclude=self.train_exclusion)
        # pre-training: the last position of each window against the in-batch targets
        from mmrec.trainers.modules.losses import infonce_in_batch

        last = gather_last(h, batch["lengths"])
        tgt = batch["targets"].gather(1, (batch["lengths"].clamp(min=1) - 1)[:, None]).squeeze(1)
        keep = tgt > 0
        pos = F.normalize(self._items(tgt[keep]), dim=-1)
        return infonce_in_batch(last[keep], pos, self.cfg.temperature, target_ids=tgt[keep],
                                mask_value=float(self.cfg.same_target_logit))
