"""Feature-based methods: items from features, missing vectors, cold items, UniSRec transfer."""

import functools
import json
import shutil

import numpy as np
import pytest
import torch

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError
from mmrec.features.aligned import ItemFeatures
from mmrec.features.store import write_manifest, write_shard
from mmrec.trainers.loop import RunConfig, Trainer
from mmrec.trainers.methods import METHODS
from mmrec.trainers.modules.items import FeatureItems

from conftest import random_features, raw_from_sequences


def _feats(n_items, dims, missing=()):
    return random_features(n_items, dims, {slot: missing for slot in dims})


def test_feature_items_use_the_missing_vector_never_zero():
    f = _feats(5, {"text": 6, "image": 4}, missing=[2])
    items = FeatureItems(f, ["text", "image"], 3, adaptor="linear", fusion="sum")
    items.eval()
    t = items.table()
    assert t.shape == (6, 3) and not t[0].any()
    lin_t = items.adaptors["text"][1]
    lin_i = items.adaptors["image"][1]
    # item 2 has neither feature: both slots give their learned missing vectors, summed
    assert torch.allclose(t[2], items.missing["text"] + items.missing["image"], atol=1e-6)
    expect3 = lin_t(f["text"].table[3]) + lin_i(f["image"].table[3])
    assert torch.allclose(t[3], expect3, atol=1e-6)
    ids = torch.tensor([[3, 0, 2]])
    assert torch.allclose(items.lookup(ids)[0], t[[3, 0, 2]], atol=1e-6)


def test_feature_items_refuse_token_features():
    f = {"text": ItemFeatures("text", torch.zeros(4, 3, 5), torch.ones(4, dtype=torch.bool), {})}
    with pytest.raises(ConfigError, match="token sequences"):
        FeatureItems(f, ["text"], 8)


def test_mmsr_fusion_gain_reaches_the_attention_fusion():
    """model.fusion_gain sets the attention fusion's initial output gain (default 1/sqrt(hidden)); a
    non-positive one is refused with the setting's name."""
    f = _feats(10, {"text": 12, "image": 8})
    cls = METHODS["mmsr"]
    default = cls(from_dict(cls.Config, {"hidden": 16, "inner": 32}), 10, 5, features=f)
    assert default.items.fusion.ffn.norm.weight.tolist() == [0.25] * 16
    code = cls(from_dict(cls.Config, {"hidden": 16, "inner": 32, "fusion_gain": 1.0}), 10, 5, features=f)
    assert code.items.fusion.ffn.norm.weight.tolist() == [1.0] * 16
    with pytest.raises(ConfigError, match="model.fusion_gain must be positive"):
        cls(from_dict(cls.Config, {"hidden": 16, "fusion_gain": -1.0}), 10, 5, features=f)


def test_a_run_saved_before_fusion_gain_resumes_with_the_gain_it_had(tmp_path):
    """Runs saved before model.fusion_gain existed started attention fusions at gain 1: such a folder
    resumes only with --set model.fusion_gain=1; with another fusion, or one modality (no fusion at
    all), the setting changes nothing and the run resumes as it is."""
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(20)}
    ds, store = _prepared_with_text(tmp_path, ring, 20)
    shutil.copytree(store / "text", store / "image")  # a second modality: the same vectors as "image"
    manifest = next((store / "image").glob("manifest*"))
    manifest.write_text(manifest.read_text().replace('"modality": "text"', '"modality": "image"')
                        .replace('"name": "text"', '"name": "image"'))

    def run(fusion, epochs, slots=("text", "image"), **model):
        return from_dict(RunConfig, {"dataset": str(ds), "method": "mmsr", "features": {s: s for s in slots},
                                     "store": str(store), "model": {"hidden": 8, "inner": 16, "fusion": fusion, **model},
                                     "train": {"epochs": epochs, "threads": 1, "batch_size": 32}})

    one_slot = functools.partial(run, slots=("text",))
    for fusion, make in (("merged_attention", run), ("sum", run), ("merged_attention-text", one_slot)):
        Trainer(make(fusion.split("-")[0], 1), tmp_path / fusion, log=lambda s: None).fit()
        cfg_path = tmp_path / fusion / "config.json"
        cfg = json.loads(cfg_path.read_text())
        assert cfg["model"]["fusion_gain"] is None
        del cfg["model"]["fusion_gain"]  # as if saved before the setting existed
        cfg["train"]["epochs"] = 2
        cfg_path.write_text(json.dumps(cfg))
    saved = (tmp_path / "merged_attention" / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"model.fusion_gain: 1.0 there, None now"):
        Trainer(run("merged_attention", 2), tmp_path / "merged_attention", log=lambda s: None).fit(resume=True)
    assert (tmp_path / "merged_attention" / "config.json").read_text() == saved  # the refusal changed nothing
    res = Trainer(run("merged_attention", 2, fusion_gain=1.0), tmp_path / "merged_attention",
                  log=lambda s: None).fit(resume=True)
    assert res["epochs_run"] == 2
    assert Trainer(run("sum", 2), tmp_path / "sum", log=lambda s: None).fit(resume=True)["epochs_run"] == 2
    res = Trainer(one_slot("merged_attention", 2), tmp_path / "merged_attention-text", log=lambda s: None).fit(resume=True)
    assert res["epochs_run"] == 2


@pytest.mark.parametrize("name", ["mmsr", "sasrec_ef", "sasrec_lf", "fdsa", "unisrec"])
def test_methods_score_shapes_and_which_can_rank_unseen_items(name):
    cls = METHODS[name]
    f = _feats(30, {"text": 12, "image": 8})
    if name == "unisrec":
        f.pop("image")
    cfg = from_dict(cls.Config, {"hidden": 16, "inner": 32} if "hidden" in cls.Config.__dataclass_fields__ else {})
    m = cls(cfg, 30, 10, features=f)
    m.eval()
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    lengths = torch.tensor([3, 2])
    q = m.query(items, lengths)
    s = m.score(q, torch.arange(1, 31))
    assert s.shape == (2, 30) and torch.isfinite(s).all()
    # an item's score comes from its features when the method ranks unseen items: change item 7's
    # features and its score changes; for id-scored methods (fdsa) it does not
    before = s[:, 6].clone()
    getattr(m, "feat", None) or getattr(m, "items", None) or getattr(m, "text")
    for mod in m.modules():
        if isinstance(mod, FeatureItems):
            getattr(mod, "feat_text")[7] += 5.0
    m.train(); m.eval()  # drop the cached evaluation table
    after = m.score(m.query(items, lengths), torch.arange(1, 31))[:, 6]
    ranks_unseen = m.ranks_unseen_items if m.ranks_unseen_items is not None else bool(m.modalities)
    assert ranks_unseen == (name != "fdsa")
    assert (not torch.allclose(before, after)) == ranks_unseen


def _prepared_with_text(tmp_path, seqs, n_items, dim=8, seed=0):
    raw = raw_from_sequences(seqs)
    ids = [str(i) for i in range(1, n_items + 1)]
    raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids])
    ds = prepare(raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    # a text "feature" that reveals the successor rule: item k's vector is a one-hot-ish code of k
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_items, dim)).astype(np.float32)
    entry = tmp_path / "store" / "text"
    (entry / "shards").mkdir(parents=True)
    info = write_shard(entry / "shards" / "part-00000.h5", ids, feats, fmt="h5", dtype="float32")
    write_manifest(entry, {"version": 1, "name": "text", "encoder": {"encoder": "synthetic"}, "modality": "text",
                           "format": "h5", "dtype": "float32", "shape_per_item": [dim], "n_items": n_items,
                           "n_rows": n_items, "shards": [info], "missing": {}, "catalogue_hash": "x",
                           "config_hash": "y", "library_versions": {}, "created": "now"})
    return ds, tmp_path / "store"


def test_unisrec_pretrain_then_finetune_loads_and_freezes(tmp_path, successor_raw):
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(60)}
    ds, store = _prepared_with_text(tmp_path, ring, 20)
    base = {"dataset": str(ds), "method": "unisrec", "features": {"text": "text"}, "store": str(store),
            "model": {"hidden": 16, "inner": 32, "dropout": 0.1, "attn_dropout": 0.1},
            "train": {"epochs": 2, "threads": 1, "batch_size": 16}}
    pre = from_dict(RunConfig, {**base, "model": {**base["model"], "objective": "pretrain"}})
    res = Trainer(pre, tmp_path / "pre", log=lambda s: None).fit()
    assert res["features"]["text"]["items_with_feature"] == 20
    ft = from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": str(tmp_path / "pre")}})
    tr = Trainer(ft, tmp_path / "ft", log=lambda s: None)
    m = tr.raw_model
    assert m.loaded_from["frozen"]
    from safetensors.torch import load_file

    pre_w = load_file(str(tmp_path / "pre" / "best.safetensors"))
    blocks = {n: p for n, p in m.named_parameters() if n.startswith("encoder.blocks")}
    assert blocks and all(not p.requires_grad for p in blocks.values())
    assert all(torch.equal(p.detach(), pre_w[n]) for n, p in blocks.items())
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(n.startswith("text.adaptors") for n in trainable) and "encoder.norm.weight" in trainable
    assert not any(n.startswith("encoder.position") for n in trainable)
    res = tr.fit()
    after = load_file(str(tmp_path / "ft" / "best.safetensors"))
    assert all(torch.equal(after[n], pre_w[n]) for n in blocks)  # frozen means unchanged
    # the fine-tuned run evaluates on its own: its checkpoint holds the pre-trained tensors too
    import shutil

    from typer.testing import CliRunner

    from mmrec.cli import app

    shutil.rmtree(tmp_path / "pre")
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ndcg@10"] == pytest.approx(res["test"]["ndcg@10"], abs=1e-12)
    with pytest.raises(ConfigError, match="no best.safetensors"):
        Trainer(from_dict(RunConfig, {**base, "model": {**base["model"], "init_from": str(tmp_path)}}),
                tmp_path / "x", log=lambda s: None)


def test_cold_items_are_ranked_by_a_feature_method(tmp_path):
    # every user walks the ring 1..20; item features are random but fixed: mmsr-like methods can
    # still rank held-out items, and the results carry cold and warm figures for them
    ring = {f"u{u}": [str((u + k) % 20 + 1) for k in range(8)] for u in range(80)}
    ds, store = _prepared_with_text(tmp_path, ring, 20)
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec_ef", "features": {"text": "text"},
                                "store": str(store), "cold": {"fraction": 0.2, "seed": 0},
                                "model": {"hidden": 16, "inner": 32, "dropout": 0.1, "attn_dropout": 0.1},
                                "train": {"epochs": 2, "threads": 1}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    assert "ndcg@10" in res["test_cold"] and "ndcg@10" in res["test_warm"]
    assert res["test_cold"]["n_cases"] + res["test_warm"]["n_cases"] == res["test"]["n_cases"]


def test_feature_method_without_features_says_what_to_do(tmp_path, successor_raw):
    ds = prepare(successor_raw, tmp_path / "ds", PrepareConfig())
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "mmsr", "store": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"mmsr builds items from features: give --features "
                                          r"text=ENTRY,image=ENTRY \(at least one of text, image, price\)"):
        Trainer(run, tmp_path / "r", log=lambda s: None)
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "unisrec", "store": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"method unisrec needs features for text: give them with "
                                          r"--features text=ENTRY \(store .*none in"):
        Trainer(run, tmp_path / "r", log=lambda s: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_overfits_a_tiny_ring_and_round_trips_its_checkpoint(tmp_path, name):
    """Each user walks a ring of 20 items (item k is followed by k + 1): every method except the
    popularity baseline must learn the rule; the saved best checkpoint, loaded into a fresh model
    through `mmrec evaluate`, must give the test metrics of the run to the last digit."""
    from typer.testing import CliRunner

    from mmrec.cli import app

    ring = {f"u{u:03d}": [str((u + k) % 20 + 1) for k in range(10)] for u in range(100)}
    ds, store = _prepared_with_text(tmp_path, ring, 20, dim=16)
    cls = METHODS[name]
    model = {"hidden": 32, "inner": 64, "dropout": 0.0, "attn_dropout": 0.0} if "inner" in cls.Config.__dataclass_fields__ else {}
    if name == "gru4rec":
        model = {"hidden": 32, "dropout": 0.0}
    if name == "unisrec":
        model["adaptor_dropout"] = 0.0
    if "feature_dropout" in cls.Config.__dataclass_fields__:
        model["feature_dropout"] = 0.0
    run = from_dict(RunConfig, {"dataset": str(ds), "method": name, "store": str(store),
                                "features": {"text": "text"} if cls.modalities else {}, "model": model,
                                "train": {"epochs": 40, "lr": 0.01, "batch_size": 32, "threads": 1, "patience": 40}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if name == "pop":
        # every item is equally popular on the ring: the best a per-item score can do is uniform,
        # whose cross-entropy is ln 20, and ten of twenty items in the top ten
        import math

        assert losses[-1] == pytest.approx(math.log(20), abs=0.01)
        assert res["test"]["hr@10"] <= 0.6
    else:
        assert losses[-1] < 0.8 * losses[0]
        assert res["test"]["hr@5"] >= 0.9, res["test"]
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    for k, v in res["test"].items():
        assert again[k] == pytest.approx(v, abs=1e-12), k


def test_a_method_gets_states_and_query_from_its_encoder_input_alone():
    """``encoder_input`` (+ ``encoder_output``) is enough: ``sequence_states`` runs the encoder over
    it, ``query`` the encoder's last position; a method with neither hook says which to write."""
    from mmrec.trainers.base import SequentialRecommender
    from mmrec.trainers.modules.sequence import TransformerEncoder, gather_last

    class Doubled(SequentialRecommender):
        def __init__(self):
            super().__init__(None, 9, 6)
            self.item = torch.nn.Embedding(10, 8)
            self.encoder = TransformerEncoder(8, 2, 2, 16, 0.0, 0.0, 6)

        def encoder_input(self, items):
            return self.item(items)

        def encoder_output(self, states):
            return 2 * states

    torch.manual_seed(0)
    m = Doubled().eval()
    items, lengths = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]]), torch.tensor([3, 4])
    with torch.no_grad():
        h = m.sequence_states(items, lengths)
        assert torch.allclose(h, 2 * m.encoder(m.item(items), lengths))
        assert torch.allclose(m.query(items, lengths), gather_last(h, lengths), atol=1e-6)

    class Neither(SequentialRecommender):
        pass

    with pytest.raises(NotImplementedError, match="Neither implements neither encoder_input nor sequence_states"):
        Neither(None, 9, 6).query(items, lengths)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_query_is_the_state_at_the_last_real_position(name):
    """Methods whose ``query`` skips work (the transformer's last block at one position) must give
    the state of ``sequence_states`` at each row's last real position."""
    from mmrec.trainers.modules.sequence import gather_last

    cls = METHODS[name]
    kw = {"features": _feats(30, {"text": 12})} if cls.modalities else {}
    m = cls(from_dict(cls.Config, {}), 30, 10, **kw).eval()
    torch.manual_seed(0)
    items = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 5, 1])
    with torch.no_grad():
        expect = gather_last(m.sequence_states(items, lengths), lengths)
        assert torch.allclose(m.query(items, lengths), expect, atol=1e-5)


def test_item_geometry_mean_pairwise_cosine_by_hand():
    """bench/item_geometry.py: rows (1,0), (2,0), (0,3): pairs 1, 0, 0 -> mean 1/3; parallel rows -> 1."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "item_geometry.py"
    spec = importlib.util.spec_from_file_location("item_geometry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert mod.mean_pairwise_cosine(x, sample=3) == pytest.approx(1 / 3)
    assert mod.mean_pairwise_cosine(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), sample=10) == pytest.approx(1.0)
    assert mod.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), sample=2) == pytest.approx(-1.0)


def test_methods_table_file_keeps_rows_of_earlier_calls(tmp_path):
    """bench/methods_table.py: a call that prints one row (and its variant rows) leaves the other rows of
    the table file alone and replaces its own, variants included."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "methods_table.py"
    spec = importlib.util.spec_from_file_location("methods_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    f = tmp_path / "table.json"
    mod._save_rows(f, "a", {"a": {"all": [1]}, "a [id]": {"all": [2]}})
    mod._save_rows(f, "b", {"a": {"all": [9]}, "b": {"all": [3]}})  # only b's rows are b's to write
    assert json.loads(f.read_text()) == {"a": {"all": [1]}, "a [id]": {"all": [2]}, "b": {"all": [3]}}
    mod._save_rows(f, "a", {"a": {"all": [4]}})  # a again, now without variants: the old variant goes
    assert json.loads(f.read_text()) == {"b": {"all": [3]}, "a": {"all": [4]}}
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]  # no temporary file left behind
