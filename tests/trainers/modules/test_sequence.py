"""Sequence encoders: positions, causality, padding, the last-position read-out."""

import pytest
import torch

from mmrec.trainers.modules.sequence import (
    GRUEncoder,
    NextItNetEncoder,
    TransformerEncoder,
    gather_last,
)


def test_reverse_positions_match_left_padding():
    enc = TransformerEncoder(hidden=8, heads=2, inner=16, max_len=5, position="reverse")
    pos = enc.positions(torch.tensor([2, 3]), 3)
    assert pos.tolist() == [[3, 4, 4], [2, 3, 4]]  # the last real item always gets position 4
    fwd = TransformerEncoder(hidden=8, heads=2, inner=16, max_len=5, position="forward")
    assert fwd.positions(torch.tensor([2, 3]), 3).tolist() == [[0, 1, 2], [0, 1, 2]]



@pytest.mark.parametrize("enc", [
    TransformerEncoder(hidden=8, heads=2, inner=16, max_len=6, dropout=0.0, attn_dropout=0.0, position="forward"),
    GRUEncoder(hidden=8, gru_hidden=8, dropout=0.0),
    NextItNetEncoder(hidden=8, dilations=(1, 2)),
])
def test_encoders_are_causal(enc):
    torch.manual_seed(0)
    enc.eval()
    x = torch.randn(1, 6, 8)
    lengths = torch.tensor([6])
    y1 = enc(x, lengths)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, 8)  # change the future
    y2 = enc(x2, lengths)
    assert torch.allclose(y1[0, :4], y2[0, :4], atol=1e-6)
    assert not torch.allclose(y1[0, 4:], y2[0, 4:])



def test_trailing_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    enc = TransformerEncoder(hidden=8, heads=2, inner=16, max_len=6, dropout=0.0, attn_dropout=0.0).eval()
    x = torch.randn(1, 3, 8)
    padded = torch.cat([x, torch.zeros(1, 3, 8)], 1)
    a = enc(x, torch.tensor([3]))
    b = enc(padded, torch.tensor([3]))
    assert torch.allclose(a, b[:, :3], atol=1e-6)
    assert torch.equal(gather_last(b, torch.tensor([3])), b[:, 2])



@pytest.mark.parametrize("layers", [1, 2, 3])
def test_last_position_read_out_equals_the_full_encoder(layers):
    """`TransformerEncoder.last` computes the last block at each row's last real position only; it
    must equal the full encoder read at that position, for every length, padding and position mode."""
    torch.manual_seed(layers)
    for mode in ("forward", "reverse"):
        enc = TransformerEncoder(hidden=8, heads=2, inner=16, layers=layers, max_len=6, position=mode).eval()
        x = torch.randn(4, 6, 8)
        lengths = torch.tensor([1, 3, 6, 5])
        x[0, 1:] = 0.0  # padding
        x[1, 3:] = 0.0
        with torch.no_grad():
            full = gather_last(enc(x, lengths), lengths)
            last = enc.last(x, lengths)
            # what follows the last real position (padding or not) cannot change its state
            x2 = x.clone()
            x2[1, 3:] = torch.randn(3, 8)
            assert torch.allclose(enc.last(x2, lengths), last, atol=1e-6)
        assert last.shape == (4, 8)
        assert torch.allclose(last, full, atol=1e-6)
