"""Checkpoints: atomic save, load with the embedded model config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qd_perception.config import ConfigError, from_dict, to_dict
from qd_perception.fileio import atomic_output
from qd_perception.model_files import load_torch_file
from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.model import BEVFormer

ARCH = "bevformer"


def save_checkpoint(path: str | Path, model: BEVFormer, **extra: Any) -> Path:
    """Write ``{arch, model_config, state_dict, **extra}`` atomically (``fileio.atomic_output``)."""
    path = Path(path)
    payload = {"arch": ARCH, "model_config": to_dict(model.cfg), "state_dict": model.state_dict(), **extra}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Checkpoint dict (tensors and plain containers only: nothing in the file is executed)."""
    path = Path(path)
    ckpt = load_torch_file(path, "BEVFormer checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise ConfigError(
            f"{path} is not a {ARCH} checkpoint (arch={ckpt.get('arch') if isinstance(ckpt, dict) else None})"
        )
    return ckpt


def trained_queue_length(ckpt: dict[str, Any]) -> int | None:
    """The ``queue_length`` (frames per training sample, current included) a checkpoint of
    ``train bev`` was trained with, None when it does not say."""
    q = (ckpt.get("train_config") or {}).get("queue_length")
    return int(q) if q is not None else None


def load_checkpoint(path: str | Path) -> BEVFormer:
    """Model (eval mode) from a checkpoint written by :func:`save_checkpoint`."""
    return model_from_checkpoint(read_checkpoint(path), path)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> BEVFormer:
    """Model (eval mode) from a checkpoint dict (:func:`read_checkpoint`) read from ``path``."""
    cfg = from_dict(BEVFormerConfig, ckpt["model_config"], where=f"{Path(path).name}.model_config")
    model = BEVFormer(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as e:  # weights of another shape / model: one line, not a dump
        first = str(e).splitlines()[0][:160]
        raise ConfigError(f"{path}: weights do not match its model_config ({first})") from None
    return model.eval()
