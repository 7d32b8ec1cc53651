"""Adaptation policies as data: what a target-task run takes from a pre-training run.

A pre-training run (``model.objective=pretrain``) leaves ``best.safetensors``; a target run with
``model.init_from=RUN_DIR`` (or ``RUN_DIR@N``: the weights it kept after epoch N, ``train.keep_every``)
starts from it under a policy (``model.adapt=NAME``). A policy is a frozen dataclass of name
patterns, applied in this order by ``apply_policy``:

1. ``load``: the model's tensors matching a pattern are copied from the run, except those matching
   ``reinit``. A tensor to load whose shape differs from the run's is an error (the run was trained
   with other model settings); one the run does not have is left as constructed ("absent").
2. ``reinit``: tensors matching are not taken from the run. With ``reinit_rule="fresh"`` they keep
   the value the model was constructed with (so, under the same seed, exactly a from-scratch run's
   initial value); with ``reinit_rule="model"`` the model's ``reinit_parameter(name, tensor)`` draws
   them again by its own rule (ANT's released code: xavier-normal experts, zero gates).
3. ``freeze``: *loaded* parameters matching a pattern, unless they match ``train``, get
   ``requires_grad=False`` (the loop's optimizer leaves them out). A parameter the policy would
   freeze but which the run did not have stays trainable (it would otherwise be a frozen random
   tensor) and is reported as absent.

Every other parameter trains. A pattern is either the name of a *group* (below) or a glob over
parameter names (``fnmatch``: ``*`` also crosses dots). The groups follow the naming the shared
modules give (``TransformerEncoder`` as ``encoder``, ``FeatureItemEncoder`` adaptors, ``item`` id table), so a
method built from them can use the policies as they are; a method with other names sets a class
attribute ``transfer_groups`` with the same keys.

======== ===================================================== ================================
group    parameters                                            patterns (``DEFAULT_GROUPS``)
======== ===================================================== ================================
encoder  the Transformer blocks (attention, FFN, their LNs)    ``encoder.blocks.*``
positions  learned position embeddings                         ``encoder.position.*``
input_norm the LayerNorm on item + position                    ``encoder.norm.*``
experts  MoE experts (whitening b_k, W_k; affine experts)      ``*.adaptors.*.experts.*``
gates    Gaussian-routing gate W_g, W_n                        ``*.adaptors.*.w_gate``, ``*.w_noise``
missing  learned vectors of items without a modality           ``*.missing.*``
ids      item id embeddings (transductive; never loaded)       ``item.*``
======== ===================================================== ================================

The policies (``POLICIES``; ``SHARED`` = every group but ``ids``, which are dataset-specific):

============= ============ ========================================== ============================ ==========
policy        loads        re-initialises                             frozen                       trains
============= ============ ========================================== ============================ ==========
relearn       SHARED       positions, experts, gates, missing (fresh) encoder                      the rest
relearn_code  SHARED       as relearn but by ANT's code rule, and the encoder                      the rest
                           price experts' biases are kept
finetune      SHARED       none                                       encoder, positions           the rest
finetune_all  SHARED       none                                       none                         all
freeze        SHARED       none                                       all loaded but the gates     gates, ids
scratch       nothing      none                                       none                         all
============= ============ ========================================== ============================ ==========

``relearn`` is ANT's re-learning adaptation (keep the user-intent encoder, re-learn positions and
every item-side module); ``finetune`` is UniSRec's (``fix_enc``: positions and blocks frozen, the
adaptor and the input LayerNorm fine-tuned); ``freeze`` is a linear-probe-like lower bound: every
pre-trained tensor is kept fixed and only the routing of the frozen experts is re-learned (plus id
embeddings in transductive mode, and any tensor the run lacked); ``scratch`` ignores the run.

A new policy is a few lines::

    POLICIES["probe_norm"] = AdaptPolicy("probe_norm", load=SHARED, freeze=SHARED, train=("input_norm",))
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmrec.errors import ConfigError

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "encoder": ("encoder.blocks.*",),
    "positions": ("encoder.position.*",),
    "input_norm": ("encoder.norm.*",),
    "experts": ("*.adaptors.*.experts.*",),
    "gates": ("*.adaptors.*.w_gate", "*.adaptors.*.w_noise"),
    "missing": ("*.missing.*",),
    "ids": ("item.*",),
}
SHARED = ("encoder", "positions", "input_norm", "experts", "gates", "missing")


@dataclass(frozen=True)
class AdaptPolicy:
    """Which tensors a target run loads, re-initialises and freezes (module docstring)."""

    name: str
    load: tuple[str, ...] = ()
    reinit: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    train: tuple[str, ...] = ()  # exceptions to ``freeze``
    reinit_rule: Literal["fresh", "model"] = "fresh"
    doc: str = field(default="", compare=False)


RELEARN = AdaptPolicy(
    "relearn", load=SHARED, reinit=("positions", "experts", "gates", "missing"), freeze=("encoder",),
    doc="ANT: transfer and freeze the encoder blocks, keep the input LayerNorm (trained); positions, "
        "experts, gates and missing vectors start as a fresh model's and are re-learned")
RELEARN_CODE = replace(
    RELEARN, name="relearn_code", reinit_rule="model",
    reinit=("positions", "gates", "missing", "*.adaptors.text.experts.*", "*.adaptors.image.experts.*",
            "*.adaptors.price.experts.*.weight"),
    doc="ANT's released finetune.py: as relearn, but re-drawn by the code's rule (position N(0, 0.02), "
        "whitening b = 0 and W xavier-normal, price W xavier-normal with the pre-trained bias kept, gates 0)")
FINETUNE = AdaptPolicy(
    "finetune", load=SHARED, freeze=("encoder", "positions"),
    doc="UniSRec (fix_enc): load all, freeze positions and blocks, fine-tune adaptor, gates and input LayerNorm")
FINETUNE_ALL = AdaptPolicy(
    "finetune_all", load=SHARED,
    doc="UniSRec without fix_enc: load all, fine-tune everything")
FREEZE = AdaptPolicy(
    "freeze", load=SHARED, freeze=SHARED, train=("gates",),
    doc="linear-probe-like: load all and freeze it; only the gates (and id embeddings) train")
SCRATCH = AdaptPolicy("scratch", doc="load nothing: a from-scratch baseline under the same command")

POLICIES: dict[str, AdaptPolicy] = {p.name: p for p in (RELEARN, RELEARN_CODE, FINETUNE, FINETUNE_ALL, FREEZE, SCRATCH)}


def get_policy(name: str) -> AdaptPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown adaptation policy model.adapt={name!r}; available: "
                          f"{', '.join(POLICIES)}") from None


def resolve(patterns: tuple[str, ...], groups: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Group names replaced by their globs; a pattern with ``.`` or ``*`` is a glob already."""
    out: list[str] = []
    for p in patterns:
        if p in groups:
            out += groups[p]
        elif "." in p or "*" in p:
            out.append(p)
        else:
            raise ConfigError(f"policy pattern {p!r} is neither a group ({', '.join(groups)}) nor a glob")
    return tuple(out)


def _match(name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def split_init_from(source: str | Path) -> tuple[Path, int | None]:
    """``RUN_DIR`` -> (RUN_DIR, None): its best weights; ``RUN_DIR@N`` -> (RUN_DIR, N): the weights it
    kept after epoch N (``train.keep_every``)."""
    text = str(source)
    head, at, tail = text.rpartition("@")
    if at and tail.isdigit() and head:
        return Path(head), int(tail)
    return Path(text), None


def pretrained_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The best weights of a finished pre-training run, or with ``RUN_DIR@N`` the weights it kept after
    epoch N (and its saved configuration, when there is one)."""
    from mmrec.runs.folder import RunFolder

    path, epoch = split_init_from(run_dir)
    folder = RunFolder(path)
    state = folder.weights("best" if epoch is None else epoch, purpose=f"model.init_from={run_dir}")
    return state, folder.config()


def _settings(cfg: dict[str, Any] | None) -> str:
    if not cfg:
        return "no config.json"
    m = cfg.get("model", {})
    keys = ("hidden", "layers", "heads", "inner", "n_experts", "mode")
    return f"method {cfg.get('method')}, " + ", ".join(f"{k}={m[k]}" for k in keys if k in m) + \
        f", max_len={cfg.get('train', {}).get('max_len')}, features {cfg.get('features')}"


def apply_policy(model: nn.Module, state: Mapping[str, torch.Tensor], policy: AdaptPolicy, *,
                 source: str = "the pre-trained run", run_config: dict[str, Any] | None = None,
                 reinit_fn: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, Any]:
    """Load, re-initialise and freeze ``model``'s tensors from ``state`` under ``policy`` (module
    docstring). Returns a report: the names in each of ``loaded``, ``reinitialised``, ``frozen``,
    ``trainable``, ``absent`` (to load, not in the run) and ``unused`` (in the run, neither loaded nor
    re-initialised: another modality, item ids, layers this model lacks), and
    their ``counts``. ``reinit_fn`` defaults to ``model.reinit_parameter`` for ``reinit_rule="model"``."""
    groups = getattr(model, "transfer_groups", DEFAULT_GROUPS)
    load, reinit = resolve(policy.load, groups), resolve(policy.reinit, groups)
    freeze, train = resolve(policy.freeze, groups), resolve(policy.train, groups)
    own = model.state_dict()
    take, absent, mismatched = [], [], []
    for name, t in own.items():
        if not _match(name, load) or _match(name, reinit):
            continue
        if name not in state:
            absent.append(name)
        elif tuple(state[name].shape) != tuple(t.shape):
            mismatched.append(f"{name}: run {list(state[name].shape)} vs this model {list(t.shape)}")
        else:
            take.append(name)
    if mismatched:
        raise ConfigError(
            f"model.init_from={source}: {len(mismatched)} tensor(s) that model.adapt={policy.name} loads have "
            f"other shapes than this model ({'; '.join(mismatched[:3])}{'; ...' if len(mismatched) > 3 else ''}). "
            f"The run was trained with other settings ({_settings(run_config)}): pre-train again with this "
            "run's model.hidden / layers / heads / inner / n_experts, train.max_len and feature dimensions, or "
            "choose a policy that re-initialises these tensors (model.adapt=relearn, or scratch)")
    if load and not take:
        raise ConfigError(f"model.init_from={source} holds none of the tensors model.adapt={policy.name} loads "
                          f"({_settings(run_config)}): is it a pre-training run of this method?")
    with torch.no_grad():
        for name in take:
            own[name].copy_(state[name])  # state_dict() shares storage with the parameters
    reinitialised = [n for n in own if _match(n, reinit)]
    if policy.reinit_rule == "model" and reinitialised:
        reinit_fn = reinit_fn or getattr(model, "reinit_parameter", None)
        if reinit_fn is None:
            raise ConfigError(f"model.adapt={policy.name} re-draws tensors by the model's own rule, and "
                              f"{type(model).__name__} has no reinit_parameter")
        with torch.no_grad():
            for name in reinitialised:
                reinit_fn(name, own[name])
    taken = set(take)
    frozen = []
    for name, p in model.named_parameters():
        if name in taken and _match(name, freeze) and not _match(name, train):
            p.requires_grad_(False)
            frozen.append(name)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    unused = [n for n in state if n not in taken and n not in reinitialised]  # not wanted by this model
    report = {"policy": policy.name, "source": source, "loaded": take, "reinitialised": reinitialised,
              "frozen": frozen, "trainable": trainable, "absent": absent, "unused": unused}
    report["counts"] = {k: len(v) for k, v in report.items() if isinstance(v, list)}
    return report


def adapt_from_run(model: nn.Module, run_dir: str | Path, policy: str | AdaptPolicy) -> dict[str, Any]:
    """``apply_policy`` with the ``best.safetensors`` of ``run_dir`` (an error if there is none)."""
    pol = get_policy(policy) if isinstance(policy, str) else policy
    state, cfg = pretrained_state(run_dir)  # also for scratch: refuse a folder that is not a finished run
    return apply_policy(model, state, pol, source=str(run_dir), run_config=cfg)
