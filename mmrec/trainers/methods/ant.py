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
  Negatives (``model.pretrain_negatives``): ``other_users`` (default) also masks every other target
  position of the same user (the batch's ``user``; the same window where a batch has none), so a
  row's negatives are the targets of the *other* users in the batch; ``batch`` keeps them all.
  Why: the code's samples are (prefix, next item) pairs drawn from a shuffled concatenation of all
  users' prefixes, so a row's in-batch negatives are, but for chance, other users' next items (the
  paper's sequence-item contrast). With ``pretrain_positions=all`` every target of a 50-long window
  joins one softmax, and without the mask a user's own other (earlier and later) items would be
  negatives: hard false negatives the code almost never has. mmrec keeps the all-positions form
  (every target once per epoch at the cost of one encoder pass per window, where prefix sampling
  costs one pass per target) and removes the same-user pairs; ``train.windows=prefixes`` with
  ``pretrain_positions=last`` and ``pretrain_negatives=batch`` is the code's prefix sampling
  (the ``code_pretrain`` preset). On one batch of all the prefixes of some windows, the code's
  ``L_SI`` equals ``pretrain_positions=all pretrain_negatives=batch`` (bench/side_by_side_ant.py).
  ``L_IT``: in-batch InfoNCE image -> text between ``u_image`` and ``u_text`` of the batch's targets.
  Pre-train on several datasets at once by merging them (``mmrec data merge`` / ``mmrec features
  merge``): the batches then mix domains, as ANT's concatenated and shuffled auxiliary datasets.

Adaptation (``model.init_from=RUN_DIR``, ``model.adapt=POLICY``; ``mmrec.trainers.transfer``): the
default ``relearn`` keeps the pre-trained Transformer blocks frozen and the input LayerNorm (trained),
and re-learns positions, experts, gates and missing vectors from a fresh initialisation.
``finetune`` (UniSRec-style), ``freeze`` (only gates train), ``scratch`` and ``relearn_code`` are the
alternatives the negative-transfer experiments (``examples/experiments/ant-transfer-*.yaml``) compare.

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
  the in-batch candidates are the targets of the batch (of its other users: ``pretrain_negatives``);
  the code's samples are (prefix, next item) pairs, one position each: ``last`` uses the last
  position of each window only (as mmrec's UniSRec; with ``train.windows=prefixes`` it is the
  code's sampling). With ``all`` the logits are [N, N] for N target positions: mind
  ``train.batch_size``. Pre-training with ``pretrain_negatives=batch`` and ``positions=all``, as
  mmrec did before the option existed, made a user's own other items negatives (a bug, fixed by the
  ``other_users`` default).
- No +1e-8 terms in the log and the denominator (exact log-softmax); ``model.loss_eps=1e-8`` is the
  code's ``-log(p / (S + eps) + eps)`` in all three losses. Not negligible: with tau = 0.07 a logit
  spans +-14.3, so a positive's probability can fall below 1e-8, where the code's loss saturates at
  -log(1e-8) = 18.4 and its gradient fades (1-2 % of the loss on random weights in the side-by-side).
  The padding row is not a class of the target softmax; ``model.padding_class=true`` is the
  code's softmax over rows 0..n, row 0 being the projection of all-zero features (every modality's
  experts on a zero vector, with the interaction): exp(0) = 1 in the denominator at the code's
  initialisation (b = 0, biases 0), a learned vector afterwards.
- With gate noise on, the code's target loss draws the positive's gate noise apart from the
  table's (``Modality2Item(label)`` and ``Modality2Item(indices)`` are two draws), so its positive
  logit is not the table's column; mmrec draws once (one table). No flag (a sampling detail).
- Learning-rate decay: the code's ``StepLR(step_size=1)`` with gamma 0.99 (target) and 0.995
  (pre-training) is returned from Lightning's ``configure_optimizers`` without an interval, so it
  steps once per *epoch* (Lightning's default ``interval="epoch"``): ``train.lr_schedule=step
  train.lr_step_epochs=1 train.lr_gamma=0.99`` (the presets). The older ``model.lr_decay`` (per
  epoch, default 1.0: off) does the same from the method's epoch hook; set one of the two, not both
  (they compound). fp16 is ``train.mixed_precision``. Checkpoint selection is the loop's validation
  metric; the code keeps the pre-training checkpoint of minimum training loss, and the target
  checkpoint of maximum validation R@10 (``train.valid_metric=hr@10``).
- Evaluation masks the input sequence in the code: ``eval.history_mask=input`` reproduces it.
- Re-learning initialisation (``model.adapt``): ``relearn`` (default) re-initialises to a fresh
  model's values: the experts' W ~ N(0, init_std = 0.02), as the code's own from-scratch model starts
  (``ANT._init_weights`` overrides the experts' xavier init at construction), which is the paper's
  "re-learn from scratch". The code's ``finetune.py`` re-draws W xavier-normal instead, sd
  sqrt(2 / (in + out)): 0.044 for text 768 -> 256, 0.040 for image 1024 -> 256, 0.079 for price
  64 -> 256, i.e. 2-4x the scratch scale, and keeps the pre-trained price-expert biases:
  ``model.adapt=relearn_code`` (``reinit_parameter``). Both are tested
  (``test_relearn_initialisation_scale_paper_against_code``) and compared with the code's re-draw
  in bench/side_by_side_ant.py.
- Not ported: the ablation modes (NoMoE etc.: set features / ``fusion_lambda=0`` instead),
  ``last_n_MoE`` (off by default in the code), the unused MMFusion / DFusion modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender, init_weights
from mmrec.trainers.modules.adaptors import MoEAdaptor
from mmrec.trainers.modules.items import FeatureItemEncoder, present_modalities, state_versions
from mmrec.trainers.modules.losses import loss_kind, next_item_loss, same_target_mask
from mmrec.trainers.modules.sequence import (
    TransformerConfig,
    TransformerEncoder,
    gather_last,
)


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
    # pre-training L_SI negatives: "other_users" = the targets of the batch's other users (a user's own
    # other positions are masked, as the same target is); "batch" = every other target (the code's form
    # on its (prefix, next item) samples; with pretrain_positions=all it makes a user's own items negatives)
    pretrain_negatives: Literal["other_users", "batch"] = "other_users"
    # target softmax over rows 0..n with row 0 the projection of all-zero features (the code's
    # full_seq_item_contrastive_task over self.indices = 0..n); False: items 1..n only
    padding_class: bool = False
    # the code's "+ 1e-8" in every softmax loss, -log(exp(z_t) / (sum exp(z) + eps) + eps) (its
    # layer_norm_eps reused): caps a sample's loss near -log(eps) = 18.4; 0 = the exact log-softmax
    loss_eps: float = 0.0
    # per-epoch learning-rate factor from the method's epoch hook (1.0: off); the presets use
    # train.lr_schedule=step / lr_step_epochs=1 / lr_gamma instead (the code: 0.99 target, 0.995
    # pre-training, StepLR stepped per epoch); do not set both
    lr_decay: float = 1.0
    init_from: str | None = None
    # a policy of mmrec.trainers.transfer.POLICIES: "relearn" (paper: re-learned tensors start as a fresh
    # model's, experts N(0, init_std)) or "relearn_code" (finetune.py: xavier-normal experts, 2-4x larger
    # at 768/1024/64 -> 256, pre-trained price biases kept); also finetune, finetune_all, freeze, scratch
    adapt: str = "relearn"

    def validate(self) -> None:
        from mmrec.trainers.transfer import get_policy

        get_policy(self.adapt)
        if self.temperature <= 0 or not 0 < self.lr_decay <= 1 or self.loss_eps < 0:
            raise ConfigError("model.temperature must be positive, model.lr_decay in (0, 1] and model.loss_eps >= 0")


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


def nll(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean ``-log softmax(logits)[target]``; with ``eps > 0`` the code's form
    ``-log(exp(z_t) / (sum_j exp(z_j) + eps) + eps)`` (``models/ANT.py``'s ``+ self.layer_norm_eps``
    terms), computed in log space: a sample's loss is capped near ``-log(eps)`` and its gradient fades
    once its positive's probability falls below ``eps``."""
    if not eps:
        return F.cross_entropy(logits, target)
    lse = torch.logsumexp(logits, -1)
    log_eps = torch.full_like(lse, math.log(eps))
    log_p = logits.gather(1, target[:, None]).squeeze(1) - torch.logaddexp(lse, log_eps)
    return -torch.logaddexp(log_p, log_eps).mean()


def seq_item_infonce(h: torch.Tensor, pos: torch.Tensor, temperature: float, target_ids: torch.Tensor,
                     owner: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """In-batch InfoNCE of cosine / ``temperature`` (row i's positive is ``pos[i]``) where column j != i
    is removed from row i's softmax when it has row i's target (``target_ids``) or, given ``owner``
    ([N] user ids), row i's user: ``L_SI`` with ``pretrain_negatives=other_users`` (``owner=None``:
    ``batch``). ``eps``: ``nll``."""
    h, pos = F.normalize(h, dim=-1), F.normalize(pos, dim=-1)
    logits = (h @ pos.T).float() / temperature
    drop = same_target_mask(target_ids)
    if owner is not None:
        drop = drop | ((owner[:, None] == owner[None, :]) & ~torch.eye(len(owner), dtype=torch.bool, device=owner.device))
    logits = logits.masked_fill(drop, float("-inf"))
    return nll(logits, torch.arange(len(h), device=h.device), eps)


class ANT(SequentialRecommender):
    name = "ant"
    Config = ANTConfig
    modalities = ("text", "image", "price")
    required_modalities = ()
    losses = ("ce", "sampled_ce")  # objective=target; pre-training is an in-batch InfoNCE (ce only)

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
        self._table: torch.Tensor | None = None  # the step's (or evaluation's) item table: item_table()
        self._table_versions: tuple[int, ...] | None = None  # an evaluation's table: state_versions then
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

    def train(self, mode: bool = True) -> ANT:
        self._table = None
        return super().train(mode)

    def item_table(self) -> torch.Tensor:
        """``item_vectors(None)`` ``[n_items + 1, d]``, computed once per training step and once per
        evaluation: ``loss`` builds it at the start of a step (``objective=target``) and the step's
        input items and its candidates read it (``encoder_input``, ``item_embeddings``), so the
        experts run over the catalogue once per step, not over the catalogue and again over every
        position of the batch (12,800 positions for ml-1m's 3,416 items). Without dropout and gate
        noise the values and gradients are those of one computation per use. With them, each
        item's vector holds one draw of its dropout masks and gate noise per step, shared by its
        occurrences in the step (inputs and candidate); each occurrence's draw has the distribution
        it had when drawn per use (the code draws per use). At evaluation (no autograd) it is
        computed at the first use and kept until the mode changes or a parameter or feature table
        of the items is written (``state_versions``)."""
        if self._table is not None and (self._table_versions is None
                                        or self._table_versions == state_versions(self.items, self.item)):
            return self._table
        table = self.item_vectors(None)
        if not self.training and not torch.is_grad_enabled():
            self._table, self._table_versions = table, state_versions(self.items, self.item)
        return table

    def encoder_input(self, items: torch.Tensor) -> torch.Tensor:
        if self._table is None and (self.training or torch.is_grad_enabled()):  # outside a step: per position
            return self.item_vectors(items)
        return self.item_table()[items]

    def encoder_output(self, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(states, dim=-1)

    def item_embeddings(self) -> torch.Tensor:
        return F.normalize(self.item_table(), dim=-1)

    def loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        """The objective of a step; with ``objective=target`` one item table for the whole step
        (``item_table``), read by the input items and the candidates."""
        self._table = self.item_vectors(None) if self.training and self.cfg.objective == "target" else None
        self._table_versions = None  # the step's table: no check inside the step
        try:
            return self._loss(batch, train_cfg)
        finally:
            self._table = None

    def _loss(self, batch: dict[str, torch.Tensor], train_cfg: Any) -> torch.Tensor:
        h = self.sequence_states(batch["items"], batch["lengths"])
        if self.cfg.objective == "target":
            mask = batch["targets"] > 0
            if (self.cfg.padding_class or self.cfg.loss_eps) and loss_kind(train_cfg) != "ce":
                raise ConfigError(f"ant: model.padding_class / model.loss_eps reproduce the code's softmax over every "
                                  f"item; they take train.loss=ce only, not {loss_kind(train_cfg)}")
            if self.cfg.padding_class or self.cfg.loss_eps:
                loss = self.target_loss_code(h[mask], batch["targets"][mask])
            else:
                loss = next_item_loss(h[mask], batch["targets"][mask], self.item_embeddings(), train_cfg, batch,
                                      temperature=self.cfg.temperature, exclude=self.train_exclusion)
            self._loss_parts = {"target": float(loss.detach())}
            return loss
        if loss_kind(train_cfg) != "ce":
            raise ConfigError(f"ant pre-training (model.objective=pretrain) is an in-batch InfoNCE: it takes "
                              f"train.loss=ce only, not {loss_kind(train_cfg)}")
        targets = batch["targets"]
        user = batch.get("user")
        owner = (torch.as_tensor(user, device=targets.device) if user is not None
                 else torch.arange(len(targets), device=targets.device))  # no user ids: the window
        if self.cfg.pretrain_positions == "all":
            mask = targets > 0
            hs, tgt = h[mask], targets[mask]
            owner = owner[:, None].expand_as(targets)[mask]
        else:
            hs = gather_last(h, batch["lengths"])
            tgt = targets.gather(1, (batch["lengths"].clamp(min=1) - 1)[:, None]).squeeze(1)
            hs, tgt, owner = hs[tgt > 0], tgt[tgt > 0], owner[tgt > 0]
        pos, vecs = self.item_vectors(tgt, parts=True)
        l_si = seq_item_infonce(hs, pos, self.cfg.temperature, tgt,
                                owner if self.cfg.pretrain_negatives == "other_users" else None, self.cfg.loss_eps)
        l_it = self.image_text_loss(vecs, tgt)
        self._loss_parts = {"seq_item": float(l_si.detach()), "image_text": float(l_it.detach())}
        return l_si + self.cfg.it_weight * l_it

    def padding_vector(self) -> torch.Tensor:
        """The code's row 0 ``[1, d]``: every modality's experts and gate on an all-zero feature, fused
        with the interaction (``Modality2Item`` of the padding id, whose features are zero)."""
        vecs = {}
        for s in self.items.modalities:
            x = getattr(self.items, f"feat_{s}")
            vecs[s] = self.items.adaptors[s](x.new_zeros(1, x.shape[-1]))
        v = ant_fuse(vecs, self.cfg.fusion_lambda)
        return v if self.item is None else v + self.item.weight[:1]

    def target_loss_code(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The target loss with the code's options: cross-entropy of ``cos(h, v(i)) / tau`` over items
        1..n, or over rows ``0..n`` with ``model.padding_class`` (row 0 = ``padding_vector``, the code's
        ``full_seq_item_contrastive_task`` over ``self.indices``), with ``model.loss_eps`` (``nll``).
        ``h`` [N, d] unit states, ``targets`` [N] ids in 1..n."""
        table = self.item_table()[1:]
        if self.cfg.padding_class:
            table = torch.cat([self.padding_vector(), table])
        e = F.normalize(table, dim=-1)
        logits = (h @ e.T).float() / self.cfg.temperature
        exclude = self.train_exclusion
        if not self.cfg.padding_class:
            exclude = None if exclude is None else exclude[1:]
            targets = targets - 1
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
        return nll(logits, targets, self.cfg.loss_eps)

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
            return seq_item_infonce(vecs["image"][sel], vecs["text"][sel], self.cfg.temperature, tgt[sel],
                                    eps=self.cfg.loss_eps)
        if not has_img.any():
            return vecs["image"].new_zeros(())
        img = F.normalize(vecs["image"][has_img], dim=-1)
        txt = F.normalize(vecs["text"], dim=-1)
        logits = (img @ txt.T).float() / self.cfg.temperature
        return nll(logits, has_img.nonzero().squeeze(1), self.cfg.loss_eps)

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
