"""SyNCRec: item domains, compacted single-domain inputs, the stop-gradient placement of ACMoE,
LC-NTG's gaps and weights, SC-MIM, per-domain metrics, and a two-domain run through `mmrec evaluate`
(expected values by hand)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import raw_from_sequences

from mmrec.config import from_dict
from mmrec.data.prepare import PrepareConfig, prepare
from mmrec.data.prepared import PreparedDataset
from mmrec.data.readers import read_dataset
from mmrec.data.schema import Catalogue
from mmrec.errors import ConfigError
from mmrec.runs.config import RunConfig
from mmrec.trainers.evaluation import metrics_by_group
from mmrec.trainers.loop import Trainer
from mmrec.trainers.methods.syncrec import (
    SyNCRec,
    SyNCRecConfig,
    chunk_groups,
    code_mim,
    infonce_per_group,
    item_domains,
    ntg_update,
    ntg_weights,
    pack_by_domain,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# items 1..6: odd ids in domain "a" (code 1), even ids in domain "b" (code 2)
DOM = torch.tensor([0, 1, 2, 1, 2, 1, 2])
SMALL = {"hidden": 16, "inner": 32, "dropout": 0.0, "attn_dropout": 0.0, "heads": 1}


def _model(**over):
    cfg = from_dict(SyNCRecConfig, {**SMALL, "experts": 4, "cross_ratio": 0.5, **over})
    torch.manual_seed(0)
    return SyNCRec(cfg, 6, 8, item_domain=DOM.numpy(), domain_names=["a", "b"])


def _batch():
    items = torch.tensor([[1, 2, 3, 4, 5], [2, 4, 1, 6, 0], [6, 5, 0, 0, 0]])
    targets = torch.tensor([[2, 3, 4, 5, 6], [4, 1, 6, 3, 0], [5, 1, 0, 0, 0]])
    negatives = torch.tensor([[4, 4, 1, 1, 2], [3, 3, 3, 5, 0], [2, 2, 0, 0, 0]])
    return {"items": items, "targets": targets, "lengths": torch.tensor([5, 4, 2]), "negatives": negatives}


# --------------------------------------------------------------------------- domains and inputs


def test_pack_by_domain_by_hand():
    items = torch.tensor([[1, 2, 3, 4, 0], [4, 5, 6, 0, 0]])
    pk = pack_by_domain(items, DOM, 2)
    # row 0: a-items 1 3, then b-items 2 4; row 1: a-item 5, then b-items 4 6
    assert pk.items.tolist() == [[1, 3, 2, 4, 0], [5, 4, 6, 0, 0]]
    assert pk.segment.tolist() == [[1, 1, 2, 2, 0], [1, 2, 2, 0, 0]]
    assert pk.index.tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, 0, 1]]
    assert pk.seg_len.tolist() == [[2, 2, 2, 2, 1], [1, 2, 2, 2, 2]]
    assert pk.offset.tolist() == [[0, 2], [0, 1]]
    assert pk.lengths.tolist() == [[2, 2], [1, 2]]
    # merged position t -> index of the last item of the domain at or before t (-1: none yet)
    assert pk.last[0].tolist() == [[0, 0, 1, 1, 1], [-1, 0, 0, 0, 0]]
    assert pk.last[1].tolist() == [[-1, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    # attention: causal inside a domain's run, nothing across runs; padding only sees padding
    mask = pk.attention_mask()[1, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


@pytest.mark.parametrize("position", ["reverse", "forward"])
def test_packed_single_domain_states_equal_each_domain_run_on_its_own(position):
    # the packed pass must give, at each paired target, what the SDSR task computes on the user's
    # domain-d items alone as an ordinary (right-padded, causal) sequence
    m = _model(position=position)
    m.eval()
    batch = _batch()
    with torch.no_grad():
        st = m.task_states(batch["items"], batch["lengths"], batch["targets"])
        expect = []
        for (r, c), tgt, paired in zip(st["position"].tolist(), st["target"].tolist(), st["paired"].tolist()):
            if not paired:
                continue
            d = int(DOM[tgt])
            # the window's domain-d items (positions count from the window's end, as for the merged
            # sequence), read at the last one at or before the target's position c
            own = [i for i in batch["items"][r].tolist() if i and int(DOM[i]) == d]
            at = sum(1 for i in batch["items"][r, :c + 1].tolist() if i and int(DOM[i]) == d) - 1
            seq = torch.tensor([own + [0] * (5 - len(own))])
            e = m.embeddings(seq, torch.tensor([len(own)]))
            outs = [m.expert(k)(e) for k in range(4)]
            expect.append(m.mixture(e[0, at], [o[0, at] for o in outs], d))
    assert len(expect) == 8
    assert torch.allclose(st["single"], torch.stack(expect), atol=1e-5)


def _prepared(tmp_path, seqs, domains, name="ds"):
    raw = raw_from_sequences(seqs)
    ids = sorted({i for s in seqs.values() for i in s}, key=int)
    raw.catalogue = Catalogue.build(ids, title=[f"t{i}" for i in ids], domain=[domains(int(i)) for i in ids])
    return prepare(raw, tmp_path / name, PrepareConfig(min_user_interactions=1, min_item_interactions=1))


def test_item_domains_from_the_catalogue(tmp_path):
    seqs = {"u1": ["1", "2", "3", "4", "5", "6"]}
    doms = {1: "toys", 2: "books", 3: None, 4: "books", 5: "games", 6: "books"}
    ds = PreparedDataset(_prepared(tmp_path, seqs, doms.get))
    codes, names = item_domains(ds)
    assert names == ["(none)", "books", "games", "toys"]  # alphabetical; null is its own domain
    assert codes.tolist() == [0, 4, 2, 1, 2, 3, 2]
    codes, names = item_domains(ds, top_domains=1)  # the domain with most items, the rest merged
    assert names == ["(other)", "books"] and codes.tolist() == [0, 1, 2, 1, 2, 1, 2]
    ds2 = PreparedDataset(_prepared(tmp_path, seqs, lambda i: None, name="nodom"))
    codes, names = item_domains(ds2)
    assert names == ["all"] and codes.tolist() == [0, 1, 1, 1, 1, 1, 1]


def test_config_checks_the_expert_partition():
    with pytest.raises(ConfigError, match="at least one cross and one single"):
        from_dict(SyNCRecConfig, {"experts": 5, "cross_ratio": 1.0})
    with pytest.raises(ConfigError, match="at least 2"):
        from_dict(SyNCRecConfig, {"experts": 1})
    assert from_dict(SyNCRecConfig, {}).n_cross == 4  # 5 experts, 0.8: 4 cross + 1 single (the paper's j = 0.2K)


def test_shared_experts_is_one_module_and_independent_experts_differ():
    m = _model(shared_experts=True)
    assert len(m.experts) == 1 and len(m.gates) == 1 and len(m.towers) == 1
    assert all(m.expert(k) is m.experts[0] for k in range(4))
    m = _model()
    assert len(m.experts) == 4 and len(m.gates) == 3 and len(m.towers) == 3  # 2 SDSR tasks + CDSR
    w = [m.expert(k).blocks[0].attn.qkv.weight for k in range(4)]
    assert not torch.equal(w[0], w[1])
    assert "item_domain" in m.state_dict() and "ntg_state" in m.state_dict()


# --------------------------------------------------------------------------- stop-gradient


def _expert_grads(m):
    out = []
    for k in range(len(m.experts)):
        gs = [p.grad for p in m.experts[k].parameters()]
        out.append(any(g is not None and g.abs().sum() > 0 for g in gs))
    return out


@pytest.mark.parametrize("single_input", ["compact", "inplace"])
def test_stop_gradient_single_loss_updates_single_experts_and_cross_loss_cross_experts(single_input):
    tc = SimpleNamespace(loss="ce")
    m = _model(single_input=single_input)
    assert m.n_single == 2 and m.n_cross == 2  # experts 0, 1 single; 2, 3 cross
    for term, expect in (("single", [True, True, False, False]), ("cross", [False, False, True, True]),
                         ("mim", [True, True, True, True])):
        m.zero_grad(set_to_none=True)
        m.loss_terms(_batch(), tc, update=False)[term].backward()
        assert _expert_grads(m) == expect, term
        # gates and towers of the tasks, and the embeddings, learn from every part
        assert m.item.weight.grad is not None and m.item.weight.grad.abs().sum() > 0
    # the single-domain loss reaches the SDSR gates and towers, not the CDSR ones
    m.zero_grad(set_to_none=True)
    m.loss_terms(_batch(), tc, update=False)["single"].backward()
    assert m.towers[0].fc1.weight.grad is not None and m.towers[1].fc1.weight.grad is not None
    assert m.towers[2].fc1.weight.grad is None
    m.zero_grad(set_to_none=True)
    m.loss_terms(_batch(), tc, update=False)["cross"].backward()
    assert m.towers[0].fc1.weight.grad is None and m.towers[2].fc1.weight.grad is not None


def test_without_stop_gradient_every_loss_reaches_every_expert():
    tc = SimpleNamespace(loss="bce")
    m = _model(stop_gradient=False)
    for term in ("single", "cross"):
        m.zero_grad(set_to_none=True)
        m.loss_terms(_batch(), tc, update=False)[term].backward()
        assert _expert_grads(m) == [True] * 4, term


def test_shared_experts_get_both_gradients():
    m = _model(shared_experts=True)
    for term in ("single", "cross"):
        m.zero_grad(set_to_none=True)
        m.loss_terms(_batch(), SimpleNamespace(loss="ce"), update=False)[term].backward()
        assert _expert_grads(m) == [True], term


# --------------------------------------------------------------------------- LC-NTG


def test_ntg_moving_average_and_weights_by_hand():
    s = torch.zeros(3)
    s = ntg_update(s, torch.tensor([1.0, -1.0, 5.0]), torch.tensor([True, True, False]), 0.9)
    assert s.tolist() == pytest.approx([0.1, -0.1, 0.0])  # domain 3 absent from the batch: unchanged
    s = ntg_update(s, torch.tensor([0.5, 0.0, 0.0]), torch.tensor([True, False, False]), 0.9)
    assert s.tolist() == pytest.approx([0.9 * 0.1 + 0.1 * 0.5, -0.1, 0.0])
    w = ntg_weights(torch.tensor([0.1, -0.1]), 1.0)
    e = math.exp(0.2)
    assert w.tolist() == pytest.approx([e / (1 + e), 1 / (1 + e)])
    w = ntg_weights(torch.tensor([0.1, -0.1]), 0.1)  # a lower temperature sharpens
    assert w.tolist() == pytest.approx([math.exp(2) / (1 + math.exp(2)), 1 / (1 + math.exp(2))])


def test_domain_gaps_by_hand():
    m = SyNCRec(from_dict(SyNCRecConfig, SMALL), 6, 8, item_domain=np.array([0, 1, 1, 2, 2, 3, 3]),
                domain_names=["a", "b", "c"])
    gap, present, count = m.domain_gaps(torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]),
                                        torch.tensor([1, 1, 2]))
    assert gap.tolist() == pytest.approx([0.5, 2.0, 0.0])  # mean single - mean cross per domain
    assert present.tolist() == [True, True, False] and count.tolist() == [2, 1, 0]


def test_cross_loss_is_weighted_by_the_domain_weights_and_the_average_moves():
    tc = SimpleNamespace(loss="ce")
    m = _model(ntg_gap="mean")  # the estimator before ntg_gap existed (the code's): mean loss difference
    m.eval()  # deterministic states (no dropout, no gate noise) for the check
    with torch.no_grad():
        m.ntg_state.copy_(torch.tensor([0.1, -0.1]))
        st = m.task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
        l_cross = m.target_losses(st["cross"], st["target"], None, "ce")
        w = torch.softmax(torch.tensor([0.1, -0.1]), 0)
        expect = (2 * w[st["target_domain"] - 1] * l_cross).mean()
        terms = m.loss_terms(_batch(), tc)
        assert float(terms["cross"]) == pytest.approx(float(expect), rel=1e-5)
        assert m.ntg_state.tolist() == pytest.approx([0.1, -0.1])  # not training: no update
        # lc_ntg off: uniform weights, the plain mean
        m.cfg.lc_ntg = False
        assert float(m.loss_terms(_batch(), tc)["cross"]) == pytest.approx(float(l_cross.mean()), rel=1e-5)
        m.cfg.lc_ntg = True
        # training: one step moves s by (1 - m) (phi - s); the gap is reported per domain
        l_single = m.target_losses(st["single"], st["target"][st["paired"]], None, "ce")
        phi, _, count = m.domain_gaps(l_single, l_cross[st["paired"]], st["target_domain"][st["paired"]])
    m.train()
    m.cfg.dropout = 0.0
    m.cfg.gate_noise = False
    m.on_epoch_start(1, None)
    m.loss(_batch(), tc)
    assert m.ntg_state.tolist() == pytest.approx((0.9 * torch.tensor([0.1, -0.1]) + 0.1 * phi).tolist(), rel=1e-4)
    rep = m.epoch_report()
    assert rep["ntg_gap"] == pytest.approx({"a": float(phi[0]), "b": float(phi[1])}, rel=1e-4)
    assert rep["ntg_targets"] == {"a": int(count[0]), "b": int(count[1])}
    assert sum(rep["ntg_weight"].values()) == pytest.approx(1.0)
    assert set(m.loss_parts) == {"single", "cross", "mim"}


def test_paired_targets_compact_vs_inplace():
    # compact: a target needs an earlier item of its domain in the window; inplace: every target pairs
    st = _model().task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
    # row 0 items 1 2 3 4 5 -> targets 2 3 4 5 6: target 2 (b) at t=0 has no earlier b item
    # row 1 items 2 4 1 6 -> targets 4 1 6 3: target 1 (a) at t=1 has no earlier a item
    # row 2 items 6 5 -> targets 5 1: target 5 (a) at t=0 has no earlier a item
    assert st["paired"].tolist() == [False, True, True, True, True, True, False, True, True, False, True]
    st = _model(single_input="inplace").task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
    assert st["paired"].all() and len(st["single"]) == 11


# --------------------------------------------------------------------------- SC-MIM


def test_infonce_per_domain_by_hand():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    out = infonce_per_group(c, s, torch.tensor([1, 1, 2]))
    # rows 0 and 1: softmax over the two rows of domain 1, logits (1, 0); row 2 is alone in its domain
    assert out.tolist() == pytest.approx([math.log(1 + math.exp(-1))] * 2 + [0.0])
    out = infonce_per_group(c, s, torch.tensor([1, 1, 1]), temperature=0.5)
    assert float(out[2]) == pytest.approx(-math.log(math.exp(4) / (math.exp(2) + math.exp(2) + math.exp(4))))


def test_code_mim_by_hand():
    out = code_mim(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    p, n = 1 / (1 + math.exp(-1)), 0.5
    assert float(out[0]) == pytest.approx(math.log(1 + math.exp(-(p - n))))


def test_infonce_leaves_out_rows_with_the_same_target():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    out = infonce_per_group(c, s, torch.tensor([1, 1, 1]), target_ids=torch.tensor([7, 7, 8]))
    # row 0: row 1 has the same target, only row 2 is a negative: logits (1, 2)
    assert float(out[0]) == pytest.approx(-math.log(math.exp(1) / (math.exp(1) + math.exp(2))))


def test_model_mim_of_the_projected_cross_states():
    m = _model(mim_estimator="infonce", mim_negatives="batch")
    m.eval()
    with torch.no_grad():
        st = m.task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
        p = st["paired"]
        c = m.mim(st["cross"][p])
        expect = infonce_per_group(c, st["single"], st["target_domain"][p], target_ids=st["target"][p]).mean()
        assert float(m.mim_loss(st)) == pytest.approx(float(expect))
        m.cfg.mim_estimator = "code"  # the default: the other row's input item at the same position
        torch.manual_seed(3)
        perm = torch.randperm(3)
        r, col = st["position"][p].unbind(-1)
        expect = code_mim(c, st["single"], m.item(st["items"][perm][r, col])).mean()
        torch.manual_seed(3)
        assert float(m.mim_loss(st)) == pytest.approx(float(expect))


# --------------------------------------------------------------------------- metrics and runs


def test_metrics_by_group():
    out = metrics_by_group(np.array([0, 3, 20, 1]), np.array([1, 2, 1, 2]), ["a", "b", "c"], [5])
    assert out["a"]["n_cases"] == 2 and out["a"]["hr@5"] == 0.5
    assert out["b"]["hr@5"] == 1.0 and out["b"]["ndcg@5"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(3)) / 2)
    assert out["c"] == {"n_cases": 0}


def test_two_domain_run_reports_domains_overfits_and_round_trips(tmp_path):
    """Users walk a ring of 20 items whose odd items are domain "a", even items "b"."""
    from typer.testing import CliRunner

    from mmrec.cli import app

    ring = {f"u{u:03d}": [str((u + k) % 20 + 1) for k in range(10)] for u in range(100)}
    ds = _prepared(tmp_path, ring, lambda i: "a" if i % 2 else "b")
    run = from_dict(RunConfig, {"dataset": str(ds), "method": "syncrec",
                                "model": {"hidden": 32, "inner": 64, "dropout": 0.0, "attn_dropout": 0.0},
                                "train": {"epochs": 30, "lr": 0.01, "batch_size": 32, "threads": 1, "patience": 30}})
    res = Trainer(run, tmp_path / "run", log=lambda s: None).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert res["test"]["hr@5"] >= 0.9, res["test"]
    # per-domain figures: every test case counted once, under its target's domain
    td = res["test_domains"]
    assert set(td) == {"a", "b"} and td["a"]["n_cases"] + td["b"]["n_cases"] == res["test"]["n_cases"]
    assert td["a"]["n_cases"] > 0 and "ndcg@10" in td["a"] and "ndcg@10" in res["valid_domains"]["b"]
    # the per-epoch table of gaps and weights
    assert all(set(r["ntg_weight"]) == {"a", "b"} and set(r["ntg_gap"]) == {"a", "b"} for r in rows)
    assert all(sum(r["ntg_weight"].values()) == pytest.approx(1.0) for r in rows)
    assert set(rows[0]["loss_parts"]) == {"single", "cross", "mim"}
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    for k, v in res["test"].items():
        assert again[k] == pytest.approx(v, abs=1e-12), k


def test_ablation_flags_run(tmp_path):
    seqs = {f"u{u}": [str((u + k) % 12 + 1) for k in range(6)] for u in range(12)}
    ds = _prepared(tmp_path, seqs, lambda i: "a" if i <= 6 else "b")
    for flags in ({"lc_ntg": False}, {"sc_mim": False}, {"shared_experts": True, "mim_estimator": "infonce"}):
        run = from_dict(RunConfig, {"dataset": str(ds), "method": "syncrec", "model": {**SMALL, **flags},
                                    "train": {"epochs": 1, "threads": 1, "loss": "bce"}})
        res = Trainer(run, tmp_path / json.dumps(flags).replace('"', "").replace(" ", ""), log=lambda s: None).fit()
        assert "test_domains" in res
    rows = [json.loads(line) for line in (tmp_path / "{lc_ntg:false}" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["ntg_weight"] == {"a": 0.5, "b": 0.5}  # without LC-NTG: uniform, gaps still logged


def test_single_domain_model_without_a_dataset():
    m = SyNCRec(from_dict(SyNCRecConfig, SMALL), 6, 8)
    assert m.domain_names == ["all"] and m.n_domains == 1
    b = _batch()
    loss = m.loss(b, SimpleNamespace(loss="ce"))
    assert torch.isfinite(loss)
    m.eval()
    assert m.score(m.query(b["items"], b["lengths"]), torch.arange(1, 7)).shape == (3, 6)


# --------------------------------------------------------------------------- MovieLens genre domains


def _ml(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.dat").write_text("1::10::5::1\n1::20::3::2\n1::30::4::3\n")
    (d / "movies.dat").write_text("10::A (1995)::Comedy|Drama\n20::B (1995)::Drama|Horror\n30::C::Drama\n"
                                  "40::D::(no genres listed)\n")
    return d


def test_movielens_domain_from_genres(tmp_path):
    d = _ml(tmp_path)

    def domains(**opts):
        c = read_dataset("movielens", d, **opts).catalogue.table
        return dict(zip(c.column("item_id").to_pylist(), c.column("domain").to_pylist()))

    assert domains() == {"10": None, "20": None, "30": None, "40": None}
    assert domains(domain="first") == {"10": "Comedy", "20": "Drama", "30": "Drama", "40": None}
    # Drama is listed for 3 movies, Comedy and Horror for 1
    assert domains(domain="rarest") == {"10": "Comedy", "20": "Horror", "30": "Drama", "40": None}
    assert domains(domain="commonest") == {"10": "Drama", "20": "Drama", "30": "Drama", "40": None}
    # a priority list: the first listed genre the movie has; the others -> domain_other
    assert domains(domain="first", domain_genres=["Horror", "Comedy"]) == {
        "10": "Comedy", "20": "Horror", "30": "Other", "40": None}
    with pytest.raises(ConfigError, match="domain must be one of"):
        domains(domain="last")
    with pytest.raises(ConfigError, match="needs a domain rule"):
        domains(domain_genres=["Drama"])


def test_chunk_groups_splits_each_group_into_bounded_random_chunks():
    torch.manual_seed(0)
    group = torch.tensor([1] * 7 + [2] * 3 + [1] * 2)
    out = chunk_groups(group, 4)
    for g in torch.unique(out):
        members = group[out == g]
        assert len(members) <= 4 and len(torch.unique(members)) == 1  # a chunk never mixes domains
    assert len(torch.unique(out[group == 1])) == 3 and len(torch.unique(out[group == 2])) == 1  # 9 -> 4 + 4 + 1


def test_experts_skip_autograd_only_where_the_output_is_detached():
    m = _model()
    m.eval()
    single, cross = torch.randn(6, 5, 16), torch.randn(4, 5, 16)
    with torch.no_grad():
        ref_s = [m.expert(k)(single) for k in range(4)]
        ref_c = [m.expert(k)(cross) for k in range(4)]
    out_s, out_c = m.expert_outputs(single, cross)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref_s + ref_c, out_s + out_c))
    # experts 0, 1 are single-domain: autograd on the SDSR rows only; 2, 3 on the CDSR rows only
    assert [h.requires_grad for h in out_s] == [True, True, False, False]
    assert [h.requires_grad for h in out_c] == [False, False, True, True]
    m.cfg.stop_gradient = False
    out_s, out_c = m.expert_outputs(single, cross)
    assert all(h.requires_grad for h in out_s + out_c)


def test_packing_benchmark_runs_both_layouts(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "bench" / "syncrec_packing.py"
    monkeypatch.setattr("sys.argv", [str(script), "--domains", "3", "--items", "40", "--batch", "4",
                                     "--max-len", "8", "--steps", "1"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "3 domains, batch 4 x 8" in out
    assert "rows per user 2" in out and "rows per user 4" in out  # packed: 2; one row per domain: D + 1
    assert "ratio (per domain / packed) x" in out


# --------------------------------------------------------------------------- the paper's LC-NTG and SC-MIM, the code's flags


def test_sum_gap_by_hand():
    # ntg_gap=sum (the paper's NTG, losses summed over time steps): per-domain sums over the batch's rows
    m = SyNCRec(from_dict(SyNCRecConfig, SMALL), 6, 8, item_domain=np.array([0, 1, 1, 2, 2, 3, 3]),
                domain_names=["a", "b", "c"])
    gap, present, count = m.domain_gaps(torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]),
                                        torch.tensor([1, 1, 2]), rows=2)
    assert gap.tolist() == pytest.approx([(3.0 - 2.0) / 2, (3.0 - 1.0) / 2, 0.0])
    assert present.tolist() == [True, True, False] and count.tolist() == [2, 1, 0]


@pytest.mark.parametrize("gap", ["sum", "mean"])
def test_model_gap_estimators(gap):
    m = _model(ntg_gap=gap)
    m.eval()
    with torch.no_grad():
        st = m.task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
        p = st["paired"]
        l_c = m.target_losses(st["cross"], st["target"], None, "ce")
        l_s = m.target_losses(st["single"], st["target"][p], None, "ce")
        got, _, _ = m.ntg_gaps(st, l_s, l_c, "ce")
        d = st["target_domain"][p]
        for k in (1, 2):
            diffs = (l_s - l_c[p])[d == k]
            expect = diffs.sum() / 3 if gap == "sum" else diffs.mean()  # 3 rows in the batch
            assert float(got[k - 1]) == pytest.approx(float(expect), rel=1e-5)


def test_domain_restricted_gap_scores_only_the_domains_items():
    m = _model(ntg_scope="domain")
    m.eval()
    with torch.no_grad():
        st = m.task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
        p = st["paired"]
        tgt, d = st["target"][p], st["target_domain"][p]
        # ce: a softmax over the target's domain's items only, for both heads
        for h in (st["single"], st["cross"][p]):
            got = m.domain_losses(h, tgt, d, "ce")
            logits = h @ m.item.weight[1:].T
            for i in range(len(tgt)):
                own = (DOM[1:] == d[i]).nonzero(as_tuple=True)[0]
                expect = -torch.log_softmax(logits[i, own], 0)[(own == tgt[i] - 1).nonzero()[0, 0]]
                assert float(got[i]) == pytest.approx(float(expect), rel=1e-5)
        # bce: the negative is drawn among the domain's items (a-items are odd, b-items even): each
        # row's loss is softplus(-s_target) + softplus(s_n) for some n of its domain, every such n turns
        # up over the draws, and no n of another domain ever fits
        order, start, count = m.domain_items()
        assert order.tolist() == [1, 3, 5, 2, 4, 6] and start.tolist() == [0, 3] and count.tolist() == [3, 3]
        h = st["single"]
        emb = m.item.weight
        pos = torch.nn.functional.softplus(-(h * emb[tgt]).sum(-1))
        per_item = pos[:, None] + torch.nn.functional.softplus(h @ emb[1:].T)  # [N, 6]: the loss with n = 1..6
        seen = [set() for _ in range(len(tgt))]
        for seed in range(200):
            torch.manual_seed(seed)
            got = m.domain_losses(h, tgt, d, "bce")
            for i in range(len(tgt)):
                fits = (per_item[i] - got[i]).abs() < 1e-5
                assert fits.any(), f"row {i}: loss {float(got[i])} is no candidate's"
                fits_items = (fits.nonzero(as_tuple=True)[0] + 1).tolist()
                assert all(int(DOM[n]) == int(d[i]) for n in fits_items)
                seen[i].update(fits_items)
        for i in range(len(tgt)):
            assert seen[i] == {n for n in range(1, 7) if int(DOM[n]) == int(d[i])}
        # the gap it gives differs from the unrestricted one (the SDSR head is no longer favoured)
        l_c = m.target_losses(st["cross"], st["target"], None, "ce")
        l_s = m.target_losses(st["single"], tgt, None, "ce")
        g_dom = m.ntg_gaps(st, l_s, l_c, "ce")[0]
        m.cfg.ntg_scope = "all"
        g_all = m.ntg_gaps(st, l_s, l_c, "ce")[0]
        assert not torch.allclose(g_dom, g_all)


def test_ntg_weights_move_and_differ_by_domain_under_the_paper_gap():
    """A hand-made batch where domain a's targets are many and predictable from the merged history
    and b's few: after a few training steps the weights differ by domain under the default (summed
    gap), and much more than with the mean-difference estimator."""
    items = torch.tensor([[1, 2, 3, 5, 1, 3, 5, 1], [3, 5, 1, 3, 5, 1, 3, 6], [5, 1, 3, 5, 1, 2, 5, 1]])
    targets = torch.tensor([[2, 3, 5, 1, 3, 5, 1, 3], [5, 1, 3, 5, 1, 3, 6, 1], [1, 3, 5, 1, 2, 5, 1, 3]])
    batch = {"items": items, "targets": targets, "lengths": torch.tensor([8, 8, 8])}
    tc = SimpleNamespace(loss="ce")
    spread = {}
    for gap in ("sum", "mean"):
        m = _model(ntg_gap=gap, gate_noise=False)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        m.on_epoch_start(1, opt)
        for _ in range(5):
            opt.zero_grad()
            m.loss(batch, tc).backward()
            opt.step()
        rep = m.epoch_report()
        w = rep["ntg_weight"]
        assert sum(w.values()) == pytest.approx(1.0)
        assert rep["ntg_gap"]["a"] != rep["ntg_gap"]["b"]
        spread[gap] = abs(w["a"] - w["b"])
    assert spread["sum"] > 0.03  # the weights differ by domain (0.06 here; the mean estimator: 0.008)
    assert spread["sum"] > 3 * spread["mean"]  # the summed gap moves them much more than the mean one


def test_code_loss_reduction_by_hand():
    tc = SimpleNamespace(loss="bce")
    m = _model(loss_reduction="code", single_input="inplace", mim_estimator="code")
    m.eval()
    batch = _batch()
    with torch.no_grad():
        m.ntg_state.copy_(torch.tensor([0.3, -0.2]))
        st = m.task_states(**{k: batch[k] for k in ("items", "lengths", "targets")})
        r, c = st["position"].unbind(-1)
        neg = batch["negatives"][r, c]
        l_c = m.target_losses(st["cross"], st["target"], neg, "bce")
        l_s = m.target_losses(st["single"], st["target"], neg, "bce")
        w = torch.softmax(torch.tensor([0.3, -0.2]), 0)
        torch.manual_seed(5)
        terms = m.loss_terms(batch, tc)
        assert float(terms["single"]) == pytest.approx(float(l_s.sum() / 2000), rel=1e-5)  # D = 2
        assert float(terms["cross"]) == pytest.approx(float((w[st["target_domain"] - 1] * l_c).sum() / 1000), rel=1e-5)
        torch.manual_seed(5)
        perm = torch.randperm(3)
        other = m.item(batch["items"][perm][r, c])
        mim = code_mim(m.mim(st["cross"]), st["single"], other).sum() / (3 * 8)  # B x max_len positions
        assert float(terms["mim"]) == pytest.approx(float(mim), rel=1e-5)


def test_sequence_gate_reads_the_whole_left_padded_window():
    with pytest.raises(ConfigError, match="needs model.single_input=inplace and model.position=reverse"):
        _model(gate_input="sequence")  # needs the in-place single-domain rows
    m = _model(gate_input="sequence", single_input="inplace")
    assert m.gates[0].single.weight.shape == (2, 8 * 16) and m.gates[0].single.bias is not None
    m.eval()
    batch = _batch()
    with torch.no_grad():
        e, flat = m.window_embeddings(batch["items"], batch["lengths"])
        # left-padded layout: row 2 (2 items) has 6 padding slots, then its items at positions 6, 7
        left = m.embeddings(torch.tensor([[0, 0, 0, 0, 0, 0, 6, 5]]), None, torch.arange(8)[None])
        assert torch.allclose(flat[2], left.reshape(-1), atol=1e-6)
        assert torch.allclose(e[:, :5][batch["items"] > 0], m.embeddings(batch["items"], batch["lengths"])[batch["items"] > 0],
                              atol=1e-6)
        h = m.sequence_states(batch["items"], batch["lengths"])
        # the gate sees later items: changing row 0's last item changes its state at position 0
        items2 = batch["items"].clone()
        items2[0, 4] = 1
        h2 = m.sequence_states(items2, batch["lengths"])
        assert not torch.allclose(h[0, 0], h2[0, 0])
        m.cfg.gate_input = "position"  # the per-position gate is causal (the gate weights are not used)
        m.gates = torch.nn.ModuleList(type(g)(16, 2, 2) for g in m.gates)
        h, h2 = m.sequence_states(batch["items"], batch["lengths"]), m.sequence_states(items2, batch["lengths"])
        assert torch.allclose(h[0, :4], h2[0, :4], atol=1e-6)


@pytest.mark.parametrize("over", [
    {},  # gates on the position's embedding; two-block experts (the default): the first block at every
    # position, the last at the last one
    {"layers": 1},
    {"gate_input": "sequence", "single_input": "inplace", "position": "reverse"},  # the code's gate on the window
    {"shared_experts": True, "layers": 2},
])
def test_query_runs_the_last_block_at_the_last_position_only_with_the_states_values(over):
    """``query`` (evaluation's read-out) equals ``sequence_states`` at each row's last real position,
    without computing the experts' last block at the other positions (rows of every length, one of 1)."""
    from mmrec.trainers.modules.sequence import TransformerBlock, gather_last

    m = _model(**over).eval()
    items = torch.tensor([[1, 2, 3, 4, 5], [2, 4, 1, 6, 0], [6, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 4, 1])
    with torch.no_grad():
        expect = gather_last(m.sequence_states(items, lengths), lengths)
        seen = []
        hooks = [blk.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
                 for blk in m.modules() if isinstance(blk, TransformerBlock)]
        got = m.query(items, lengths)
        for h in hooks:
            h.remove()
    assert got.shape == (3, 16)
    assert torch.allclose(got, expect, atol=1e-5)
    layers = m.cfg.layers
    # through forward: only the blocks before each expert's last (whole windows); the last runs via .last
    assert seen == [torch.Size([3, 5, 16])] * (4 * (layers - 1))


def test_query_with_gate_noise_at_evaluation_reads_the_whole_window_as_before():
    from mmrec.trainers.modules.sequence import gather_last

    m = _model(gate_noise_eval=True).eval()
    b = _batch()
    with torch.no_grad():
        torch.manual_seed(3)
        a = m.query(b["items"], b["lengths"])
        torch.manual_seed(3)
        expect = gather_last(m.sequence_states(b["items"], b["lengths"]), b["lengths"])
    assert torch.equal(a, expect)


def test_gate_noise_at_evaluation_only_with_gate_noise_eval():
    batch = _batch()
    for flag, same in ((False, True), (True, False)):
        m = _model(gate_noise_eval=flag)
        m.eval()
        with torch.no_grad():
            a, b = (m.query(batch["items"], batch["lengths"]) for _ in range(2))
        assert torch.equal(a, b) == same


def test_infonce_with_other_users_as_negatives_by_hand():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    # rows 0 and 1 belong to the same user: neither is the other's negative; row 2 is another user's
    out = infonce_per_group(c, s, torch.tensor([1, 1, 1]), owner=torch.tensor([0, 0, 1]))
    assert float(out[0]) == pytest.approx(-math.log(math.exp(1) / (math.exp(1) + math.exp(2))))
    assert float(out[1]) == pytest.approx(-math.log(math.exp(1) / (math.exp(1) + math.exp(0))))
    assert float(out[2]) == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(1))))
    # the same target does not exclude another user's state (the paper's negatives: every other user)
    out2 = infonce_per_group(c, s, torch.tensor([1, 1, 1]), owner=torch.tensor([0, 1, 2]))
    assert float(out2[0]) == pytest.approx(-math.log(math.exp(1) / (math.exp(1) + math.exp(0) + math.exp(2))))


def test_model_mim_default_is_the_papers_infonce_over_other_users():
    m = _model()
    assert m.cfg.mim_estimator == "infonce" and m.cfg.mim_negatives == "users" and m.mim.bias is None
    m.eval()
    with torch.no_grad():
        st = m.task_states(**{k: _batch()[k] for k in ("items", "lengths", "targets")})
        p = st["paired"]
        expect = infonce_per_group(m.mim(st["cross"][p]), st["single"], st["target_domain"][p],
                                   owner=st["position"][p][:, 0]).mean()
        assert float(m.mim_loss(st)) == pytest.approx(float(expect))


def test_mim_pair_input_and_bias_follow_the_code():
    m = _model(mim_pair="input", mim_estimator="code", mim_bias=True, single_input="inplace")
    assert m.mim.bias is not None
    m.eval()
    batch = _batch()
    with torch.no_grad():
        st = m.task_states(batch["items"], batch["lengths"], batch["targets"])
        r, c = st["position"].unbind(-1)
        idom = DOM[batch["items"][r, c]]
        assert st["input_domain"].tolist() == idom.tolist() and len(st["single_input"]) == len(st["target"])
        # h^S of the input's domain: the single-domain state of that domain at the position
        other = m.task_states(batch["items"], batch["lengths"], torch.where(batch["targets"] > 0, batch["items"], 0))
        assert torch.allclose(st["single_input"], other["single"], atol=1e-6)
        # x': the other row's item as far from its end as the target's position is from this row's end
        torch.manual_seed(4)
        perm = torch.randperm(3)
        n = batch["lengths"]
        oc = c + n[perm][r] - n[r]
        ids = torch.where(oc >= 0, batch["items"][perm][r, oc.clamp(min=0)], 0)
        expect = code_mim(m.mim(st["cross"]), st["single_input"], m.item(ids)).mean()
        torch.manual_seed(4)
        assert float(m.mim_loss(st)) == pytest.approx(float(expect))


def test_a_folder_saved_before_the_papers_lc_ntg_and_sc_mim_resumes_with_the_old_estimators():
    from mmrec.runs.config import upgrade_saved_config
    from mmrec.trainers.methods.syncrec import SyNCRecConfig

    up = upgrade_saved_config({"dataset": "d", "method": "syncrec", "model": {"mim_estimator": "code"}}, SyNCRecConfig)
    assert up["model"]["ntg_gap"] == "mean" and up["model"]["mim_negatives"] == "batch"
    assert up["model"]["mim_estimator"] == "code"  # stored: an old run keeps it; a new one defaults to infonce
    assert SyNCRecConfig().mim_estimator == "infonce" and SyNCRecConfig().ntg_gap == "sum"
