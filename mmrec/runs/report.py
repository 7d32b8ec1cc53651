"""``mmrec report``: one self-contained HTML page from finished runs.

Runs are grouped by their saved configuration: runs whose ``config.json`` differs only in
``train.seed``, in resource settings (threads, device, evaluation batch) or in the epoch cap and
patience (a seed continued further is the same row) are one group, labelled
by what their folder names share (``sasrec-s0``, ``sasrec-s1`` -> ``sasrec``). The page has

- a metrics table: per group, the number of seeds and the test metrics as mean ± sample standard
  deviation, with the cold / warm breakdown, per-domain figures and evaluation variants where the
  runs have them;
- paired significance tests of each group against a baseline group (``--baseline``, default the
  first): per test case the metric of each run (averaged over the group's seeds when both groups have
  several), the mean difference, a 95% interval (normal approximation) and the two-sided p-value of a
  sign-flip permutation test (``n_permutations``, seeded), over the test cases both share; it needs
  ``test_ranks.npy`` in the runs and the same test cases (same dataset and protocol);
- the metric by the test target's popularity: the test cases split into quartiles of their target
  item's number of training events (read from the runs' prepared dataset), per group the metric in
  each, and against the baseline the difference and paired test per quartile (where a method wins or
  loses: on the long tail or on the popular items);
- training curves (validation metric and loss per epoch, every seed) as PNG images embedded in the
  page (matplotlib, the ``report`` extra).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrec.errors import ConfigError
from mmrec.runs.config import (
    EXTENDABLE_ON_RESUME,
    RESOURCE_SETTINGS,
    flatten,
    get_method,
    reads_setting,
    setting_in,
    upgrade_saved_config,
)
from mmrec.runs.folder import RunFolder


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    config: dict[str, Any]
    curve: list[dict[str, Any]]

    def settings_key(self) -> str:
        """What makes two runs seeds of one row: the saved settings but the seed and resource ones."""
        if not self.config:
            return f"folder:{self.path.name}"
        cfg = self.config
        try:  # a run saved before a setting existed has the behaviour it had (its default, mostly)
            cfg = upgrade_saved_config(cfg, get_method(cfg.get("method", "sasrec")).Config)
        except ConfigError:  # a method this version does not know: its settings as saved
            pass
        flat = flatten(cfg, ".")
        key = {k: v for k, v in sorted(flat.items())
               if not setting_in(k, _NOT_SETTINGS) and reads_setting(k, flat)}  # (sampled_* under ce: not read)
        source = (self.results.get("re_evaluated") or {}).get("source_evaluation")
        if source:  # re-evaluated (mmrec evaluate --out): its epoch was kept under another protocol
            key["selected under"] = rank_protocol(source)
        return json.dumps(key, default=str)


# what does not make two runs different rows: the seed, where they were written, resources, and how
# long they were allowed to train (a seed continued past the others' epoch cap is the same row)
_NOT_SETTINGS = frozenset({"train.seed"}) | RESOURCE_SETTINGS | EXTENDABLE_ON_RESUME


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Runs (folders with results.json) given directly or one level below the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if RunFolder(p).is_finished():
            found.append(p)
        elif p.is_dir():
            found += sorted(d for d in p.iterdir() if RunFolder(d).is_finished())
        else:
            raise ConfigError(f"{p}: no such folder; give run folders (with results.json) or folders holding them")
    if not found:
        raise ConfigError(f"no finished runs (folders with results.json) in {', '.join(map(str, paths))}")
    runs = []
    for d in dict.fromkeys(found):
        folder = RunFolder(d)
        runs.append(Run(d, folder.results(), folder.config() or {}, folder.metrics()))
    return runs


def _label(runs: list[Run]) -> str:
    """What the folder names of one group share, less each run's own seed where a name ends with
    it (``sasrec-s0``, ``sasrec-s1`` with seeds 0 and 1 -> ``sasrec``)."""
    names = []
    for r in runs:
        seed = r.config.get("train", {}).get("seed")
        name = r.path.name
        if seed is not None:
            name = re.sub(rf"[-_.]?(s|seed)?{int(seed)}$", "", name) or name
        names.append(name)
    label = os.path.commonprefix(names).rstrip("-_.")
    return label or runs[0].path.name


def group_runs(runs: list[Run]) -> list[Group]:
    """One group per settings (``Run.settings_key``), in the order the runs came."""
    by_key: dict[str, list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.settings_key(), []).append(r)
    groups = [Group(_label(rs), rs) for rs in by_key.values()]
    seen: dict[str, int] = {}
    for g in groups:  # two groups with one label (same folder names elsewhere): tell them apart
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g.label = f"{g.label} ({seen[g.label]})"
    return groups


def mean_sd(values: list[float]) -> str:
    """``mean ± sample sd`` to 4 decimals; the mean alone for one value; ``-`` for none. Counts (every
    value an ``int``, as JSON reads a logged count) print as whole numbers, or to one decimal where the
    mean or sd is not one."""
    if not values:
        return "-"
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    counts = all(isinstance(v, int) and not isinstance(v, bool) for v in values)

    def num(x: float) -> str:
        if not counts:
            return f"{x:.4f}"
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"

    return num(m) if sd is None else f"{num(m)} ± {num(sd)}"


def _cell(g: Group, part: str, values: list[float]) -> str:
    if not values and any("note" in r.results.get(part, {}) for r in g.runs):
        return "n/a (ids only)"  # a method that scores by id cannot rank held-out items
    return mean_sd(values)


def case_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-case value of ``metric`` (``ndcg@K``, ``hr@K`` or ``mrr@K``) from 0-based ranks."""
    name, _, k = metric.partition("@")
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < int(k)
    if name == "hr":
        return hit.astype(np.float64)
    if name == "ndcg":
        return hit / np.log2(r + 2)
    if name == "mrr":
        return hit / (r + 1)
    raise ConfigError(f"metric {metric!r}: use ndcg@K, hr@K or mrr@K")


def paired_test(a: np.ndarray, b: np.ndarray, n_permutations: int = 10000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of per-case values ``b - a``: mean difference, 95% normal interval and the
    two-sided p-value of a sign-flip permutation test (the exact null of "no difference per case")."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ConfigError("no common test cases to compare")
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    rng = np.random.default_rng(seed)
    observed = abs(d.sum())
    hits = 0
    done = 0
    chunk = 1000
    while done < n_permutations:
        m = min(chunk, n_permutations - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed - 1e-12).sum())
        done += m
    return {"n_cases": n, "mean_diff": mean, "ci95_low": mean - 1.96 * se, "ci95_high": mean + 1.96 * se,
            "p_value": (hits + 1) / (n_permutations + 1)}


def rank_protocol(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The settings of a recorded evaluation protocol (``protocol.evaluation``) that change a test
    case's rank: every ``EvalConfig`` field but the resource ones and the reported cut-offs; the
    negatives only in sampled mode, the seed only there or with random ties."""
    from dataclasses import fields

    from mmrec.trainers.evaluation import EvalConfig

    skip = {"ks"} | {k.removeprefix("eval.") for k in RESOURCE_SETTINGS if k.startswith("eval.")}
    if evaluation.get("mode") != "sampled":
        skip |= {"negatives", "negative_sampling"}
        if evaluation.get("ties") != "random":
            skip.add("seed")
    return {f.name: evaluation.get(f.name) for f in fields(EvalConfig) if f.name not in skip}


def protocol_difference(results: dict[str, Any], baseline: dict[str, Any]) -> str | None:
    """How two runs' evaluation protocols differ in what changes a case's rank (``"eval.history_mask
    'none' against 'whole'"``), or None when they agree (or a run predates the recorded protocol)."""
    a = (results.get("protocol") or {}).get("evaluation") or {}
    b = (baseline.get("protocol") or {}).get("evaluation") or {}
    if not a or not b:
        return None
    ra, rb = rank_protocol(a), rank_protocol(b)
    diffs = [f"eval.{k} {a.get(k)!r} against {b.get(k)!r}" for k in {**ra, **rb} if ra.get(k) != rb.get(k)]
    return "; ".join(diffs) or None


def not_comparable_note(difference: str) -> str:
    """What a paired test between two protocols is replaced by, and what to do."""
    return (f"not comparable: evaluated under another protocol ({difference}, the baseline's second); "
            "re-evaluate one run under the other's protocol: mmrec evaluate RUN --set eval.KEY=VALUE --out NEW_FOLDER")


def _group_cases(g: Group, metric: str) -> np.ndarray | None:
    """Per-case metric averaged over the group's seeds (None when a run has no test_ranks.npy or the
    runs disagree on the number of cases)."""
    return seeds_cases([r.path for r in g.runs], metric)


def seeds_cases(folders: list[Path], metric: str) -> np.ndarray | None:
    """Per-case ``metric`` of the runs in ``folders`` (one row's seeds) averaged over them (None when a
    run has no test_ranks.npy or the runs disagree on the number of cases)."""
    arrs = []
    for folder in folders:
        ranks = RunFolder(folder).test_ranks()
        if ranks is None:
            return None
        arrs.append(case_metric(ranks, metric))
    if len({len(a) for a in arrs}) != 1:
        return None
    return np.mean(arrs, axis=0)


def target_popularity(run: Run) -> np.ndarray | str:
    """Each test case's target item's number of training events (``PreparedDataset.item_popularity``:
    the training part only), in the order of ``test_ranks.npy``; or why not (the dataset folder of
    the run's ``config.json``, relative to where the command runs, is not there)."""
    from mmrec.data.prepared import PreparedDataset

    path = run.config.get("dataset")
    if not path or not (Path(path) / "dataset.json").is_file():
        return (f"the runs' dataset folder {path!r} is not here (run the report where the runs were trained, "
                "or give the runs' folder names relative to it)")
    data = PreparedDataset(path)
    return np.asarray(data.item_popularity)[np.asarray(data.items)[data.eval_cases("test").pos]]


def popularity_breakdown(groups: list[Group], base: Group, metric: str, n_permutations: int = 10000,
                         cases_of: dict[str, np.ndarray | None] | None = None) -> dict[str, Any]:
    """The test cases in quartiles of their target's training events (``np.quantile`` at 1/4, 1/2,
    3/4 of the cases' counts; a case goes to the highest quartile whose lower edge its count reaches,
    so ties at an edge share one quartile and a quartile may be empty); per group the metric per
    quartile (per case averaged over the group's seeds, then over the quartile's cases) and, against
    ``base``, each quartile's paired test. Groups with other test cases than ``base`` are left out.
    ``{"note": why}`` when the dataset cannot be read. ``cases_of``: each group's per-case metric
    (``_group_cases``) where the caller has it already, by label."""
    pop = target_popularity(base.runs[0])
    if isinstance(pop, str):
        return {"note": pop}
    if cases_of is None:
        cases_of = {g.label: _group_cases(g, metric) for g in groups}
    base_cases = cases_of[base.label]
    if base_cases is None or len(base_cases) != len(pop):
        return {"note": "the baseline's test ranks do not match its dataset's test cases"}
    edges = np.quantile(pop, [0.25, 0.5, 0.75])
    bucket = np.searchsorted(edges, pop, side="right")  # number of edges <= the count
    quartiles = []
    for b in range(4):
        sel = bucket == b
        if sel.any():
            quartiles.append({"quartile": b + 1, "cases": int(sel.sum()), "events_min": int(pop[sel].min()),
                              "events_max": int(pop[sel].max()), "select": sel})
    out: dict[str, Any] = {"quartiles": [{k: v for k, v in q.items() if k != "select"} for q in quartiles],
                           "groups": {}, "tests": {}}
    for g in groups:
        cases = cases_of[g.label]
        if cases is None or len(cases) != len(pop):
            continue
        if g is not base and protocol_difference(g.runs[0].results, base.runs[0].results) is not None:
            continue
        out["groups"][g.label] = [float(cases[q["select"]].mean()) for q in quartiles]
        if g is not base:
            out["tests"][g.label] = [paired_test(base_cases[q["select"]], cases[q["select"]], n_permutations)
                                     for q in quartiles]
    return out


def popularity_markdown(pb: dict[str, Any], baseline: str, metric: str) -> str:
    """``popularity_breakdown`` as a Markdown table (what ``mmrec report`` prints)."""
    if "note" in pb:
        return f"by the test target's popularity: not shown, {pb['note']}"
    heads = [f"Q{q['quartile']}: {q['events_min']:,}-{q['events_max']:,} events, {q['cases']:,} cases"
             for q in pb["quartiles"]]
    lines = [f"{metric} by the test target's training events (quartiles of the test cases); against {baseline}: "
             "difference, sign-flip permutation p", "| group | " + " | ".join(heads) + " |",
             "|---|" + "---|" * len(heads)]
    for label, vals in pb["groups"].items():
        tests = pb["tests"].get(label)
        cells = [f"{v:.4f}" + (f" ({t['mean_diff']:+.4f}, p = {t['p_value']:.4f})" if tests else "")
                 for v, t in zip(vals, tests or [None] * len(vals))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curves_png(g: Group, metric: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 2.8))
    for r in g.runs:
        ep = [row["epoch"] for row in r.curve if "valid" in row]
        ax1.plot(ep, [row["valid"][metric] for row in r.curve if "valid" in row], marker=".", label=r.path.name)
        ax2.plot([row["epoch"] for row in r.curve], [row["loss"] for row in r.curve], marker=".")
        best = r.results.get("best_epoch")
        if best:
            ax1.axvline(best, color="grey", linewidth=0.5)
    ax1.set_title(f"validation {metric}")
    ax1.set_xlabel("epoch")
    ax2.set_title("training loss")
    ax2.set_xlabel("epoch")
    if len(g.runs) <= 6:
        ax1.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def paired_markdown(tests: dict[str, dict[str, float]], baseline: str, metric: str = "ndcg@10",
                    not_comparable: dict[str, str] | None = None) -> str:
    """The paired tests of ``build_report`` as a Markdown table (what ``mmrec report`` prints), with a
    line for each group that could not be tested and why."""
    lines = [f"paired tests against {baseline} (per test case {metric}, averaged over each group's seeds; "
             "difference = group - baseline; sign-flip permutation p)",
             "| group | cases | mean difference | 95% interval | p |", "|---|---|---|---|---|"]
    lines += [f"| {g} | {t['n_cases']} | {t['mean_diff']:+.4f} | [{t['ci95_low']:+.4f}, {t['ci95_high']:+.4f}] | "
              f"{t['p_value']:.4f} |" for g, t in tests.items()]
    lines += [f"| {g} | {why} | | | |" for g, why in (not_comparable or {}).items()]
    return "\n".join(lines)


def build_report(paths: list[str | Path], out: str | Path, metric: str = "ndcg@10",
                 baseline: str | None = None, n_permutations: int = 10000,
                 title: str = "mmrec report") -> dict[str, Any]:
    """Write the page to ``out``; returns the figures it shows (groups, tests)."""
    case_metric(np.zeros(1), metric)  # validates the metric name
    groups = group_runs(find_runs(paths))
    hr = metric.replace("ndcg", "hr").replace("mrr", "hr")
    labels = [g.label for g in groups]
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"--baseline {baseline!r} is not a group of these runs; groups: {', '.join(labels)}")
    base = next(g for g in groups if g.label == (baseline or labels[0]))
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}.neg{color:#b00}.pos{color:#070}"
             "</style></head><body>", f"<h1>{e(title)}</h1>"]
    datasets = sorted({r.results.get("dataset", "?") for g in groups for r in g.runs})
    parts.append(f"<p>{len(groups)} groups, {sum(len(g.runs) for g in groups)} runs; dataset(s): "
                 f"{e(', '.join(datasets))}; mean ± sample sd over seeds.</p>")
    # metrics table
    summary: dict[str, Any] = {}
    cols = [("test", metric), ("test", hr), ("test_warm", metric), ("test_cold", metric)]
    parts.append("<h2>Test metrics</h2><table><tr><th>group</th><th>method</th><th>seeds</th>"
                 + "".join(f"<th>{e(p.replace('test_', '').replace('test', 'all'))} {e(m)}</th>" for p, m in cols)
                 + "<th>best epochs</th><th>s/epoch</th></tr>")
    for g in groups:
        vals = {f"{p}/{m}": [r.results[p][m] for r in g.runs if m in r.results.get(p, {})] for p, m in cols}
        summary[g.label] = {k: v for k, v in vals.items() if v}
        spe = [r.results["timing"]["seconds_per_epoch_mean"] for r in g.runs
               if r.results.get("timing", {}).get("seconds_per_epoch_mean") is not None]
        spe_txt = f"{statistics.fmean(spe):.1f}" if spe else "-"
        parts.append(f"<tr><td>{e(g.label)}</td><td>{e(g.runs[0].results.get('method', '?'))}</td><td>{len(g.runs)}</td>"
                     + "".join(f"<td>{_cell(g, p, vals[f'{p}/{m}'])}</td>" for p, m in cols)
                     + f"<td>{', '.join(str(r.results.get('best_epoch')) for r in g.runs)}</td><td>{spe_txt}</td></tr>")
    parts.append("</table>")
    # variants and domains
    extra = []
    for g in groups:
        for v in g.runs[0].results.get("test_variants", {}):
            extra.append((f"{g.label} [{v} alone]", [r.results["test_variants"][v].get(metric) for r in g.runs]))
        for d in g.runs[0].results.get("test_domains", {}):
            extra.append((f"{g.label}, domain {d}", [r.results["test_domains"][d].get(metric) for r in g.runs]))
    if extra:
        parts.append(f"<h2>Sub-networks and domains</h2><table><tr><th>row</th><th>test {e(metric)}</th></tr>")
        parts += [f"<tr><td>{e(n)}</td><td>{mean_sd([x for x in v if x is not None])}</td></tr>" for n, v in extra]
        parts.append("</table>")
    # paired tests
    tests: dict[str, Any] = {}
    not_comparable: dict[str, str] = {}
    cases_of = {g.label: _group_cases(g, metric) for g in groups}  # each run's test_ranks.npy read once
    base_cases = cases_of[base.label]
    parts.append(f"<h2>Paired tests against {e(base.label)}</h2>")
    if base_cases is None:
        parts.append("<p>The baseline runs have no test_ranks.npy (trained before mmrec kept per-case ranks): "
                     "no paired test.</p>")
    else:
        parts.append(f"<p>Per test case {e(metric)}, averaged over each group's seeds; difference = group - "
                     f"{e(base.label)}; p from a sign-flip permutation test ({n_permutations:,} permutations).</p>"
                     "<table><tr><th>group</th><th>cases</th><th>mean difference</th><th>95% interval</th>"
                     "<th>p</th></tr>")
        for g in groups:
            if g is base:
                continue
            difference = protocol_difference(g.runs[0].results, base.runs[0].results)
            if difference is not None:
                not_comparable[g.label] = not_comparable_note(difference)
                parts.append(f"<tr><td>{e(g.label)}</td><td colspan=4>{e(not_comparable[g.label])}</td></tr>")
                continue
            cases = cases_of[g.label]
            if cases is None or len(cases) != len(base_cases):
                parts.append(f"<tr><td>{e(g.label)}</td><td colspan=4>not comparable (no test_ranks.npy, or "
                             "other test cases)</td></tr>")
                continue
            t = paired_test(base_cases, cases, n_permutations)
            tests[g.label] = t
            cls = "pos" if t["ci95_low"] > 0 else ("neg" if t["ci95_high"] < 0 else "")
            parts.append(f"<tr><td>{e(g.label)}</td><td>{t['n_cases']:,}</td><td class='{cls}'>{t['mean_diff']:+.4f}</td>"
                         f"<td>[{t['ci95_low']:+.4f}, {t['ci95_high']:+.4f}]</td><td>{t['p_value']:.4f}</td></tr>")
        parts.append("</table>")
    # by the test target's popularity
    by_pop = popularity_breakdown(groups, base, metric, n_permutations, cases_of)
    parts.append("<h2>By the test target's popularity</h2>")
    if "note" in by_pop:
        parts.append(f"<p>Not shown: {e(by_pop['note'])}.</p>")
    else:
        parts.append(f"<p>The test cases in quartiles of their target item's training events; per case {e(metric)} "
                     f"averaged over each group's seeds; in brackets the difference to {e(base.label)} and its "
                     "sign-flip permutation p within the quartile.</p><table><tr><th>group</th>"
                     + "".join(f"<th>Q{q['quartile']}: {q['events_min']:,}-{q['events_max']:,} events "
                               f"({q['cases']:,} cases)</th>" for q in by_pop["quartiles"]) + "</tr>")
        for label, vals in by_pop["groups"].items():
            per_q = by_pop["tests"].get(label) or [None] * len(vals)
            cells = []
            for v, t in zip(vals, per_q):
                if t is None:
                    cells.append(f"<td>{v:.4f}</td>")
                else:
                    cls = "pos" if t["ci95_low"] > 0 else ("neg" if t["ci95_high"] < 0 else "")
                    cells.append(f"<td>{v:.4f} <span class='{cls}'>({t['mean_diff']:+.4f}, p = {t['p_value']:.4f})</span></td>")
            parts.append(f"<tr><td>{e(label)}</td>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    # curves
    parts.append("<h2>Training curves</h2>")
    n_img = 0
    for g in groups:
        png = _curves_png(g, metric)
        if png is None:
            parts.append("<p>matplotlib is not installed (pip install 'mmrec[report]'): no curves.</p>")
            break
        n_img += 1
        parts.append(f"<h3>{e(g.label)}</h3><img alt='curves of {e(g.label)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return {"groups": summary, "tests": tests, "not_comparable": not_comparable, "baseline": base.label,
            "by_popularity": by_pop, "images": n_img, "out": str(out)}
