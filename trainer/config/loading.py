"""YAML files (with `base:` includes) plus `section.key=value` overrides → a typed, validated `Config`."""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from typing import Any, Literal

import yaml

from trainer.config.checks import validate
from trainer.config.sections import Config
from trainer.errors import ConfigError


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (following `base:` includes), apply `section.key=value` overrides, type-check and validate."""
    raw = _read_yaml_with_bases(path, seen=())
    for item in overrides:
        _apply_override(raw, item)
    config = from_dict(raw)
    validate(config)
    return config


# Keys renamed since a release; a config (or a run folder's config.yaml) that still uses the old name loads with a
# one-line note, so existing runs resume.
RENAMED_KEYS = {("data", "shards"): "streams"}


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a typed `Config` from nested dicts, failing on unknown keys (naming the nearest) and wrong types."""
    for (section, old), new in RENAMED_KEYS.items():
        values = raw.get(section)
        if isinstance(values, dict) and old in values:
            if values.get(new) is not None and values[new] != values[old]:
                raise ConfigError(f"{section}.{old} is the old name of {section}.{new}; set only {section}.{new}")
            values = dict(values)
            old_value = values.pop(old)
            if values.get(new) is None:
                values[new] = old_value
            raw = {**raw, section: values}
            print(f"note: config key {section}.{old} is now {section}.{new}; read as {section}.{new}", file=sys.stderr)
    return _build(Config, raw, prefix="")


def _read_yaml_with_bases(path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml_with_bases(os.path.join(os.path.dirname(path), base), seen + (path,))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and key != "rules":
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
    dotted, text = item.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {item!r} must name section.key (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {key} is not a section")
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    name = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_describe(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_describe(value)}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this module, not in a config


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"
