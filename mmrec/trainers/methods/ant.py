"""ANT (arXiv 2309.10195; ninglab/ANT): multi-modal items re-learned after pre-training.

"Multi-modality Meets Re-learning: Mitigating Negative Transfer in Sequential Recommendation": items
from text, image and price features through whitening experts with Gaussian routing, a Transformer
pre-trained on auxiliary datasets, then re-learning of the item side on the target task.

Items (the paper's M2R projection and ``Modality2Item``). For each feature modality m the item has
(text, image, price; frozen features x_m, e.g. BERT, SWIN, a sinusoidal price code):

    u_m(i) = sum_k g_k(x_m) E_k(x_m)          if item i has an m feature, else a learned missing_m
    E_k(x) = W_k (Dropout(x) - b_k)           whitening experts (text, image)
           = W_k Dropout(x) + c_k             affine experts (price)
    g(x)   = softmax(x W_g + eps * (softplus(x W_n) + 0.01)),  eps ~ N(0, I) in training; softmax(x W_g) at eval
    v(i)   = u_text + u_image + u_price + beta * (u_image * u_text)       (beta = model.fusion_lambda)

(``MoEAdaptor`` per modality, inside ``FeatureItemEncoder``; modalities without features are left out of the sum and
the interaction needs both text and image.) ``model.mode=transductive`` adds an item id embedding on
the input and the candidate side.

Sequences: ``s = Transformer(LN(v(i_1..L) + p_1..L))_L`` (post-LN blocks, learned positions counted from
the oldest item, hidden = inner = 256, 2 layers, 2 heads, GELU, dropout 0.5 / 0.5, LN eps 1e-8), and
items are scored by ``cos(s, v(i))`` (query and item table are L2-normalised).

Objectives (``model.objective``):

- ``target``: cross-entropy over all items of ``cos(s_t, v(i)) / tau`` at every target position
  (tau = 0.07, ``ce_all_items``; cold items excluded).
- ``pretrain``: ``L = L_SI + lambda * L_IT`` (lambda = ``model.it_weight`` = 1e-3).
  ``L_SI``: in-batch InfoNCE between the states and their targets' fused vectors (cosine / tau);
  other pairs with the same target are masked out (-inf; the code's -1e4 / tau gives the same value).
  ``L_IT``: in-batch InfoNCE image -> text between ``u_image`` and ``u_text`` of the batch's targets.
  Pre-train on several datasets at once by merging them (``mmrec data merge`` / ``mmrec features
  merge``): the batches then mix domains, as ANT's concatenated and shuffled auxiliary datasets.

Adaptation (``model.init_from=RUN_DIR``, ``model.adapt=POLICY``; ``mmrec.trainers.transfer``): the
default ``relearn`` keeps the pre-trained Transformer blocks frozen and the input LayerNorm (trained),
and re-learns positions, experts, gates and missing vectors from a fresh initialisation.
``finetune`` (UniSRec-style), ``freeze`` (only gates train), ``scratch`` and ``relearn_code`` are the
alternatives the negative-transfer bench (``bench/negative_transfer.py``) compares.

Feature modalities: text, image and price are all optional (``required_modalities = ()``); at least one is
needed. With text alone ANT is a UniSRec-like model with Gaussian routing. Image features must be one
vector per item (the code averages up to 4 SWIN images per item: extract with pooling, or average at
extraction).

Defaults and their source: hidden = inner = 256, 2 layers, 2 heads, dropout 0.5 / 0.5, LN eps 1e-8,
8 experts, adaptor dropout 0.2, gate noise on, tau = 0.07, beta = 0.1 (``fusion_lam`` of the README),
lambda = 1e-3 (``calculate_loss``), ``position=forward`` (RecBole's positions), all from
``props/ANT.yaml`` and ``models/ANT.py``.

**Departures from the released code (flags reproduce the code where one exists).**

- Missing modalities: an item without an image has a learned missing vector, and the interaction
  ``beta * u_image * u_text`` is left out for it (``model.interaction_missing=skip``). The code feeds a
  zero image feature through the experts (a learned constant) and keeps the interaction:
  ``interaction_missing=missing_vector`` multiplies the missing vector instead, which is the same
  form (a learned constant times u_text).
- ``L_IT`` (``model.it_pairs``): ``both`` (default) uses as rows *and* candidates only the targets that
  have both a text and an image feature, and masks other rows with the same item; ``code`` is the
  code's form: rows are the targets with an image, candidates are the texts of all the batch's
  targets, no same-item mask, mean over the rows.
- ``L_SI`` at every target position of each training window (``model.pretrain_positions=all``), so
  the in-batch candidates are all targets of the batch; the code's samples are (prefix, next item)
  pairs, one position each: ``last`` uses the last position of each window only (as mmrec's UniSRec).
  With ``all`` the logits are [N, N] for N target positions: mind ``train.batch_size``.
- No +1e-8 terms in the log and the denominator (exact log-softmax); the padding row is not a class
  of the target softmax (the code includes row 0, the projection of zero features).
- Learning-rate decay: the code's StepLR (gamma 0.99 target, 0.995 pre-training, per epoch) is
  ``model.lr_decay`` (default 1.0: off, as the other methods under the shared loop); fp16 is
  ``train.mixed_precision``. Checkpoint selection is the loop's validation metric; the code keeps the
  pre-training checkpoint of minimum training loss, and the target checkpoint of maximum validation
  R@10 (``train.valid_metric=hr@10``).
- Evaluation masks the input sequence in the code: ``eval.history_mask=input`` reproduces it.
- ``relearn`` re-initialises to a fresh model's values (the paper: "re-learn from scratch"); the
  code's own re-draw (xavier-normal experts, pre-trained price biases kept) is ``model.adapt=relearn_code``.
- Not ported: the ablation modes (NoMoE etc.: set features / ``fusion_lambda=0`` instead),
  ``last_n_MoE`` (off by default in the code), the unused MMFusion / DFusion modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.adaptors import MoEAdaptor
from mmrec.trainers.modules.items import FeatureItemEncoder, present_modalities
from mmrec.trainers.modules.losses import ce_all_items, infonce_in_batch
from mmrec.trainers.modules.sequence import TransformerConfig, TransformerEncoder, gather_last


@dataclass
class ANTConfig(TransformerConfig):
    hidden: int = 256
    inner: int = 256  # the code: inner_size = hidden_size
    position: Literal["forward", "reverse"] = "forward"
    layer_norm_eps: float = 1e-8
    n_experts: int = 8
    adaptor_dropout: float = 0.2
    gate_noise: bool = True  # Gaussian routing: sampled gate logits in training, the mean at eval
    fusion_lambda: float = 0.1  # beta of the image x text interaction
    interaction_missing: Literal["skip", "missing_vector"] = "skip"
    temperature: float = 0.07
    mode: Literal["inductive", "transductive"] = "inductive"
    objective: Literal["target", "pretrain"] = "target"
    it_weight: float = 1e-3  # lambda of the image-text contrastive term (pre-training)
    it_pairs: Literal["both", "code"] = "both"
    pretrain_positions: Literal["all", "last"] = "all"
    lr_decay: float = 1.0  # per-epoch StepLR factor (code: 0.99 target, 0.995 pre-training)
    init_from: str | None = None
    adapt: str = "relearn"  # a policy of mmrec.trainers.transfer.POLICIES

    def validate(self) -> None:
        from mmrec.trainers.transfer import get_policy

        get_policy(self.adapt)
        if self.temperature <= 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError("model.temperature must be positive and model.lr_decay in (0, 1]")


def ant_fuse(vectors: Mapping[str, torch.Tensor], beta: float, both: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_m u_m + beta * (u_image * u_text)`` over the given modality vectors (each ``[..., d]``).

    The interaction needs both ``image`` and ``text``; ``both`` (bool ``[...]``) keeps it only where True
    (items that have both features). Without image or text it is a plain sum."""
    out = torch.stack(list(vectors.values()), 0).sum(0)
    if beta and "image" in vectors and "text" in vectors:
        inter = vectors["image"] * vectors["text"]
        if both is not None:
            inter = inter * both.unsqueeze(-1).to(inter.dtype)
        out = out + beta * inter
    return out


class ANT(SequentialRecommender):
    name = "ant"
    Config = ANTConfig
    modalities = ("text", "image", "price")
    required_modalities = ()
    losses = ("ce",)

    def __init__(self, cfg: ANTConfig, n_items: int, max_len: int, features=None):
        super().__init__(cfg, n_items, max_len, features)
        modalities = present_modalities(self.name, self.features, self.modalities)
        self.encoder = TransformerEncoder(cfg.hidden, cfg.layers, cfg.heads, cfg.inner, cfg.dropout,
                                          cfg.attn_dropout, max_len, cfg.act, eps=cfg.layer_norm_eps,
                                          position=cfg.position)
        self.items = FeatureItemEncoder(self.features, modalities, cfg.hidden, adaptor="moe", fusion="sum",
                                  dropout=cfg.adaptor_dropout, n_experts=cfg.n_experts)
        if "price" in modalities:  # affine experts for the price code (the code's meta2rec)
            self.items.adaptors["price"] = MoEAdaptor(self.features["price"].dim, cfg.hidden, cfg.n_experts,
                                                      cfg.adaptor_dropout, expert="linear")
        for a in self.items.adaptors.values():
            a.noise = cfg.gate_noise
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0) if cfg.mode == "transductive" else None
        init_weights(self, cfg.init_std)  # as the code's self.apply(_init_weights): every Linear N(0, std)
        if self.item is not None:
            with torch.no_grad():
                self.item.weight[0].zero_()
        self.transfer_report: dict[str, Any] | None = None
        self._report_pending = False
        if cfg.init_from:
            from mmrec.trainers.transfer import adapt_from_run

            self.transfer_report = adapt_from_run(self, cfg.init_from, cfg.adapt)
            self._report_pending = True

    @property
    def ranks_unseen_items(self) -> bool:  # type: ignore[override]
        return self.cfg.mode == "inductive"

    # -- transfer --------------------------------------------------------------------------------
    def reinit_parameter(self, name: str, p: torch.Tensor) -> None:
        """ANT's finetune.py re-initialisation (``model.adapt=relearn_code``): positions N(0, std),
        whitening centres b = 0, expert weights xavier-normal, expert biases 0, gates 0, missing and
        id vectors N(0, std), LayerNorms 1 / 0."""
        std = self.cfg.init_std
        if name.endswith(("w_gate", "w_noise")) or (".experts." in name and name.endswith("bias")):
            nn.init.zeros_(p)
        elif ".experts." in name and name.endswith("weight"):
            nn.init.xavier_normal_(p)
        elif name.endswith("norm.weight"):
            nn.init.ones_(p)
        elif name.endswith("norm.bias"):
            nn.init.zeros_(p)
        elif p.dim() > 1 or ".missing." in name:
            nn.init.normal_(p, 0.0, std)
            if name == "item.weight":
                p[0].zero_()
        else:
            nn.init.zeros_(p)

    # -- model -----------------------------------------------------------------------------------
    def _present(self, modality: str, ids: torch.Tensor | None) -> torch.Tensor:
        present = getattr(self.items, f"present_{modality}")
        return present if ids is None else present[ids]

    def item_vectors(self, ids: torch.Tensor | None = None, parts: bool = False):
        """Fused, unnormalised item vectors ``[*ids.shape, d]`` (``ids=None``: ``[n_items + 1, d]``), row
        0 / padding zero; with ``parts`` also the modality vectors ``{modality: u_m}``."""
        vecs = self.items.modality_vectors(ids)
        both = None
        if "image" in vecs and "text" in vecs and self.cfg.interaction_missing == "skip":
            both = self._present("image", ids) & self._present("text", ids)
        v = ant_fuse(vecs, self.cfg.fusion_lambda, both)
        if self.item is not None:
            v = v + (self.item.weight if ids is None else self.item(ids))
        pad = (ids == 0) if ids is not None else torch.arange(v.shape[0], device=v.device) == 0
        v = v.masked_fill(pad.unsqueeze(-1), 0.0)
        return (v, vecs) if parts else v

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_vectors(items)

    def encoder_output(self, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(states, dim=-1)

    def item_embeddings(self) -> torch.Tensor:
        return F.normalize(self.item_vectors(None), dim=-1)

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        h = self.sequence_states(batch["items"], batch["lengths"])
        if self.cfg.objective == "target":
            mask = batch["targets"] > 0
            loss = ce_all_items(h[mask], batch["targets"][mask], self.item_embeddings(),
                                temperature=self.cfg.temperature, exclude=self.train_exclusion)
            self._loss_parts = {"target": float(loss.detach())}
            return loss
        if self.cfg.pretrain_positions == "all":
            mask = batch["targets"] > 0
            hs, tgt = h[mask], batch["targets"][mask]
        else:
            hs = gather_last(h, batch["lengths"])
            tgt = batch["targets"].gather(1, (batch["lengths"].clamp(min=1) - 1)[:, None]).squeeze(1)
            hs, tgt = hs[tgt > 0], tgt[tgt > 0]
        pos, vecs = self.item_vectors(tgt, parts=True)
        l_si = infonce_in_batch(hs, pos, self.cfg.temperature, target_ids=tgt)
        l_it = self.image_text_loss(vecs, tgt)
        self._loss_parts = {"seq_item": float(l_si.detach()), "image_text": float(l_it.detach())}
        return l_si + self.cfg.it_weight * l_it

    def image_text_loss(self, vecs: Mapping[str, torch.Tensor], tgt: torch.Tensor) -> torch.Tensor:
        """In-batch InfoNCE image -> text over the targets ``tgt`` (``model.it_pairs``, module docstring);
        0 without both modalities or without a row that qualifies."""
        if "image" not in vecs or "text" not in vecs or not self.cfg.it_weight:
            return vecs[next(iter(vecs))].new_zeros(())
        has_img = self._present("image", tgt)
        if self.cfg.it_pairs == "both":
            sel = has_img & self._present("text", tgt)
            if not sel.any():
                return vecs["image"].new_zeros(())
            return infonce_in_batch(vecs["image"][sel], vecs["text"][sel], self.cfg.temperature, target_ids=tgt[sel])
        if not has_img.any():
            return vecs["image"].new_zeros(())
        img = F.normalize(vecs["image"][has_img], dim=-1)
        txt = F.normalize(vecs["text"], dim=-1)
        logits = (img @ txt.T).float() / self.cfg.temperature
        return F.cross_entropy(logits, has_img.nonzero().squeeze(1))

    # -- loop hooks ------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if self.cfg.lr_decay != 1.0:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
                g["lr"] = g["initial_lr"] * self.cfg.lr_decay ** (epoch - 1)
            self._lr = optimizer.param_groups[0]["lr"]

    def epoch_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cfg.lr_decay != 1.0 and hasattr(self, "_lr"):
            out["lr"] = self._lr
        if self._report_pending and self.transfer_report is not None:  # once, in the first epoch's line
            r = self.transfer_report
            out["transfer"] = {"run": r["source"], "policy": r["policy"], **r["counts"]}
            self._report_pending = False
        return out
