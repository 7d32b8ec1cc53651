"""Sequence encoders over right-padded item sequences (padding id 0 at the end of each row).

Inputs are ``x: [B, L, d]`` embeddings plus ``lengths: [B]``; outputs are ``[B, L, d]`` states where
position t only depends on positions <= t (causal), so every position can be a training target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, dropout: float, act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.act = {"gelu": F.gelu, "relu": F.relu}[act]
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc2(self.act(self.fc1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a post-residual LayerNorm, on ``scaled_dot_product_attention``."""

    def __init__(self, hidden: int, heads: int, attn_dropout: float, dropout: float, eps: float = 1e-12):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.attn_dropout = attn_dropout
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        h = h.transpose(1, 2).reshape(b, l, d)
        return self.norm(x + self.dropout(self.out(h)))

    def last(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The output ``[B, d]`` at each row's last real position only (right padding, causal): its
        query attends to positions ``< length``; the other positions' queries are never computed."""
        b, l, d = x.shape
        dh = d // self.heads
        x_last = gather_last(x, lengths)
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x_last, w[:d], bias[:d]).view(b, self.heads, 1, dh)
        k, v = F.linear(x, w[d:], bias[d:]).view(b, l, 2, self.heads, dh).permute(2, 0, 3, 1, 4)
        keys = torch.arange(l, device=x.device)[None, :] < lengths.clamp(min=1)[:, None]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :],
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.norm(x_last + self.dropout(self.out(h.reshape(b, d))))


class TransformerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, attn_dropout: float,
                 act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.attn = SelfAttention(hidden, heads, attn_dropout, dropout, eps)
        self.ffn = FeedForward(hidden, inner, dropout, act, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = True) -> torch.Tensor:
        return self.ffn(self.attn(x, mask, is_causal))

    def last(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``forward`` (causal, right padding) at each row's last real position only: ``[B, d]``."""
        return self.ffn(self.attn.last(x, lengths))


class TransformerEncoder(nn.Module):
    """SASRec's encoder: learned positions, LayerNorm + dropout on the input, N post-LN blocks.

    Right padding with a causal mask needs no key-padding mask: a real position never sees a later
    (padding) one, and padding positions are ignored by the losses and the read-out.
    """

    def __init__(self, hidden: int = 64, layers: int = 2, heads: int = 2, inner: int = 256,
                 dropout: float = 0.5, attn_dropout: float = 0.5, max_len: int = 50,
                 act: str = "gelu", eps: float = 1e-12, position: str = "forward"):
        super().__init__()
        if position not in ("forward", "reverse"):
            raise ValueError(f"position must be 'forward' or 'reverse', not {position!r}")
        self.max_len = max_len
        self.position_mode = position
        self.position = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, heads, inner, dropout, attn_dropout, act, eps) for _ in range(layers)
        )

    def positions(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """Position ids ``[B, width]``. ``forward``: 0 for the oldest item (RecBole). ``reverse``:
        ``max_len - 1`` for the most recent item, as with left padding (Kang's SASRec, S3-Rec)."""
        ar = torch.arange(width, device=lengths.device)[None, :].expand(len(lengths), -1)
        return self.token_positions(ar, lengths[:, None])

    def token_positions(self, index: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """Position ids of tokens at ``index`` (0 = oldest) of sequences of ``length`` items (the two
        broadcast): for several sequences packed into one row (SyNCRec's single-domain inputs)."""
        if self.position_mode == "forward":
            return index
        return (self.max_len - length + index).clamp(0, self.max_len - 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, positions: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``positions`` (``[B, L]`` ids) replaces the ids computed from ``lengths``."""
        pos = self.positions(lengths, x.shape[1]) if positions is None else positions
        h = self.dropout(self.norm(x + self.position(pos)))
        for block in self.blocks:
            h = block(h, None, True)
        return h

    def last(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``gather_last(forward(x, lengths), lengths)`` without computing the last block at the other
        positions (what evaluation and recommendation need: a third less work with two blocks)."""
        pos = self.positions(lengths, x.shape[1])
        return blocks_last(self.blocks, self.dropout(self.norm(x + self.position(pos))), lengths)


def blocks_last(blocks: nn.ModuleList, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Causal ``TransformerBlock``s over right-padded ``x`` ``[B, L, d]``, read at each row's last real
    position ``[B, d]``: every block but the last at every position, the last at that position only."""
    for block in blocks[:-1]:
        x = block(x, None, True)
    return blocks[-1].last(x, lengths) if len(blocks) else gather_last(x, lengths)


class GRUEncoder(nn.Module):
    """GRU4Rec's encoder (as in RecBole): dropout on the input, a GRU, a linear map back to ``out``."""

    def __init__(self, hidden: int = 64, gru_hidden: int = 128, layers: int = 1, dropout: float = 0.3,
                 out: int | None = None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, gru_hidden, num_layers=layers, batch_first=True, bias=False)
        self.proj = nn.Linear(gru_hidden, out or hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.dropout(x), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        h, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return self.proj(h)


class NextItNetEncoder(nn.Module):
    """NextItNet: stacked residual blocks of dilated causal 1-D convolutions."""

    def __init__(self, hidden: int = 64, dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4), kernel: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        self.kernel = kernel
        self.blocks = nn.ModuleList()
        for d in dilations:
            self.blocks.append(nn.ModuleDict({
                "conv1": nn.Conv1d(hidden, hidden, kernel, dilation=d),
                "norm1": nn.LayerNorm(hidden),
                "conv2": nn.Conv1d(hidden, hidden, kernel, dilation=2 * d),
                "norm2": nn.LayerNorm(hidden),
            }))
        self.dilations = dilations
        self.dropout = nn.Dropout(dropout)

    def _causal(self, conv: nn.Conv1d, x: torch.Tensor, dilation: int) -> torch.Tensor:
        pad = (self.kernel - 1) * dilation
        return conv(F.pad(x.transpose(1, 2), (pad, 0))).transpose(1, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x)
        for d, blk in zip(self.dilations, self.blocks):
            r = F.relu(blk["norm1"](self._causal(blk["conv1"], h, d)))
            r = F.relu(blk["norm2"](self._causal(blk["conv2"], r, 2 * d)))
            h = h + r
        return h


def gather_last(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The state at each row's last real position: ``h[b, lengths[b] - 1]``."""
    idx = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    return h.gather(1, idx).squeeze(1)


# relation types of a session graph (KDSR's code, after SR-GNN): 0 none, 1 self-loop, 2 the row node
# precedes the column node, 3 it follows it, 4 both
REL_NONE, REL_SELF, REL_OUT, REL_IN, REL_BOTH = 0, 1, 2, 3, 4


def session_nodes(items: torch.Tensor) -> torch.Tensor:
    """``[B, L]``: the node of each position, i.e. the position of the item's first occurrence in the
    row (a session graph has one node per distinct item); padding (id 0) maps to its own position."""
    l = items.shape[1]
    same = (items[:, :, None] == items[:, None, :]) & (items[:, :, None] > 0)
    earlier_or_self = torch.ones(l, l, dtype=torch.bool, device=items.device).tril()  # [t, j]: j <= t
    first = torch.where(same & earlier_or_self[None], torch.arange(l, device=items.device), l).amin(-1)
    return torch.where(items > 0, first, torch.arange(l, device=items.device).expand_as(items))


def prefix_relations(items: torch.Tensor, lag: int = 0) -> torch.Tensor:
    """``R`` ``[B, L, L]`` (int64): ``R[b, t, j]`` is the relation, in the session graph of the
    prefix ``items[b, :t + 1]``, from the node of position ``t - lag`` to node ``j`` (nodes are
    first-occurrence positions, ``session_nodes``). An edge u -> v exists when v follows u directly
    somewhere in the prefix (u != v); relations as ``REL_*``. Rows with ``t - lag < 0`` or padding at
    t are all ``REL_NONE``. O(B L^2) memory: every prefix graph at once, without building one."""
    b, l = items.shape
    dev = items.device
    node = session_nodes(items)
    real = items > 0
    # tau[u, v]: the first step s + 1 at which the transition node u -> node v happens (l + 1: never)
    never = l + 1
    tau = torch.full((b, l * l), never, dtype=torch.long, device=dev)
    if l > 1:
        u, v = node[:, :-1], node[:, 1:]
        ok = real[:, :-1] & real[:, 1:] & (u != v)
        step = torch.arange(1, l, device=dev).expand(b, -1)
        tau.scatter_reduce_(1, torch.where(ok, u * l + v, 0), torch.where(ok, step, never), reduce="amin")
    tau = tau.view(b, l, l)
    t = torch.arange(l, device=dev)
    src_pos = (t - lag).clamp(min=0)
    row_node = node[:, src_pos]  # [B, L]: node read at each t
    out_t = tau.gather(1, row_node[:, :, None].expand(b, l, l))  # tau[row, j]
    in_t = tau.transpose(1, 2).gather(1, row_node[:, :, None].expand(b, l, l))  # tau[j, row]
    now = t[None, :, None]
    out, inn = out_t <= now, in_t <= now
    rel = torch.full((b, l, l), REL_NONE, dtype=torch.long, device=dev)
    rel = torch.where(out & ~inn, REL_OUT, rel)
    rel = torch.where(inn & ~out, REL_IN, rel)
    rel = torch.where(out & inn, REL_BOTH, rel)
    rel = torch.where(row_node[:, :, None] == t[None, None, :], REL_SELF, rel)
    valid = real & (t >= lag)[None, :] & real[:, src_pos]
    return torch.where(valid[:, :, None], rel, REL_NONE)


class RelationalGAT(nn.Module):
    """One relational graph-attention layer over a session graph (KDSR's ``RGATLayer``):

        g = x W;   e_ij = LeakyReLU(<g_i * g_j, a_r>) * s_r   for r = R_ij != 0, else -inf
        out_i = sum_j softmax_j(e_i)_j g_j

    with one attention vector ``a_r`` and one scale ``s_r`` (the code's "relation amplifier") per
    relation type 1..4. ``forward(x, rel, rows)`` takes node features ``x`` ``[B, L, d]`` (node j's at
    index j), rows of relations ``rel`` ``[B, T, L]`` and the node of each row ``rows`` ``[B, T]``
    (row t's node attends to every node j with ``rel[:, t, j] > 0``), and returns ``[B, T, d]``.
    Dropout is on the attention weights; the code drops logits, which can unmask absent edges."""

    n_relations = 4

    def __init__(self, hidden: int, slope: float = 0.1, dropout: float = 0.2):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden, hidden))
        self.att = nn.Parameter(torch.empty(self.n_relations, hidden))
        self.scale = nn.Parameter(torch.empty(self.n_relations))
        self.slope = slope
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / self.weight.shape[0] ** 0.5  # as the code: U(-1/sqrt(d), 1/sqrt(d)) for all
        for p in (self.weight, self.att, self.scale):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, rel: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` ``[B, T]``: the node (index into L) of each relation row."""
        g = x @ self.weight  # [B, L, d]
        g_rows = g.gather(1, rows[:, :, None].expand(-1, -1, g.shape[-1]))  # [B, T, d]
        logits = torch.full(rel.shape, float("-inf"), dtype=g.dtype, device=g.device)
        for r in range(1, self.n_relations + 1):
            e = F.leaky_relu((g_rows * self.att[r - 1]) @ g.transpose(1, 2), self.slope) * self.scale[r - 1]
            logits = torch.where(rel == r, e, logits)
        empty = ~(rel > 0).any(-1, keepdim=True)  # rows without a node (padding): zero output
        w = torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        return self.dropout(w) @ g


def last_states(encoder: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The encoder's state ``[B, d]`` at each row's last real position, by the encoder's own
    ``last`` where it has one (the transformer), else from all its states."""
    if hasattr(encoder, "last"):
        return encoder.last(x, lengths)
    return gather_last(encoder(x, lengths), lengths)


def encode(encoder: nn.Module, x: torch.Tensor, lengths: torch.Tensor, last: bool = False) -> torch.Tensor:
    """``encoder(x, lengths)`` ``[B, L, d]``, or with ``last`` only the last real position's state
    ``[B, d]`` (``last_states``): one switch for methods with several streams."""
    return last_states(encoder, x, lengths) if last else encoder(x, lengths)


BACKBONES = ("sasrec", "gru4rec", "nextitnet")


def build_backbone(kind: str, hidden: int, max_len: int, *, layers: int = 2, heads: int = 2, inner: int = 256,
                   dropout: float = 0.5, attn_dropout: float = 0.5, act: str = "gelu",
                   position: str = "reverse") -> nn.Module:
    """A sequence encoder ``forward(x [B, L, hidden], lengths) -> [B, L, hidden]``, causal.

    ``sasrec``: ``TransformerEncoder`` (layers, heads, inner, dropouts, positions); ``gru4rec``:
    ``GRUEncoder`` with ``layers`` GRU layers of width 2 x hidden; ``nextitnet``: dilated causal
    convolutions, dilations (1, 2, 4) repeated ``layers`` times.
    """
    if kind == "sasrec":
        return TransformerEncoder(hidden, layers, heads, inner, dropout, attn_dropout, max_len, act, position=position)
    if kind == "gru4rec":
        return GRUEncoder(hidden, 2 * hidden, layers, dropout)
    if kind == "nextitnet":
        return NextItNetEncoder(hidden, (1, 2, 4) * max(1, layers), 3, dropout)
    raise ValueError(f"unknown backbone {kind!r}; use one of {', '.join(BACKBONES)}")


@dataclass
class TransformerConfig:
    """The SASRec-style encoder settings that every Transformer-based method shares (a method's
    config inherits them and adds its own)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    act: Literal["gelu", "relu"] = "gelu"
    init_std: float = 0.02
    # "reverse": the most recent item always has the last position (left padding, as Kang's and
    # S3-Rec's code); "forward": positions count from the oldest item (RecBole).
    position: Literal["forward", "reverse"] = "reverse"

    def encoder(self, max_len: int) -> TransformerEncoder:
        return TransformerEncoder(self.hidden, self.layers, self.heads, self.inner, self.dropout, self.attn_dropout,
                                  max_len, self.act, position=self.position)
