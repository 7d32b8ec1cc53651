"""bench/side_by_side_gsasrec.py: gBCE against gSASRec's released loss lines, and the data and logs the
run-level comparison reads. The check against the checkout itself skips unless MMREC_OFFICIAL_GSASREC
points to a checkout of asash/gSASRec-pytorch."""

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = os.environ.get("MMREC_OFFICIAL_GSASREC")


def _mod():
    spec = importlib.util.spec_from_file_location("side_by_side_gsasrec", REPO / "bench" / "side_by_side_gsasrec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# the paper's gBCE written from its equation (float64, no clamping), under the official lines' variable names
PAPER_GBCE = """
logits = torch.einsum('bse, bsne -> bsn', last_hidden_state, pos_neg_embeddings).double()
alpha = config.negs_per_pos / (num_items - 1)
beta = alpha * (config.gbce_t * (1 - 1 / alpha) + 1 / alpha)
terms = torch.cat([-beta * torch.nn.functional.logsigmoid(logits[:, :, :1]),
                   -torch.nn.functional.logsigmoid(-logits[:, :, 1:])], -1).mean(-1)
loss = (terms * mask).sum() / mask.sum()
"""


@pytest.mark.parametrize("k,t", [(1, 0.0), (16, 0.75), (256, 1.0)])
def test_mmrec_gbce_equals_the_paper_equation_run_through_the_harness(k, t):
    """The harness runs a loss source on its variable names and compares value and gradients: against
    the paper's equation every row agrees; against a loss with beta left at 1 (plain BCE) the k = 256,
    t = 1 rows differ (beta = 256 / 2999 there), so the comparison can fail."""
    mod = _mod()
    rows = mod.loss_rows(PAPER_GBCE, k, t)
    assert [r.component.split(" ", 2)[2] for r in rows] == ["loss", "grad states", "grad item table"]
    assert all(r.verdict() == "ok" for r in rows), rows
    if k == 256:
        wrong = mod.loss_rows(PAPER_GBCE.replace("beta = alpha *", "beta = 1 + 0 *"), k, t)
        assert all(r.verdict() != "ok" for r in wrong)


def test_loss_source_is_read_between_its_markers_and_a_wrong_folder_says_so(tmp_path):
    mod = _mod()
    (tmp_path / "train_gsasrec.py").write_text(
        "for x in y:\n    a = 1\n    logits = torch.einsum('bse, bsne -> bsn', h, e)\n    b = 2\n"
        "    loss = loss_per_element.sum() / mask.sum()\n    loss.backward()\n")
    assert mod.official_loss_source(tmp_path) == (
        "logits = torch.einsum('bse, bsne -> bsn', h, e)\nb = 2\nloss = loss_per_element.sum() / mask.sum()")
    (tmp_path / "train_gsasrec.py").write_text("print('no loss here')\n")
    with pytest.raises(SystemExit, match="cannot find the loss lines.*asash/gSASRec-pytorch"):
        mod.official_loss_source(tmp_path)


def test_ml1m_sequences_in_time_order_five_core_items_ids_by_first_appearance(tmp_path):
    """User 2 rates items 50 (t=5), 40 (t=3), 30 (t=3, after 40 in the file); user 1 rates 40, 50, 30, 70 at
    t = 1..4; items 30, 40, 50 have 5+ ratings with users 3-5's, item 70 has one (dropped). Users in id order,
    each in time order with ties in file order: user 1: 40 50 30, user 2: 40 30 50 -> ids 40:1, 50:2, 30:3."""
    mod = _mod()
    lines = ["2::50::5::5", "2::40::5::3", "2::30::5::3", "1::40::4::1", "1::50::4::2", "1::30::4::3", "1::70::4::4"]
    lines += [f"{u}::{it}::3::9" for u in (3, 4, 5) for it in (30, 40, 50)]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    seqs = mod.ml1m_sequences(tmp_path)
    assert seqs[:2] == [[1, 2, 3], [1, 3, 2]]
    assert seqs[2:] == [[3, 1, 2]] * 3
    with pytest.raises(SystemExit, match="ratings.dat not found: pass --ml1m"):
        mod.ml1m_sequences(tmp_path / "missing")


def test_curves_are_read_from_both_logs(tmp_path):
    mod = _mod()
    log = tmp_path / "train.log"
    log.write_text("Epoch 0 loss: 4.1\nEpoch 0 evaluation result: {R@1: 0.0, nDCG@10: 0.0035, R@10: 0.0078}\n"
                   "Epoch 1 evaluation result: {R@1: 0.01, nDCG@10: 0.0125, R@10: 0.02}\n")
    assert mod.official_curve(log) == [0.0035, 0.0125]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"epoch": 1, "loss": 1.0, "valid": {"ndcg@10": 0.02}}, {"epoch": 2, "loss": 0.9},
        {"epoch": 3, "loss": 0.8, "valid": {"ndcg@10": 0.03}}]) + "\n")
    assert mod.mmrec_curve(run) == [0.02, 0.03]
    assert mod.mmrec_curve(tmp_path / "nothing") == [] and mod.official_curve(tmp_path / "none.log") == []


def test_mmrec_command_carries_the_official_settings():
    mod = _mod()
    cmd = mod.mmrec_command(Path("W"), 40, 1, ["model.output_embeddings=separate"],
                            {**mod.ML1M, "sequence_length": 50})
    sets = dict(s.split("=", 1) for s in cmd[cmd.index("--set") + 1::2])
    assert sets["train.loss"] == "gbce" and sets["train.negatives"] == "256" and sets["train.gbce_t"] == "0.75"
    assert sets["train.max_len"] == "50" and sets["model.hidden"] == "128" and sets["model.heads"] == "1"
    assert sets["model.output_embeddings"] == "separate" and cmd[:6] == ["mmrec", "train", "-d", "W/mmrec-data",
                                                                          "-m", "sasrec"]
    assert math.isclose(float(sets["model.dropout"]), 0.5)


@pytest.mark.skipif(not OFFICIAL, reason="set MMREC_OFFICIAL_GSASREC to a checkout of asash/gSASRec-pytorch")
def test_gbce_agrees_with_the_released_loss_lines(capsys):
    assert _mod().main(["loss", "--official", OFFICIAL]) == 0, capsys.readouterr().out
