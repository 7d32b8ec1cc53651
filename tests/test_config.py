from dataclasses import dataclass, field

import pytest

from mmrec.config import apply_overrides, from_dict, load, to_dict
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig


@dataclass
class Inner:
    lr: float = 0.1
    name: str = "x"


@dataclass
class Outer:
    size: int = 3
    inner: Inner = field(default_factory=Inner)
    ks: list[int] = field(default_factory=lambda: [1, 2])


def test_unknown_key_is_an_error_listing_known_keys():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) inner\.lrr.*inner\.lr, inner\.name"):
        from_dict(Outer, {"inner": {"lrr": 1}})


def test_types_are_checked_and_ints_become_floats():
    o = from_dict(Outer, {"size": 5, "inner": {"lr": 1}, "ks": [3]})
    assert o.size == 5 and o.inner.lr == 1.0 and isinstance(o.inner.lr, float) and o.ks == [3]
    with pytest.raises(ConfigError, match="size: expected an integer"):
        from_dict(Outer, {"size": "five"})
    with pytest.raises(ConfigError, match=r"ks\[1\]: expected an integer"):
        from_dict(Outer, {"ks": [1, "a"]})


def test_overrides_parse_yaml_values_and_nest():
    d = apply_overrides({"inner": {"lr": 0.1}}, ["inner.lr=0.5", "size=7", "ks=[4, 5]", "inner.name=abc"])
    assert d == {"inner": {"lr": 0.5, "name": "abc"}, "size": 7, "ks": [4, 5]}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])


def test_file_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: d\ntrain:\n  lr: 0.01\n  epochs: 3\n")
    (tmp_path / "c.toml").write_text('dataset = "d"\n[train]\nlr = 0.01\n')
    run = load(RunConfig, tmp_path / "c.yaml", ["train.epochs=4"])
    assert run.train.lr == 0.01 and run.train.epochs == 4 and run.dataset == "d"
    assert load(RunConfig, tmp_path / "c.toml").train.lr == 0.01
    assert to_dict(run)["train"]["epochs"] == 4


def test_literal_and_cross_field_validation():
    with pytest.raises(ConfigError, match=r"train.loss: 'mse' is not one of \['ce', 'bce', 'sampled_ce', 'gbce'\]"):
        from_dict(RunConfig, {"dataset": "d", "train": {"loss": "mse"}})
    with pytest.raises(ConfigError, match="K=30, which is not in eval.ks"):
        from_dict(RunConfig, {"dataset": "d", "train": {"valid_metric": "ndcg@30"}})
    with pytest.raises(ConfigError, match="missing required setting"):
        from_dict(RunConfig, {})


def test_a_braced_word_is_a_string_not_a_mapping():
    from mmrec.config import apply_overrides

    out = apply_overrides({}, ["options.template={title}", "options.t2={title}. {genres}.", "a.b={x: 1}"])
    assert out["options"] == {"template": "{title}", "t2": "{title}. {genres}."}
    assert out["a"]["b"] == {"x": 1}  # a real mapping stays one


def test_settings_overrides_read_back_as_the_same_values():
    """Values written as ``--set`` strings come back with their types: a float in scientific notation
    stays a float (YAML 1.1 reads a bare ``1e-07`` as a string), lists and dicts keep their members."""
    from mmrec.config import settings_overrides

    values = {"train.lr": 1e-07, "train.weight_decay": 0.1, "train.epochs": 3, "model.act": "gelu",
              "model.flag": False, "model.none": None, "eval.ks": [5, 1e-05], "model.map": {"a": 2e-08}}
    sets = settings_overrides(values)
    assert "train.lr=1.0e-07" in sets
    back = apply_overrides({}, sets)
    assert back == {"train": {"lr": 1e-07, "weight_decay": 0.1, "epochs": 3},
                    "model": {"act": "gelu", "flag": False, "none": None, "map": {"a": 2e-08}},
                    "eval": {"ks": [5, 1e-05]}}
    assert isinstance(back["train"]["lr"], float)


@pytest.mark.parametrize("key, value", [("model.feature_dropout", 1.5), ("model.adaptor_dropout", -0.1),
                                        ("model.dropout", 1.0)])
def test_a_dropout_outside_0_to_1_is_refused_naming_the_setting(key, value):
    from mmrec.trainers.methods.mmsr import MMSRConfig

    name = key.split(".", 1)[1]
    with pytest.raises(ConfigError, match=rf"{key} is a dropout probability: it must be at least 0 and below 1, got {value}"):
        from_dict(MMSRConfig, {name: value}, prefix="model.")
    ok = from_dict(MMSRConfig, {name: 0.0}, prefix="model.")
    assert getattr(ok, name) == 0.0
    assert from_dict(MMSRConfig, {"adaptor_dropout": None}, prefix="model.").adaptor_dropout is None
