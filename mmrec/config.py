"""Typed configuration: dataclasses validated at the edge.

A config comes from a YAML or TOML file plus ``key.sub=value`` overrides from the command line.
Every key is checked against the dataclass it fills: an unknown key is an error that lists the
known ones, and a value of the wrong type is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import tomllib
import yaml

from mmrec.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def list_form(value: Any) -> str:
    """The ``[a, b]`` spelling of a list, built from the value the user gave: ``"a,b"`` or ``"a b"``
    -> ``[a, b]``, ``0.9`` -> ``[0.9]``, a list as it is; ``[a, b]`` when nothing usable was given."""
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    elif isinstance(value, str):
        text = value.strip().strip("[]")
        parts = [p.strip() for p in (text.split(",") if "," in text else text.split())]
        parts = [p for p in parts if p]
    elif value is None or isinstance(value, dict):
        parts = []
    else:
        parts = [json.dumps(value) if isinstance(value, bool) else str(value)]
    return "[" + ", ".join(parts or ["a", "b"]) + "]"


def _not_a_list(key: str, value: Any) -> ConfigError:
    form = list_form(value)
    return ConfigError(f"{key}: expected a list in brackets, got {value!r}; write {key}={form} "
                       f"(on the command line quote it: --set '{key}={form}'; in a config file: "
                       f"{key.rsplit('.', 1)[-1]}: {form})")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) ``value`` against the type ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if not isinstance(value, (list, tuple)) and any(get_origin(a) in (list, tuple) for a in args):
            raise _not_a_list(key, value)
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _not_a_list(key, value)
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Fill the dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table of settings, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)}; "
            f"known settings here: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
        if "dropout" in name and isinstance(kwargs[name], float) and not 0.0 <= kwargs[name] < 1.0:
            raise ConfigError(f"{prefix + name} is a dropout probability: it must be at least 0 and below 1, "
                              f"got {kwargs[name]!r}")
    missing = [
        prefix + n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """A JSON-ready dict of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: cannot parse config file: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level of a config file must be a table of settings")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars/lists) to a nested dict copy."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (for example train.lr=0.001)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict) and value and all(v is None for v in value.values()):
            value = raw  # "{title}" is a template, not a mapping of keys without values
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part} is not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def yaml_value(v: Any) -> str:
    """``v`` as text the ``--set`` reader (YAML 1.1) reads back as ``v``: JSON, but a float in
    scientific notation with a decimal point (``1.0e-07``; YAML 1.1 reads ``1e-07`` as a string)."""
    if isinstance(v, float):
        r = repr(v)
        return r.replace("e", ".0e", 1) if "e" in r and "." not in r else r
    if isinstance(v, list):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {yaml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def settings_overrides(settings: dict[str, Any] | None) -> list[str]:
    """``{"train.epochs": 3}`` as ``--set`` strings that the ``--set`` reader reads back as the same values."""
    return [f"{k}={yaml_value(v)}" for k, v in (settings or {}).items()]


def load(cls: type[T], file: str | Path | None = None, overrides: list[str] | None = None,
         flags: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from defaults < ``base`` (e.g. a preset) < config ``file`` < ``flags`` (the
    command line's own options, which win over a file, as users expect) < ``overrides`` (``--set``)."""
    data: dict[str, Any] = json.loads(json.dumps(base or {}))
    if file:
        data = _deep_merge(data, read_config_file(file))
    data = _deep_merge(data, json.loads(json.dumps(flags or {})))
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
