"""Presets: every value a real setting of its method with a source or marked as having none; the
order defaults < preset < config file < flags < --set; the preset and its overrides recorded."""

import json

import pytest
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig, preset_settings
from mmrec.trainers.methods import get_method
from mmrec.trainers.presets import (
    HARMONISED,
    S,
    methods_with_presets,
    preset,
    presets_of,
)


@pytest.mark.parametrize("method", methods_with_presets())
def test_every_preset_value_is_a_setting_of_its_method(method, tmp_path):
    """Each preset builds a valid RunConfig (an unknown key or a wrong type is an error), and each value
    carries a source string or None (printed as unstated)."""
    table = presets_of(method)
    assert list(table)[0] == HARMONISED and table[HARMONISED] == {}
    assert {"paper", "code"} <= set(table)
    for name, values in table.items():
        for key, v in values.items():
            assert isinstance(v, S) and (v.source is None or v.source.strip()), (method, name, key)
            assert key.split(".")[0] in ("model", "train", "eval", "prepare"), key
        run = from_dict(RunConfig, {**preset_settings(method, name), "dataset": str(tmp_path)})
        from_dict(get_method(method).Config, run.model, prefix="model.")
        flat = {k: v.value for k, v in values.items() if not k.startswith("prepare.")}
        for key, want in flat.items():
            section, field = key.split(".", 1)
            got = run.model[field] if section == "model" else getattr(getattr(run, section), field)
            assert got == want or (isinstance(want, list) and list(got) == want), (key, got, want)


def test_unknown_preset_or_method_lists_what_exists():
    with pytest.raises(ConfigError, match=r"method sasrec has no preset 'paper'; its presets: harmonised"):
        preset("sasrec", "paper")
    with pytest.raises(ConfigError, match=r"method kdsr has no preset 'papr'; its presets: harmonised, paper, code"):
        preset("kdsr", "papr")
    r = CliRunner().invoke(app, ["presets", "nosuch"])
    assert r.exit_code == 2 and "unknown method 'nosuch'" in r.output


def test_presets_command_prints_values_with_sources_and_marks_unstated(monkeypatch):
    import mmrec.trainers.presets.kdsr as kd

    monkeypatch.setitem(kd.PRESETS["paper"], "train.patience", S(7, None))
    r = CliRunner().invoke(app, ["presets", "kdsr", "--preset", "paper"])
    assert r.exit_code == 0, r.output
    assert "kdsr --preset paper" in r.output
    assert "train.patience = 7    [NO SOURCE STATES THIS (mmrec's choice)]" in r.output
    first = next(iter(kd.PRESETS["paper"].items()))
    assert f"{first[0]} = {json.dumps(first[1].value)}    [{first[1].source}]" in r.output


def test_preset_order_and_what_results_record(tmp_path, successor_raw):
    """defaults < preset < config file < --set; the run records the preset and every value changed."""
    from mmrec.cli import _run_config
    from mmrec.data.prepare import PrepareConfig, prepare

    ds = prepare(successor_raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"batch_size": 7}}))
    paper = {k: v.value for k, v in preset("mmsr", "paper").items()}
    run = _run_config(str(ds), "mmsr", cfg, ["train.lr=0.5"], preset="paper")
    assert run.preset == "paper"
    assert run.train.batch_size == 7 and run.train.lr == 0.5  # file and --set win over the preset
    assert run.train.weight_decay == paper["train.weight_decay"]  # the preset wins over the default
    assert run.preset_overrides == {"train.batch_size": {"preset": paper["train.batch_size"], "used": 7},
                                    "train.lr": {"preset": paper["train.lr"], "used": 0.5}}
    # the flags win over a config file too
    cfg.write_text(json.dumps({"method": "gru4rec", "dataset": "elsewhere"}))
    run = _run_config(str(ds), "sasrec", cfg, [])
    assert run.method == "sasrec" and run.dataset == str(ds)


def test_train_command_applies_the_preset_and_records_it(tmp_path, successor_raw):
    from mmrec.data.prepare import PrepareConfig, prepare

    ds = prepare(successor_raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    r = CliRunner().invoke(app, ["train", "-d", str(ds), "-m", "sasrec", "--preset", "harmonised", "--set",
                                 "train.epochs=1", "--run-dir", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "h" / "config.json").read_text())["preset"] == "harmonised"
    r = CliRunner().invoke(app, ["train", "-d", str(ds), "-m", "sasrec", "--preset", "paper", "--run-dir",
                                 str(tmp_path / "p")])
    assert r.exit_code == 2 and "method sasrec has no preset 'paper'; its presets: harmonised" in r.output


def test_a_dataset_prepared_otherwise_than_the_preset_is_named(tmp_path, successor_raw):
    from mmrec.data.prepare import PrepareConfig, prepare
    from mmrec.data.prepared import PreparedDataset
    from mmrec.runs.config import preset_prepare_differences

    ds = prepare(successor_raw, tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    meta = PreparedDataset(ds).meta["config"]
    diff = preset_prepare_differences("kdsr", "code", meta)
    assert diff["prepare.split"] == {"preset": "ratio", "dataset": "loo"}
    assert diff["prepare.ratio_rounding"] == {"preset": "test", "dataset": "train"}
    assert "prepare.features_text" not in diff  # not a setting of `mmrec data prepare`: printed only
    assert preset_prepare_differences("kdsr", None, meta) == {}
