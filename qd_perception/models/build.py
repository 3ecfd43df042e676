"""Explicit architecture-name -> (config class, model class) table, and model-file loading.

A model file ``config/models/<name>.model.yaml`` has two top-level keys::

    arch: centerpoint          # a key of ARCHITECTURES
    model: {...}               # the architecture's config dataclass, validated by config.from_dict

Entries are import paths, resolved on use, so one family's dependencies (spconv, image backbones)
are only imported by the models that need them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qd_perception.config import ConfigError, from_dict


@dataclass(frozen=True)
class ArchSpec:
    config: str  # "module:ClassName" of the frozen config dataclass
    model: str  # "module:ClassName" of the nn.Module, constructed as Model(config)


ARCHITECTURES: dict[str, ArchSpec] = {
    "centerpoint": ArchSpec(
        config="qd_perception.models.centerpoint.config:CenterPointConfig",
        model="qd_perception.models.centerpoint.model:CenterPoint",
    ),
    "bevformer": ArchSpec(
        config="qd_perception.models.bevformer.config:BEVFormerConfig",
        model="qd_perception.models.bevformer.model:BEVFormer",
    ),
}


def _resolve(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _spec(arch: str) -> ArchSpec:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def config_from_dict(arch: str, data: dict[str, Any]) -> Any:
    """Validated config dataclass of ``arch`` from a plain mapping."""
    return from_dict(_resolve(_spec(arch).config), data, where=f"{arch}.model")


def load_model_file(path: str | Path) -> tuple[str, Any]:
    """Read a ``*.model.yaml`` -> (arch, config dataclass)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"model file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict) or set(data) != {"arch", "model"}:
        raise ConfigError(f"{path}: expected exactly the top-level keys 'arch' and 'model'")
    return data["arch"], config_from_dict(data["arch"], data["model"])


def build_model(arch: str, cfg: Any) -> Any:
    """Construct the untrained ``nn.Module`` of ``arch`` from its config dataclass."""
    return _resolve(_spec(arch).model)(cfg)
