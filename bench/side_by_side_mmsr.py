"""MMSR side by side: mmrec's ``mmsr`` against the authors' released code (MMSR23/MMSR).

Written against MMSR23/MMSR@63a6d513574f472c3777d60dddae8a9819c0bcd1 (2023-08-22)::

    python bench/side_by_side_mmsr.py --official /path/to/MMSR

The code trains its encoders (RoBERTa, ViT-MAE) end to end; mmrec reads frozen features. So the
comparison starts at the encoders' outputs: both models get the same token states (random tables of
the code's shapes: one feature width for text and image, as its ``Vit_Encoder`` needs; a text
attention mask with padding; every image token valid). The official model is the code's ``Model``
(``item_tower=modal``, ``fusion_method=merge_attn``, ``benchmark=sasrec``) with stub encoders that
return those token states; mmrec's is ``MMSR`` reading the same states as token features
(``model.feature_tokens``). Both at a small size (hidden 48, fusion 12 heads, 2 SASRec blocks of 2
heads, sequences of 8), dropout 0 (no RNG to match), float32 on the CPU.

Compared: the fused item vectors (merged attention), the SASRec backbone's states at every real
position, the full-ranking item scores at the last position, the two BCE terms as the code computes
them (``BCEWithLogitsLoss`` over the valid positions, positive and negative), the total loss, every
parameter's gradient, then 20 steps of the code's optimiser (AdamW, lr 1e-4, weight decay 0.1: its
recommender group; AMP off) on 20 batches, and every parameter after them.

Two mmrec configurations:

1. ``harmonised``: mmrec's defaults, with the same weights where a counterpart exists. It differs, for
   the named reasons printed in the notes (pooled features instead of tokens, ReLU, one head, an added
   modality embedding, the 1/sqrt(d) output gain, SASRec biases, LayerNorm epsilon, GELU backbone FFN).
2. ``code flags``: mmrec with the code's behaviour switched on (``--preset code``'s model keys): must be
   within 1e-5 everywhere.

``modality_norm`` is checked through the stub encoders: they end in a LayerNorm without gain or bias
(RoBERTa and ViT-MAE end in a LayerNorm, frozen by the code's ``index > 164`` rule), and mmrec reads the
raw tables with ``model.modality_norm=true``.

Shims (in this script, none in mmrec):

- ``boto3``, ``botocore``, ``requests``, ``tqdm`` (imported by ``model/file_utils.py`` for downloads)
  are empty stand-in modules when absent;
- ``MergedAttention.from_pretrained("bert-base-uncased")`` downloads bert-base's config and weights;
  the weights' names do not match the module's (so the code's fusion is randomly initialised anyway):
  here it is built from bert-base's config, scaled to the small size (hidden 48, 12 heads, inner 4x,
  GELU, dropout 0, initializer_range 0.02), with the code's ``init_bert_weights``;
- the encoders are stubs: ``bert_model(input_ids, attention_mask)`` returns the text token states of
  the token ids (each item's tokens have their own ids), ``image_net(x)`` the image token states of
  the item ids it is given in place of pixels; an ``argparse.Namespace`` holds the code's arguments;
  ``local_rank`` is ``"cpu"``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from side_by_side import Row, diff, official_import_path, print_table, steps

from mmrec.config import from_dict
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.methods import METHODS

N_ITEMS, D_FEAT, HIDDEN, FUSION_HEADS, SEQ_HEADS, LAYERS = 30, 64, 48, 12, 2, 2
T_TEXT, T_IMAGE, L, BATCH, N_STEPS = 8, 6, 8, 6, 20
LR, WD = 1e-4, 0.1  # the code's recommender group (setup_mm.py lr_list, l2_weight_list)

CODE_FLAGS = {"feature_tokens": True, "modality_norm": True, "fusion_heads": FUSION_HEADS, "fusion_act": "gelu",
              "fusion_type_embedding": False, "fusion_gain": 1.0, "attn_bias": False, "backbone_eps": 1e-6,
              "act": "relu"}
# pooled features, no modality_norm, the fusion's ReLU/1 head/added type embedding/gain 1/sqrt(d), SASRec
# attention biases, LayerNorm eps 1e-12, GELU backbone FFN (docs/fidelity/mmsr.md)
HARMONISED_NOTE = "named differences (mmrec defaults)"


def _stub_missing_modules() -> None:
    for name in ("boto3", "botocore", "botocore.exceptions", "requests", "tqdm"):
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            if name == "botocore.exceptions":
                mod.ClientError = type("ClientError", (Exception,), {})
            if name == "tqdm":
                mod.tqdm = lambda x=None, *a, **k: x
            sys.modules[name] = mod


class StubText(nn.Module):
    """The text encoder's output: token states of the token ids (through a LayerNorm without gain/bias,
    as RoBERTa's last LayerNorm frozen by the code)."""

    def __init__(self, states: torch.Tensor, norm: bool):
        super().__init__()
        self.register_buffer("states", states.reshape(-1, states.shape[-1]))
        self.norm = norm

    def forward(self, input_ids, attention_mask=None):
        h = self.states[input_ids]
        return (F.layer_norm(h, h.shape[-1:]) if self.norm else h,)


class StubImage(StubText):
    def forward(self, item_ids):
        h = self.states.view(N_ITEMS + 1, T_IMAGE, -1)[item_ids.long()]
        return (F.layer_norm(h, h.shape[-1:]) if self.norm else h,)


def synthetic(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(N_ITEMS + 1, T_TEXT, D_FEAT, generator=g) * 3.0 + 0.5
    text_len = torch.randint(2, T_TEXT + 1, (N_ITEMS + 1,), generator=g)
    text_mask = (torch.arange(T_TEXT)[None, :] < text_len[:, None]).float()
    text = text * text_mask[..., None]
    image = torch.randn(N_ITEMS + 1, T_IMAGE, D_FEAT, generator=g) * 0.5 - 0.2
    text[0], image[0], text_mask[0] = 0.0, 0.0, 0.0
    batches = []
    for _ in range(N_STEPS + 1):
        seqs = []
        for b in range(BATCH):
            n = int(torch.randint(2, L + 2, (1,), generator=g))  # inputs + the last target
            seqs.append(torch.randperm(N_ITEMS, generator=g)[:n] + 1)
        negs = []
        for s in seqs:
            cand = torch.tensor([i for i in range(1, N_ITEMS + 1) if i not in set(s.tolist())])
            negs.append(cand[torch.randint(0, len(cand), (len(s) - 1,), generator=g)])
        batches.append((seqs, negs))
    return text, text_mask, image, batches


def official_inputs(seqs, negs, text_mask):
    """The code's batch: ``[B, L+1, 2]`` items (left padding; pos, neg), text ids+mask, image 'pixels'
    (item ids), ``log_mask`` ``[B, L]``."""
    pos = torch.zeros(len(seqs), L + 1, dtype=torch.long)
    neg = torch.zeros_like(pos)
    log_mask = torch.zeros(len(seqs), L)
    for b, (s, n) in enumerate(zip(seqs, negs)):
        head = L + 1 - len(s)
        pos[b, head:] = s
        neg[b, head:head + len(n)] = n
        log_mask[b, head:] = 1.0
    ids = torch.stack([pos, neg], 2).reshape(-1)
    tok = ids[:, None] * T_TEXT + torch.arange(T_TEXT)
    text = torch.cat([tok.float(), text_mask[ids]], 1)
    return ids, text, ids.float(), log_mask


def mmrec_batch(seqs, negs):
    items = torch.zeros(len(seqs), L, dtype=torch.long)
    targets, negatives = torch.zeros_like(items), torch.zeros_like(items)
    lengths = torch.tensor([len(s) - 1 for s in seqs])
    for b, (s, n) in enumerate(zip(seqs, negs)):
        k = len(s) - 1
        items[b, :k], targets[b, :k], negatives[b, :k] = s[:-1], s[1:], n
    return {"items": items, "targets": targets, "negatives": negatives, "lengths": lengths}


def build_official(root: Path, text, image, norm: bool):
    _stub_missing_modules()
    with official_import_path(root):
        modeling = importlib.import_module("model.modeling")
        model_mod = importlib.import_module("model.model")

        def from_pretrained(cls, name, args):  # bert-base-uncased's config, scaled; no download
            cfg = modeling.BertConfig(vocab_size_or_config_json_file=30522, hidden_size=HIDDEN,
                                      num_attention_heads=FUSION_HEADS, intermediate_size=4 * HIDDEN,
                                      hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            return cls(cfg, args)

        modeling.MergedAttention.from_pretrained = classmethod(from_pretrained)
        args = argparse.Namespace(
            benchmark="sasrec", item_tower="modal", CV_model_load="vit_mae_base", fusion_method="merge_attn",
            max_seq_len=L, embedding_dim=HIDDEN, num_attention_heads=SEQ_HEADS, drop_rate=0.0,
            transformer_block=LAYERS, word_embedding_dim=D_FEAT, num_words_title=T_TEXT,
            num_merge_attn_fuse_layers=1, num_co_attn_fuse_layers=1, local_rank="cpu", block_num=2)
        torch.manual_seed(0)
        model = model_mod.Model(args, N_ITEMS, StubText(text, norm), StubImage(image, norm))
    return model, args


def build_mmrec(text, text_mask, image, flags: dict):
    cls = METHODS["mmsr"]
    cfg = {"hidden": HIDDEN, "layers": LAYERS, "heads": SEQ_HEADS, "inner": 4 * HIDDEN, "dropout": 0.0,
           "attn_dropout": 0.0, "feature_dropout": 0.0, "position": "reverse", **flags}
    present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    present[0] = False
    if flags.get("feature_tokens"):
        tables = {"text": text, "image": image}
    else:  # one vector per item: the masked mean of its tokens (as the code pools for its vector fusions)
        tables = {"text": (text * text_mask[..., None]).sum(1) / text_mask.sum(1).clamp(min=1)[:, None],
                  "image": image.mean(1)}
    feats = {m: FeatureTable(m, t, present, {}) for m, t in tables.items()}
    torch.manual_seed(1)
    return cls(from_dict(cls.Config, cfg), N_ITEMS, L, features=feats)


def name_map(layers: int, type_embedding: bool, attn_bias: bool):
    """mmrec parameter -> f(official named tensors) (weights or gradients); None: no counterpart (the
    official value is taken as zero)."""
    f = "fusion_module.MergeAtt_layers.0."

    def one(name):
        return lambda t: t[name]

    def cat(*names):
        return lambda t: torch.cat([t[n] for n in names], 0)

    m = {
        "items.adaptors.text.1.weight": one("text_encoder.text_encoders.text_pooler.weight"),
        "items.adaptors.text.1.bias": one("text_encoder.text_encoders.text_pooler.bias"),
        "items.adaptors.image.1.weight": one("cv_encoder.cv_proj.weight"),
        "items.adaptors.image.1.bias": one("cv_encoder.cv_proj.bias"),
        "items.missing.text": None,  # every item has both modalities in the code
        "items.missing.image": None,
    }
    for w in ("weight", "bias"):
        m[f"items.fusion.attn.qkv.{w}"] = cat(*(f"{f}self_att.self.{k}.{w}" for k in ("query", "key", "value")))
        m[f"items.fusion.attn.out.{w}"] = one(f"{f}self_att.output.dense.{w}")
        m[f"items.fusion.attn.norm.{w}"] = one(f"{f}self_att.output.LayerNorm.{w}")
        m[f"items.fusion.ffn.fc1.{w}"] = one(f"{f}inter.dense.{w}")
        m[f"items.fusion.ffn.fc2.{w}"] = one(f"{f}output.dense.{w}")
        m[f"items.fusion.ffn.norm.{w}"] = one(f"{f}output.LayerNorm.{w}")
    if type_embedding:  # computed but never added in the code
        m["items.fusion.type_emb.weight"] = one("fusion_module.token_type_embeddings.weight")
    u = "user_encoder.transformer_encoder."
    m["encoder.position.weight"] = one(f"{u}position_embedding.weight")
    m["encoder.norm.weight"], m["encoder.norm.bias"] = one(f"{u}layer_norm.weight"), one(f"{u}layer_norm.bias")
    for i in range(layers):
        b = f"{u}transformer_blocks.{i}."
        a = f"{b}multi_head_attention."
        m[f"encoder.blocks.{i}.attn.qkv.weight"] = cat(f"{a}w_Q.weight", f"{a}w_K.weight", f"{a}w_V.weight")
        m[f"encoder.blocks.{i}.attn.out.weight"] = one(f"{a}fc.weight")
        if attn_bias:
            m[f"encoder.blocks.{i}.attn.qkv.bias"] = None
            m[f"encoder.blocks.{i}.attn.out.bias"] = None
        for w in ("weight", "bias"):
            m[f"encoder.blocks.{i}.attn.norm.{w}"] = one(f"{a}layer_norm.{w}")
            m[f"encoder.blocks.{i}.ffn.fc1.{w}"] = one(f"{b}feed_forward.w_1.{w}")
            m[f"encoder.blocks.{i}.ffn.fc2.{w}"] = one(f"{b}feed_forward.w_2.{w}")
            m[f"encoder.blocks.{i}.ffn.norm.{w}"] = one(f"{b}feed_forward.layer_norm.{w}")
    return m


def _official(theirs: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in theirs.named_parameters():
        t = p.detach() if kind == "param" else p.grad
        out[n] = torch.zeros_like(p) if t is None else t
    return out


@torch.no_grad()
def copy_mapped(nmap, ours: nn.Module, theirs: nn.Module) -> None:
    mine, other = dict(ours.named_parameters()), _official(theirs, "param")
    missing = sorted(set(mine) - set(nmap))
    if missing:
        raise KeyError(f"mmrec parameters with no entry in the name map: {missing}")
    for name, fn in nmap.items():
        src = torch.zeros_like(mine[name]) if fn is None and "missing" not in name else (
            mine[name].detach().clone() if fn is None else fn(other))
        if src.shape != mine[name].shape:
            raise ValueError(f"{name} {tuple(mine[name].shape)} <- {tuple(src.shape)}: shapes differ")
        mine[name].copy_(src)


def mapped_rows(nmap, ours, theirs, kind: str, note: str = "") -> list[Row]:
    mine = dict(ours.named_parameters())
    other = _official(theirs, kind)
    rows = []
    for name, fn in nmap.items():
        if kind == "grad":
            a = mine[name].grad if mine[name].grad is not None else torch.zeros_like(mine[name])
            b = torch.zeros_like(a) if fn is None else fn(other)
            rows.append(diff(f"grad {name}", a, b, note))
        elif fn is not None:
            rows.append(diff(f"after {N_STEPS} steps {name}", mine[name], fn(other), note))
    return rows


class Recorder(nn.Module):
    """The code's criterion, recording each term it computes."""

    def __init__(self):
        super().__init__()
        self.inner, self.terms = nn.BCEWithLogitsLoss(), []

    def forward(self, x, y):
        out = self.inner(x, y)
        self.terms.append(out)
        return out


class TrainCfg:
    loss = "bce"


def compare(root: Path, flags: dict, label: str, note: str) -> bool:
    text, text_mask, image, batches = synthetic()
    norm = bool(flags.get("modality_norm"))
    theirs, args = build_official(root, text, image, norm=True)
    if not norm:  # the harmonised run reads pooled raw features; the code reads its encoders' (normalised) ones
        theirs.text_encoder.text_encoders.bert_model.norm = False
        theirs.cv_encoder.image_net.norm = False
    ours = build_mmrec(text, text_mask, image, flags)
    nmap = name_map(LAYERS, ours.cfg.fusion_type_embedding, ours.cfg.attn_bias)
    copy_mapped(nmap, ours, theirs)
    theirs.criterion = Recorder()
    ok = True

    # the fused item vectors and the item scores (evaluation mode, as the code's scoring)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        ids = torch.arange(1, N_ITEMS + 1)
        t_tok = theirs.text_encoder(torch.cat([(ids[:, None] * T_TEXT + torch.arange(T_TEXT)).float(),
                                               text_mask[ids]], 1).long())
        v_tok = theirs.cv_encoder(ids.float())
        fused_o = theirs.fusion_module(t_tok, text_mask[ids], v_tok, torch.ones(N_ITEMS, T_IMAGE), "cpu")
        fused_m = ours.items.lookup(ids)
        seqs, negs = batches[0]
        oid, otext, ocv, log_mask = official_inputs(seqs, negs, text_mask)
        emb_o = theirs.fusion_module(theirs.text_encoder(otext.long()), otext[:, T_TEXT:],
                                     theirs.cv_encoder(ocv), torch.ones(len(oid), T_IMAGE), "cpu")
        emb_o = emb_o.view(BATCH, L + 1, 2, HIDDEN)[:, :-1, 0]
        states_o = theirs.user_encoder(emb_o, log_mask, "cpu")
        batch = mmrec_batch(seqs, negs)
        states_m = ours.sequence_states(batch["items"], batch["lengths"])
        real_o = torch.cat([states_o[b, L - int(n):] for b, n in enumerate(batch["lengths"])])
        real_m = torch.cat([states_m[b, :int(n)] for b, n in enumerate(batch["lengths"])])
        scores_o = states_o[:, -1] @ fused_o.T
        scores_m = ours.score(ours.query(batch["items"], batch["lengths"]), ids)
    fwd = [diff("fused items (merged attention)", fused_m, fused_o, note),
           diff("SASRec states (real positions)", real_m, real_o, note),
           diff("item scores (all items, last position)", scores_m, scores_o, note)]

    # the losses and every gradient (training mode; dropout is 0)
    ours.train(), theirs.train()
    theirs.criterion.terms.clear()
    loss_o = theirs(oid, otext, ocv, log_mask, "cpu", args)
    loss_m = ours.loss(batch, TrainCfg())
    h = ours.sequence_states(batch["items"], batch["lengths"])
    mask = batch["targets"] > 0
    pos_logit = (h[mask] * ours.items.lookup(batch["targets"][mask])).sum(-1)
    neg_logit = (h[mask] * ours.items.lookup(batch["negatives"][mask])).sum(-1)
    fwd += [diff("BCE positive term (loss_1)", F.softplus(-pos_logit).mean(), theirs.criterion.terms[0], note),
            diff("BCE negative term (loss_2)", F.softplus(neg_logit).mean(), theirs.criterion.terms[1], note),
            diff("total loss", loss_m, loss_o, note)]
    ok &= print_table(f"{label}: forward and loss", fwd)
    ours.zero_grad(), theirs.zero_grad()
    loss_m.backward()
    loss_o.backward()
    ok &= print_table(f"{label}: gradients", mapped_rows(nmap, ours, theirs, "grad", note))

    # 20 steps of the code's optimiser, one batch each
    data = [(official_inputs(s, n, text_mask), mmrec_batch(s, n)) for s, n in batches[1:]]
    theirs.criterion = nn.BCEWithLogitsLoss()
    rows = steps(ours, lambda i: ours.loss(data[i][1], TrainCfg()), theirs,
                 lambda i: theirs(*data[i][0], "cpu", args),
                 lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=WD), n=N_STEPS)
    for r in rows:
        r.note = note
    rows += mapped_rows(nmap, ours, theirs, "param", note)
    ok &= print_table(f"{label}: {N_STEPS} AdamW steps (lr {LR}, weight decay {WD})", rows)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of MMSR23/MMSR")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(a.official)
    ok = compare(root, {}, "mmrec harmonised (defaults)", HARMONISED_NOTE)
    ok &= compare(root, CODE_FLAGS, "mmrec with the code flags", "")
    print(f"\nverdict: {'every row within 1e-5 or explained' if ok else 'DIFFERENCES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
