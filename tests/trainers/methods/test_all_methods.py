"""Every method: score shapes, unseen items, overfitting a tiny ring, checkpoints, states and query."""

import json

import pytest
import torch
from conftest import prepared_with_text, random_features

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.trainers.loop import Trainer
from mmrec.trainers.methods import METHODS
from mmrec.trainers.modules.items import FeatureItemEncoder


def _feats(n_items, dims, missing=()):
    return random_features(n_items, dims, {modality: missing for modality in dims})



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
    encoders = [mod for mod in m.modules() if isinstance(mod, FeatureItemEncoder)]
    assert encoders  # every feature method, fdsa too, reads the text table the loop below changes
    for mod in encoders:
        mod.feat_text[7] += 5.0
    m.train(); m.eval()  # drop the cached evaluation table
    after = m.score(m.query(items, lengths), torch.arange(1, 31))[:, 6]
    ranks_unseen = m.ranks_unseen_items if m.ranks_unseen_items is not None else bool(m.modalities)
    assert ranks_unseen == (name != "fdsa")
    assert (not torch.allclose(before, after)) == ranks_unseen



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
    ds, store = prepared_with_text(tmp_path, ring, 20, dim=16)
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
