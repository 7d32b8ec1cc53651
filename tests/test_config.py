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
    with pytest.raises(ConfigError, match=r"train.loss: 'mse' is not one of \['ce', 'bce'\]"):
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
