"""ODMT side by side: mmrec's ``odmt`` against the authors' released code.

    python bench/side_by_side_odmt.py --official /path/to/ODMT      # a checkout of xyliugo/ODMT

Written against xyliugo/ODMT@3d2ba25af7291e32d96159cba5e0054f4f5e5839 (``code/model/model.py``,
``code/model/modules.py``, ``code/model/user_encoders.py``). The authors' ``Model`` is imported from
``<checkout>/code`` and run from the frozen feature tables onward, as mmrec uses them (the code runs
BERT and CLIP once at start-up, ``code/model/feature_extractors.py``; here the tables are random
with the code's shapes: T text tokens with padding, 50 image tokens, one dimension for text, image
and ID as the run scripts' 768).

Shims (all here, none in mmrec): ``local_rank="cpu"`` (the code's device argument: ``.to(local_rank)``),
with ``Tensor.to`` returning a contiguous tensor while the official model runs (on the GPU the move
copies; on the CPU it does not, and ``model.py:156``'s ``.view(-1)`` of a sliced tensor fails);
an ``argparse.Namespace`` in place of ``utils/parameters.py``'s command line; float32 without the
code's CUDA autocast/GradScaler (``main.py``); ``eval_model``'s scoring (``utils/metrics.py``:193-300,
which needs lmdb/torchvision loaders) is re-run here with the model's own modules: ``id_proj``,
``IMT``, the ``*_dnns`` heads, the user encoders' last position and ``(s_id + s_t + s_v) / 3``.

Tables:
1. mmrec with the code's flags (``model.in_batch_mask=window detach_teacher=false
   first_item_candidates=true attn_bias=false id_dim=D candidates=positions``) against the code:
   IMT token states under the asymmetric mask, item vectors, sequence states, the in-batch logits,
   each loss term at a ramp weight, the total, every gradient, the evaluation scores, 20 AdamW steps
   (lr 1e-4, weight decay 0.1, clip 5, the code's) and every parameter after them. All within 1e-5.
2. the same with mmrec's one-column-per-distinct-item layout (``candidates=items``): same losses,
   gradients and steps.
3. each of mmrec's harmonised defaults alone (the other settings at the code's), with the
   difference it names, and 4. all of mmrec's defaults at once.
Exit code 0 when every row is within 1e-5 or carries the documented difference that explains it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import (
    TOL,
    Row,
    copy_by_spec,
    diff,
    official_import_path,
    print_table,
    steps,
)

from mmrec.config import from_dict
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.methods.odmt import ODMT, ODMTConfig, distill_weight

COMMIT = "3d2ba25af7291e32d96159cba5e0054f4f5e5839"
N_ITEMS, B, S, T, V, D, HID = 40, 6, 5, 6, 50, 12, 16  # items, users, max_seq_len, tokens, dims
EPOCH, ALPHA, TAU = 5, 20, 0.3  # ramp weight exp(-5 (1 - 5/20)^2) = 0.0601
LR, WD, CLIP, N_STEPS = 1e-4, 0.1, 5.0, 20  # the code's AdamW (utils/parameters.py, main.py)
SUBNETS = {"id": "id", "text": "t", "image": "v"}

CODE_FLAGS = {"in_batch_mask": "window", "detach_teacher": False, "first_item_candidates": True,
              "attn_bias": False, "id_dim": D, "candidates": "positions"}
# mmrec's default for each flag, and the documented difference it names
HARMONISED = {
    "in_batch_mask": ("label", "mmrec's default in_batch_mask=label: items of the row's own window are negatives"),
    "detach_teacher": (True, "mmrec's default detach_teacher=true: no gradient through the teachers' logits"),
    "first_item_candidates": (False, "mmrec's default: only targets are in-batch candidates, not each row's first input"),
    "attn_bias": (True, "mmrec's default attn_bias=true: Q/K/V/out biases (zero at the copy) train"),
    "id_dim": (0, "mmrec's default id_dim=0: the projected table is the parameter (no id_proj), other AdamW path"),
    "candidates": ("items", "none expected: candidates=items is the same objective"),
}


# -- data --------------------------------------------------------------------------------------------
def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t_feat = torch.randn(N_ITEMS + 1, T, D, generator=g)
    v_feat = torch.randn(N_ITEMS + 1, V, D, generator=g)
    text_len = torch.randint(1, T + 1, (N_ITEMS + 1,), generator=g)
    text_mask = (torch.arange(T)[None, :] < text_len[:, None]).long()
    t_feat[1:] *= text_mask[1:, :, None]  # padding tokens of real items are all-zero rows (mmrec's padding)
    counts = torch.randint(1, 11, (N_ITEMS + 1,), generator=g)
    counts[0] = 0
    return t_feat, v_feat, text_mask, counts


def make_batches(n: int, seed: int = 1) -> list[list[list[int]]]:
    """``n`` batches of B training sequences (2..S+1 items, ids drawn from a small pool so that
    items repeat within and across users)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        rows = []
        for _ in range(B):
            length = int(torch.randint(2, S + 2, (1,), generator=g))
            rows.append([int(x) for x in torch.randint(1, N_ITEMS + 1, (length,), generator=g)])
        out.append(rows)
    return out


def official_batch(seqs: list[list[int]], text_mask: torch.Tensor):
    """The code's layout (``utils/dataset.py::ModalDataset``): left padding to S+1 slots."""
    ids = torch.zeros(B, S + 1, dtype=torch.long)
    log_mask = torch.zeros(B, S)
    for b, s in enumerate(seqs):
        ids[b, S + 1 - len(s):] = torch.tensor(s)
        log_mask[b, S + 1 - len(s):] = 1.0
    flat = ids.view(-1)
    text = torch.cat([torch.zeros(len(flat), T, dtype=torch.long), text_mask[flat] * (flat > 0)[:, None]], dim=1)
    return flat, text, log_mask


def mmrec_batch(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    items = torch.zeros(B, S, dtype=torch.long)
    targets = torch.zeros(B, S, dtype=torch.long)
    for b, s in enumerate(seqs):
        items[b, : len(s) - 1] = torch.tensor(s[:-1])
        targets[b, : len(s) - 1] = torch.tensor(s[1:])
    return {"items": items, "targets": targets, "lengths": torch.tensor([len(s) - 1 for s in seqs]),
            "user": torch.arange(B)}


# -- models ------------------------------------------------------------------------------------------
def build_official(mod, t_feat, v_feat, counts):
    args = argparse.Namespace(
        embedding_dim=HID, max_seq_len=S, item_tower="modal", ft_layer="trm", id_embedding_dim=D,
        text_embedding_dim=D, image_embedding_dim=D, init=1, drop_rate=0.0, merged_att_layers=2,
        num_attention_heads=2, transformer_block=2, version="v1", alpha=ALPHA, tau=TAU, num_words_title=T,
    )
    c = counts[1:].double()
    pop = [1.0] + (c / c.sum()).tolist()  # utils/load_data.py:165-170 (power 1, padding p = 1)
    torch.manual_seed(0)
    return mod.Model(args, pop, N_ITEMS, t_feat, v_feat)


def build_mmrec(t_feat, v_feat, counts, **flags) -> ODMT:
    present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    present[0] = False
    feats = {}
    for name, table in (("text", t_feat), ("image", v_feat)):
        tab = table.clone()
        tab[0] = 0.0  # mmrec never reads the padding row
        feats[name] = FeatureTable(name, tab, present, {})
    cfg = {"hidden": HID, "inner": 4 * HID, "layers": 2, "heads": 2, "imt_layers": 2, "imt_heads": 2,
           "dropout": 0.0, "attn_dropout": 0.0, "act": "relu", "position": "reverse", "temperature": TAU,
           "rampup": float(ALPHA), "id_init": "mean", **flags}
    torch.manual_seed(0)
    m = ODMT(from_dict(ODMTConfig, cfg), N_ITEMS, S, features=feats)
    m.item_popularity = counts.clone()
    return m


def weight_spec(m: ODMT) -> dict[str, Callable[[dict], torch.Tensor] | None]:
    """mmrec parameter -> function of the official ``{name: tensor}`` (weights or gradients) giving
    its value, or None where the code has no such parameter (zero at the copy)."""
    spec: dict[str, Callable | None] = {}

    def same(o: str):
        return lambda P: P[o]

    def block(mp: str, op: str):
        mha, ff = f"{op}.multi_head_attention", f"{op}.feed_forward"
        spec[f"{mp}.attn.qkv.weight"] = lambda P: torch.cat([P[f"{mha}.w_{k}.weight"] for k in "QKV"])
        spec[f"{mp}.attn.out.weight"] = same(f"{mha}.fc.weight")
        spec[f"{mp}.attn.qkv.bias"] = spec[f"{mp}.attn.out.bias"] = None
        for x in ("weight", "bias"):
            spec[f"{mp}.attn.norm.{x}"] = same(f"{mha}.layer_norm.{x}")
            spec[f"{mp}.ffn.fc1.{x}"] = same(f"{ff}.w_1.{x}")
            spec[f"{mp}.ffn.fc2.{x}"] = same(f"{ff}.w_2.{x}")
            spec[f"{mp}.ffn.norm.{x}"] = same(f"{ff}.layer_norm.{x}")

    for x in ("weight", "bias"):
        spec[f"proj.text.{x}"] = same(f"text_proj.{x}")
        spec[f"proj.image.{x}"] = same(f"image_proj.{x}")
        for sub, o in SUBNETS.items():
            spec[f"heads.{sub}.0.{x}"] = same(f"{o}_dnns.0.{x}")
            spec[f"heads.{sub}.2.{x}"] = same(f"{o}_dnns.2.{x}")
            spec[f"encoders.{sub}.norm.{x}"] = same(f"{o}_user_encoder.transformer_encoder.layer_norm.{x}")
    spec["missing.text"] = spec["missing.image"] = None  # every item has both features here
    if m.id_proj is not None:
        spec["id_emb.weight"] = same("id_encoder.weight")
        spec["id_proj.weight"], spec["id_proj.bias"] = same("id_proj.weight"), same("id_proj.bias")
    else:  # the d-dimensional table is the code's id_proj(id_encoder) (gradients: no counterpart)
        spec["id_emb.weight"] = lambda P: P["id_encoder.weight"] @ P["id_proj.weight"].T + P["id_proj.bias"]
    for i in range(2):
        block(f"imt.blocks.{i}", f"IMT.transformer_blocks.{i}")
        for sub, o in SUBNETS.items():
            block(f"encoders.{sub}.blocks.{i}", f"{o}_user_encoder.transformer_encoder.transformer_blocks.{i}")
    for sub, o in SUBNETS.items():
        spec[f"encoders.{sub}.position.weight"] = same(f"{o}_user_encoder.transformer_encoder.position_embedding.weight")
    names = dict(m.named_parameters())
    missing = sorted(set(names) - set(spec))
    if missing:
        raise KeyError(f"mmrec parameters with no entry in the weight map: {missing}")
    return {k: v for k, v in spec.items() if k in names}


def grad_rows(m: ODMT, off, spec, note: str = "") -> list[Row]:
    G = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in off.named_parameters()}
    rows = []
    for name, p in m.named_parameters():
        fn = spec[name]
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if fn is None:
            if name.startswith("missing."):
                continue  # never used: every item has both features
            rows.append(Row(f"grad {name} (no counterpart in the code)", g.abs().max().item(), float("nan"), note))
        elif name == "id_emb.weight" and m.id_proj is None:
            rows.append(Row("grad id_emb.weight (projected table; the code trains id_encoder + id_proj)",
                            float("nan"), float("nan"), note or "parametrisation differs"))
        else:
            rows.append(diff(f"grad {name}", g, fn(G), note))
    return rows


def param_rows(m: ODMT, off, spec, note: str = "") -> list[Row]:
    P = {k: p.detach() for k, p in off.named_parameters()}
    return [diff(f"after {N_STEPS} steps: {name}", p, spec[name](P), note)
            for name, p in m.named_parameters() if spec[name] is not None]


def worst(rows: list[Row], label: str, note: str = "") -> Row:
    rows = [r for r in rows if not math.isnan(r.max_abs)]
    if not rows:
        return Row(label, 0.0, 0.0, note)
    r = max(rows, key=lambda r: min(r.max_abs, r.max_rel))
    return Row(f"{label} (worst: {r.component})", r.max_abs, r.max_rel, note)


# -- one forward/backward of each, with everything recorded ------------------------------------------
@contextlib.contextmanager
def gpu_like_to() -> Iterator[None]:
    """The code moves CPU tensors to its GPU with ``.to(local_rank)``, which copies them into a
    contiguous tensor; on the CPU ``.to("cpu")`` returns the tensor itself, and the code's
    ``label[:, 1:].to(local_rank).view(-1)`` (model.py:156) then fails. While the official model
    runs, ``Tensor.to`` returns a contiguous result, as it does on the GPU."""
    plain = torch.Tensor.to

    def to(self, *args, **kwargs):
        return plain(self, *args, **kwargs).contiguous()

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = plain


def run_official(off, flat, text, log_mask):
    with gpu_like_to():
        return off(EPOCH, flat, text, log_mask, "cpu")


def official_forward(mod, off, seqs, text_mask):
    flat, text, log_mask = official_batch(seqs, text_mask)
    rec: dict = {"logits": []}
    hooks = [off.IMT.transformer_blocks[-1].feed_forward.register_forward_hook(lambda _m, _i, o: rec.__setitem__("imt", o))]
    for sub, o in SUBNETS.items():
        hooks.append(getattr(off, f"{o}_dnns").register_forward_hook(
            lambda _m, _i, out, sub=sub: rec.__setitem__(f"vec_{sub}", out)))
        hooks.append(getattr(off, f"{o}_user_encoder").register_forward_hook(
            lambda _m, _i, out, sub=sub: rec.__setitem__(f"seq_{sub}", out)))
    plain = off.calculate_logits

    def calc(*a, **k):
        z = plain(*a, **k)
        rec["logits"].append(z)
        return z

    off.calculate_logits = calc
    try:
        ce, kl = run_official(off, flat, text, log_mask)
    finally:
        del off.calculate_logits
        for h in hooks:
            h.remove()
    z_id, z_t, z_v = rec["logits"]
    label = torch.arange(B * (S + 1)).reshape(B, S + 1)[:, 1:].reshape(-1)[log_mask.view(-1) != 0]
    w = mod.sigmoid_rampup(EPOCH, ALPHA)
    ens = (z_t + z_v + z_id) / 3
    parts = {"ce_id": F.cross_entropy(z_id, label), "ce_text": F.cross_entropy(z_t, label),
             "ce_image": F.cross_entropy(z_v, label),
             "kd_id_text": mod.kd_ce_loss(z_t, z_id, TAU), "kd_id_image": mod.kd_ce_loss(z_v, z_id, TAU),
             "kd_ens_id": mod.kd_ce_loss(z_id, ens, TAU)}
    rec.update(flat=flat, log_mask=log_mask, parts=parts, weight=w, ce=ce, kl=kl, total=ce + kl,
               logits_by={"id": z_id, "text": z_t, "image": z_v})
    return rec


def mmrec_forward(m: ODMT, seqs):
    batch = mmrec_batch(seqs)
    rec: dict = {}
    hooks = [m.imt.register_forward_hook(lambda _m, _i, o: rec.__setitem__("imt", o))]
    for sub in m.subnets:
        hooks.append(m.encoders[sub].register_forward_hook(
            lambda _m, _i, out, sub=sub: rec.__setitem__(f"seq_{sub}", out)))
    plain_vec = m.item_vectors

    def vec(ids):
        out = plain_vec(ids)
        rec["ids"], rec["vec"] = ids, out
        return out

    m.item_vectors = vec
    try:
        m.on_epoch_start(EPOCH, None)
        # the logits as ``batch_logits`` gives them (masked -inf); ``loss`` computes from the same
        # columns in fewer passes and is compared through its terms (no dropout here: both calls agree)
        with torch.no_grad():
            rec["inbatch"] = m.batch_logits(batch)
        total = m.loss(batch, None)
    finally:
        del m.item_vectors
        for h in hooks:
            h.remove()
    rec.update(batch=batch, total=total, parts=m.loss_parts)
    return rec


def forward_rows(o: dict, r: dict, seqs) -> list[Row]:
    """IMT states, item vectors, sequence states and logits (per-position layout)."""
    rows = []
    flat = o["flat"]
    real = (flat > 0).nonzero().squeeze(1)
    where = {int(i): k for k, i in enumerate(r["ids"])}
    idx = torch.tensor([where[int(flat[s])] for s in real])
    rows.append(diff("IMT token states (text | image | ID tokens, asymmetric mask)", r["imt"][idx], o["imt"][real]))
    for sub in SUBNETS:
        rows.append(diff(f"item vectors e^{sub}", r["vec"][sub][idx], o[f"vec_{sub}"][real]))
    # sequence states: the code's left padding (position S - n + k) against mmrec's right padding (k)
    for sub in SUBNETS:
        a, b_ = [], []
        for b, s in enumerate(seqs):
            n = len(s) - 1
            a.append(r[f"seq_{sub}"][b, :n])
            b_.append(o[f"seq_{sub}"][b, S - n:])
        rows.append(diff(f"sequence states h^{sub} (real positions)", torch.cat(a), torch.cat(b_)))
    # logits: the code's columns are the B x (S+1) slots; mmrec's are the targets, then first inputs
    cols = []
    for b, s in enumerate(seqs):
        start = b * (S + 1) + S + 1 - len(s)
        cols += list(range(start + 1, start + len(s)))
    cols += [b * (S + 1) + S + 1 - len(s) for b, s in enumerate(seqs)]
    for sub in SUBNETS:
        zo = o["logits_by"][sub][:, cols]
        zm = r["inbatch"].logits[sub]
        mo, mm = zo <= -1e4 + 1e-3, torch.isinf(zm)
        rows.append(Row(f"in-batch logits z^{sub}: masked entries that differ ({int(mm.sum())} masked)",
                        float((mo != mm).sum()), float((mo != mm).sum())))
        rows.append(diff(f"in-batch logits z^{sub} (debiased, unmasked entries)", zm.masked_fill(mm, 0), zo.masked_fill(mo, 0)))
    return rows


def loss_rows(o: dict, r: dict, note: str = "") -> list[Row]:
    rows = [diff(f"loss {k}", torch.tensor(r["parts"][k]), o["parts"][k].detach(), note) for k in o["parts"]]
    rows.append(diff(f"distillation weight w({EPOCH}), ramp {ALPHA}", torch.tensor(r["parts"]["distill_weight"]),
                     torch.tensor(o["weight"])))
    kd = r["parts"]["distill_weight"] * sum(r["parts"][k] for k in ("kd_id_text", "kd_id_image", "kd_ens_id"))
    rows.append(diff("weighted distillation w * (KD(id->t) + KD(id->v) + KD(ens->id))", torch.tensor(kd), o["kl"].detach(), note))
    rows.append(diff("total loss", r["total"].detach(), o["total"].detach(), note))
    return rows


@torch.no_grad()
def score_rows(off, m: ODMT, seqs, text_mask, note: str = "") -> list[Row]:
    """Full-ranking scores over items 1..N of the sequences' last S items (``utils/metrics.py``)."""
    off.eval()
    m.eval()
    ids = torch.arange(N_ITEMS + 1)
    z, x, y = off.IMT(off.id_proj(off.id_encoder(ids)), off.text_proj(off.t_feat[ids]), text_mask,
                      off.image_proj(off.v_feat[ids]), torch.ones(N_ITEMS + 1, V), "v1")
    tables = {"id": off.id_dnns(z), "text": off.t_dnns(x), "image": off.v_dnns(y)}
    pad = torch.zeros(B, S, dtype=torch.long)
    log_mask = torch.zeros(B, S)
    items = torch.zeros(B, S, dtype=torch.long)
    inputs = [s[-S:] for s in seqs]  # a sequence's last S items as the input of one ranking
    for b, s in enumerate(inputs):
        pad[b, S - len(s):] = torch.tensor(s)
        log_mask[b, S - len(s):] = 1.0
        items[b, : len(s)] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in inputs])
    scores = {}
    for sub, o in SUBNETS.items():
        u = getattr(off, f"{o}_user_encoder")(tables[sub][pad], log_mask, "cpu")[:, -1]
        scores[sub] = (u @ tables[sub].T)[:, 1:]
    scores["ensemble"] = (scores["id"] + scores["text"] + scores["image"]) / 3
    cand = torch.arange(1, N_ITEMS + 1)
    rows = [diff("eval scores, ensemble (s_id + s_t + s_v) / 3", m.score(m.query(items, lengths), cand), scores["ensemble"], note)]
    for sub in SUBNETS:
        with m.eval_variant(sub):
            rows.append(diff(f"eval scores, {sub} sub-network alone", m.score(m.query(items, lengths), cand), scores[sub], note))
    off.train()
    m.train()
    return rows


def run_steps(mod, off, m: ODMT, batches, text_mask, note: str = "") -> list[Row]:
    """``N_STEPS`` steps of each with the code's optimiser (AdamW lr 1e-4, weight decay 0.1 on every
    parameter, clip 5), batch i + 1 at step i (the harness's ``steps``)."""
    def theirs(i: int) -> torch.Tensor:
        flat, text, log_mask = official_batch(batches[i + 1], text_mask)
        ce, kl = run_official(off, flat, text, log_mask)
        return ce + kl

    def ours(i: int) -> torch.Tensor:
        m.on_epoch_start(EPOCH, None)
        return m.loss(mmrec_batch(batches[i + 1]), None)

    rows = steps(m, ours, off, theirs, lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=WD),
                 n=N_STEPS, clip=CLIP)
    return [Row(r.component, r.max_abs, r.max_rel, note) for r in rows]


def compare(mod, data, batches, flags: dict, note: str = "", full: bool = True) -> tuple[list[Row], list[Row], list[Row]]:
    """(forward and loss rows, gradient rows, step rows) of mmrec with ``flags`` against the code."""
    t_feat, v_feat, text_mask, counts = data
    off = build_official(mod, t_feat, v_feat, counts).train()
    m = build_mmrec(t_feat, v_feat, counts, **flags).train()
    spec = weight_spec(m)
    copy_by_spec(m, off, spec)
    seqs = batches[0]
    o = official_forward(mod, off, seqs, text_mask)
    r = mmrec_forward(m, seqs)
    rows = []
    if full:
        rows += forward_rows(o, r, seqs)
    rows += loss_rows(o, r, note)
    o["total"].backward()
    r["total"].backward()
    grads = grad_rows(m, off, spec, note)
    if full:
        rows += score_rows(off, m, seqs, text_mask, note)
    after = run_steps(mod, off, m, batches, text_mask, note)
    after += param_rows(m, off, spec, note)
    return rows, grads, after


def ramp_rows(mod) -> list[Row]:
    """The distillation weight per epoch: the code's ``sigmoid_rampup(epoch, alpha) if alpha >= 1
    else alpha`` (model.py:195, epochs from 1, main.py) against ``distill_weight``, for the run
    scripts' ramp lengths (Arts 20, Office 40, KS 50, H&M 60) and constants (Office's 0, and 0.5)."""
    rows = []
    for a in (20, 40, 50, 60, 0, 0.5):
        ours = torch.tensor([distill_weight(e, float(a)) for e in range(1, 61)], dtype=torch.float64)
        theirs = torch.tensor([mod.sigmoid_rampup(e, a) if a >= 1 else a for e in range(1, 61)], dtype=torch.float64)
        rows.append(diff(f"distillation weight w(e), e = 1..60, model.rampup={a}", ours, theirs))
    return rows


def init_alias_check(mod, data) -> Row:
    """The code's ``init=2``/``init=3`` (KS uses 3) sets ``id_encoder.weight.data`` to a *view* of the
    feature table, so each optimiser step also rewrites the text (image) class token: after one
    step, how far ``t_feat[:, 0]`` moved (0 if the two were independent)."""
    t_feat, v_feat, text_mask, counts = data
    off = build_official(mod, t_feat.clone(), v_feat.clone(), counts)
    off.args.init = 3
    off.id_encoder.weight.data = off.t_feat[:, 0]
    before = off.t_feat[:, 0].clone()
    opt = torch.optim.AdamW(off.parameters(), lr=LR, weight_decay=WD)
    flat, text, log_mask = official_batch(make_batches(1)[0], text_mask)
    ce, kl = run_official(off, flat, text, log_mask)
    (ce + kl).backward()
    opt.step()
    moved = (off.t_feat[:, 0] - before).abs().max().item()
    return Row("code init=3: text [CLS] features moved by one step (aliasing)", moved, moved / before.abs().max().item(),
               "the code's bug (init=2/3 only; Arts/Office/H&M use init=1): no mmrec counterpart")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of xyliugo/ODMT")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args.official)
    finally:
        torch.set_num_threads(threads)


def _run(official: str) -> int:
    with official_import_path(official, "code"):
        import model.model as mod

        data = make_data()
        batches = make_batches(N_STEPS + 1)
        ok = True
        print(f"ODMT side by side: mmrec against xyliugo/ODMT@{COMMIT[:7]} (float32, CPU; {N_ITEMS} items, "
              f"batch {B} x {S + 1} slots, {T} text + {V} image tokens of dim {D}, hidden {HID}, "
              f"ramp epoch {EPOCH} of {ALPHA}, tau {TAU}; AdamW lr {LR}, wd {WD}, clip {CLIP})")

        rows, grads, steps = compare(mod, data, batches, CODE_FLAGS)
        flags = " ".join(f"model.{k}={v}" for k, v in CODE_FLAGS.items())
        ok &= print_table(f"1. mmrec with the code's flags ({flags}): forward, losses, scores", rows)
        ok &= print_table("1b. every gradient (one backward of the total loss)", grads)
        ok &= print_table("1c. the ramp-up schedule of the distillation weight", ramp_rows(mod))
        ok &= print_table(f"1d. {N_STEPS} AdamW steps (the code's optimiser, clip {CLIP}) and the parameters after them", steps)

        items_flags = {**CODE_FLAGS, "candidates": "items"}
        rows, grads, steps = compare(mod, data, batches, items_flags, full=False)
        ok &= print_table("2. the same with candidates=items (one column per distinct item, mmrec's layout)",
                          rows + [worst(grads, "every gradient"), worst(steps, f"{N_STEPS} steps and parameters")])

        alone = []
        for key, (value, note) in HARMONISED.items():
            if key == "candidates":
                continue  # table 2
            f = {**CODE_FLAGS, key: value}
            rows, grads, steps = compare(mod, data, batches, f, note, full=False)
            total = next(r for r in rows if r.component == "total loss")
            alone += [Row(f"model.{key}={value}: total loss", total.max_abs, total.max_rel, note),
                      Row(f"model.{key}={value}: {worst(grads, 'gradients').component}", *_mr(worst(grads, '')), note),
                      Row(f"model.{key}={value}: {worst(steps, 'steps').component}", *_mr(worst(steps, '')), note)]
        ok &= print_table("3. each mmrec default alone (the other settings at the code's)", alone)

        mm = {k: v for k, (v, _) in HARMONISED.items()}
        note = "mmrec's defaults: " + ", ".join(f"{k}={v}" for k, v in mm.items() if k != "candidates")
        rows, grads, steps = compare(mod, data, batches, mm, note, full=False)
        ok &= print_table("4. mmrec's defaults (harmonised) against the code",
                          rows + [worst(grads, "every gradient", note), worst(steps, f"{N_STEPS} steps and parameters", note)])
        ok &= print_table("5. a bug of the code outside the compared path", [init_alias_check(mod, data)])
    print(f"\nverdict: {'every row within ' + format(TOL, 'g') + ' or explained' if ok else 'UNEXPLAINED DIFFERENCES'}")
    return 0 if ok else 1


def _mr(r: Row) -> tuple[float, float]:
    return r.max_abs, r.max_rel


if __name__ == "__main__":
    sys.exit(main())
