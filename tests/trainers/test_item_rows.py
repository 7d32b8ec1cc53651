"""The sampled losses of methods whose items come from features read only the step's rows
(``row_encoder``, ``ItemRows``, ``step_item_ids``): the same loss and gradients as the whole
table's, without computing it."""

import pytest
import torch
from conftest import loss_and_grads, random_features

from mmrec.config import from_dict
from mmrec.trainers.base import ItemRows, step_item_ids
from mmrec.trainers.methods import METHODS

N_ITEMS = 40


def _batch(g, k=6):
    items = torch.randint(1, N_ITEMS + 1, (3, 5), generator=g)
    items[2, 3:] = 0
    targets = torch.randint(1, N_ITEMS + 1, (3, 5), generator=g)
    targets[2, 3:] = 0
    return {"items": items, "lengths": torch.tensor([5, 5, 3]), "targets": targets,
            "negatives": torch.randint(1, N_ITEMS + 1, (3, 5, 2), generator=g),
            "sampled_items": torch.randint(1, N_ITEMS + 1, (k,), generator=g),
            "sampled_log_q": torch.full((N_ITEMS + 1,), -3.0)}


def _model(method):
    cls = METHODS[method]
    model_cfg = {"hidden": 8, "inner": 16, "dropout": 0.0, "attn_dropout": 0.0, "feature_dropout": 0.0,
                 "layers": 1, "heads": 1, "fusion": "gated"}
    cfg = from_dict(cls.Config, model_cfg)
    torch.manual_seed(0)
    return cls(cfg, N_ITEMS, 5, random_features(N_ITEMS, {"text": 6, "image": 4}, {"text": [3]}))


@pytest.mark.parametrize("method", ["sasrec_ef", "sasrec_lf", "mmsr"])
@pytest.mark.parametrize("loss", ["sampled_ce", "bce", "gbce"])
def test_step_rows_give_the_whole_tables_loss_and_gradients(method, loss):
    model = _model(method).train()
    enc = getattr(model, model.row_encoder)
    calls = []
    combine = enc._combine
    enc._combine = lambda ids: (calls.append(None if ids is None else ids.numel()), combine(ids))[1]
    train_cfg = type("T", (), {"loss": loss, "gbce_t": 0.5})()
    batch = _batch(torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    rows_loss, rows = loss_and_grads(model, lambda: model.loss(batch, train_cfg))
    assert None not in calls and max(calls) < N_ITEMS  # never the whole table
    model.row_encoder = None  # the loss as before: the whole table
    calls.clear()
    torch.manual_seed(2)
    table_loss, table = loss_and_grads(model, lambda: model.loss(batch, train_cfg))
    assert None in calls
    assert torch.allclose(rows_loss, table_loss, atol=1e-6), (rows_loss, table_loss)
    assert rows.keys() == table.keys() and len(rows) > 4
    for name in table:
        assert torch.allclose(rows[name], table[name], atol=1e-6), name


def test_the_full_softmax_still_reads_the_whole_table():
    model = _model("sasrec_ef").train()
    calls = []
    combine = model.feat._combine
    model.feat._combine = lambda ids: (calls.append(None if ids is None else ids.numel()), combine(ids))[1]
    model.loss(_batch(torch.Generator().manual_seed(1)), type("T", (), {"loss": "ce"})())
    assert None in calls


def test_item_rows_compute_each_distinct_id_once_and_step_ids_cover_the_batch():
    asked = []
    rows = ItemRows(lambda ids: (asked.append(ids.tolist()), ids.float()[:, None] * torch.ones(1, 2))[1], 11)
    out = rows[torch.tensor([[4, 2], [4, 9]])]
    assert asked == [[2, 4, 9]] and len(rows) == 11
    assert out.shape == (2, 2, 2) and out[:, :, 0].tolist() == [[4.0, 2.0], [4.0, 9.0]]
    batch = {"items": torch.tensor([[1, 2]]), "targets": torch.tensor([[2, 3]]), "sampled_items": torch.tensor([7, 1])}
    assert step_item_ids(batch).tolist() == [0, 1, 2, 3, 7]
