"""UniSRec side by side: mmrec's ``unisrec`` against the authors' released code on RecBole's SASRec.

Written against RUCAIBox/UniSRec@05aa5cba2809112c32808f70d16abc61c05c6538 and RecBole 1.2.1::

    bash bench/envs/recbole-source.sh 1.2.1 ../recbole-1.2.1       # RecBole 1.2.1's files, from its wheel
    python bench/side_by_side_unisrec.py --official /path/to/UniSRec --recbole ../recbole-1.2.1/recbole

The official model is ``unisrec.py``'s ``UniSRec`` (a subclass of RecBole's ``SASRec``) and its
pre-training augmentation is ``data/transform.py``'s ``PLMEmb``, both imported from the checkout;
RecBole's own ``model/layers.py``, ``model/loss.py``, ``model/abstract_recommender.py`` and
``model/sequential_recommender/sasrec.py`` are executed from an installed RecBole package folder
(``--recbole``; default: the environment variable ``MMREC_RECBOLE``, else ``import recbole`` where it
imports). RecBole is never a dependency of mmrec: its files come apart, from its wheel on the package
registry (``bash bench/envs/recbole-source.sh 1.2.1 DIR``: DIR/recbole, nothing installed), or from
the RecBole environment of ``bench/envs/recbole.sh`` (``ENV/lib/python3.*/site-packages/recbole``).

Shims (here, never in mmrec), so the script runs in mmrec's own environment, which lacks RecBole's
dependencies (pandas, colorlog, tensorboard, texttable):

- the packages ``recbole``, ``recbole.model``, ``recbole.model.sequential_recommender`` and
  ``recbole.data`` are empty module objects (their ``__init__`` files import every model and the data
  pipeline); the four RecBole files above are run from the package folder as they are;
- ``recbole.utils``: a stub with RecBole's ``enum_type.py`` (run from the folder) and a ``set_color``
  that returns its text (the real one lives in ``logger.py``, which needs colorlog);
- ``recbole.data.interaction.Interaction``: a dict with ``update`` (``PLMEmb`` only reads keys and
  adds some);
- RecBole's ``Config`` and ``Dataset``: a dict of the keys the model reads (``props/UniSRec.yaml``,
  ``props/pretrain.yaml`` and ``props/finetune.yaml`` values, except the sizes) and an object with
  ``num()``, ``plm_embedding`` and ``plm_embedding_aug`` (``PretrainUniSRecDataset``'s frozen tables).

Both models are built from one seed at a small size (30 items, PLM vectors of 16, hidden 12, 2 layers,
2 heads, inner 16, 4 experts, sequences of 8), the official weights are perturbed (zero-initialised
gates and whitening centres would hide a wrong gate or centre) and mmrec's are set from them by an
explicit name map (``official_view``; RecBole's separate query/key/value become mmrec's fused
``qkv``). Compared:

- the MoE adaptor on the whole feature table: evaluation, and training with its gate noise and expert
  dropout 0.2 under one seed (both draw the gate noise first, then each expert's dropout);
- the encoder states at every real position and at the last one, the scores over all items;
- pre-training: the augmentation (item drop on one batch, word drop on another: the code's
  ``PLMEmb`` under a seed against mmrec's ``augmentation_draw`` under the same seed, the per-position
  draws are the same ``torch.bernoulli`` of one shape), the sequence-item loss, the sequence-sequence
  loss, the total with lambda = 1e-3 and every gradient;
- fine-tuning, inductive and transductive: the loss and every gradient;
- 20 steps of the code's optimiser (RecBole's default: Adam, lr 1e-3, no weight decay) of
  pre-training (a new batch each step, item or word drop drawn per step, the same draws on both
  sides), then of each fine-tuning mode with the encoder frozen (the code's ``fix_enc`` against mmrec's
  transfer policy ``finetune``), and every parameter after them.

Run twice: mmrec's paper defaults (``same_target_logit=-inf``, ``item_drop_rule=keep``,
``pad_candidate=false``: the rows they move are marked as explained), and mmrec with the code's flags
(``same_target_logit=0``, ``item_drop_rule=scatter``, ``pad_candidate=true``), which must agree within
1e-5. Hidden and attention dropout are 0 on both sides (RecBole drops attention probabilities after its
own softmax, mmrec inside ``scaled_dot_product_attention``: no seed matches them draw for draw), and the
gate noise is off outside the adaptor rows (the code adapts each sequence, target and table in its own
call, in another order than mmrec). mmrec's learned missing-text vector has no official counterpart
(every item has a text here; its gradient is checked to be zero).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from side_by_side import TOL, Row, diff, official_import_path
from side_by_side import print_table as _print_table

from mmrec.config import from_dict
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.methods.unisrec import UniSRec, UniSRecConfig, item_drop
from mmrec.trainers.transfer import FINETUNE, apply_policy

COMMIT = "05aa5cba2809112c32808f70d16abc61c05c6538"
N_ITEMS, PLM, HIDDEN, INNER, LAYERS, HEADS, EXPERTS, L, B = 30, 16, 12, 16, 2, 2, 4, 8, 10
TEMPERATURE, LAMBDA, DROP_RATIO, ITEM_DROP_COEF = 0.07, 1e-3, 0.2, 0.9
CODE_FLAGS = {"same_target_logit": "0", "item_drop_rule": "scatter", "pad_candidate": True}
NOTES = {"pretrain": "paper default: same_target_logit=-inf, item_drop_rule=keep",
         "finetune": "paper default: pad_candidate=false"}


# ------------------------------------------------------------------------------------ RecBole shims
def _default_recbole() -> Path:
    if os.environ.get("MMREC_RECBOLE"):
        return Path(os.environ["MMREC_RECBOLE"])
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # bash bench/envs/recbole-source.sh 1.2.1 ../recbole-1.2.1 puts them beside the repository
    beside = Path(__file__).resolve().parents[2] / "recbole-1.2.1" / "recbole"
    return beside if beside.is_dir() else Path("recbole")


class Interaction(dict):
    """RecBole's ``Interaction`` as ``PLMEmb`` uses it: keys in, keys out, ``update``."""


def _run_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def recbole_shims(root: Path) -> Iterator[None]:
    """RecBole's model files from ``root`` under stub packages (module docstring); sys.modules as before afterwards."""
    if not (root / "model" / "sequential_recommender" / "sasrec.py").is_file():
        raise SystemExit(f"--recbole {root}: not a RecBole package folder (pip install --no-deps recbole==1.2.1 "
                         "into a separate environment and pass its site-packages/recbole)")
    saved = {k: v for k, v in sys.modules.items() if k == "recbole" or k.startswith("recbole.")}
    for k in saved:
        del sys.modules[k]
    try:
        for name in ("recbole", "recbole.model", "recbole.model.sequential_recommender", "recbole.data"):
            pkg = types.ModuleType(name)
            pkg.__path__ = []
            sys.modules[name] = pkg
        enums = _run_file("recbole.utils.enum_type", root / "utils" / "enum_type.py")
        utils = types.ModuleType("recbole.utils")
        utils.__dict__.update({k: v for k, v in vars(enums).items() if not k.startswith("__")})
        utils.set_color = lambda log, color, highlight=True: log
        sys.modules["recbole.utils"] = utils
        inter = types.ModuleType("recbole.data.interaction")
        inter.Interaction = Interaction
        sys.modules["recbole.data.interaction"] = inter
        for name, rel in (("recbole.model.layers", "model/layers.py"), ("recbole.model.loss", "model/loss.py"),
                          ("recbole.model.abstract_recommender", "model/abstract_recommender.py"),
                          ("recbole.model.sequential_recommender.sasrec", "model/sequential_recommender/sasrec.py")):
            _run_file(name, root / rel)
        yield
    finally:
        for k in [k for k in sys.modules if k == "recbole" or k.startswith("recbole.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def load_official(checkout: str, recbole: Path) -> tuple[type, type]:
    """The code's ``UniSRec`` class and ``PLMEmb`` transform."""
    with recbole_shims(recbole), official_import_path(checkout):
        import unisrec as off  # the checkout's module
        from data import transform

        return off.UniSRec, transform.PLMEmb


def official_config(stage: str, coefficient: float = ITEM_DROP_COEF) -> dict[str, Any]:
    return {
        # RecBole's field names and the model's sizes (props/UniSRec.yaml values, smaller)
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": L, "device": "cpu",
        "n_layers": LAYERS, "n_heads": HEADS, "hidden_size": HIDDEN, "inner_size": INNER,
        "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "initializer_range": 0.02, "loss_type": "CE",
        "train_stage": stage, "temperature": TEMPERATURE, "lambda": LAMBDA, "n_exps": EXPERTS,
        "adaptor_layers": [PLM, HIDDEN], "adaptor_dropout_prob": 0.0,
        "item_drop_ratio": DROP_RATIO, "item_drop_coefficient": coefficient,
    }


class OfficialData:
    """What the code reads from RecBole's dataset: ``num``, the frozen PLM tables."""

    def __init__(self, table: torch.Tensor, table_aug: torch.Tensor):
        self.plm_embedding = torch.nn.Embedding.from_pretrained(table, freeze=True, padding_idx=0)
        self.plm_embedding_aug = torch.nn.Embedding.from_pretrained(table_aug, freeze=True, padding_idx=0)

    def num(self, field: str) -> int:
        return N_ITEMS + 1


# ------------------------------------------------------------------------------------ name map
def official_view(off: torch.nn.Module, mine: torch.nn.Module, what: str = "data") -> dict[str, torch.Tensor | None]:
    """Each mmrec parameter's official counterpart in mmrec's layout: ``what`` = ``data`` (its value),
    ``grad`` (its gradient) or ``frozen`` (a bool per official tensor behind it: not trained)."""
    p = dict(off.named_parameters())

    def get(name):
        t = p[name]
        if what == "frozen":
            return torch.tensor([not t.requires_grad])
        return t.detach() if what == "data" else t.grad

    out: dict[str, torch.Tensor | None] = {}
    for k in range(EXPERTS):
        out[f"text.adaptors.text.experts.{k}.bias"] = get(f"moe_adaptor.experts.{k}.bias")
        out[f"text.adaptors.text.experts.{k}.lin.weight"] = get(f"moe_adaptor.experts.{k}.lin.weight")
    out["text.adaptors.text.w_gate"] = get("moe_adaptor.w_gate")
    out["text.adaptors.text.w_noise"] = get("moe_adaptor.w_noise")
    out["encoder.position.weight"] = get("position_embedding.weight")
    out["encoder.norm.weight"], out["encoder.norm.bias"] = get("LayerNorm.weight"), get("LayerNorm.bias")
    for i in range(LAYERS):
        a, f, m = f"trm_encoder.layer.{i}.multi_head_attention.", f"trm_encoder.layer.{i}.feed_forward.", f"encoder.blocks.{i}."
        for w in ("weight", "bias"):
            parts = [get(f"{a}{q}.{w}") for q in ("query", "key", "value")]
            out[f"{m}attn.qkv.{w}"] = None if any(t is None for t in parts) else torch.cat(parts)
            out[f"{m}attn.out.{w}"] = get(f"{a}dense.{w}")
            out[f"{m}attn.norm.{w}"] = get(f"{a}LayerNorm.{w}")
            out[f"{m}ffn.fc1.{w}"] = get(f"{f}dense_1.{w}")
            out[f"{m}ffn.fc2.{w}"] = get(f"{f}dense_2.{w}")
            out[f"{m}ffn.norm.{w}"] = get(f"{f}LayerNorm.{w}")
    if getattr(off, "item_embedding", None) is not None:
        out["item.weight"] = get("item_embedding.weight")
    unmapped = set(dict(mine.named_parameters())) - set(out) - {"text.missing.text"}
    if unmapped:
        raise KeyError(f"mmrec parameters with no official counterpart: {sorted(unmapped)}")
    return out


@torch.no_grad()
def copy_into(mine: torch.nn.Module, off: torch.nn.Module) -> None:
    params = dict(mine.named_parameters())
    for name, t in official_view(off, mine).items():
        params[name].copy_(t)


def grad_rows(mine: torch.nn.Module, off: torch.nn.Module, prefix: str = "grad") -> list[Row]:
    rows = []
    theirs = official_view(off, mine, "grad")
    for name, p in mine.named_parameters():
        if name == "text.missing.text":
            rows.append(diff(f"{prefix} {name} (mmrec only: zero)", p.grad if p.grad is not None
                             else torch.zeros_like(p), torch.zeros_like(p)))
            continue
        g, o = p.grad, theirs[name]
        if g is None and o is None:
            continue
        rows.append(diff(f"{prefix} {name}", torch.zeros_like(p) if g is None else g,
                         torch.zeros_like(p) if o is None else o))
    return rows


def param_rows(mine: torch.nn.Module, off: torch.nn.Module, prefix: str) -> list[Row]:
    theirs = official_view(off, mine)
    return [diff(f"{prefix} {n}", p, theirs[n]) for n, p in mine.named_parameters() if n in theirs]


def print_table(title: str, rows: list[Row], summary: bool = False) -> bool:
    """The harness's table; with ``summary`` the gradient rows, the step losses and the parameter rows
    after the steps are folded into one row each: the row farthest from tolerance (a failing one
    first, else the largest of min(abs, rel))."""
    if summary:
        folded: list[Row] = []
        groups: dict[str, list[Row]] = {}
        for r in rows:
            key = next((g for g in ("grad ", "after 20 steps ", "step ") if g in r.component), None)
            if key is None:
                folded.append(r)
            else:
                groups.setdefault(key, []).append(r)
        names = {"grad ": "every gradient", "after 20 steps ": "every parameter after 20 steps",
                 "step ": "every step's loss"}
        for key, rs in groups.items():
            worst = max(rs, key=lambda r: (r.verdict() != "ok", min(r.max_abs, r.max_rel)))
            folded.append(Row(f"{names[key]}: {len(rs)} rows, the farthest: {worst.component}",
                              worst.max_abs, worst.max_rel, worst.note))
        rows = folded
    return _print_table(title, rows)


# ------------------------------------------------------------------------------------ models and data
def make_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(N_ITEMS + 1, PLM, generator=g)
    table_aug = table + 0.5 * torch.randn(N_ITEMS + 1, PLM, generator=g)  # the "word-dropped" vectors
    table[0] = table_aug[0] = 0.0
    return table, table_aug


def build_official(cls: type, stage: str, data: OfficialData, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = cls(official_config(stage), data)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("moe_adaptor."):  # zero gates and centres at initialisation
                p.add_(torch.randn(p.shape, generator=g) * (0.3 if "w_" in name else 0.2))
    m.moe_adaptor.noisy_gating = False
    return m


def build_mmrec(stage: str, table: torch.Tensor, table_aug: torch.Tensor, flags: dict[str, Any]) -> UniSRec:
    cfg = {"hidden": HIDDEN, "inner": INNER, "layers": LAYERS, "heads": HEADS, "dropout": 0.0, "attn_dropout": 0.0,
           "adaptor_dropout": 0.0, "n_experts": EXPERTS, "temperature": TEMPERATURE, "seq_seq_weight": LAMBDA,
           "item_drop_prob": ITEM_DROP_COEF, "drop_ratio": DROP_RATIO,
           "objective": "pretrain" if stage == "pretrain" else "finetune",
           "mode": "transductive" if stage == "transductive_ft" else "inductive", **flags}
    present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    present[0] = False
    feats = {"text": FeatureTable("text", table.clone(), present, {})}
    wd = FeatureTable("text", table_aug.clone(), present.clone(), {}) if stage == "pretrain" else None
    m = UniSRec(from_dict(UniSRecConfig, cfg), N_ITEMS, L, features=feats, word_drop=wd)
    m.text.adaptors["text"].noise = False
    return m


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    """``B`` right-padded sequences of 1..L items, each with a target; some targets repeat (the
    same-target mask has something to mask)."""
    g = torch.Generator().manual_seed(1000 + seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    items = torch.randint(1, N_ITEMS + 1, (B, L), generator=g) * (torch.arange(L)[None] < lengths[:, None])
    tgt = torch.randint(1, N_ITEMS + 1, (B,), generator=g)
    tgt[1] = tgt[0]
    tgt[B - 1] = tgt[2]
    return {"items": items, "lengths": lengths, "tgt": tgt}


def mmrec_batch(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    targets = torch.zeros_like(b["items"])
    targets[torch.arange(B), b["lengths"] - 1] = b["tgt"]  # one target a sequence, as RecBole's samples
    return {"items": b["items"], "lengths": b["lengths"], "targets": targets}


def official_interaction(b: dict[str, torch.Tensor]) -> Interaction:
    return Interaction({"item_id_list": b["items"], "item_length": b["lengths"], "item_id": b["tgt"]})


def seeded_draw(m: UniSRec, seed: int, word: bool) -> None:
    """mmrec's own ``augmentation_draw`` under ``seed`` (the code seeds its ``PLMEmb`` call the same),
    with the batch's kind (the code's ``random.random()``) fixed."""
    own = type(m).augmentation_draw

    def draw(items):
        torch.manual_seed(seed)
        _, keep = own(m, items)
        return word, keep

    m.augmentation_draw = draw


def official_pretrain_parts(off, transform, data, b, seed) -> tuple[Interaction, dict[str, torch.Tensor]]:
    inter = official_interaction(b)
    torch.manual_seed(seed)
    inter = transform(data, inter)
    item_emb = off.moe_adaptor(inter["item_emb_list"])
    seq = F.normalize(off.forward(inter["item_id_list"], item_emb, inter["item_length"]), dim=1)
    pos = inter["item_id"]
    same = torch.logical_xor(pos[:, None] == pos[None, :], torch.eye(len(pos), dtype=torch.bool))
    l_si = off.seq_item_contrastive_task(seq, same, inter)
    l_ss = off.seq_seq_contrastive_task(seq, same, inter)
    return inter, {"seq_item": l_si, "seq_seq": l_ss, "total": l_si + off.lam * l_ss}


# ------------------------------------------------------------------------------------ comparisons
def compare(checkout: str, recbole: Path, flags: dict[str, Any], label: str, summary: bool = False) -> bool:
    cls, PLMEmb = load_official(checkout, recbole)
    table, table_aug = make_features()
    data = OfficialData(table, table_aug)
    transforms = {False: PLMEmb(official_config("pretrain", 1.0)), True: PLMEmb(official_config("pretrain", 0.0))}
    ok = True

    def show(title: str, rows: list[Row], part: str | None = None) -> None:
        """Rows beyond tolerance under mmrec's paper defaults are explained by that part's flags."""
        nonlocal ok
        if part and not flags:
            rows = [r if r.verdict() == "ok" else Row(r.component, r.max_abs, r.max_rel, NOTES[part]) for r in rows]
        ok &= print_table(f"{label}: {title}", rows, summary=summary)

    # --- adaptor and encoder (pre-training stage: no ids) ---
    off = build_official(cls, "pretrain", data)
    mine = build_mmrec("pretrain", table, table_aug, flags)
    copy_into(mine, off)
    off.train(), mine.train()
    rows = []
    with torch.no_grad():
        off.eval(), mine.eval()
        rows.append(diff("adaptor, eval: every item", mine.text.adaptors["text"](table), off.moe_adaptor(table)))
        off.train(), mine.train()
        ma, oa = mine.text.adaptors["text"], off.moe_adaptor
        ma.noise = oa.noisy_gating = True
        for e_m, e_o in zip(ma.experts, oa.experts):
            e_m.dropout.p = e_o.dropout.p = 0.2
        torch.manual_seed(7)
        a = ma(table)
        torch.manual_seed(7)
        o = oa(table)
        rows.append(diff("adaptor, train: gate noise + expert dropout 0.2, one seed", a, o))
        ma.noise = oa.noisy_gating = False
        for e_m, e_o in zip(ma.experts, oa.experts):
            e_m.dropout.p = e_o.dropout.p = 0.0
        b = make_batch(0)
        states: dict[str, torch.Tensor] = {}
        hook = off.trm_encoder.register_forward_hook(lambda mod, inp, out: states.__setitem__("all", out[-1]))
        last_o = off.forward(b["items"], off.moe_adaptor(data.plm_embedding(b["items"])), b["lengths"])
        hook.remove()
        h = mine.encoder(mine.encoder_input(b["items"]), b["lengths"])
        valid = torch.arange(L)[None] < b["lengths"][:, None]
        rows.append(diff("encoder states, every real position", h[valid], states["all"][valid]))
        rows.append(diff("encoder state, last position (normalised: the query)", mine.query(b["items"], b["lengths"]),
                         F.normalize(last_o, dim=-1)))
    show("adaptor and encoder", rows)

    # --- pre-training: augmentation, losses, gradients (one item-drop and one word-drop batch) ---
    for word in (False, True):
        kind = "word drop" if word else "item drop"
        off = build_official(cls, "pretrain", data)
        mine = build_mmrec("pretrain", table, table_aug, flags)
        copy_into(mine, off)
        off.train(), mine.train()
        b, seed = make_batch(1 + word), 11 + word
        inter, parts = official_pretrain_parts(off, transforms[word], data, b, seed)
        seeded_draw(mine, seed, word)
        rows = []
        with torch.no_grad():
            _, keep = mine.augmentation_draw(b["items"])
            if word:
                x = torch.where(keep.unsqueeze(-1), table[b["items"]], table_aug[b["items"]])
                rows.append(diff("word drop: augmented PLM vectors", x, inter["item_emb_list_aug"]))
                rows.append(diff("word drop: ids and lengths unchanged", inter["item_length_aug"], b["lengths"]))
            else:
                ids, n = item_drop(b["items"], b["lengths"], keep, mine.cfg.item_drop_rule)
                rows.append(diff("item drop: augmented ids", ids, inter["item_id_list_aug"]))
                rows.append(diff("item drop: augmented lengths", n, inter["item_length_aug"]))
        loss = mine.loss(mmrec_batch(b), None)
        rows.append(diff(f"{kind}: loss seq-item", torch.tensor(mine.loss_parts["seq_item"]), parts["seq_item"]))
        rows.append(diff(f"{kind}: loss seq-seq", torch.tensor(mine.loss_parts["seq_seq"]), parts["seq_seq"]))
        rows.append(diff(f"{kind}: loss total (seq-item + 1e-3 seq-seq)", loss, parts["total"]))
        loss.backward()
        parts["total"].backward()
        rows += grad_rows(mine, off, f"{kind} grad")
        show(f"pre-training, {kind} batch", rows, "pretrain")

    # --- fine-tuning: scores, loss, gradients ---
    for stage in ("inductive_ft", "transductive_ft"):
        off = build_official(cls, stage, data)
        mine = build_mmrec(stage, table, table_aug, flags)
        copy_into(mine, off)
        off.train(), mine.train()
        b = make_batch(5)
        rows = []
        with torch.no_grad():
            off.eval(), mine.eval()
            s_o = off.full_sort_predict(official_interaction(b))
            s_m = mine.score(mine.query(b["items"], b["lengths"]), torch.arange(1, N_ITEMS + 1))
            rows.append(diff("scores over items 1..n (eval)", s_m, s_o[:, 1:]))
            off.train(), mine.train()
        loss = mine.loss(mmrec_batch(b), None)
        loss_o = off.calculate_loss(official_interaction(b))
        rows.append(diff("loss: softmax over all items of cos / 0.07", loss, loss_o))
        loss.backward()
        loss_o.backward()
        rows += grad_rows(mine, off)
        show(f"fine-tuning, {stage}", rows, "finetune")

    # --- 20 steps of each ---
    ok &= steps_tables(cls, data, transforms, table, table_aug, flags, label, show)
    return ok


def run_steps(mine, off, mine_loss: Callable[[int], torch.Tensor], off_loss: Callable[[int], torch.Tensor],
              n: int = 20) -> list[Row]:
    """RecBole's trainer: Adam(lr 1e-3) over all parameters (frozen ones have no gradient)."""
    opt_m = torch.optim.Adam([p for p in mine.parameters() if p.requires_grad], lr=1e-3)
    opt_o = torch.optim.Adam(off.parameters(), lr=1e-3)
    rows = []
    for i in range(n):
        vals = []
        for model, opt, fn in ((mine, opt_m, mine_loss), (off, opt_o, off_loss)):
            opt.zero_grad(set_to_none=True)
            loss = fn(i)
            loss.backward()
            opt.step()
            vals.append(loss.detach())
        rows.append(diff(f"step {i + 1} loss", *vals))
    return rows


def steps_tables(cls, data, transforms, table, table_aug, flags, label, show) -> bool:
    import random

    off = build_official(cls, "pretrain", data)
    mine = build_mmrec("pretrain", table, table_aug, flags)
    copy_into(mine, off)
    off.train(), mine.train()
    rng = random.Random(0)
    words = [rng.random() >= ITEM_DROP_COEF for _ in range(20)]  # the code's per-batch choice
    words[3] = True  # at least one word-drop step

    def mine_loss(i):
        seeded_draw(mine, 100 + i, words[i])
        return mine.loss(mmrec_batch(make_batch(20 + i)), None)

    def off_loss(i):
        return official_pretrain_parts(off, transforms[words[i]], data, make_batch(20 + i), 100 + i)[1]["total"]

    rows = run_steps(mine, off, mine_loss, off_loss) + param_rows(mine, off, "after 20 steps")
    show(f"pre-training, 20 steps ({sum(words)} word-drop batches)", rows, "pretrain")
    for stage in ("inductive_ft", "transductive_ft"):
        off = build_official(cls, stage, data)
        mine = build_mmrec(stage, table, table_aug, flags)
        copy_into(mine, off)
        for p in list(off.position_embedding.parameters()) + list(off.trm_encoder.parameters()):
            p.requires_grad = False  # finetune.py with fix_enc
        report = apply_policy(mine, mine.state_dict(), FINETUNE)
        frozen_o = {n for n, t in official_view(off, mine, "frozen").items() if bool(t.all())}
        mismatch = sorted(frozen_o ^ set(report["frozen"]))
        off.train(), mine.train()
        rows = [Row(f"frozen: mmrec's policy finetune ({len(report['frozen'])} tensors) = the code's fix_enc "
                    f"({len(frozen_o)}), mismatches {mismatch}", float(len(mismatch)), float(len(mismatch)))]
        rows += run_steps(mine, off, lambda i, m=mine: m.loss(mmrec_batch(make_batch(40 + i)), None),
                          lambda i, o=off: o.calculate_loss(official_interaction(make_batch(40 + i))))
        rows += param_rows(mine, off, "after 20 steps")
        show(f"fine-tuning {stage}, encoder frozen, 20 steps", rows, "finetune")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of RUCAIBox/UniSRec")
    ap.add_argument("--recbole", default=None, help="an installed RecBole 1.2.1 package folder (.../site-packages/recbole)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summary", action="store_true", help="fold the gradient, step and parameter rows of each table")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        recbole = Path(args.recbole) if args.recbole else _default_recbole()
        print(f"UniSRec side by side: official RUCAIBox/UniSRec@{COMMIT[:7]} on RecBole ({recbole}), "
              f"tolerance {TOL:g}, float32, CPU")
        ok_paper = compare(args.official, recbole, {}, "mmrec paper defaults", args.summary)
        ok_code = compare(args.official, recbole, dict(CODE_FLAGS), "mmrec code flags", args.summary)
    finally:
        torch.set_num_threads(threads)
    print(f"\nverdict: paper defaults {'explained' if ok_paper else 'UNEXPLAINED'}, "
          f"code flags {'within tolerance' if ok_code else 'DIFFER'}")
    return 0 if ok_paper and ok_code else 1


if __name__ == "__main__":
    sys.exit(main())
