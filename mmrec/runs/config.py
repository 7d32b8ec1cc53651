"""A run's configuration as ``config.json`` holds it: the typed settings of a run (``RunConfig``:
the method's ``model`` section, ``train``, ``eval``, ``cold``), the resolved form every run folder
saves, and the upgrade rules that read a folder saved by an older mmrec (settings added since get
the behaviour that run had), so an old run still resumes, evaluates and is reused as it was."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from mmrec.config import from_dict, to_dict
from mmrec.errors import ConfigError
from mmrec.runs.folder import RunFolder
from mmrec.trainers.evaluation import EvalConfig
from mmrec.trainers.methods import get_method
from mmrec.trainers.modules.fusion import ATTENTION_KINDS

# Accelerate's tracker names -> the package each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def flatten(d: dict[str, Any], sep: str, prefix: str = "") -> dict[str, Any]:
    """The leaves of a nested dict, keyed ``a<sep>b``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, sep, f"{prefix}{k}{sep}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def scalars(d: dict[str, Any]) -> dict[str, float]:
    """The numbers of a nested dict, keyed ``a/b`` (what trackers take)."""
    return {k: float(v) for k, v in flatten(d, "/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    # "adam": L2 weight decay added to the gradient (torch Adam); "adamw": decoupled weight decay
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    # the learning rate over optimiser steps: linear warm-up from 0 over ``warmup_steps``, then
    # "constant", "step" (times ``lr_gamma`` every ``lr_step_epochs`` epochs) or "cosine" (to 0 at the
    # last step of ``epochs``); applied on top of each parameter group's own rate
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_step_epochs: int = 1
    lr_gamma: float = 1.0
    warmup_steps: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # the next-item loss (mmrec.trainers.modules.losses.next_item_loss): "ce" softmax over every item;
    # "bce" SASRec's BCE with ``negatives`` per position; "sampled_ce" softmax over the target and
    # ``sampled_negatives`` items drawn for each step ("uniform": distinct items; "popularity": with
    # replacement, proportional to training counts ** ``sampled_power``), the logits corrected by log Q
    # (``sampled_correction``); "gbce" gSASRec's generalised BCE with ``negatives`` per position and
    # calibration ``gbce_t`` (0: BCE, 1: the fully calibrated form)
    loss: Literal["ce", "bce", "sampled_ce", "gbce"] = "ce"
    negatives: int = 1
    # the sampled softmax's defaults are the measured best of docs/benchmarks.md ("Sampled softmax and large
    # catalogues"): K = 1,024 uniform, negatives-only correction, 16 draws a step came within 2.2% of the
    # full softmax on Beauty (K = 256 was 26.8% below it on ml-1m; one draw a step with TensorFlow's
    # correction 10.1% below on Beauty). Before 2026-12-07 the defaults were 256, "all" and 1: a run saved
    # with loss=sampled_ce records its values, so it resumes as it was
    sampled_negatives: int = 1024
    sampled_distribution: Literal["uniform", "popularity"] = "uniform"
    sampled_power: float = 1.0
    # the log-Q correction on the "negatives" only (the loss estimates the full softmax's), or on "all" the
    # logits (TensorFlow's sampled_softmax_loss: a uniform draw's is then a constant, and the target competes
    # with K items only)
    sampled_correction: Literal["all", "negatives"] = "negatives"
    # the step's target rows (in batch order, so neighbouring rows are one sequence's) in this many
    # contiguous groups, each with its own ``sampled_negatives`` draw (1: one draw the whole batch shares).
    # Same cost a step for ID embeddings; a method whose items come from features computes the rows of every
    # draw (at most G x K, and never more than the catalogue)
    sampled_groups: int = 16
    gbce_t: float = 0.75
    # a user's sampled negatives avoid the items of their training part ("train"), or of the whole
    # sequence including the validation and test items ("sequence": S3-Rec's code; a leak)
    negatives_avoid: Literal["train", "sequence"] = "train"
    max_len: int = 50
    windows: Literal["last", "all", "prefixes"] = "last"
    bucket_batches: bool = True
    # how a batch's loss counts: "target" (default): scaled by the batch's targets over the epoch's
    # mean targets per batch, so every target weighs the same, as with mixed batches; "batch": as
    # the method returns it (a mean per batch, each batch weighing the same, so under bucket_batches
    # a target in a batch of short windows weighs up to max_len times one in a batch of long ones; a
    # run folder saved before this setting existed resumes with it; docs/benchmarks.md compares both)
    loss_weighting: Literal["batch", "target"] = "target"
    patience: int = 10
    valid_metric: str = "ndcg@10"
    # "metric": keep the epoch with the best valid_metric; "any" (S3-Rec's EarlyStopping): a new
    # checkpoint whenever any validation metric beats the last kept epoch's value of it; "any_best"
    # (KDSR's main.py): whenever any validation metric beats its own best over all earlier epochs
    early_stop: Literal["metric", "any", "any_best"] = "metric"
    # "valid": the checkpoint kept is the best on the validation part; "test_leak": on the *test*
    # part (as some released code does: a leak, reported as such in results.json; only in ``code``
    # presets). The test part is then evaluated every epoch. "last": the last evaluated epoch is kept
    # (no early stop; e.g. UniSRec's code fine-tunes from its last pre-training epoch)
    select_on: Literal["valid", "test_leak", "last"] = "valid"
    eval_every: int = 1
    # every N epochs, keep that epoch's weights (``epochs/epoch-N.safetensors`` in the run folder) for
    # ``model.init_from=RUN_DIR@N``, e.g. a transfer metric against pre-training epochs; 0: none. Writes
    # files only, so it may change between a run and its resume
    keep_every: int = 0
    grad_clip: float | None = None
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # torch.compile the model (inductor): worth it on a GPU for long runs; the first steps pay the
    # compilation (tens of seconds), and each new batch shape may recompile once
    compile: bool = False
    threads: int | None = None
    log_every_s: float = 30.0
    # experiment trackers through Accelerate (off by default: no network calls from batch nodes);
    # metrics.jsonl is always written
    trackers: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_len < 1:
            raise ConfigError("train.epochs, train.batch_size and train.max_len must be positive")
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        if self.lr_step_epochs < 1 or self.lr_gamma <= 0 or self.warmup_steps < 0:
            raise ConfigError("train.lr_step_epochs must be >= 1, train.lr_gamma > 0 and train.warmup_steps >= 0")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay must be >= 0")
        if self.keep_every < 0:
            raise ConfigError(f"train.keep_every must be >= 0 (0: keep no epoch's weights), got {self.keep_every}")
        if self.loss in ("bce", "gbce") and self.negatives < 1:
            raise ConfigError(f"train.negatives must be >= 1 with train.loss={self.loss} (negatives per position), "
                              f"got {self.negatives}")
        if self.loss == "sampled_ce" and self.sampled_negatives < 1:
            raise ConfigError(f"train.sampled_negatives must be >= 1 (the negatives each step shares), got "
                              f"{self.sampled_negatives}; use train.loss=ce for a softmax over every item")
        if self.sampled_groups < 1:
            raise ConfigError(f"train.sampled_groups must be >= 1 (1: one draw of negatives a step for the whole "
                              f"batch), got {self.sampled_groups}")
        if not (self.sampled_power >= 0 and math.isfinite(self.sampled_power)):
            raise ConfigError(f"train.sampled_power must be a finite number >= 0 (counts ** power; 0: uniform over "
                              f"the items seen in training), got {self.sampled_power}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError(f"train.gbce_t must be in [0, 1] (0: plain BCE, 1: fully calibrated), got {self.gbce_t}")
        for t in self.trackers:
            if t not in TRACKERS:
                raise ConfigError(f"train.trackers: unknown tracker {t!r}; use any of {', '.join(TRACKERS)}")
            if importlib.util.find_spec(TRACKERS[t]) is None:
                raise ConfigError(f"train.trackers: {t} needs the {TRACKERS[t]} package (pip install {TRACKERS[t]}), "
                                  "or leave it out")
        name, _, k = self.valid_metric.partition("@")
        if name not in ("hr", "ndcg", "mrr") or not k.isdigit():
            raise ConfigError(f"train.valid_metric {self.valid_metric!r} must look like ndcg@10, hr@20 or mrr@10")


@dataclass
class ColdConfig:
    """The cold-start protocol: ``fraction`` of the items (drawn with ``seed``) are held out of
    training and appear only as validation/test targets; metrics are reported for cold and warm
    test cases separately. ``fraction=0`` (the default) turns it off; ``--cold-start`` sets 0.1."""

    fraction: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError(f"cold.fraction must be in [0, 1), got {self.fraction}")


# settings whose default differs from what runs did before the setting existed: a run folder saved
# without them is resumed with the old behaviour (the value here, given the saved configuration),
# not the new default
BEHAVIOUR_BEFORE: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
    ("train", "loss_weighting"): lambda old: "batch",
    # the sampled softmax corrected every logit (TensorFlow's form) with one draw a step before these settings
    # existed (a run saved then with loss=sampled_ce resumes so)
    ("train", "sampled_correction"): lambda old: "all",
    ("train", "sampled_groups"): lambda old: 1,
    # the attention fusions' output LayerNorm started at gain 1; the other fusions have no such gain,
    # nor has a run of one modality (nothing to fuse)
    # UniSRec pre-training had no sequence-sequence term before model.seq_seq_weight existed
    ("model", "seq_seq_weight"): lambda old: (0.0 if old.get("method") == "unisrec"
                                              and old.get("model", {}).get("objective") == "pretrain" else 1e-3),
    # SyNCRec's LC-NTG gap was the mean loss difference and its InfoNCE took the batch's other pairs
    ("model", "ntg_gap"): lambda old: "mean",
    ("model", "mim_negatives"): lambda old: "batch",
    # ANT pre-training's in-batch softmax had every other target of the batch as a negative
    ("model", "pretrain_negatives"): lambda old: "batch",
    ("model", "fusion_gain"): lambda old: (1.0 if old.get("model", {}).get("fusion") in ATTENTION_KINDS
                                           and len(old.get("features") or {}) > 1 else None),
}


@dataclass
class RunConfig:
    dataset: str
    method: str = "sasrec"
    out: str = "runs"
    name: str | None = None
    features: dict[str, str] = field(default_factory=dict)  # modality (text|image|price) -> store entry
    store: str = "features"
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cold: ColdConfig = field(default_factory=ColdConfig)
    # the preset the settings started from (``mmrec presets``; None: mmrec's defaults, "harmonised"),
    # and each of its values that a config file, a flag or --set changed: {key: {"preset": v, "used": w}}
    preset: str | None = None
    preset_overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        k = int(self.train.valid_metric.split("@")[1])
        if k not in self.eval.ks:
            raise ConfigError(f"train.valid_metric uses K={k}, which is not in eval.ks={self.eval.ks}")


# settings that change how a run is computed, not what it computes: a run folder is resumed or
# reused whatever they were
RESOURCE_SETTINGS = frozenset({"preset", "preset_overrides", "out", "name", "train.device", "train.threads", "train.log_every_s",
                                "train.trackers", "train.keep_every", "eval.batch_size", "eval.item_chunk"})


def resolved_config(run: RunConfig, model_cfg: Any = None) -> dict[str, Any]:
    """What a run folder's ``config.json`` holds for ``run``: every default filled in, the model
    section through the method's config class (``model_cfg`` when already built)."""
    out = to_dict(run)
    out["model"] = to_dict(model_cfg if model_cfg is not None
                           else from_dict(get_method(run.method).Config, run.model, prefix="model."))
    return out


def upgrade_saved_config(old: dict[str, Any], model_cls: type) -> dict[str, Any]:
    """A run folder's saved config read by this version: settings added since it was written get
    the behaviour the run had, their default or, where the default changed the behaviour, the
    old one (``BEHAVIOUR_BEFORE``), so such a run can still be resumed as it was."""
    try:
        upgraded = to_dict(from_dict(RunConfig, old))
        upgraded["model"] = to_dict(from_dict(model_cls, old.get("model", {})))
    except ConfigError:
        return old
    for (section, key), before in BEHAVIOUR_BEFORE.items():
        if key not in old.get(section, {}) and key in upgraded[section]:  # (the method has the setting)
            upgraded[section][key] = before(old)
    return upgraded


def _sampled(c: dict[str, Any]) -> bool:
    return c.get("train.loss") == "sampled_ce"


# settings a run reads only under some value of another (flattened keys -> whether the flattened config
# reads it): where neither the saved run nor this one reads a setting, a difference in it changes nothing,
# so a ``ce`` run saved under other sampled-softmax defaults is still the same run
READ_ONLY_WHEN: dict[str, Callable[[dict[str, Any]], bool]] = {
    "train.sampled_negatives": _sampled,
    "train.sampled_distribution": _sampled,
    "train.sampled_power": lambda c: _sampled(c) and c.get("train.sampled_distribution") == "popularity",
    "train.sampled_correction": _sampled,
    "train.sampled_groups": _sampled,
    "train.gbce_t": lambda c: c.get("train.loss") == "gbce",
}


def reads_setting(key: str, config: dict[str, Any]) -> bool:
    """Whether a run with the flattened ``config`` reads the setting ``key``."""
    return key not in READ_ONLY_WHEN or READ_ONLY_WHEN[key](config)


# how long a run trains: a resume may raise them (a run that hit its epoch cap continues), since the
# epochs done so far are the same under either value; not with a cosine schedule, whose rates depend on
# train.epochs
EXTENDABLE_ON_RESUME = frozenset({"train.epochs", "train.patience"})


def setting_in(key: str, names: frozenset[str] | set[str]) -> bool:
    """Whether the flattened ``key`` is one of ``names`` or inside one (``preset_overrides.train.lr.used``
    is inside ``preset_overrides``)."""
    return key in names or any(key.startswith(n + ".") for n in names)


def _saved_differences(folder: RunFolder, resolved: dict[str, Any], model_cls: type) -> tuple[dict[str, str], bool]:
    """The settings (flattened keys -> "KEY: OLD there, NEW now") where the run saved in ``folder``
    differs from ``resolved``, resource settings aside; and whether its epoch cap and patience may
    change on resume (not under a cosine schedule, whose rates depend on ``train.epochs``)."""
    old = folder.config()
    if old is None or old == resolved:
        return {}, True
    a, b = flatten(upgrade_saved_config(old, model_cls), "."), flatten(resolved, ".")
    diff = {k: f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not setting_in(k, RESOURCE_SETTINGS)
            and (reads_setting(k, a) or reads_setting(k, b))}
    return diff, a.get("train.lr_schedule") != "cosine"


def _refuse(folder: RunFolder, diff: list[str], action: str) -> None:
    if diff:
        raise ConfigError(f"{folder.config_path} differs from this run's configuration ({'; '.join(diff[:5])}); "
                          f"to {action} it use the same settings (--set KEY=VALUE), or give another run folder")


def check_saved_config(folder: RunFolder, resolved: dict[str, Any], model_cls: type, action: str) -> None:
    """Refuse to ``action`` (resume, reuse) ``folder`` when it was trained with other settings than
    ``resolved`` (resource settings aside: threads, device, evaluation batch; on resume, the epoch cap
    and patience may change, ``EXTENDABLE_ON_RESUME``)."""
    diff, extendable = _saved_differences(folder, resolved, model_cls)
    free = EXTENDABLE_ON_RESUME if action == "resume" and extendable else frozenset()
    _refuse(folder, [d for k, d in diff.items() if not setting_in(k, free)], action)


def reusable(folder: RunFolder, resolved: dict[str, Any], model_cls: type) -> bool:
    """Whether the run finished in ``folder`` is the run ``resolved`` asks for (True), or the same run
    with another epoch cap or patience (False: resume it to the new ones, as ``mmrec train --resume``
    would); ``ConfigError`` naming the differences when other settings differ."""
    diff, extendable = _saved_differences(folder, resolved, model_cls)
    if not diff:
        return True
    if not (extendable and all(setting_in(k, EXTENDABLE_ON_RESUME) for k in diff)):
        _refuse(folder, list(diff.values()), "reuse")
    return False


def finished_results(run: RunConfig, run_dir: str | Path) -> dict[str, Any] | None:
    """The ``results.json`` of ``run_dir`` if a run with ``run``'s settings finished there; None
    if nothing finished there, or a run that differs only in ``train.epochs`` / ``train.patience``
    (``EXTENDABLE_ON_RESUME``: it is to be resumed to them); ``ConfigError`` naming the differences if
    the run that finished there had other settings (so a rerun with changed settings never reports
    the old run)."""
    folder = RunFolder(run_dir)
    if not folder.is_finished() or not reusable(folder, resolved_config(run), get_method(run.method).Config):
        return None
    return folder.results()


def saved_run_config(folder: RunFolder, overrides: list[str] | None = None) -> RunConfig:
    """The ``RunConfig`` a folder was trained with (upgraded to this version's settings), with
    ``overrides`` (``key=value``) applied, without ``model.init_from`` (its checkpoint holds every
tensor): what ``evaluate`` and ``recommend`` read."""
    from mmrec.config import apply_overrides

    base = folder.require_config()
    if isinstance(base.get("model"), dict):  # the checkpoint holds every tensor: no pre-trained run needed
        base["model"].pop("init_from", None)
    model_cls = get_method(base.get("method", "sasrec")).Config
    return from_dict(RunConfig, apply_overrides(upgrade_saved_config(base, model_cls), overrides or []))


def preset_settings(method: str, name: str) -> dict[str, Any]:
    """The settings of ``method``'s preset ``name`` as a nested dict (``model``, ``train``, ``eval``;
    its ``prepare.*`` values describe the dataset and are not settings of a run)."""
    from mmrec.trainers.presets import preset

    out: dict[str, Any] = {"method": method}
    for key, s in preset(method, name).items():
        if key.startswith("prepare."):
            continue
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = s.value
    return out


def preset_overrides(run: RunConfig, base: dict[str, Any]) -> dict[str, Any]:
    """Each value of the preset ``base`` that the run's final settings changed."""
    now = flatten(resolved_config(run), ".")
    was = {k: v for k, v in flatten(base, ".").items() if k != "method"}
    return {k: {"preset": v, "used": now.get(k)} for k, v in sorted(was.items()) if now.get(k) != v}


def lr_factor(tc: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's factor on the learning rate at optimiser step ``step`` (0-based, counted over
    the whole run) with ``steps_per_epoch`` steps an epoch (``TrainConfig.lr_schedule``)."""
    warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
    if tc.lr_schedule == "step":
        return warm * tc.lr_gamma ** ((step // max(steps_per_epoch, 1)) // tc.lr_step_epochs)
    if tc.lr_schedule == "cosine":
        total = max(tc.epochs * steps_per_epoch - tc.warmup_steps, 1)
        t = min(max(step - tc.warmup_steps, 0) / total, 1.0)
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    return warm


def preset_prepare_differences(method: str, name: str | None, dataset_config: dict[str, Any]) -> dict[str, Any]:
    """The ``prepare.*`` values of ``method``'s preset ``name`` that the dataset was not prepared
    with (``dataset_config``: its ``dataset.json`` ``config``): {key: {"preset": v, "dataset": w}}.
    Only keys that are settings of ``mmrec data prepare`` are compared; the others describe data
    mmrec cannot make (another encoder, say) and are only printed by ``mmrec presets``."""
    from mmrec.trainers.presets import preset, presets_of

    if not name or name not in presets_of(method):  # none, or another method's (an experiment's family)
        return {}
    out = {}
    for key, v in preset(method, name).items():
        field_name = key.removeprefix("prepare.")
        if key.startswith("prepare.") and field_name in dataset_config and dataset_config[field_name] != v.value:
            out[key] = {"preset": v.value, "dataset": dataset_config[field_name]}
    return out


def preset_base(method: str, preset: str | None, family: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(settings, label) a run of ``method`` starts from: its ``preset``; or, when it has none, the
    ``train`` and ``eval`` part of ``family``'s (baselines under a method's preset family); ({}, None)
    without a preset. A ConfigError when neither has it."""
    from mmrec.trainers.presets import presets_of

    if not preset:
        return {}, None
    if preset in presets_of(method) or not family:
        return preset_settings(method, preset), preset  # (an unknown preset: the error lists the presets)
    fam = preset_settings(family, preset)
    return {k: v for k, v in fam.items() if k in ("train", "eval")}, f"{family}:{preset} (train, eval)"


def build_run(flags: dict[str, Any], overrides: list[str] | None = None, *, file: str | Path | None = None,
              base: dict[str, Any] | None = None, label: str | None = None) -> RunConfig:
    """A RunConfig from defaults < ``base`` (a preset's settings) < ``file`` < ``flags`` < ``overrides``,
    recording the preset ``label`` and every value that overrode it."""
    from mmrec.config import load

    run = load(RunConfig, file, list(overrides or []), flags=flags, base=base or {})
    if label:
        run.preset = label
        run.preset_overrides = preset_overrides(run, base or {})
    return run
