"""SASRec's output table: shared with the input (Kang's SASRec) or separate (gSASRec's default)."""

import pytest
import torch

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.trainers.methods.sasrec import SASRec, SASRecConfig


def _batch():
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    return items, torch.tensor([3, 2])


def test_shared_output_table_is_the_input_table():
    m = SASRec(SASRecConfig(hidden=8, heads=2, inner=16), n_items=9, max_len=4)
    assert m.out is None and m.item_embeddings() is m.item.weight


def test_separate_output_table_scores_and_learns_apart_from_the_input_table():
    """Scores are the query's dot products with the output table's rows; a loss on the scores puts a
    gradient on an output row the inputs never read (item 9) while that item's input row gets none."""
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(hidden=8, heads=2, inner=16, output_embeddings="separate", dropout=0.0,
                            attn_dropout=0.0), n_items=9, max_len=4)
    assert m.item_embeddings() is m.out.weight and not torch.equal(m.out.weight, m.item.weight)
    assert torch.count_nonzero(m.out.weight[0]) == 0  # padding row
    items, lengths = _batch()
    q = m.query(items, lengths)
    by_hand = q @ m.out.weight[7]
    assert torch.allclose(m.score(q, torch.tensor([7])).reshape(-1), by_hand, atol=1e-6)
    m.score(q, torch.tensor([9])).sum().backward()
    assert m.out.weight.grad[9].abs().sum() > 0
    assert m.item.weight.grad[9].abs().sum() == 0  # item 9 is in no input
    assert m.item.weight.grad[1].abs().sum() > 0   # inputs still learn through the encoder


def test_output_embeddings_setting_is_validated():
    with pytest.raises(ConfigError, match="model.output_embeddings: 'tied' is not one of"):
        from_dict(SASRecConfig, {"output_embeddings": "tied"}, "model.")
