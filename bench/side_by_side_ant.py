"""ANT side by side: mmrec's ``ant`` against the authors' released code.

    python bench/side_by_side_ant.py --official /path/to/ANT      # a checkout of ninglab/ANT
    bash bench/envs/recbole-source.sh 1.1.1 ../recbole-1.1.1      # RecBole 1.1.1's files, from its wheel
    python bench/side_by_side_ant.py --official /path/to/ANT --recbole ../recbole-1.1.1

Written against ninglab/ANT@d125b5af871ffd7434ea9d7755c335ae2a8f5a45 (``models/ANT.py``,
``models/modules.py``, ``models/layers.py``; ``finetune.py``'s re-initialisation block). The authors'
``ANT`` LightningModule is imported from the checkout and run from the frozen feature tables onward
(random tables of the code's shapes: text 768, price 64, image ``IMG``; every item has every feature;
values rounded through float16 as the code's ``weight2emb`` stores them).

Shims (all here, none in mmrec; the official modules need PyTorch-Lightning 1.7.7 and RecBole 1.1.1):

- ``pytorch_lightning``: a stub module whose ``LightningModule`` is an ``nn.Module`` with a CPU
  ``device`` and a no-op ``log``, and whose ``seed_everything(s)`` is ``torch.manual_seed(s)``;
- ``recbole.model.layers.MultiHeadAttention`` (imported by ``models/layers.py``): RecBole 1.1.1's
  own ``recbole/model/layers.py`` loaded as a single file from ``--recbole DIR`` (an unpacked
  ``recbole-1.1.1`` wheel: ``bash bench/envs/recbole-source.sh 1.1.1 DIR``; default ``$MMREC_RECBOLE``)
  with ``recbole.utils`` stubbed by the two
  enums the file imports; without such a folder, a transcription of RecBole 1.1.1's
  ``MultiHeadAttention`` in this script (the table header names which one ran);
- the code's ``PretrainEmbeddingTable`` (reads ``.feat`` files) is replaced by an object with
  ``num_items`` and ``data2embedding`` (frozen ``nn.Embedding`` tables, row 0 zero), and the
  pre-training dataset's feature lookup (``dataset/Pretrain.py:__getitem__``) is done here;
- ``finetune.py:106-134`` (script-level code, not importable) is transcribed in ``code_relearn``: it
  calls the official modules' own ``_init_weights``.

Batches: ``B`` right-padded windows (mmrec's layout); the code gets *every prefix* of them as its
(prefix, next item) samples, padded to 50 (its ``.train.inter`` rows), in the same order. A causal
encoder's state at position t of a window is the state of the prefix of length t + 1, so the code's
losses over those prefixes are mmrec's losses over all target positions. Dropouts 0, gate noise off
except in the gate rows (noise on, ``torch.manual_seed`` identical before each call).

Tables:
1. components (target-stage model, randomised weights copied across): each whitening / affine
   expert, the Gaussian-routing gates (noise on, seeded; and the mean), each modality vector, the
   fused item vectors (text + image + price + beta image * text) and the padding row, the sequence
   encoder states, the item scores;
2. target loss with the code's flags (``model.padding_class=true loss_eps=1e-8``), its gradients, 20 Adam steps
   (lr 1e-3, StepLR gamma 0.99 stepped every 5 steps = one "epoch", as ``train.lr_schedule=step``
   with 5 steps an epoch) with the encoder frozen (``finetune.py --fixed_enc``), the parameters after;
3. pre-training losses (L_SI, L_IT, total) with the code's flags (``model.pretrain_positions=all
   pretrain_negatives=batch it_pairs=code loss_eps=1e-8``), gradients, 20 steps (StepLR gamma 0.995);
4. mmrec's paper defaults, one at a time, with their named differences (``padding_class=false``,
   ``loss_eps=0``, ``pretrain_negatives=other_users``, ``it_pairs=both``);
5. the re-learning initialisation at the paper's sizes (768 / 1024 / 64 -> 256, 8 experts): the
   code's ``finetune.py`` re-draw against ``model.adapt=relearn_code`` (kept and zeroed tensors
   exactly, re-drawn ones by their mean and standard deviation) and ``relearn`` (N(0, 0.02): named).
Exit code 0 when every row is within 1e-5 (table 5's statistics: 3 %) or carries the documented
difference that explains it.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib.util
import math
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import Row, copy_by_spec, diff, official_import_path, print_table

from mmrec.config import from_dict
from mmrec.features.aligned import FeatureTable
from mmrec.runs.config import TrainConfig, lr_factor
from mmrec.trainers.methods.ant import ANT, ANTConfig
from mmrec.trainers.transfer import POLICIES, apply_policy

COMMIT = "d125b5af871ffd7434ea9d7755c335ae2a8f5a45"
N_ITEMS, B, W, MAXLEN = 40, 6, 8, 50  # items, windows, window width, the code's max_seq_length
TEXT, IMG, PRICE = 768, 32, 64  # text and price dimensions are hard-coded in models/ANT.py
HID, EXPS, TAU, BETA = 16, 4, 0.07, 0.1
LR, N_STEPS, PER_EPOCH = 1e-3, 20, 5
GAMMA = {"target": 0.99, "pretrain": 0.995}  # models/ANT.py:329-332
USERS = [0, 1, 2, 0, 3, 4]  # windows 0 and 3 are one user (two windows of a long history)
STAT_TOL = 0.03
KEY_BIAS_NOTE = ("the key bias has a zero true gradient (b_k adds q.b_k to every score of a query: the softmax "
                 "cancels it); its float-noise gradient (~1e-9, both sides) is below Adam's eps 1e-8, so Adam "
                 "moves it by noise / (noise + 1e-8) * lr: rounding noise, not a difference")
# RecBole 1.1.1's source files beside the repository: bash bench/envs/recbole-source.sh 1.1.1 ../recbole-1.1.1
DEFAULT_RECBOLE = str(Path(__file__).resolve().parents[2] / "recbole-1.1.1")
MODALITIES = {"text": ("text2rec", "text_pooling"), "image": ("img2rec", "img_pooling"),
              "price": ("meta2rec", "meta_pooling")}
CODE_TARGET = {"padding_class": True, "loss_eps": 1e-8}
CODE_PRETRAIN = {"pretrain_positions": "all", "pretrain_negatives": "batch", "it_pairs": "code", "loss_eps": 1e-8}


# -- shims ------------------------------------------------------------------------------------------
class _RecBoleMHA(nn.Module):
    """Transcription of RecBole 1.1.1's ``recbole.model.layers.MultiHeadAttention`` (used only when no
    RecBole 1.1.1 source is found): Q/K/V/dense Linear, scores / sqrt(d_h) + additive mask, softmax,
    dropout, dense, dropout, LayerNorm(out + input)."""

    def __init__(self, n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps):
        super().__init__()
        self.num_attention_heads = n_heads
        self.attention_head_size = hidden_size // n_heads
        self.all_head_size = hidden_size
        self.sqrt_attention_head_size = math.sqrt(self.attention_head_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.softmax = nn.Softmax(dim=-1)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)

    def _heads(self, x):
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size)

    def forward(self, input_tensor, attention_mask):
        q = self._heads(self.query(input_tensor)).permute(0, 2, 1, 3)
        k = self._heads(self.key(input_tensor)).permute(0, 2, 3, 1)
        v = self._heads(self.value(input_tensor)).permute(0, 2, 1, 3)
        scores = torch.matmul(q, k) / self.sqrt_attention_head_size + attention_mask
        probs = self.attn_dropout(self.softmax(scores))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(*ctx.shape[:-2], self.all_head_size)
        return self.LayerNorm(self.out_dropout(self.dense(ctx)) + input_tensor)


@contextlib.contextmanager
def shims(recbole_dir: str | None) -> Iterator[str]:
    """Stub ``pytorch_lightning`` and provide ``recbole.model.layers`` while the official code is
    imported; yields where the MultiHeadAttention came from. Restores ``sys.modules`` afterwards."""
    names = ("pytorch_lightning", "recbole", "recbole.utils", "recbole.model", "recbole.model.layers")
    saved = {n: sys.modules.get(n) for n in names}

    pl = types.ModuleType("pytorch_lightning")

    class LightningModule(nn.Module):
        @property
        def device(self):
            return torch.device("cpu")

        def log(self, *args, **kwargs):
            pass

    pl.LightningModule = LightningModule
    pl.seed_everything = lambda seed: torch.manual_seed(seed)
    sys.modules["pytorch_lightning"] = pl

    recbole, utils, model = (types.ModuleType(n) for n in ("recbole", "recbole.utils", "recbole.model"))
    recbole.__path__, model.__path__ = [], []
    utils.FeatureType = enum.Enum("FeatureType", "TOKEN FLOAT TOKEN_SEQ FLOAT_SEQ")
    utils.FeatureSource = enum.Enum("FeatureSource", "INTERACTION USER USER_ID ITEM ITEM_ID NET")
    recbole.utils, recbole.model = utils, model
    sys.modules.update({"recbole": recbole, "recbole.utils": utils, "recbole.model": model})
    layers_py = Path(recbole_dir or os.environ.get("MMREC_RECBOLE") or DEFAULT_RECBOLE) / "recbole" / "model" / "layers.py"
    if layers_py.is_file():
        spec = importlib.util.spec_from_file_location("recbole.model.layers", layers_py)
        layers = importlib.util.module_from_spec(spec)
        sys.modules["recbole.model.layers"] = layers
        spec.loader.exec_module(layers)
        source = f"RecBole 1.1.1's own file ({layers_py})"
    else:
        layers = types.ModuleType("recbole.model.layers")
        layers.MultiHeadAttention = _RecBoleMHA
        sys.modules["recbole.model.layers"] = layers
        source = "this script's transcription of RecBole 1.1.1's MultiHeadAttention (no --recbole folder found)"
    model.layers = layers
    try:
        yield source
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


# -- data -------------------------------------------------------------------------------------------
def make_features(n_items: int = N_ITEMS, dims: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{modality: [n_items + 1, D]}``, row 0 zero, rounded through float16 (the code's storage)."""
    dims = dims or {"text": TEXT, "image": IMG, "price": PRICE}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s, d in dims.items():
        t = torch.randn(n_items + 1, d, generator=g)
        t[0] = 0.0
        out[s] = t.half().float()
    return out


def make_batches(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` mmrec batches of B windows (1..W targets; ids from a small pool so targets repeat)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        items = torch.zeros(B, W, dtype=torch.long)
        targets = torch.zeros(B, W, dtype=torch.long)
        lengths = torch.randint(1, W + 1, (B,), generator=g)
        for b in range(B):
            seq = torch.randint(1, N_ITEMS + 1, (int(lengths[b]) + 1,), generator=g)
            items[b, : lengths[b]] = seq[:-1]
            targets[b, : lengths[b]] = seq[1:]
        out.append({"items": items, "targets": targets, "lengths": lengths, "user": torch.tensor(USERS)})
    return out


def prefixes(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The code's samples: every (prefix, next item) of the windows, in (window, position) order, padded
    to the code's 50 slots (``dataset/Dataset.py:84-98``)."""
    rows, labels, lens = [], [], []
    for b in range(B):
        for t in range(int(batch["lengths"][b])):
            r = torch.zeros(MAXLEN, dtype=torch.long)
            r[: t + 1] = batch["items"][b, : t + 1]
            rows.append(r)
            labels.append(batch["targets"][b, t])
            lens.append(t + 1)
    return torch.stack(rows), torch.stack(labels), torch.tensor(lens)


def pretrain_sample(feats, interns, label, lens):
    """``dataset/Pretrain.py:__getitem__``: ids with their feature rows (img, text, price)."""
    def look(ids):
        return (ids, feats["image"][ids], feats["text"][ids], feats["price"][ids])
    return look(interns), look(label), lens


# -- models -----------------------------------------------------------------------------------------
def official_config(stage: str, hidden: int = HID, exps: int = EXPS, img: int = IMG, noise: bool = False) -> dict:
    """props/ANT.yaml with pretrain.py / finetune.py's additions; dropouts 0 (deterministic)."""
    return {"temperature": TAU, "optim": "Adam", "initializer_range": 0.02, "hidden_size": hidden,
            "fusion_lam": BETA, "training_stage": "pretrain" if stage == "pretrain" else "finetune",
            "mode": "pretrain" if stage == "pretrain" else "inductive", "layer_norm_eps": 1e-8,
            "n_layers_rec": 2, "n_heads_rec": 2, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0,
            "hidden_act": "gelu", "last_n_MoE": 0, "n_exps_model": 0, "image_dim": img, "n_exps": exps,
            "adaptor_dropout_prob": 0.0, "noise": noise}


def build_official(mod, feats, stage: str, **kw):
    def emb(t):
        e = nn.Embedding(t.shape[0], t.shape[1], padding_idx=0)
        e.weight.requires_grad = False
        e.weight.data.copy_(t)
        return e

    table = types.SimpleNamespace(num_items=feats["text"].shape[0] - 1, data2embedding=nn.ModuleDict(
        {"text_embed": emb(feats["text"]), "img_embed": emb(feats["image"]), "price_embed": emb(feats["price"])}))
    return mod.ANT(official_config(stage, img=feats["image"].shape[1], **kw), table)


def build_mmrec(feats, stage: str, hidden: int = HID, exps: int = EXPS, **flags) -> ANT:
    present = torch.ones(feats["text"].shape[0], dtype=torch.bool)
    present[0] = False
    tables = {s: FeatureTable(s, t.clone(), present.clone(), {}) for s, t in feats.items()}
    cfg = {"hidden": hidden, "inner": hidden, "layers": 2, "heads": 2, "dropout": 0.0, "attn_dropout": 0.0,
           "adaptor_dropout": 0.0, "layer_norm_eps": 1e-8, "n_experts": exps, "gate_noise": False,
           "temperature": TAU, "fusion_lambda": BETA, "position": "forward", "objective": stage, **flags}
    torch.manual_seed(0)
    return ANT(from_dict(ANTConfig, cfg), feats["text"].shape[0] - 1, MAXLEN, features=tables)


def weight_spec(m: ANT, exps: int = EXPS) -> dict[str, Callable[[dict], torch.Tensor] | None]:
    """mmrec parameter -> function of the official ``{name: tensor}`` (weights or gradients); None
    where the code has no such parameter (the missing-modality vectors: every item has every feature)."""
    spec: dict[str, Callable | None] = {}

    def same(o: str):
        return lambda P: P[o]

    spec["encoder.position.weight"] = same("position_embedding.weight")
    for x in ("weight", "bias"):
        spec[f"encoder.norm.{x}"] = same(f"LayerNorm.{x}")
        for i in range(2):
            mp, op = f"encoder.blocks.{i}", f"trm_encoder.layer.{i}"
            mha = f"{op}.multi_head_attention"
            spec[f"{mp}.attn.qkv.{x}"] = (lambda P, mha=mha, x=x: torch.cat([P[f"{mha}.{k}.{x}"] for k in ("query", "key", "value")]))
            spec[f"{mp}.attn.out.{x}"] = same(f"{mha}.dense.{x}")
            spec[f"{mp}.attn.norm.{x}"] = same(f"{mha}.LayerNorm.{x}")
            spec[f"{mp}.ffn.fc1.{x}"] = same(f"{op}.feed_forward.dense_1.{x}")
            spec[f"{mp}.ffn.fc2.{x}"] = same(f"{op}.feed_forward.dense_2.{x}")
            spec[f"{mp}.ffn.norm.{x}"] = same(f"{op}.LayerNorm.{x}")
    for s, (m2r, pool) in MODALITIES.items():
        a = f"items.adaptors.{s}"
        spec[f"{a}.w_gate"] = same(f"{pool}.pooling.w_gate")
        spec[f"{a}.w_noise"] = same(f"{pool}.pooling.w_noise")
        for k in range(exps):
            spec[f"{a}.experts.{k}.lin.weight"] = same(f"{m2r}.proj.{k}.lin.weight")
            bias = f"{a}.experts.{k}.lin.bias" if s == "price" else f"{a}.experts.{k}.bias"
            spec[bias] = same(f"{m2r}.proj.{k}.lin.bias" if s == "price" else f"{m2r}.proj.{k}.bias")
        spec[f"items.missing.{s}"] = None
    names = dict(m.named_parameters())
    missing = sorted(set(names) - set(spec))
    if missing:
        raise KeyError(f"mmrec parameters with no entry in the weight map: {missing}")
    return {k: v for k, v in spec.items() if k in names}


@torch.no_grad()
def randomise(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Move every trainable parameter off its initial value (gates non-zero, whitening centres non-zero,
    LayerNorms not 1 / 0), so no comparison passes by symmetry."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _group(name: str) -> str:
    """Experts are compared stacked: ``...experts.3.lin.weight`` -> ``...experts.*.lin.weight``."""
    parts = name.split(".")
    return ".".join("*" if i > 0 and parts[i - 1] == "experts" else q for i, q in enumerate(parts))


def grouped_rows(prefix: str, m: ANT, off, spec, take: Callable[[torch.Tensor], torch.Tensor | None],
                 note: str = "", key_bias_note: bool = False) -> list[Row]:
    """One row per mmrec parameter (experts stacked per modality and tensor; the fused Q/K/V split
    into the code's three): ``take(p)`` is the parameter itself or its gradient (None = zeros).
    ``key_bias_note``: the key bias after Adam steps carries ``KEY_BIAS_NOTE``."""
    O = {k: (take(p) if take(p) is not None else torch.zeros_like(p)) for k, p in off.named_parameters()}
    groups: dict[str, tuple[list, list]] = {}
    for name, p in m.named_parameters():
        fn = spec[name]
        if fn is None:
            continue  # missing-modality vectors: no item lacks a feature here
        t = take(p) if take(p) is not None else torch.zeros_like(p)
        a, b = groups.setdefault(_group(name), ([], []))
        a.append(t)
        b.append(fn(O))
    rows = []
    for g, (a, b) in groups.items():
        a, b = torch.stack(a), torch.stack(b)
        if ".attn.qkv." not in g:
            rows.append(diff(f"{prefix} {g}", a, b, note))
            continue
        for j, part in enumerate(("query", "key", "value")):  # the code's three Linear layers
            n = a.shape[1] // 3
            why = note or (KEY_BIAS_NOTE if key_bias_note and part == "key" and g.endswith("bias") else "")
            rows.append(diff(f"{prefix} {g} [{part}]", a[:, j * n:(j + 1) * n], b[:, j * n:(j + 1) * n], why))
    return rows


def worst(rows: list[Row], label: str, note: str = "") -> Row:
    r = max(rows, key=lambda r: min(r.max_abs, r.max_rel))
    return Row(f"{label} (worst: {r.component})", r.max_abs, r.max_rel, note)


# -- the code's pieces ------------------------------------------------------------------------------
def official_pretrain_terms(off, sample):
    """``calculate_loss`` of the pre-training stage, term by term (models/ANT.py:299-325)."""
    interns, label, lens = sample
    pos, img, txt, zero = off.Modality2Item(label, split=True)
    ids = label[0]
    same = (ids.unsqueeze(1) == ids.unsqueeze(0)).fill_diagonal_(False)
    seq = F.normalize(off.forward(interns, lens), dim=1)
    l_si = off.batch_seq_item_contrastive_task(seq, same, F.normalize(pos, dim=1))
    l_it = off.batch_image_text_contrastive_task(img, txt, zero)
    return l_si, l_it, off.calculate_loss(interns, label, lens)


@torch.no_grad()
def code_relearn(off) -> None:
    """finetune.py:106-134 with the defaults --fixed_enc True --reinitialize_MoE True."""
    for x in off.trm_encoder.parameters():
        x.requires_grad = False
    off.position_embedding.weight.data.normal_(mean=0.0, std=0.02)
    for x in off.img2rec.proj:
        x.bias.data.fill_(0)
        x._init_weights(x.lin)
    for x in off.text2rec.proj:
        x.bias.data.fill_(0)
        x._init_weights(x.lin)
    for x in off.meta2rec.proj:
        x._init_weights(x.lin)
    for pool in (off.img_pooling, off.text_pooling, off.meta_pooling):
        pool.pooling.w_gate.fill_(0)
        pool.pooling.w_noise.fill_(0)


def run_steps(m: ANT, off, batches, stage: str, spec, freeze: bool) -> list[Row]:
    """``N_STEPS`` Adam steps of each (lr 1e-3; the code's StepLR stepped every ``PER_EPOCH`` steps, mmrec's
    ``train.lr_schedule=step`` factor with ``PER_EPOCH`` steps an epoch); one row per step's loss and the
    parameters after."""
    if freeze:  # finetune.py --fixed_enc True / model.adapt=relearn's frozen blocks
        for p in off.trm_encoder.parameters():
            p.requires_grad = False
        for p in m.encoder.blocks.parameters():
            p.requires_grad = False
    opt_o = torch.optim.Adam(off.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt_o, step_size=1, gamma=GAMMA[stage])
    opt_m = torch.optim.Adam(m.param_groups(LR), lr=LR)
    tc = TrainConfig(lr_schedule="step", lr_step_epochs=1, lr_gamma=GAMMA[stage])
    rows, lrs_o, lrs_m = [], [], []
    for i in range(N_STEPS):
        batch = batches[i]
        interns, label, lens = prefixes(batch)
        lrs_o.append(opt_o.param_groups[0]["lr"])  # the rate this step uses
        opt_o.zero_grad(set_to_none=True)
        lo = (official_pretrain_terms(off, pretrain_sample(off._feats, interns, label, lens))[2]
              if stage == "pretrain" else off.calculate_loss(interns, label, lens))
        lo.backward()
        opt_o.step()
        if (i + 1) % PER_EPOCH == 0:
            sched.step()  # Lightning: after each epoch
        for g in opt_m.param_groups:
            g["lr"] = LR * lr_factor(tc, i, PER_EPOCH)
        lrs_m.append(opt_m.param_groups[0]["lr"])
        opt_m.zero_grad(set_to_none=True)
        lm = m.loss(batch, None)
        lm.backward()
        opt_m.step()
        rows.append(diff(f"step {i + 1} loss", lm, lo))
    rows.append(diff(f"learning rate of each of the {N_STEPS} steps ({N_STEPS // PER_EPOCH} epochs; relative)",
                     torch.tensor(lrs_m) / LR, torch.tensor(lrs_o) / LR))
    return rows + grouped_rows(f"after {N_STEPS} steps:", m, off, spec, lambda p: p.detach(), key_bias_note=True)


# -- the comparisons --------------------------------------------------------------------------------
def components(mod, feats, batch) -> list[Row]:
    off = build_official(mod, feats, "target", noise=True)
    randomise(off, 3)
    m = build_mmrec(feats, "target", gate_noise=True, **CODE_TARGET)
    spec = weight_spec(m)
    copy_by_spec(m, off, spec)
    rows = []
    with torch.no_grad():
        for s, (m2r, pool) in MODALITIES.items():
            x = feats[s][1:]
            ad, o_m2r, o_pool = m.items.adaptors[s], getattr(off, m2r), getattr(off, pool).pooling
            kind = "affine" if s == "price" else "whitening"
            rows.append(diff(f"{s}: {kind} experts (each, stacked)", torch.stack([e(x) for e in ad.experts], -2),
                             o_m2r(x)))
            m.eval(), off.eval()
            rows.append(diff(f"{s}: gates at eval (softmax(x W_g))", ad.gates(x), o_pool.gating(x, False)))
            m.train(), off.train()
            torch.manual_seed(11)
            g_m = ad.gates(x)
            torch.manual_seed(11)
            g_o = o_pool.gating(x, True)
            rows.append(diff(f"{s}: Gaussian-routing gates in training (noise on, seeded)", g_m, g_o))
            torch.manual_seed(12)
            v_m = ad(x)
            torch.manual_seed(12)
            v_o = getattr(off, pool)(o_m2r(x), x)
            rows.append(diff(f"{s}: modality vector u_{s} in training (noise on, seeded)", v_m, v_o))
        m.eval(), off.eval()
        v_o = off.Modality2Item(off.indices.unsqueeze(1))[0]
        rows.append(diff("fused item vectors v(i), items 1..n (text + image + price + beta image*text)",
                         m.item_vectors(None)[1:], v_o[1:]))
        rows.append(diff("padding row: experts on zero features (the code's row 0; padding_class)",
                         m.padding_vector()[0], v_o[0]))
        interns, _, lens = prefixes(batch)
        h_o = off.forward(interns, lens)
        mask = batch["targets"] > 0
        h_m = m.encoder(m.encoder_input(batch["items"]), batch["lengths"])[mask]
        rows.append(diff(f"sequence encoder states at every target position ({len(h_o)} prefixes)", h_m, h_o))
        s_o = off.full_sort_predict(batch["items"], batch["lengths"])
        s_m = m.query(batch["items"], batch["lengths"]) @ m.item_embeddings()[1:].T
        rows.append(diff("item scores cos(s, v(i)), items 1..n", s_m, s_o[:, 1:]))
    return rows


def target_stage(mod, feats, batches, flags: dict, note: str = "", full: bool = True):
    off = build_official(mod, feats, "target")
    randomise(off, 4)
    m = build_mmrec(feats, "target", **flags)
    spec = weight_spec(m)
    copy_by_spec(m, off, spec)
    off.train(), m.train()
    batch = batches[-1]
    interns, label, lens = prefixes(batch)
    lo = off.calculate_loss(interns, label, lens)
    lo.backward()
    lm = m.loss(batch, None)
    lm.backward()
    rows = [diff("target loss (cross-entropy of cos / tau over all items)", lm, lo, note)]
    grads = grouped_rows("grad", m, off, spec, lambda p: p.grad, note)
    if not full:
        return rows, grads, []
    for p in list(off.parameters()) + list(m.parameters()):
        p.grad = None
    return rows, grads, run_steps(m, off, batches, "target", spec, freeze=True)


def pretrain_stage(mod, feats, batches, flags: dict, notes: dict | None = None, full: bool = True):
    notes = notes or {}
    off = build_official(mod, feats, "pretrain")
    off._feats = feats
    randomise(off, 5)
    m = build_mmrec(feats, "pretrain", it_weight=1e-3, **flags)
    spec = weight_spec(m)
    copy_by_spec(m, off, spec)
    off.train(), m.train()
    batch = batches[-1]
    interns, label, lens = prefixes(batch)
    l_si, l_it, lo = official_pretrain_terms(off, pretrain_sample(feats, interns, label, lens))
    lo.backward()
    lm = m.loss(batch, None)
    lm.backward()
    parts = m.loss_parts
    rows = [diff("L_SI, sequence-item in-batch InfoNCE", torch.tensor(parts["seq_item"]), l_si, notes.get("si", "")),
            diff("L_IT, image-text in-batch InfoNCE", torch.tensor(parts["image_text"]), l_it, notes.get("it", "")),
            diff("total L_SI + 1e-3 L_IT", lm, lo, notes.get("total", ""))]
    grads = grouped_rows("grad", m, off, spec, lambda p: p.grad, notes.get("total", ""))
    if not full:
        return rows, grads, []
    for p in list(off.parameters()) + list(m.parameters()):
        p.grad = None
    return rows, grads, run_steps(m, off, batches, "pretrain", spec, freeze=False)


def relearn_init(mod) -> list[Row]:
    """The re-learning initialisation at the paper's sizes: the code's finetune.py re-draw against
    mmrec's ``relearn_code`` and ``relearn`` policies, from one 'pre-trained' state."""
    hid, exps = 256, 8
    feats = make_features(n_items=6, dims={"text": 768, "image": 1024, "price": 64})
    off = build_official(mod, feats, "target", hidden=hid, exps=exps)
    randomise(off, 6)
    pre = build_mmrec(feats, "target", hidden=hid, exps=exps)
    spec = weight_spec(pre, exps)
    copy_by_spec(pre, off, spec)
    state = {k: v.detach().clone() for k, v in pre.state_dict().items()}
    P_pre = {k: p.detach().clone() for k, p in off.named_parameters()}
    torch.manual_seed(7)
    code_relearn(off)
    P = {k: p.detach() for k, p in off.named_parameters()}
    ours = {}
    for policy in ("relearn_code", "relearn"):
        m = build_mmrec(feats, "target", hidden=hid, exps=exps)
        apply_policy(m, state, POLICIES[policy])
        ours[policy] = m
    rows = []
    mc = dict(ours["relearn_code"].named_parameters())
    # kept from the pre-trained state, and set to zero: exact
    kept = [n for n in mc if n.startswith(("encoder.blocks.", "encoder.norm."))
            or (".price.experts." in n and n.endswith("lin.bias"))]
    rows.append(diff(f"kept: encoder blocks, input LayerNorm, price-expert biases ({len(kept)} tensors)",
                     torch.cat([mc[n].detach().flatten() for n in kept]),
                     torch.cat([spec[n](P).flatten() for n in kept])))
    rows.append(diff("kept values are the pre-trained ones (code side)",
                     torch.cat([spec[n](P).flatten() for n in kept]), torch.cat([spec[n](P_pre).flatten() for n in kept])))
    zero = [n for n in mc if n.endswith(("w_gate", "w_noise")) or (".experts." in n and n.endswith(".bias")
                                                                   and ".price." not in n)]
    rows.append(diff(f"zeroed: gates W_g, W_n and whitening centres b ({len(zero)} tensors)",
                     torch.cat([mc[n].detach().flatten() for n in zero]), torch.cat([spec[n](P).flatten() for n in zero])))
    frozen_m = {n for n, p in ours["relearn_code"].named_parameters() if not p.requires_grad}
    frozen_o = {n for n, p in off.named_parameters() if not p.requires_grad and p.is_floating_point()
                and not n.startswith("EmbeddingTable.")}  # the feature tables are frozen buffers-as-parameters
    same = (frozen_m == {n for n in mc if n.startswith("encoder.blocks.")}
            and frozen_o == {n for n, _ in off.named_parameters() if n.startswith("trm_encoder.")})
    rows.append(Row(f"frozen: the encoder blocks ({len(frozen_m)} mmrec tensors, {len(frozen_o)} code tensors: "
                    "qkv = query + key + value; 1 = the sets differ)", float(not same), float(not same)))
    # re-drawn: statistics (the draws differ: another order of the same distributions)
    stat_rows = []
    groups = {"positions N(0, 0.02)": ["encoder.position.weight"]}
    for s in MODALITIES:
        groups[f"{s} expert W (xavier-normal, sd {math.sqrt(2 / (feats[s].shape[1] + hid)):.4f})"] = [
            n for n in mc if n.startswith(f"items.adaptors.{s}.experts.") and n.endswith("lin.weight")]
    mp = dict(ours["relearn"].named_parameters())
    for label, names in groups.items():
        o = torch.cat([spec[n](P).flatten() for n in names])
        c = torch.cat([mc[n].detach().flatten() for n in names])
        r = torch.cat([mp[n].detach().flatten() for n in names])
        stat_rows.append((label, o, c, r))
    return rows, stat_rows


def print_stats(title: str, stat_rows, out=None) -> bool:
    out = out or sys.stdout
    print(f"\n### {title}\n", file=out)
    print("| tensors | code mean | code sd | relearn_code sd | sd ratio - 1 | relearn sd | verdict |", file=out)
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |", file=out)
    ok = True
    for label, o, c, r in stat_rows:
        rel = abs(c.std().item() / o.std().item() - 1)
        good = rel <= STAT_TOL and abs(c.mean().item() - o.mean().item()) <= 0.05 * o.std().item()
        ok &= good
        paper_note = ("" if label.startswith("positions") else
                      f"; relearn (paper default): N(0, 0.02), {o.std().item() / r.std().item():.1f}x smaller: named")
        verdict = ("ok" if good else "DIFFERS") + paper_note
        print(f"| {label} | {o.mean().item():+.5f} | {o.std().item():.5f} | {c.std().item():.5f} | {rel:.4f} | "
              f"{r.std().item():.5f} | {verdict} |", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of ninglab/ANT")
    ap.add_argument("--recbole", default=None, help="an unpacked recbole-1.1.1 wheel (recbole/model/layers.py)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args.official, args.recbole)
    finally:
        torch.set_num_threads(threads)


def _run(official: str, recbole: str | None) -> int:
    with shims(recbole) as mha_source, official_import_path(official):
        import models.ANT as mod

        feats = make_features()
        batches = make_batches(N_STEPS + 1)
        n_prefix = int(batches[-1]["lengths"].sum())
        print(f"ANT side by side: mmrec against ninglab/ANT@{COMMIT[:7]} (float32, CPU; {N_ITEMS} items, features "
              f"text {TEXT} / image {IMG} / price {PRICE}, hidden {HID}, {EXPS} experts, tau {TAU}, beta {BETA}; "
              f"batch {B} windows x {W} = {n_prefix} (prefix, next item) samples of the code; Adam lr {LR}). "
              f"RecBole MultiHeadAttention: {mha_source}.")
        ok = True
        ok &= print_table("1. components (weights randomised, copied across)", components(mod, feats, batches[-1]))

        rows, grads, steps = target_stage(mod, feats, batches, CODE_TARGET)
        ok &= print_table("2. target loss with the code's flags (model.padding_class=true loss_eps=1e-8)", rows)
        ok &= print_table("2b. every gradient of the target loss", grads)
        ok &= print_table(f"2c. {N_STEPS} Adam steps, encoder frozen (finetune.py --fixed_enc), StepLR 0.99 per "
                          f"epoch of {PER_EPOCH} steps = train.lr_schedule=step, and the parameters after", steps)

        flags = " ".join(f"model.{k}={v}" for k, v in CODE_PRETRAIN.items())
        rows, grads, steps = pretrain_stage(mod, feats, batches, CODE_PRETRAIN)
        ok &= print_table(f"3. pre-training losses with the code's flags ({flags}) over the code's prefix samples", rows)
        ok &= print_table("3b. every gradient of the pre-training loss", grads)
        ok &= print_table(f"3c. {N_STEPS} Adam steps, StepLR 0.995 per epoch of {PER_EPOCH} steps, and the "
                          "parameters after", steps)

        d_rows = []
        note = "mmrec's default padding_class=false: the padding row is not a class (the code's row 0 of zero features is)"
        rows, grads, _ = target_stage(mod, feats, batches, dict(CODE_TARGET, padding_class=False), note, full=False)
        d_rows += rows + [worst(grads, "every gradient", note)]
        note = ("mmrec's default loss_eps=0: exact log-softmax (the code's +1e-8 caps a sample's loss at 18.4 and "
                "fades its gradient when its positive's probability is below 1e-8)")
        rows, grads, _ = target_stage(mod, feats, batches, dict(CODE_TARGET, loss_eps=0.0), note, full=False)
        d_rows += rows + [worst(grads, "every gradient", note)]
        rows, grads, _ = pretrain_stage(mod, feats, batches, dict(CODE_PRETRAIN, loss_eps=0.0),
                                        {"si": note, "it": note, "total": note}, full=False)
        d_rows += rows + [worst(grads, "every gradient", note)]
        n_neg = ("mmrec's default pretrain_negatives=other_users: the same user's other positions are not negatives "
                 f"(users {USERS}: windows 0 and 3 are one user)")
        n_it = "mmrec's default it_pairs=both: a repeated target's other texts are not negatives"
        for f, notes in ((dict(CODE_PRETRAIN, pretrain_negatives="other_users"), {"si": n_neg, "total": n_neg}),
                         (dict(CODE_PRETRAIN, it_pairs="both"), {"it": n_it, "total": n_it})):
            rows, grads, _ = pretrain_stage(mod, feats, batches, f, notes, full=False)
            d_rows += [r for r in rows if r.note or r.component.startswith(("L_SI", "L_IT"))] + \
                [worst(grads, "every gradient", notes["total"])]
        ok &= print_table("4. mmrec's paper defaults, one at a time (the other settings at the code's)", d_rows)

        rows, stats = relearn_init(mod)
        ok &= print_table("5. re-learning initialisation at the paper's sizes (768 / 1024 / 64 -> 256, 8 experts): "
                          "finetune.py:106-134 against model.adapt=relearn_code", rows)
        ok &= print_stats(f"5b. re-drawn tensors: the code's draw against relearn_code's (tolerance {STAT_TOL:.0%} "
                          "on the sd), and relearn's", stats)
    print(f"\nverdict: {'every row within tolerance or explained' if ok else 'UNEXPLAINED DIFFERENCES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
