"""ROS parameters declared from the project's frozen config dataclasses, read back validated.

One schema for node, CLI and tests: a dataclass such as ``DetectorNodeConfig`` is flattened to
dotted parameter names (``detector.name``, ``sync.slop_s``...), declared with its defaults, and
read back through :func:`qd_perception.config.from_dict`, so a parameter file gets the same
errors as a YAML config: unknown keys (typos), wrong types and invalid values raise
:class:`ConfigError` naming the parameter.

Parameters are declared with ``dynamic_typing`` so that ``slop_s: 1`` (an integer in YAML) is
accepted for a float, as in the YAML configs; the type check is ours.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from qd_perception.config import ConfigError, from_dict

T = TypeVar("T")


def flatten_defaults(cls: type, prefix: str = "", base: Any = None) -> dict[str, Any]:
    """Dataclass type -> {dotted name: ROS-compatible default value} for every leaf field.

    Defaults come from ``base`` (an instance of ``cls``) when given, else from the class.
    """
    hints = get_type_hints(cls)
    default_obj = base
    if default_obj is None:
        try:
            default_obj = cls()
        except TypeError:  # required fields: only the ones with defaults get one
            pass
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = getattr(default_obj, f.name) if default_obj is not None else None
            out.update(flatten_defaults(tp, name + ".", sub))
            continue
        if default_obj is not None:
            value = getattr(default_obj, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = _empty_for(tp)
        out[name] = to_ros_value(value, tp, name)
    return out


def _empty_for(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (tuple, list):
        return []
    if tp is bool:
        return False
    if tp is int:
        return 0
    if tp is float:
        return 0.0
    return ""


def to_ros_value(value: Any, tp: Any, name: str) -> Any:
    """A config value -> what a ROS parameter can hold (tuples -> lists, paths/None -> str)."""
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (bool, int, float, str, list)):
        return value
    raise ConfigError(f"parameter {name!r}: a {type(value).__name__} cannot be a ROS parameter")


def _from_ros_value(value: Any, tp: Any) -> Any:
    """Undo :func:`to_ros_value` where the schema needs it ("" -> None for optional fields)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType) and type(None) in get_args(tp) and value == "":
        return None
    if origin is tuple and isinstance(value, list):
        return list(value)
    return value


def nest(flat: dict[str, Any], cls: type) -> dict[str, Any]:
    """{dotted name: value} -> nested mapping shaped like ``cls`` (for :func:`from_dict`)."""
    hints_cache: dict[type, dict[str, Any]] = {}
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node, tp = out, cls
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            hints = hints_cache.setdefault(tp, get_type_hints(tp)) if dataclasses.is_dataclass(tp) else {}
            tp = hints.get(p, object)
        hints = hints_cache.setdefault(tp, get_type_hints(tp)) if dataclasses.is_dataclass(tp) else {}
        node[parts[-1]] = _from_ros_value(value, hints.get(parts[-1], Any))
    return out


def declare_config(node: Any, cls: type[T], prefix: str = "", base: T | None = None) -> T:
    """Declare every field of ``cls`` as a parameter of ``node`` and return the validated config.

    Raises :class:`ConfigError` for parameter overrides (``--params-file``, ``-p``) that name no
    field of ``cls`` (typos would otherwise be silently ignored) and for invalid values.
    The config is read once, at start-up: every parameter is declared read-only, so a runtime
    ``set_parameters`` is refused (instead of reporting success and changing nothing).
    """
    from rcl_interfaces.msg import ParameterDescriptor

    defaults = flatten_defaults(cls, base=base)
    overrides = dict(getattr(node, "_parameter_overrides", {}) or {})
    known = {prefix + k for k in defaults} | {"use_sim_time", "start_type_description_service"}
    unknown = sorted(k for k in overrides if k.startswith(prefix) and k not in known)
    if unknown:
        raise ConfigError(
            f"node {node.get_name()!r}: unknown parameter(s) {unknown}; declared: {sorted(defaults)}"
        )
    for name, default in defaults.items():
        desc = ParameterDescriptor(
            name=prefix + name, dynamic_typing=True, read_only=True, description=_describe(cls, name)
        )
        if isinstance(default, list) and not default:
            # An empty list has no ROS type: declare it typed (a string array) instead.
            from rclpy.parameter import Parameter

            desc.dynamic_typing = False
            node.declare_parameter(prefix + name, Parameter.Type.STRING_ARRAY, desc)
        else:
            node.declare_parameter(prefix + name, default, desc)
    from rclpy.exceptions import ParameterUninitializedException

    flat = {}
    for name in defaults:
        try:
            value = node.get_parameter(prefix + name).value
        except ParameterUninitializedException:  # typed declaration without a value (empty list)
            value = None
        flat[name] = value if value is not None else defaults[name]
    return from_dict(cls, nest(flat, cls), where=node.get_name())


def _describe(cls: type, dotted: str) -> str:
    tp: Any = cls
    for p in dotted.split("."):
        tp = get_type_hints(tp)[p] if dataclasses.is_dataclass(tp) else Any
    if get_origin(tp) is Literal:
        return f"one of {list(get_args(tp))}"
    return str(tp).replace("typing.", "")


def params_file(node_name: str, config: Any) -> dict[str, Any]:
    """A ``--params-file`` mapping ``{node_name: {ros__parameters: {...}}}`` from a config."""
    return {node_name: {"ros__parameters": flatten_defaults(type(config), base=config)}}
