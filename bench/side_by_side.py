"""The side-by-side harness: mmrec's implementation of a method against the authors' released code.

Each ``bench/side_by_side_<method>.py`` builds the authors' model (imported from a checkout the
user passes with ``--official DIR``: never copied into mmrec, never a dependency) and mmrec's from
one seed, copies the weights across by an explicit name map, feeds both the same batches, and
compares with the functions here: item scores, every loss term, the total loss, every parameter's
gradient, then ``steps`` optimiser steps of each and the parameters after them. Float32 on the CPU;
tolerance 1e-5 unless a documented difference explains the gap.

The shims an official checkout needs to import on a CPU machine (``.cuda()`` calls, paths, removed
dependencies) belong in the method's script, listed in its docstring, never in mmrec.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

TOL = 1e-5


@dataclass
class Row:
    component: str
    max_abs: float
    max_rel: float
    note: str = ""

    def verdict(self, tol: float = TOL) -> str:
        return "ok" if self.max_abs <= tol or self.max_rel <= tol else ("differs: " + self.note if self.note else "DIFFERS")


def diff(component: str, a: torch.Tensor, b: torch.Tensor, note: str = "") -> Row:
    """Max absolute and relative difference of two tensors of one shape (relative to ``max|b|``)."""
    a = torch.as_tensor(a).detach().double()
    b = torch.as_tensor(b).detach().double()
    if a.shape != b.shape:
        raise ValueError(f"{component}: shapes differ, {tuple(a.shape)} (mmrec) against {tuple(b.shape)} (official)")
    if a.numel() == 0:
        return Row(component, 0.0, 0.0, note)
    d = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return Row(component, d, d / scale if scale > 0 else (0.0 if d == 0 else float("inf")), note)


def grad_rows(name_map: dict[str, str], ours: torch.nn.Module, theirs: torch.nn.Module,
              transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> list[Row]:
    """One row per mapped parameter: mmrec's gradient against the official one (``transform`` maps
    an official tensor into mmrec's layout, e.g. a transpose)."""
    transform = transform or {}
    mine, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    rows = []
    for m_name, o_name in name_map.items():
        gm, go = mine[m_name].grad, other[o_name].grad
        if gm is None and go is None:
            continue
        gm = torch.zeros_like(mine[m_name]) if gm is None else gm
        go = torch.zeros_like(other[o_name]) if go is None else go
        rows.append(diff(f"grad {m_name}", gm, transform.get(m_name, lambda t: t)(go)))
    return rows


def param_rows(name_map: dict[str, str], ours: torch.nn.Module, theirs: torch.nn.Module, prefix: str,
               transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> list[Row]:
    transform = transform or {}
    mine, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    return [diff(f"{prefix} {m}", mine[m], transform.get(m, lambda t: t)(other[o])) for m, o in name_map.items()]


@torch.no_grad()
def copy_weights(name_map: dict[str, str], ours: torch.nn.Module, theirs: torch.nn.Module,
                 transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
    """Set mmrec's parameters from the official model's by ``name_map`` (mmrec name -> official
    name); every mmrec parameter must be mapped, so nothing is left at its own initialisation."""
    transform = transform or {}
    mine, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    missing = sorted(set(mine) - set(name_map))
    if missing:
        raise KeyError(f"mmrec parameters with no official counterpart in the name map: {missing}")
    for m_name, o_name in name_map.items():
        src = transform.get(m_name, lambda t: t)(other[o_name].detach())
        if src.shape != mine[m_name].shape:
            raise ValueError(f"{m_name} {tuple(mine[m_name].shape)} <- {o_name} {tuple(src.shape)}: shapes differ")
        mine[m_name].copy_(src)


@torch.no_grad()
def copy_by_spec(ours: torch.nn.Module, theirs: torch.nn.Module,
                 spec: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor] | None]) -> None:
    """Set each mmrec parameter from the official model's parameters by ``spec`` (mmrec name -> a
    function of the official ``{name: tensor}``, or None for a parameter the code does not have: zero)."""
    official = {k: p.detach() for k, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        fn = spec[name]
        src = torch.zeros_like(p) if fn is None else fn(official)
        if src.shape != p.shape:
            raise ValueError(f"{name}: {tuple(p.shape)} <- {tuple(src.shape)}")
        p.copy_(src)


def steps(ours: torch.nn.Module, ours_loss: Callable[[int], torch.Tensor], theirs: torch.nn.Module,
          theirs_loss: Callable[[int], torch.Tensor], make_opt: Callable[[Iterable], torch.optim.Optimizer],
          n: int = 20, clip: float | None = None) -> list[Row]:
    """``n`` optimiser steps of each model (``*_loss(step)`` computes the loss of that step's batch);
    one row per step's loss difference."""
    opt_a, opt_b = make_opt(ours.parameters()), make_opt(theirs.parameters())
    rows = []
    for i in range(n):
        for model, opt, fn in ((ours, opt_a, ours_loss), (theirs, opt_b, theirs_loss)):
            opt.zero_grad(set_to_none=True)
            loss = fn(i)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if model is ours:
                la = loss.detach()
            else:
                lb = loss.detach()
        rows.append(diff(f"step {i + 1} loss", la, lb))
    return rows


def print_table(title: str, rows: list[Row], tol: float = TOL, out=None) -> bool:
    """A Markdown table of ``rows`` (to ``out``, default the current stdout); True when every row is
    within ``tol`` (or explained)."""
    out = out or sys.stdout
    print(f"\n### {title}\n", file=out)
    print("| component | max abs diff | max rel diff | verdict |", file=out)
    print("| --- | ---: | ---: | --- |", file=out)
    ok = True
    for r in rows:
        v = r.verdict(tol)
        ok &= v == "ok" or bool(r.note)
        print(f"| {r.component} | {r.max_abs:.2e} | {r.max_rel:.2e} | {v} |", file=out)
    return ok


@contextlib.contextmanager
def official_import_path(checkout: str | Path, *subdirs: str) -> Iterator[Path]:
    """``checkout`` (and ``subdirs`` of it) first on ``sys.path`` while importing the official code;
    modules it imported are dropped afterwards, so two checkouts never mix."""
    root = Path(checkout).resolve()
    if not root.is_dir():
        raise SystemExit(f"--official {checkout}: no such folder; fetch the authors' repository and pass its path")
    paths = [str(root / s) for s in subdirs] + [str(root)]
    before = set(sys.modules)
    sys.path[:0] = paths
    try:
        yield root
    finally:
        for p in paths:
            sys.path.remove(p)
        for name in set(sys.modules) - before:
            mod = sys.modules[name]
            if str(getattr(mod, "__file__", "") or "").startswith(str(root)):
                del sys.modules[name]
