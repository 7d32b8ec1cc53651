"""mmrec evaluate --out: a finished run evaluated again under another protocol, as a run folder that
mmrec report tests pairwise against the original."""

import json
import shutil

import numpy as np
import pytest
from conftest import raw_from_sequences
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.runs.folder import RunFolder
from mmrec.runs.reevaluate import reevaluate
from mmrec.trainers.evaluation import metrics_from_ranks
from mmrec.trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SASRec on users walking a ring of 15 items, 10 events each (so a history holds most items),
    evaluated without history masking."""
    tmp = tmp_path_factory.mktemp("reeval")
    ring = {f"u{u:02d}": [f"i{(u + 2 * k) % 15 + 1}" for k in range(10)] for u in range(40)}
    ds = prepare(raw_from_sequences(ring), tmp / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "sasrec", "model": {"hidden": 16, "inner": 32},
                                "train": {"epochs": 2, "threads": 1, "batch_size": 16},
                                "eval": {"history_mask": "none"}})
    Trainer(run, tmp / "run", log=lambda s: None).fit()
    return tmp / "run"


def test_without_overrides_the_written_folder_repeats_the_run(trained, tmp_path):
    res = reevaluate(trained, out=tmp_path / "again")
    src, out = RunFolder(trained), RunFolder(tmp_path / "again")
    assert np.array_equal(out.test_ranks(), src.test_ranks())
    assert out.results()["test"] == src.results()["test"] == {k: v for k, v in res.items()
                                                              if k not in ("seconds", "protocol")}
    assert out.results()["valid"] == src.results()["valid"]
    assert out.config() == src.config()
    assert out.results()["best_epoch"] == src.results()["best_epoch"]
    assert len(out.metrics()) == len(src.metrics()) == 2  # the curves travel with it
    assert out.results()["re_evaluated"]["from"] == str(trained.resolve())


def test_history_masking_moves_only_history_items_out_of_the_way(trained, tmp_path):
    reevaluate(trained, ["eval.history_mask=whole"], out=tmp_path / "masked")
    src, out = RunFolder(trained), RunFolder(tmp_path / "masked")
    before, after = src.test_ranks(), out.test_ranks()
    assert before.shape == after.shape == (40,)
    assert (after <= before).all() and (after < before).any()  # masking only removes items ranked ahead
    res = out.results()
    assert res["test"] == {"n_cases": 40, **metrics_from_ranks(after, res["protocol"]["evaluation"]["ks"])}
    assert res["protocol"]["evaluation"]["history_mask"] == "whole"
    assert res["re_evaluated"]["overrides"] == ["eval.history_mask=whole"]
    assert res["re_evaluated"]["source_evaluation"]["history_mask"] == "none"
    assert out.config()["eval"]["history_mask"] == "whole" and src.config()["eval"]["history_mask"] == "none"


def test_report_tests_the_re_evaluation_against_a_run_trained_under_that_protocol(trained, tmp_path):
    """The intended use: a run evaluated without the history mask, re-evaluated with it, beside a run
    that was trained (and selected) under the mask: one paired test on the same cases."""
    run = from_dict(RunConfig, {**RunFolder(trained).config(), "eval": {"history_mask": "whole"}})
    run.train.seed = 1
    Trainer(run, tmp_path / "masked-s1", log=lambda s: None).fit()
    r = runner.invoke(app, ["evaluate", str(trained), "--set", "eval.history_mask=whole",
                            "--out", str(tmp_path / "re" / "plain_masked-s0")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["protocol"]["history_mask"] == "whole"
    r = runner.invoke(app, ["report", str(tmp_path / "masked-s1"), str(tmp_path / "re" / "plain_masked-s0"),
                            "--baseline", "masked", "--permutations", "200", "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith("| plain_masked-s0 |"))
    diff = float(row.split("|")[3])
    ndcg = [RunFolder(tmp_path / f).results()["test"]["ndcg@10"] for f in ("re/plain_masked-s0", "masked-s1")]
    assert diff == pytest.approx(ndcg[0] - ndcg[1], abs=1e-4)
    r = runner.invoke(app, ["report", str(tmp_path / "masked-s1"), str(trained), "--baseline", "masked",
                            "--permutations", "200", "-o", str(tmp_path / "r2.html")])
    assert r.exit_code == 0 and "not comparable: evaluated under another protocol" in r.output


def test_refuses_to_overwrite_and_names_what_to_do(trained, tmp_path):
    with pytest.raises(ConfigError, match="is the run folder itself"):
        reevaluate(trained, out=trained)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        reevaluate(trained, out=tmp_path / "full")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained, unfinished)
    (unfinished / "results.json").unlink()
    with pytest.raises(ConfigError, match="not a finished run.*train it to the end"):
        reevaluate(unfinished, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--part 'train'"):
        reevaluate(trained, part="train")
