"""ANT: fusion with the image x text interaction and missing modalities, Gaussian routing, the
pre-training and target losses against direct formulas, adaptation policies (what is loaded,
re-initialised, frozen, trained), pre-train -> relearn through the Trainer, and the shape errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import loss_and_grads, random_features, raw_from_sequences
from safetensors.torch import save_file

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError
from mmrec.features.store import write_manifest, write_shard
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer
from mmrec.trainers.methods.ant import ANT, ANTConfig, ant_fuse
from mmrec.trainers.modules.adaptors import LinearExpert, WhiteningExpert
from mmrec.trainers.transfer import (
    POLICIES,
    AdaptPolicy,
    apply_policy,
    pretrained_state,
)

N_ITEMS = 10
NO_IMAGE = (3, 7)
DIMS = {"text": 6, "image": 5, "price": 4}
TAU = 0.07


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(dims=DIMS, no_image=NO_IMAGE):
    return random_features(N_ITEMS, dims, {"image": no_image})


def _model(seed=0, features=None, **cfg):
    torch.manual_seed(seed)
    base = {"hidden": 8, "inner": 16, "dropout": 0.0, "attn_dropout": 0.0, "adaptor_dropout": 0.0, **cfg}
    return ANT(from_dict(ANTConfig, base), N_ITEMS, 6, features=features if features is not None else _features())


def _batch():
    # target 3 occurs twice (same-target masking); items 3 and 7 have no image
    return {"items": torch.tensor([[1, 2, 3, 0], [4, 3, 5, 6]]),
            "targets": torch.tensor([[2, 3, 4, 0], [3, 5, 6, 7]]),
            "lengths": torch.tensor([3, 4])}


class _Train:
    loss = "ce"


def _randomise(model, seed):
    """Every parameter moved off its initial value (gates non-zero, LayerNorms not 1 / 0, ...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


# --- fusion ---------------------------------------------------------------------------------------

def test_fusion_by_hand_sum_plus_image_text_interaction():
    t, i, p = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.5, 0.5])
    # 1 + 3 + 0.5 + 0.1 * 3 = 4.8 ; 2 - 1 + 0.5 + 0.1 * (-2) = 1.3
    assert torch.allclose(ant_fuse({"text": t, "image": i, "price": p}, 0.1), torch.tensor([4.8, 1.3]))
    # interaction left out where ``both`` is False; no image: a plain sum
    assert torch.allclose(ant_fuse({"text": t, "image": i, "price": p}, 0.1, torch.tensor(False)),
                          torch.tensor([4.5, 1.5]))
    assert torch.allclose(ant_fuse({"text": t, "price": p}, 0.1), torch.tensor([1.5, 2.5]))
    rows = ant_fuse({"text": torch.stack([t, t]), "image": torch.stack([i, i])}, 0.5, torch.tensor([True, False]))
    assert torch.allclose(rows, torch.tensor([[5.5, 0.0], [4.0, 1.0]]))


def test_item_vectors_use_missing_vectors_and_skip_the_interaction_without_an_image():
    f = _features()
    m = _model(features=f)
    m.eval()
    with torch.no_grad():
        for a in m.items.adaptors.values():  # non-trivial routing
            a.w_gate.normal_()
        table = m.item_vectors(None)
        ad = m.items.adaptors
        u = {s: ad[s](f[s].table) for s in DIMS}
        full = 5
        expect = u["text"][full] + u["image"][full] + u["price"][full] + 0.1 * u["image"][full] * u["text"][full]
        assert torch.allclose(table[full], expect, atol=1e-6)
        miss = m.items.missing["image"]
        assert torch.allclose(table[3], u["text"][3] + miss + u["price"][3], atol=1e-6)
        assert not table[0].any()
        ids = torch.tensor([[5, 3, 0]])
        assert torch.allclose(m.item_vectors(ids)[0], table[[5, 3, 0]], atol=1e-6)
        # the code's variant: the interaction with the missing vector
        m2 = _model(features=f, interaction_missing="missing_vector")
        m2.load_state_dict(m.state_dict())
        m2.eval()
        assert torch.allclose(m2.item_vectors(None)[3], table[3] + 0.1 * miss * u["text"][3], atol=1e-6)
        # scores are cosines: query and table are unit vectors
        assert torch.allclose(m.item_embeddings()[1:].norm(dim=-1), torch.ones(N_ITEMS), atol=1e-5)
    # text and image experts whiten, price experts are affine
    assert isinstance(ad["text"].experts[0], WhiteningExpert) and isinstance(ad["price"].experts[0], LinearExpert)


def test_gaussian_routing_samples_in_training_and_uses_the_mean_at_eval():
    m = _model()
    a = m.items.adaptors["text"]
    assert a.noise
    with torch.no_grad():
        a.w_gate.normal_()
        a.w_noise.normal_()
    x = m.items.feat_text[1:4]
    mean = torch.softmax(x @ a.w_gate, -1)
    m.eval()
    assert torch.allclose(a.gates(x), mean) and torch.allclose(a.gates(x), a.gates(x))
    m.train()
    g1, g2 = a.gates(x), a.gates(x)
    assert not torch.allclose(g1, mean) and not torch.allclose(g1, g2)
    assert torch.allclose(g1.sum(-1), torch.ones(3))
    off = _model(gate_noise=False)
    off.train()
    a = off.items.adaptors["image"]
    with torch.no_grad():
        a.w_gate.normal_()
    x = off.items.feat_image[1:4]
    assert torch.allclose(a.gates(x), torch.softmax(x @ a.w_gate, -1))


# --- losses ---------------------------------------------------------------------------------------

def _infonce_by_hand(a, b, ids, mask_same=True, rows=None, owners=None):
    """-mean_i log(exp(s_ii) / sum_{j kept} exp(s_ij)), s = cos / TAU, with loops; ``owners``: a
    column of the row's own owner (user) is dropped too."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    rows = list(range(len(a))) if rows is None else rows
    total = 0.0
    for r, i in enumerate(rows):
        s = [float(a[r] @ b[j]) / TAU for j in range(len(b))]
        keep = [j for j in range(len(b)) if j == i or not ((mask_same and ids[j] == ids[i])
                                                           or (owners is not None and owners[j] == owners[i]))]
        total -= s[i] - math.log(sum(math.exp(s[j]) for j in keep))
    return total / len(rows)


def test_pretraining_negatives_exclude_the_same_users_other_items():
    """Default ``pretrain_negatives=other_users``: a target position's softmax leaves out the other
    positions of its own user (here users 5, 9, 5: windows 0 and 2 are one user), as it leaves out
    the same target; ``batch`` keeps them (a user's own items as negatives)."""
    m = _model(objective="pretrain", it_weight=0.0)
    assert m.cfg.pretrain_negatives == "other_users"
    _randomise(m, 4)
    m.eval()
    b = {"items": torch.tensor([[1, 2, 3, 0], [4, 3, 5, 6], [8, 9, 0, 0]]),
         "targets": torch.tensor([[2, 3, 4, 0], [3, 5, 6, 7], [9, 10, 0, 0]]),
         "lengths": torch.tensor([3, 4, 2]), "user": torch.tensor([5, 9, 5])}
    with torch.no_grad():
        h = m.sequence_states(b["items"], b["lengths"])
        mask = b["targets"] > 0
        hs, tgt = h[mask], b["targets"][mask]
        ids = tgt.tolist()
        owners = b["user"][:, None].expand_as(b["targets"])[mask].tolist()
        assert owners == [5, 5, 5, 9, 9, 9, 9, 5, 5]
        pos = m.item_vectors(tgt)
        other_users = _infonce_by_hand(hs, pos, ids, owners=owners)
        everyone = _infonce_by_hand(hs, pos, ids)
        assert m.loss(b, _Train()).item() == pytest.approx(other_users, rel=1e-5)
        assert abs(other_users - everyone) > 1e-3  # the mask matters here
        m.cfg.pretrain_negatives = "batch"
        assert m.loss(b, _Train()).item() == pytest.approx(everyone, rel=1e-5)
        # last positions only: the two windows of user 5 do not see each other's target either
        m.cfg.pretrain_negatives, m.cfg.pretrain_positions = "other_users", "last"
        last = h[torch.arange(3), b["lengths"] - 1]
        lt = [4, 7, 10]
        expect = _infonce_by_hand(last, m.item_vectors(torch.tensor(lt)), lt, owners=[5, 9, 5])
        assert m.loss(b, _Train()).item() == pytest.approx(expect, rel=1e-5)
        # a batch without user ids: each window is its own user
        del b["user"]
        m.cfg.pretrain_positions = "all"
        win = [0, 0, 0, 1, 1, 1, 1, 2, 2]
        assert m.loss(b, _Train()).item() == pytest.approx(_infonce_by_hand(hs, pos, ids, owners=win), rel=1e-5)


def test_pretraining_loss_is_seq_item_plus_lambda_image_text():
    m = _model(objective="pretrain", it_weight=0.5, pretrain_negatives="batch")
    _randomise(m, 1)
    m.eval()  # no gate noise: deterministic
    b = _batch()
    with torch.no_grad():
        loss = m.loss(b, _Train())
        h = m.sequence_states(b["items"], b["lengths"])
        mask = b["targets"] > 0
        hs, tgt = h[mask], b["targets"][mask]
        ids = tgt.tolist()
        assert ids.count(3) == 2
        si = _infonce_by_hand(hs, m.item_vectors(tgt), ids)
        vt = m.items.modality_vectors(tgt)
        both = [k for k, i in enumerate(ids) if i not in NO_IMAGE]
        it = _infonce_by_hand(vt["image"][both], vt["text"][both], [ids[k] for k in both])
        assert loss.item() == pytest.approx(si + 0.5 * it, rel=1e-5)
        assert m.loss_parts["seq_item"] == pytest.approx(si, rel=1e-5)
        assert m.loss_parts["image_text"] == pytest.approx(it, rel=1e-5)
        # the code's image-text form: rows with an image, every target's text as candidate, no mask
        m.cfg.it_pairs = "code"
        rows = [k for k, i in enumerate(ids) if i not in NO_IMAGE]
        code_it = _infonce_by_hand(vt["image"][rows], vt["text"], ids, mask_same=False, rows=rows)
        assert m.image_text_loss(vt, tgt).item() == pytest.approx(code_it, rel=1e-5)
        # last position of each window only
        m.cfg.pretrain_positions, m.cfg.it_weight = "last", 0.0
        last = h[torch.arange(2), b["lengths"] - 1]
        lt = torch.tensor([4, 7])
        assert m.loss(b, _Train()).item() == pytest.approx(_infonce_by_hand(last, m.item_vectors(lt), [4, 7]), rel=1e-5)
        # text alone: no image-text term
        t = _model(objective="pretrain", features={"text": _features()["text"]})
        t.eval()
        t.loss(b, _Train())
        assert t.loss_parts["image_text"] == 0.0


def test_target_loss_is_a_cosine_softmax_over_all_items():
    m = _model()
    _randomise(m, 2)
    m.eval()
    b = _batch()
    with torch.no_grad():
        h = m.sequence_states(b["items"], b["lengths"])[b["targets"] > 0]
        e = F.normalize(m.item_vectors(None)[1:], dim=-1)
        logits = h @ e.T / TAU
        tgt = b["targets"][b["targets"] > 0] - 1
        expect = -(logits.log_softmax(-1)[torch.arange(len(tgt)), tgt]).mean()
        assert m.loss(b, _Train()).item() == pytest.approx(expect.item(), rel=1e-5)


def test_padding_class_is_the_codes_row_0_of_zero_features():
    """``padding_class``: the softmax runs over rows 0..n, row 0 = every modality's experts on a zero
    feature (uniform gates: the gate reads 0) with the interaction. At the initialisation (b = 0,
    biases 0) row 0 is the zero vector, so it adds exp(0) = 1 to each denominator."""
    m = _model(padding_class=True, temperature=1.0)  # logits near 0: row 0 weighs
    m.eval()
    b = _batch()
    with torch.no_grad():
        h = m.sequence_states(b["items"], b["lengths"])[b["targets"] > 0]
        tgt = b["targets"][b["targets"] > 0]
        logits = h @ F.normalize(m.item_vectors(None)[1:], dim=-1).T / m.cfg.temperature
        pick = logits[torch.arange(len(tgt)), tgt - 1]
        expect = -(pick - torch.log(1.0 + logits.exp().sum(-1))).mean()
        assert not m.padding_vector().any()
        assert m.loss(b, _Train()).item() == pytest.approx(expect.item(), rel=1e-5)
        plain = -(logits.log_softmax(-1)[torch.arange(len(tgt)), tgt - 1]).mean()
        assert abs(plain.item() - expect.item()) > 1e-2  # the extra exp(0) counts
        _randomise(m, 5)
        ad = m.items.adaptors
        u = {s: -torch.stack([e.lin.weight @ e.bias for e in ad[s].experts]).mean(0) for s in ("text", "image")}
        u["price"] = torch.stack([e.lin.bias for e in ad["price"].experts]).mean(0)
        row0 = u["text"] + u["image"] + u["price"] + 0.1 * u["image"] * u["text"]
        assert torch.allclose(m.padding_vector()[0], row0, atol=1e-6)
        h = m.sequence_states(b["items"], b["lengths"])[b["targets"] > 0]
        table = F.normalize(torch.cat([row0[None], m.item_vectors(None)[1:]]), dim=-1)
        logits = h @ table.T / m.cfg.temperature
        expect = -(logits.log_softmax(-1)[torch.arange(len(tgt)), tgt]).mean()
        assert m.loss(b, _Train()).item() == pytest.approx(expect.item(), rel=1e-5)
        m.cfg.padding_class = False  # items 1..n only
        plain = -(logits[:, 1:].log_softmax(-1)[torch.arange(len(tgt)), tgt - 1]).mean()
        assert m.loss(b, _Train()).item() == pytest.approx(plain.item(), rel=1e-5)
        assert abs(plain.item() - expect.item()) > 1e-3


def test_loss_eps_is_the_codes_plus_eps_in_the_denominator_and_the_log():
    """``loss_eps``: each sample's loss is ``-log(exp(z_t) / (sum_j exp(z_j) + eps) + eps)`` (the code's
    ``+ self.layer_norm_eps``), in the target loss (with and without the padding row) and in L_SI / L_IT;
    the cap ``-log(eps)`` binds for a sample whose positive is unlikely."""
    eps = 1e-3  # large enough to see; the code's is 1e-8
    b = _batch()

    def by_hand(logits, tgt):
        out = []
        for z, t in zip(logits.tolist(), tgt.tolist()):
            p = math.exp(z[t]) / (sum(math.exp(v) for v in z if v != float("-inf")) + eps)
            out.append(-math.log(p + eps))
        return sum(out) / len(out), max(out)

    for padding in (False, True):
        m = _model(loss_eps=eps, padding_class=padding)
        _randomise(m, 7)
        m.eval()
        with torch.no_grad():
            h = m.sequence_states(b["items"], b["lengths"])[b["targets"] > 0]
            tgt = b["targets"][b["targets"] > 0]
            table = m.item_vectors(None)
            table = torch.cat([m.padding_vector(), table[1:]]) if padding else table[1:]
            logits = h @ F.normalize(table, dim=-1).T / TAU
            expect, worst = by_hand(logits, tgt if padding else tgt - 1)
            assert m.loss(b, _Train()).item() == pytest.approx(expect, rel=1e-5)
            assert worst < -math.log(eps)  # capped
            m.cfg.loss_eps = 0.0
            assert abs(m.loss(b, _Train()).item() - expect) > 1e-3
    m = _model(objective="pretrain", it_weight=0.0, pretrain_negatives="batch", loss_eps=eps)
    _randomise(m, 8)
    m.eval()
    with torch.no_grad():
        h = m.sequence_states(b["items"], b["lengths"])
        mask = b["targets"] > 0
        hs, tgt = F.normalize(h[mask], dim=-1), b["targets"][mask]
        pos = F.normalize(m.item_vectors(tgt), dim=-1)
        logits = hs @ pos.T / TAU
        ids = tgt.tolist()
        for i in range(len(ids)):
            for j in range(len(ids)):
                if i != j and ids[i] == ids[j]:
                    logits[i, j] = float("-inf")
        expect, _ = by_hand(logits, torch.arange(len(ids)))
        assert m.loss(b, _Train()).item() == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("name,gamma", [("code", 0.99), ("code_pretrain", 0.995), ("paper", 0.99),
                                        ("paper_pretrain", 0.995)])
def test_presets_lr_decay_is_the_codes_steplr_stepped_per_epoch(name, gamma):
    """The code returns ``StepLR(step_size=1, gamma)`` from Lightning's ``configure_optimizers``
    without an interval, so it steps once per epoch; the presets' ``train.lr_schedule=step`` gives the
    same factor at every optimiser step of an epoch (and not gamma ** steps, per batch)."""
    from mmrec.runs.config import TrainConfig, lr_factor
    from mmrec.trainers.presets import preset

    p = preset("ant", name)
    tc = TrainConfig(lr_schedule=p["train.lr_schedule"].value, lr_step_epochs=p["train.lr_step_epochs"].value,
                     lr_gamma=p["train.lr_gamma"].value)
    assert tc.lr_gamma == gamma
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)
    per_epoch = 3
    for epoch in range(4):
        for k in range(per_epoch):
            assert lr_factor(tc, epoch * per_epoch + k, per_epoch) == pytest.approx(opt.param_groups[0]["lr"])
            opt.step()
        sched.step()  # Lightning: after each training epoch
    # per epoch, not per step: after one epoch of 3 steps the rate is gamma, not gamma ** 3
    assert lr_factor(tc, per_epoch, per_epoch) == pytest.approx(gamma)
    assert lr_factor(tc, per_epoch, per_epoch) != pytest.approx(gamma ** per_epoch)


def test_relearn_initialisation_scale_paper_against_code():
    """At the paper's sizes (text 768, image 1024, price 64 -> 256, 8 experts) ``relearn`` re-starts the
    experts' W at a fresh model's N(0, 0.02), the scale the code's own from-scratch model starts from,
    and ``relearn_code`` at the code's xavier-normal sd sqrt(2 / (in + out)): 2.2x, 2.0x and 4x larger."""
    dims = {"text": 768, "image": 1024, "price": 64}
    f = random_features(4, dims)
    torch.manual_seed(0)
    cfg = from_dict(ANTConfig, {"hidden": 256, "inner": 256, "layers": 1})
    pre = ANT(cfg, 4, 6, features=f)
    _randomise(pre, 6)
    state = {k: v.clone() for k, v in pre.state_dict().items()}
    sd = {}
    for policy in ("relearn", "relearn_code"):
        torch.manual_seed(1)
        m = ANT(cfg, 4, 6, features=f)
        apply_policy(m, state, POLICIES[policy])
        sd[policy] = {s: torch.stack([e.lin.weight for e in m.items.adaptors[s].experts]).std().item() for s in dims}
        if policy == "relearn_code":
            price_bias = m.items.adaptors["price"].experts[3].lin.bias
            assert torch.equal(price_bias, state["items.adaptors.price.experts.3.lin.bias"])  # kept
            assert not m.items.adaptors["text"].experts[0].bias.any()
    for s, d in dims.items():
        xavier = math.sqrt(2 / (d + 256))
        assert sd["relearn"][s] == pytest.approx(0.02, rel=0.02)
        assert sd["relearn_code"][s] == pytest.approx(xavier, rel=0.02)
    ratio = {s: sd["relearn_code"][s] / sd["relearn"][s] for s in dims}
    assert ratio["text"] == pytest.approx(2.2, abs=0.1) and ratio["image"] == pytest.approx(1.98, abs=0.1)
    assert ratio["price"] == pytest.approx(3.95, abs=0.15)


def test_lr_decay_is_a_per_epoch_step():
    m = _model(lr_decay=0.9)
    opt = torch.optim.Adam(m.param_groups(0.01), lr=0.01)
    for epoch in (1, 2, 3):
        m.on_epoch_start(epoch, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.81)
    assert m.epoch_report()["lr"] == pytest.approx(0.0081)


# --- adaptation policies --------------------------------------------------------------------------

def _pretrained(tmp_path, **cfg):
    pre = _model(seed=1, **cfg)
    _randomise(pre, 3)
    d = tmp_path / "pre"
    d.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in pre.state_dict().items()}, str(d / "best.safetensors"))
    (d / "config.json").write_text(json.dumps({"method": "ant", "model": {"hidden": pre.cfg.hidden},
                                               "train": {"max_len": 6}}))
    return pre, d


BLOCKS = ("encoder.blocks.",)
GATES = (".w_gate", ".w_noise")
# (loaded from the run, frozen) per policy, as predicates over parameter names
EXPECT = {
    "relearn": (lambda n: n.startswith(("encoder.blocks.", "encoder.norm.")), lambda n: n.startswith(BLOCKS)),
    "finetune": (lambda n: True, lambda n: n.startswith(("encoder.blocks.", "encoder.position."))),
    "freeze": (lambda n: True, lambda n: not n.endswith(GATES)),
    "scratch": (lambda n: False, lambda n: False),
}


@pytest.mark.parametrize("policy", sorted(EXPECT))
def test_policy_loads_reinitialises_and_freezes_exactly(tmp_path, policy):
    pre, run = _pretrained(tmp_path)
    fresh = {k: v.clone() for k, v in _model(seed=2).state_dict().items()}
    m = _model(seed=2, init_from=str(run), adapt=policy)
    loaded, frozen = EXPECT[policy]
    pre_w = pre.state_dict()
    for n, p in m.named_parameters():
        if loaded(n):
            assert torch.equal(p, pre_w[n]), n
        else:  # re-initialised = the value a fresh model (same seed) starts with, not the run's
            assert torch.equal(p, fresh[n]) and not torch.equal(p, pre_w[n]), n
        assert p.requires_grad == (not frozen(n)), n
    r = m.transfer_report
    assert r["policy"] == policy and set(r["frozen"]) == {n for n, _ in m.named_parameters() if frozen(n)}
    assert set(r["loaded"]) == {n for n in pre_w if loaded(n)}
    if policy == "relearn":
        assert set(r["reinitialised"]) == {n for n in pre_w if not loaded(n)}
    # one training step changes trainable parameters only (all those that get a gradient)
    m.train()
    opt = torch.optim.Adam(m.param_groups(0.01), lr=0.01)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.loss(_batch(), _Train()).backward()
    opt.step()
    for n, p in m.named_parameters():
        changed = not torch.equal(p, before[n])
        if not p.requires_grad:
            assert not changed and p.grad is None, n
        elif p.grad is not None and p.grad.abs().sum() > 0:
            assert changed, n
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(m.get_parameter(n).requires_grad for n in moved)


def test_relearn_code_redraws_by_the_released_rule_and_keeps_price_biases(tmp_path):
    pre, run = _pretrained(tmp_path)
    pre_w = pre.state_dict()
    fresh = _model(seed=2).state_dict()
    m = _model(seed=2, init_from=str(run), adapt="relearn_code")
    s = m.state_dict()
    for n in s:
        if n.startswith(("encoder.blocks.", "encoder.norm.")) or (".price.experts." in n and n.endswith("lin.bias")):
            assert torch.equal(s[n], pre_w[n]), n
        elif n.endswith(GATES) or (".experts." in n and n.endswith(".bias")):
            assert not s[n].any(), n  # gates and whitening centres back to 0
        else:  # positions, expert weights, missing vectors: new draws
            assert not torch.equal(s[n], pre_w[n]) and not torch.equal(s[n], fresh[n]), n
    w = s["items.adaptors.text.experts.0.lin.weight"]  # xavier-normal: sd sqrt(2 / (6 + 8))
    assert 0.5 * math.sqrt(2 / 14) < w.std().item() < 1.5 * math.sqrt(2 / 14)
    assert m.items.adaptors["text"].experts[0].bias.requires_grad
    assert not m.encoder.blocks[0].ffn.fc1.weight.requires_grad


def test_a_new_policy_is_data_and_reports_absent_and_unused_tensors(tmp_path):
    pre, _ = _pretrained(tmp_path, mode="transductive")
    # the target has no price features: the run's price adaptor is unused; its item ids never load
    f = _features()
    f.pop("price")
    m = _model(seed=2, features=f, mode="transductive")
    probe = AdaptPolicy("probe_norm", load=("encoder", "input_norm", "experts", "gates", "missing"),
                        freeze=("encoder", "experts", "gates", "missing"), train=("input_norm",))
    r = apply_policy(m, pre.state_dict(), probe)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.position.weight", "encoder.norm.weight", "encoder.norm.bias", "item.weight"}
    assert "item.weight" in r["unused"] and any(".price." in n for n in r["unused"])
    assert r["counts"]["loaded"] == len(r["loaded"]) and not r["absent"]
    assert set(POLICIES) >= {"relearn", "relearn_code", "finetune", "freeze", "scratch"}


def test_shape_mismatch_and_missing_run_are_clear_errors(tmp_path):
    _, run = _pretrained(tmp_path)  # hidden 8
    for policy in ("finetune", "relearn"):
        with pytest.raises(ConfigError, match=r"init_from=.*pre: \d+ tensor\(s\) that model.adapt=" + policy +
                                              r" loads have other shapes.*hidden=8.*pre-train again.*scratch"):
            _model(seed=2, hidden=16, inner=16, init_from=str(run), adapt=policy)
    # relearn re-learns the item side: another text encoder (dimension 9) is fine, finetune is not
    f = _features(dims={"text": 9, "image": 5, "price": 4})
    m = _model(seed=2, features=f, init_from=str(run), adapt="relearn")
    assert m.transfer_report["counts"]["loaded"] > 0
    with pytest.raises(ConfigError, match=r"items.adaptors.text.experts.0.bias: run \[6\] vs this model \[9\]"):
        _model(seed=2, features=f, init_from=str(run), adapt="finetune")
    with pytest.raises(ConfigError, match="no best.safetensors"):
        _model(init_from=str(tmp_path), adapt="relearn")
    with pytest.raises(ConfigError, match="unknown adaptation policy model.adapt='nope'"):
        from_dict(ANTConfig, {"adapt": "nope"})
    with pytest.raises(ConfigError, match="no best.safetensors"):
        pretrained_state(tmp_path / "none")


# --- end to end -----------------------------------------------------------------------------------

def _entry(root, modality, ids, feats):
    entry = root / modality
    (entry / "shards").mkdir(parents=True)
    info = write_shard(entry / "shards" / "part-00000.h5", ids, feats, fmt="h5", dtype="float32")
    write_manifest(entry, {"version": 1, "name": modality, "encoder": {"encoder": "synthetic"}, "modality": modality,
                           "format": "h5", "dtype": "float32", "shape_per_item": [feats.shape[1]],
                           "n_items": len(ids), "n_rows": len(ids), "shards": [info], "missing": {},
                           "catalogue_hash": "x", "config_hash": "y", "library_versions": {}, "created": "now"})


def _prepared_text_image(tmp_path, n_items=20, no_image=(4, 9)):
    """Users walk a ring of ``n_items``; text for every item, image for all but ``no_image``."""
    ring = {f"u{u}": [str((u + k) % n_items + 1) for k in range(8)] for u in range(60)}
    raw = raw_from_sequences(ring)
    ids = [str(i) for i in range(1, n_items + 1)]
    raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids])
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    _entry(store, "text", ids, rng.normal(size=(n_items, 8)).astype(np.float32))
    img_ids = [i for i in ids if int(i) not in no_image]
    _entry(store, "image", img_ids, rng.normal(size=(len(img_ids), 6)).astype(np.float32))
    return ds, store


def test_pretrain_then_relearn_through_the_trainer(tmp_path):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from mmrec.cli import app

    ds, store = _prepared_text_image(tmp_path)
    base = {"dataset": str(ds), "method": "ant", "features": {"text": "text", "image": "image"}, "store": str(store),
            "model": {"hidden": 16, "inner": 16, "dropout": 0.1, "attn_dropout": 0.1},
            "train": {"epochs": 2, "threads": 1, "batch_size": 16}}
    pre = from_dict(RunConfig, {**base, "model": {**base["model"], "objective": "pretrain"}})
    res = Trainer(pre, tmp_path / "pre", log=lambda s: None).fit()
    assert res["features"]["image"]["items_with_feature"] == 18
    row = json.loads((tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss_parts"]["image_text"] > 0 and row["loss_parts"]["seq_item"] > 0
    ft = from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": str(tmp_path / "pre")}})
    tr = Trainer(ft, tmp_path / "ft", log=lambda s: None)
    pre_w = load_file(str(tmp_path / "pre" / "best.safetensors"))
    m = tr.raw_model
    blocks = [n for n, _ in m.named_parameters() if n.startswith("encoder.blocks.")]
    assert blocks and all(not m.get_parameter(n).requires_grad for n in blocks)
    assert sum(len(g["params"]) for g in tr.opt.param_groups) == sum(p.requires_grad for p in m.parameters())
    tr.fit()
    after = load_file(str(tmp_path / "ft" / "best.safetensors"))
    assert all(torch.equal(after[n], pre_w[n]) for n in blocks)  # frozen means unchanged
    assert not torch.equal(after["encoder.position.weight"], pre_w["encoder.position.weight"])
    first = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["transfer"]["policy"] == "relearn" and first["transfer"]["frozen"] == len(blocks)
    # the checkpoint evaluates again to the same figures (the policy is re-applied, then best loaded)
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output
    res_ft = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert json.loads(r.output)["ndcg@10"] == pytest.approx(res_ft["test"]["ndcg@10"], abs=1e-12)


def test_init_from_names_a_kept_epoch_only_with_a_trailing_at_number():
    from mmrec.trainers.transfer import split_init_from

    assert split_init_from("runs/pre@20") == (Path("runs/pre"), 20)
    assert split_init_from("runs/a@b/pre") == (Path("runs/a@b/pre"), None)  # an @ inside a path is a path
    assert split_init_from("runs/pre@") == (Path("runs/pre@"), None)
    assert split_init_from("runs/v@2/pre@3") == (Path("runs/v@2/pre"), 3)


def test_init_from_an_epoch_the_pretraining_kept(tmp_path):
    """``train.keep_every=1`` keeps each epoch's weights; ``model.init_from=RUN@1`` starts from epoch 1's
    (not the best's); an epoch not kept is an error listing the kept ones."""
    from safetensors.torch import load_file

    from mmrec.runs.folder import RunFolder

    ds, store = _prepared_text_image(tmp_path)
    base = {"dataset": str(ds), "method": "ant", "features": {"text": "text", "image": "image"}, "store": str(store),
            "model": {"hidden": 16, "inner": 16, "dropout": 0.1, "attn_dropout": 0.1},
            "train": {"epochs": 2, "threads": 1, "batch_size": 16, "keep_every": 1}}
    pre = from_dict(RunConfig, {**base, "model": {**base["model"], "objective": "pretrain"}})
    Trainer(pre, tmp_path / "pre", log=lambda s: None).fit()
    folder = RunFolder(tmp_path / "pre")
    assert folder.kept_epochs() == [1, 2]
    e1, e2 = (load_file(str(folder.epoch_path(k))) for k in (1, 2))
    last = load_file(str(tmp_path / "pre" / "last" / "model.safetensors"))
    assert all(torch.equal(e2[k], last[k]) for k in last)  # epoch 2's weights are the final ones
    blocks = [k for k in e1 if k.startswith("encoder.blocks.")]
    assert blocks and any(not torch.equal(e1[k], e2[k]) for k in blocks)
    ft = from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": f"{tmp_path / 'pre'}@1"}})
    m = Trainer(ft, tmp_path / "ft", log=lambda s: None).raw_model
    assert all(torch.equal(m.state_dict()[k], e1[k]) for k in blocks)  # frozen blocks from epoch 1
    bad = from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": f"{tmp_path / 'pre'}@5"}})
    with pytest.raises(ConfigError, match=r"no weights of epoch 5 in .*pre \(kept: 1, 2\)"):
        Trainer(bad, tmp_path / "ft5", log=lambda s: None)
    with pytest.raises(ConfigError, match="train.keep_every must be >= 0"):
        from_dict(RunConfig, {**base, "train": {**base["train"], "keep_every": -1}})


def test_a_pretraining_folder_saved_before_pretrain_negatives_resumes_with_batch_negatives():
    from mmrec.runs.config import upgrade_saved_config

    up = upgrade_saved_config({"dataset": "d", "method": "ant", "model": {"objective": "pretrain"}}, ANTConfig)
    assert up["model"]["pretrain_negatives"] == "batch" and ANTConfig().pretrain_negatives == "other_users"


# --- one item table per step (bench/method_cost.py) ------------------------------------------------

def _per_use_target_loss(m: ANT, b: dict) -> torch.Tensor:
    """The target loss as computed before the shared table: the input items' vectors position by
    position (``item_vectors(items)``) and a second computation of the whole table for the softmax."""
    from mmrec.trainers.modules.sequence import encode

    x = m.item_vectors(b["items"])
    h = F.normalize(encode(m.encoder, x, b["lengths"]), dim=-1)
    mask = b["targets"] > 0
    e = F.normalize(m.item_vectors(None), dim=-1)
    logits = h[mask] @ e[1:].T / m.cfg.temperature
    return F.cross_entropy(logits, b["targets"][mask] - 1)


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_one_item_table_per_step_keeps_the_loss_and_every_gradient(mode):
    """Without dropout and gate noise, the step's shared table (inputs read its rows) gives the loss
    and every gradient of the per-use computation (text and image whitening experts, price affine
    experts, the interaction, the missing vectors; with ``transductive`` the id table)."""
    m = _model(gate_noise=False, mode=mode)
    _randomise(m, 5)
    m.train()
    b = _batch()

    new_loss, new = loss_and_grads(m, lambda: m.loss(b, _Train()))
    old_loss, old = loss_and_grads(m, lambda: _per_use_target_loss(m, b))
    assert m._table is None  # nothing kept after the step
    assert new_loss.item() == pytest.approx(old_loss.item(), abs=1e-6)
    assert new.keys() == old.keys() and any(".experts." in n for n in new) and any("missing" in n for n in new)
    for name in old:
        assert torch.allclose(new[name], old[name], atol=1e-6), name


def test_one_item_table_per_step_is_one_draw_shared_by_inputs_and_candidates():
    """With dropout and gate noise on, an item's input vector in a step is its candidate row of that
    step (one draw per step), and two steps draw anew; evaluation (no autograd) reads one table,
    equal to the per-position vectors."""
    m = _model(adaptor_dropout=0.3)
    _randomise(m, 6)
    m.train()
    b = _batch()
    seen = {}
    m.encoder.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].detach()))
    table_of = m.item_embeddings

    def spy():
        seen["table"] = table_of().detach()
        return seen["table"]

    m.item_embeddings = spy
    m.loss(b, _Train())
    first = seen["table"]
    real = b["items"] > 0
    assert torch.allclose(F.normalize(seen["x"][real], dim=-1), first[b["items"][real]], atol=1e-6)
    m.loss(b, _Train())
    assert not torch.allclose(seen["table"], first)  # a new draw in the next step
    del m.item_embeddings
    m.eval()
    with torch.no_grad():
        q = m.query(b["items"], b["lengths"])
        assert m._table is not None  # kept for the evaluation
        from mmrec.trainers.modules.sequence import encode

        expect = F.normalize(encode(m.encoder, m.item_vectors(b["items"]), b["lengths"], last=True), dim=-1)
    assert torch.allclose(q, expect, atol=1e-6)
    with torch.no_grad():
        m.items.feat_image.mul_(-1.0)  # features written in place: the kept table is not reused
        q2 = m.query(b["items"], b["lengths"])
        expect2 = F.normalize(encode(m.encoder, m.item_vectors(b["items"]), b["lengths"], last=True), dim=-1)
    assert not torch.allclose(q2, q, atol=1e-3) and torch.allclose(q2, expect2, atol=1e-6)
    m.train()
    assert m._table is None
