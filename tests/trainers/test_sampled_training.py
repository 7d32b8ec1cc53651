"""Training with the large-catalogue losses (train.loss=sampled_ce, gbce): SASRec learns with each,
a run stopped inside an epoch resumes to the same weights (the shared draws come from each batch's
own generator), the popularity draw counts the training part only, every method's main loss goes
through the one dispatcher, and the settings a method or catalogue cannot take are refused."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import random_features, raw_from_sequences
from safetensors.torch import load_file

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError, Preempted
from mmrec.runs.config import RunConfig, TrainConfig
from mmrec.trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

LOSSES = {
    "sampled_ce uniform": {"loss": "sampled_ce", "sampled_negatives": 8},
    "sampled_ce popularity": {"loss": "sampled_ce", "sampled_negatives": 8, "sampled_distribution": "popularity",
                              "sampled_power": 0.75},
    # one negative per position: on this 40-item ring the next item (a validation / test item, not
    # avoided) is often a negative, and more negatives weigh it more (hr@5 0.84 at k = 2)
    "sampled_ce groups": {"loss": "sampled_ce", "sampled_negatives": 8, "sampled_groups": 4,
                          "sampled_correction": "negatives"},
    "gbce": {"loss": "gbce", "negatives": 1, "gbce_t": 0.5},
    "gbce k=3": {"loss": "gbce", "negatives": 3, "gbce_t": 0.75},
}


@pytest.fixture
def ds(tmp_path, successor_raw):
    return prepare(successor_raw, tmp_path / "ds", PrepareConfig())


def _run(ds, method="sasrec", model=None, **train):
    return from_dict(RunConfig, {"dataset": str(ds), "method": method,
                                 "model": {"hidden": 16, "inner": 32, "dropout": 0.1, "attn_dropout": 0.1}
                                 if model is None else model,
                                 "train": {"epochs": 3, "threads": 1, **train}})


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["sampled_ce uniform", "sampled_ce popularity", "sampled_ce groups", "gbce"])
def test_sasrec_learns_the_successor_rule_with_each_loss(ds, tmp_path, name):
    res = Trainer(_run(ds, **LOSSES[name], epochs=20, lr=0.01, patience=20), tmp_path / "r", log=lambda s: None).fit()
    losses = _losses(tmp_path / "r")
    assert losses[-1] < 0.5 * losses[0], losses
    assert res["test"]["hr@5"] > 0.8, res["test"]  # popularity alone gets ~0.12 on this ring
    p = res["protocol"]
    assert p["loss"] == LOSSES[name]["loss"]
    if p["loss"] == "sampled_ce":
        default = TrainConfig()  # what a setting the row leaves out takes
        groups = LOSSES[name].get("sampled_groups", default.sampled_groups)
        assert p["sampled_softmax"] == {"negatives_per_step": 8,
                                        "distribution": LOSSES[name].get("sampled_distribution", default.sampled_distribution),
                                        "power": LOSSES[name].get("sampled_power", default.sampled_power),
                                        "correction": f"log-Q on {LOSSES[name].get('sampled_correction', default.sampled_correction)}",
                                        **({"groups": groups} if groups > 1 else {})}
    else:
        assert p["train_negatives"] == 1 and p["gbce_t"] == 0.5


@pytest.mark.parametrize("name", ["sampled_ce popularity", "sampled_ce groups", "gbce k=3"])
def test_a_run_stopped_inside_an_epoch_resumes_to_the_same_weights(ds, tmp_path, name):
    train = {**LOSSES[name], "epochs": 3, "batch_size": 16, "patience": 10}
    ref = Trainer(_run(ds, **train), tmp_path / "ref", log=lambda s: None).fit()
    t = Trainer(_run(ds, **train), tmp_path / "cut", log=lambda s: None)
    real, seen = t.samples.batch, {"n": 0}

    def batch(*a, **k):  # a stop request inside the 17th step (the second epoch)
        seen["n"] += 1
        if seen["n"] == 17:
            t.request_stop("test")
        return real(*a, **k)

    t.samples.batch = batch
    with pytest.raises(Preempted):
        t.fit()
    assert json.loads((tmp_path / "cut" / "last" / "state.json").read_text())["partial"]["next_batch"] > 0
    res = Trainer(_run(ds, **train), tmp_path / "cut", log=lambda s: None).fit(resume=True)
    assert res["test"] == ref["test"] and res["valid"] == ref["valid"]
    a = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "ref")
    # and the draws matter: another seed trains to other weights
    Trainer(_run(ds, **train, seed=7), tmp_path / "other", log=lambda s: None).fit()
    c = load_file(str(tmp_path / "other" / "last" / "model.safetensors"))
    assert not torch.equal(a["item.weight"], c["item.weight"])


def test_popularity_counts_only_the_training_part(tmp_path):
    # "v" and "t" are only ever a validation / test item; "x" is a training item of u1 and u2
    seqs = {"u0": ["a", "b", "c", "v", "t"], "u1": ["b", "c", "x", "a", "b"], "u2": ["c", "x", "a", "b", "c"]}
    folder = prepare(raw_from_sequences(seqs), tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    data = PreparedDataset(folder)
    t = Trainer(_run(folder, loss="sampled_ce", sampled_negatives=2, sampled_distribution="popularity"),
                tmp_path / "r", log=lambda s: None)
    raw = data.raw_item_ids
    drawable = {raw[i] for i in t.shared_negatives.ids}
    assert drawable == {"a", "b", "c", "x"}
    counts = {raw[i]: int(c) for i, c in enumerate(data.item_popularity) if i}
    # training parts (leave-one-out): u0 a b c, u1 b c x, u2 c x a; "b" is also a valid and a test item
    assert counts["v"] == counts["t"] == 0 and counts["b"] == 2 and counts["c"] == 3
    # uniform draws may take any item of the catalogue (as the full softmax's negatives)
    u = Trainer(_run(folder, loss="sampled_ce", sampled_negatives=2), tmp_path / "u", log=lambda s: None)
    assert {raw[i] for i in u.shared_negatives.ids} == {"a", "b", "c", "x", "v", "t"}


def test_settings_a_catalogue_or_a_method_cannot_take_are_refused(ds, tmp_path):
    with pytest.raises(ConfigError, match=r"train.sampled_negatives=40 must be at least 1 and below the 40 items"):
        Trainer(_run(ds, loss="sampled_ce", sampled_negatives=40), tmp_path / "a", log=lambda s: None)
    with pytest.raises(ConfigError, match=r"train.negatives=40 must be below the 40 items with train.loss=gbce"):
        Trainer(_run(ds, loss="gbce", negatives=40), tmp_path / "b", log=lambda s: None)
    with pytest.raises(ConfigError, match=r"method odmt does not support train.loss=sampled_ce; use one of \('ce',\)"):
        Trainer(_run(ds, method="odmt", model={}, loss="sampled_ce"), tmp_path / "c", log=lambda s: None)


# --------------------------------------------------------------------------- every method's call site

N = 12
ITEMS = torch.tensor([[1, 2, 3, 2, 0, 0], [7, 3, 9, 5, 6, 0], [4, 8, 0, 0, 0, 0]])
TARGETS = torch.tensor([[2, 3, 2, 4, 0, 0], [3, 9, 5, 6, 11, 0], [8, 12, 0, 0, 0, 0]])
LENGTHS = torch.tensor([4, 5, 2])
DOMAIN = np.array([0] + [1 + i % 2 for i in range(N)])


def _method(name):
    from mmrec.trainers.methods import get_method

    cls = get_method(name)
    small = {"hidden": 8, "inner": 16, "dropout": 0.0, "attn_dropout": 0.0}
    cfg, kw = dict(small), {}
    if name == "gru4rec":
        cfg = {"hidden": 8, "dropout": 0.0}
    elif name == "kdsr":
        cfg.update(feature_dropout=0.0, code_count=4, code_sample_pairs=50)
        kw["features"] = random_features(N, {"text": 16, "image": 12})
    elif name == "ant":
        cfg.update(adaptor_dropout=0.0)
        kw["features"] = random_features(N, {"text": 6, "image": 5})
    elif name == "unisrec":
        cfg.update(adaptor_dropout=0.0, heads=2)
        kw["features"] = random_features(N, {"text": 6})
    elif name == "syncrec":
        cfg.update(heads=1, experts=4, cross_ratio=0.5)
        kw.update(item_domain=DOMAIN, domain_names=["a", "b"])
    torch.manual_seed(0)
    return cls(from_dict(cls.Config, cfg, prefix="model."), N, 6, **kw).eval()


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "kdsr", "ant", "unisrec", "syncrec"])
def test_every_methods_main_loss_goes_through_the_dispatcher(name):
    """A sampled softmax whose K candidates are every item, without correction, is the full softmax:
    each method's loss (all its terms) is then the same under ``sampled_ce`` as under ``ce``."""
    m = _method(name)
    assert "sampled_ce" in type(m).losses
    batch = {"items": ITEMS, "targets": TARGETS, "lengths": LENGTHS}
    torch.manual_seed(1)
    full = m.loss(batch, SimpleNamespace(loss="ce"))
    torch.manual_seed(1)
    every = {**batch, "sampled_items": torch.randperm(N) + 1}
    sampled = m.loss(every, SimpleNamespace(loss="sampled_ce"))
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)
    # and with K < n items the loss is another number
    torch.manual_seed(1)
    fewer = m.loss({**batch, "sampled_items": torch.tensor([1, 4, 9])}, SimpleNamespace(loss="sampled_ce"))
    assert fewer.item() != pytest.approx(full.item(), rel=1e-3)
    if "gbce" in type(m).losses:  # per-position negatives: finite, with gradients
        m.train()
        neg = torch.randint(1, N + 1, (*ITEMS.shape, 3), generator=torch.Generator().manual_seed(0))
        loss = m.loss({**batch, "negatives": neg}, SimpleNamespace(loss="gbce", gbce_t=0.75))
        loss.backward()
        assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_sasrec_gbce_at_t0_with_one_negative_is_half_of_bce():
    m = _method("sasrec")
    neg = torch.randint(1, N + 1, ITEMS.shape, generator=torch.Generator().manual_seed(0))
    batch = {"items": ITEMS, "targets": TARGETS, "lengths": LENGTHS, "negatives": neg}
    bce = m.loss(batch, SimpleNamespace(loss="bce"))
    g = m.loss(batch, SimpleNamespace(loss="gbce", gbce_t=0.0))
    assert g.item() == pytest.approx(bce.item() / 2, rel=1e-6)


@pytest.mark.parametrize("name,cfg,message", [
    ("ant", {"objective": "pretrain"}, "ant pre-training .* takes train.loss=ce only, not sampled_ce"),
    ("ant", {"padding_class": True}, "model.padding_class / model.loss_eps .* train.loss=ce only"),
    ("unisrec", {"objective": "pretrain"}, "unisrec pre-training .* takes train.loss=ce only, not sampled_ce"),
    ("unisrec", {"pad_candidate": True}, "model.pad_candidate=true .* train.loss=ce only"),
    ("syncrec", {"ntg_scope": "domain"}, "model.ntg_scope=domain .* use model.ntg_scope=all"),
])
def test_method_settings_without_a_sampled_softmax_say_so(name, cfg, message):
    m = _method(name)
    for k, v in cfg.items():
        setattr(m.cfg, k, v)
    batch = {"items": ITEMS, "targets": TARGETS, "lengths": LENGTHS, "sampled_items": torch.tensor([1, 2])}
    with pytest.raises(ConfigError, match=message):
        m.loss(batch, SimpleNamespace(loss="sampled_ce"))


def test_the_loop_draws_one_set_of_negatives_per_group_of_rows(ds, tmp_path, monkeypatch):
    import mmrec.trainers.modules.losses as losses

    seen, real = [], losses.sampled_ce

    def spy(h, targets, item_emb, candidates, *a, **k):
        if candidates.dim() == 2:
            seen.append(candidates.clone())
        return real(h, targets, item_emb, candidates, *a, **k)

    monkeypatch.setattr(losses, "sampled_ce", spy)
    Trainer(_run(ds, loss="sampled_ce", sampled_negatives=8, sampled_groups=3, epochs=1), tmp_path / "g",
            log=lambda s: None).fit()
    assert seen and all(c.shape == (3, 8) for c in seen)
    assert all(len(set(row.tolist())) == 8 for c in seen for row in c)  # each draw: 8 distinct items
    assert any(not torch.equal(c[0], c[1]) for c in seen)  # the groups' draws differ
