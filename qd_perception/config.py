"""Frozen-dataclass configuration loaded from YAML, with clear errors.

One schema serves the CLI, the ROS nodes (parameters are declared from the same dataclasses) and
the tests. :func:`from_dict` validates recursively: unknown keys, missing required keys and wrong
types raise :class:`ConfigError` naming the dotted path of the offending key.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``pathlib.Path``, ``Literal[...]``,
``Optional[T]`` / ``T | None``, ``tuple[T, ...]``, ``tuple[T1, T2]``, ``list[T]``,
``dict[str, T]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _convert(k, args[0], f"{where}.<key>"): _convert(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, validating every key recursively."""
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for fname, f in fields.items():
        if fname in data:
            kwargs[fname] = _convert(data[fname], hints[fname], f"{name}.{fname}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name}: missing required key {fname!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation
        raise ConfigError(f"{name}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain YAML-serialisable form of a config dataclass (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict, overrides: typing.Sequence[str], where: str = "") -> dict:
    """``data`` (a config mapping, not modified) with ``KEY=VALUE`` overrides applied: ``KEY`` a
    dotted path (``denoising.enabled``), ``VALUE`` parsed as YAML (``true``, ``0.5``, ``[1, 2]``).
    Intermediate mappings are created where missing; :func:`from_dict` then validates the result
    (an unknown key fails there, naming it)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}override {item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}override {item!r}: invalid value: {e}") from e
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return out


def load_yaml(
    cls: type[T], path: str | Path, key: str | None = None, overrides: typing.Sequence[str] = ()
) -> T:
    """Load ``cls`` from a YAML file, optionally from the sub-mapping at top-level ``key``, with
    ``KEY=VALUE`` ``overrides`` (:func:`apply_overrides`) on top."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{path}: no top-level key {key!r}")
        data = data[key]
    data = apply_overrides(data if data is not None else {}, overrides, where=f"{path.name}: ")
    return from_dict(cls, data, where=f"{path.name}")


def is_config(obj: Any) -> typing.TypeGuard[Any]:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)
