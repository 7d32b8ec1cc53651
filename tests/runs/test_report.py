"""mmrec report: grouping by seed, metrics table, paired permutation test, curves, errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrec.cli import app
from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.runs.report import (
    build_report,
    case_metric,
    mean_sd,
    paired_test,
    protocol_difference,
)
from mmrec.trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_case_metric_values_by_hand():
    ranks = np.array([0, 1, 9, 10])
    assert case_metric(ranks, "hr@10").tolist() == [1, 1, 1, 0]
    assert case_metric(ranks, "ndcg@10") == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])
    assert case_metric(ranks, "mrr@10") == pytest.approx([1.0, 0.5, 0.1, 0.0])
    with pytest.raises(ConfigError, match="ndcg@K"):
        case_metric(ranks, "auc@10")


def test_paired_test_by_hand():
    a = np.zeros(4)
    b = np.array([1.0, 1.0, 1.0, 1.0])
    t = paired_test(a, b, n_permutations=2000)
    # all 16 sign patterns: only the two all-equal ones reach |sum| = 4 -> p = 2/16 (+1 smoothing)
    assert t["mean_diff"] == 1.0 and t["ci95_low"] == t["ci95_high"] == 1.0
    assert t["p_value"] == pytest.approx(2 / 16, abs=0.03)
    same = paired_test(a, a, n_permutations=500)
    assert same["mean_diff"] == 0.0 and same["p_value"] == 1.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    from conftest import raw_from_sequences

    tmp = tmp_path_factory.mktemp("rep")
    ring = {f"u{u:02d}": [str((u + k) % 15 + 1) for k in range(6)] for u in range(40)}
    ds = prepare(raw_from_sequences(ring), tmp / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    for method, epochs in (("pop", 2), ("sasrec", 12)):
        for seed in (0, 1):
            run = from_dict(RunConfig, {"dataset": str(ds), "method": method,
                                        "model": {"hidden": 16, "inner": 32} if method == "sasrec" else {},
                                        "train": {"epochs": epochs, "lr": 0.01, "threads": 1, "batch_size": 16,
                                                  "seed": seed, "patience": 20}})
            Trainer(run, tmp / "table" / f"{method}-s{seed}", log=lambda s: None).fit()
    return tmp / "table"


def test_report_groups_seeds_tests_against_the_baseline_and_draws_curves(runs, tmp_path):
    res = build_report([runs], tmp_path / "r.html", baseline="pop", n_permutations=2000)
    assert set(res["groups"]) == {"pop", "sasrec"} and res["baseline"] == "pop" and res["images"] == 2
    for g in ("pop", "sasrec"):
        want = [json.loads((runs / f"{g}-s{s}" / "results.json").read_text())["test"]["ndcg@10"] for s in (0, 1)]
        assert res["groups"][g]["test/ndcg@10"] == want
    t = res["tests"]["sasrec"]
    a = np.mean([case_metric(np.load(runs / f"pop-s{s}" / "test_ranks.npy"), "ndcg@10") for s in (0, 1)], 0)
    b = np.mean([case_metric(np.load(runs / f"sasrec-s{s}" / "test_ranks.npy"), "ndcg@10") for s in (0, 1)], 0)
    assert t["n_cases"] == 40 and t["mean_diff"] == pytest.approx(float((b - a).mean()))
    assert t["mean_diff"] > 0 and t["p_value"] < 0.01  # SASRec learns the ring, popularity cannot
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Paired tests against pop" in page


def test_report_cli_and_errors(runs, tmp_path):
    r = CliRunner().invoke(app, ["report", str(runs / "sasrec-s0"), str(runs / "pop-s1"), "-o", str(tmp_path / "x.html"),
                                 "--permutations", "200"])
    assert r.exit_code == 0, r.output
    assert "2 groups, 1 paired tests against sasrec" in r.output
    a = case_metric(np.load(runs / "sasrec-s0" / "test_ranks.npy"), "ndcg@10")
    b = case_metric(np.load(runs / "pop-s1" / "test_ranks.npy"), "ndcg@10")
    assert f"| pop | 40 | {float((b - a).mean()):+.4f} | [" in r.output  # the tests, printed as Markdown
    with pytest.raises(ConfigError, match="--baseline 'gru' is not a group of these runs; groups: pop, sasrec"):
        build_report([runs], tmp_path / "y.html", baseline="gru")
    with pytest.raises(ConfigError, match="no finished runs"):
        build_report([tmp_path], tmp_path / "z.html")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "z.html")])
    assert r.exit_code == 2 and "no such folder" in r.output


def test_seeds_and_epoch_caps_do_not_split_a_row_but_settings_do(tmp_path):
    from mmrec.runs.report import Run, group_runs

    def run(name, **train):
        seed = train.get("seed", 0)
        return Run(tmp_path / name, {}, {"method": "sasrec", "train": {"seed": 0, "epochs": 200, **train},
                                         "preset": "paper",
                                         "preset_overrides": {"train.seed": {"preset": 1, "used": seed}}}, [])

    groups = group_runs([run("sasrec-s0"), run("sasrec-s1", seed=1, epochs=400, patience=20), run("lr-s0", lr=0.1)])
    assert [(g.label, len(g.runs)) for g in groups] == [("sasrec", 2), ("lr", 1)]


def test_a_run_saved_before_a_setting_existed_is_a_seed_of_the_same_row(tmp_path):
    """A config.json written before ``train.sampled_correction`` and ``train.sampled_groups`` existed is
    read with the behaviour it had then (every logit corrected, one draw), as a resume reads it: it is a
    seed of the row that set those values; a real difference still splits (K), and a setting the run
    does not read (sampled_* under ce) does not."""
    from mmrec.runs.report import Run, group_runs

    def run(name, seed, drop=(), **train):
        cfg = {"dataset": "data/x", "method": "sasrec",
               "train": {"seed": seed, "loss": "sampled_ce", "sampled_negatives": 256, "sampled_correction": "all",
                         "sampled_groups": 1, **train}}
        for k in drop:
            del cfg["train"][k]
        return Run(tmp_path / name, {}, cfg, [])

    old = run("s-s0", 0, drop=("sampled_correction", "sampled_groups"))
    groups = group_runs([old, run("s-s1", 1), run("s-s2", 2, sampled_negatives=64), run("s-s3", 3, sampled_groups=16),
                         run("ce-s0", 0, loss="ce"), run("ce-s1", 1, loss="ce", sampled_negatives=64, sampled_groups=16)])
    assert [(g.label, len(g.runs)) for g in groups] == [("s", 2), ("s (2)", 1), ("s (3)", 1), ("ce", 2)]
    assert [r.path.name for r in groups[0].runs] == ["s-s0", "s-s1"]


def test_protocol_difference_names_only_what_changes_a_rank():
    def res(**ev):
        base = {"mode": "full", "negatives": 100, "negative_sampling": "uniform", "history_mask": "whole",
                "ties": "pessimistic", "ks": [10], "batch_size": 1024, "seed": 0}
        return {"protocol": {"evaluation": {**base, **ev}}}

    assert protocol_difference(res(ks=[5, 10], batch_size=64, seed=3), res()) is None  # no rank changes
    assert protocol_difference(res(history_mask="none"), res()) == "eval.history_mask 'none' against 'whole'"
    assert protocol_difference(res(negatives=50), res()) is None  # negatives are unused in full ranking
    assert protocol_difference(res(mode="sampled", negatives=50), res(mode="sampled")) == \
        "eval.negatives 50 against 100"
    assert protocol_difference({}, res()) is None  # a run from before the protocol was recorded: unknown


def test_no_paired_test_between_two_evaluation_protocols(runs, tmp_path):
    """sasrec re-evaluated with the history masked is not tested against pop without the mask; the
    same re-evaluation of pop makes them comparable again."""
    from mmrec.runs.reevaluate import reevaluate

    for g in ("pop", "sasrec"):
        reevaluate(runs / f"{g}-s0", ["eval.history_mask=whole"], out=tmp_path / "masked" / f"{g}_masked-s0")
    res = build_report([runs / "pop-s0", tmp_path / "masked" / "sasrec_masked-s0"], tmp_path / "r.html",
                       baseline="pop", n_permutations=200)
    assert res["tests"] == {}
    assert "eval.history_mask 'whole' against 'none'" in res["not_comparable"]["sasrec_masked"]
    assert "mmrec evaluate RUN --set eval.KEY=VALUE --out" in res["not_comparable"]["sasrec_masked"]
    assert "not comparable: evaluated under another protocol" in (tmp_path / "r.html").read_text()
    r = CliRunner().invoke(app, ["report", str(runs / "pop-s0"), str(tmp_path / "masked" / "sasrec_masked-s0"),
                                 "-o", str(tmp_path / "x.html"), "--baseline", "pop", "--permutations", "200"])
    assert r.exit_code == 0 and "| sasrec_masked | not comparable: evaluated under another protocol" in r.output
    res = build_report([tmp_path / "masked"], tmp_path / "r2.html", baseline="pop_masked", n_permutations=200)
    assert set(res["tests"]) == {"sasrec_masked"} and res["not_comparable"] == {}


def test_mean_sd_prints_metrics_to_four_decimals_and_counts_as_whole_numbers():
    assert mean_sd([0.1, 0.3]) == "0.2000 ± 0.1414"
    assert mean_sd([1.0, 1.0]) == "1.0000 ± 0.0000"  # a metric at 1 stays a metric
    assert mean_sd([787, 787, 787]) == "787 ± 0"
    assert mean_sd([10, 13]) == "11.5 ± 2.1"  # sd sqrt(4.5) = 2.12
    assert mean_sd([12, 14]) == "13 ± 1.4"
    assert mean_sd([5]) == "5" and mean_sd([]) == "-"


def test_the_metric_by_the_test_targets_popularity_by_hand(runs, tmp_path):
    """Quartiles of the test targets' training events, counted here from the raw sequences' training
    parts (all but the last two events, leave-one-out); per group the mean per-case NDCG@10 in each
    from ranks set by hand; the baseline's difference per quartile."""
    import shutil
    from collections import Counter

    from conftest import raw_from_sequences

    from mmrec.data.prepared import PreparedDataset
    from mmrec.runs.report import popularity_markdown

    # item "a" is in every training part, "b" in 6, ... : the test targets (last events) have 0-8 events
    filler = ["a"] * 8 + ["b"] * 6 + ["c"] * 4 + ["d"] * 2 + ["e"] * 4
    seqs = {f"u{u}": [filler[3 * u], filler[3 * u + 1], filler[3 * u + 2], "v", t]
            for u, t in enumerate(["a", "b", "c", "d", "e", "f", "g", "h"])}
    ds = prepare(raw_from_sequences(seqs), tmp_path / "ds", PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    counts = Counter(i for s in seqs.values() for i in s[:-2])
    data = PreparedDataset(ds)
    targets = [data.raw_item_ids[i] for i in np.asarray(data.items)[data.eval_cases("test").pos]]
    pop = np.array([counts[t] for t in targets])
    ranks = {"pop": np.array([0, 3, 12, 1, 5, 9, 2, 0]), "sasrec": np.array([1, 0, 0, 20, 2, 2, 11, 4])}
    ranks = {g: r[[ord(t) - ord("a") for t in targets]] for g, r in ranks.items()}  # by target, whatever the order
    table = tmp_path / "table"
    for g in ("pop", "sasrec"):
        shutil.copytree(runs / f"{g}-s0", table / f"{g}-s0")
        cfg = json.loads((table / f"{g}-s0" / "config.json").read_text())
        (table / f"{g}-s0" / "config.json").write_text(json.dumps({**cfg, "dataset": str(ds)}))
        np.save(table / f"{g}-s0" / "test_ranks.npy", ranks[g])
    res = build_report([table], tmp_path / "r.html", baseline="pop", n_permutations=200)
    pb = res["by_popularity"]
    edges = np.quantile(pop, [0.25, 0.5, 0.75])
    bucket = np.array([sum(c >= e for e in edges) for c in pop])
    ndcg = {g: np.where(r < 10, 1 / np.log2(r + 2), 0.0) for g, r in ranks.items()}
    want = [b for b in range(4) if (bucket == b).any()]
    assert [q["quartile"] for q in pb["quartiles"]] == [b + 1 for b in want]
    assert [q["cases"] for q in pb["quartiles"]] == [int((bucket == b).sum()) for b in want]
    assert [(q["events_min"], q["events_max"]) for q in pb["quartiles"]] == \
        [(int(pop[bucket == b].min()), int(pop[bucket == b].max())) for b in want]
    for g in ("pop", "sasrec"):
        assert pb["groups"][g] == pytest.approx([ndcg[g][bucket == b].mean() for b in want])
    assert [t["mean_diff"] for t in pb["tests"]["sasrec"]] == \
        pytest.approx([(ndcg["sasrec"] - ndcg["pop"])[bucket == b].mean() for b in want])
    assert "pop" not in pb["tests"]
    text = popularity_markdown(pb, "pop", "ndcg@10")
    q = pb["quartiles"][0]
    assert f"Q{q['quartile']}: {q['events_min']:,}-{q['events_max']:,} events, {q['cases']:,} cases" in text
    assert "By the test target's popularity" in (tmp_path / "r.html").read_text()
    # the dataset gone: said, not guessed
    shutil.rmtree(ds)
    res = build_report([table], tmp_path / "r2.html", baseline="pop", n_permutations=200)
    assert "is not here" in res["by_popularity"]["note"]
    assert popularity_markdown(res["by_popularity"], "pop", "ndcg@10").startswith(
        "by the test target's popularity: not shown, the runs' dataset folder")
