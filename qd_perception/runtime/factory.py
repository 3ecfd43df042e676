"""Detector factory: an explicit table detector-name -> builder.

Every backend (classical baseline, CenterPoint torch/ONNX Runtime/TensorRT, camera BEV) is built
from one frozen :class:`DetectorConfig`, the same one the ROS nodes declare as parameters
(``detector.*``) and the CLI loads from YAML. To add a detector, add one entry to
:data:`BUILDERS` with a function that imports its module lazily (so a missing optional dependency
only breaks that detector).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qd_perception.config import ConfigError, load_yaml
from qd_perception.paths import share_dir
from qd_perception.runtime.base import Detector


@dataclass(frozen=True)
class DetectorConfig:
    """Which detector a node or command runs.

    name: key of :data:`BUILDERS` ("classical", "centerpoint", "bev").
    model_path: weights / ONNX / engine file ("" where the detector has none).
    model_config: ``config/models/<name>.model.yaml`` describing the model ("" = builder default).
    device: "cpu", "cuda", "cuda:1".
    backend: torch (FP32/FP16/fake-quant), onnxruntime (INT8 Q/DQ), tensorrt, or auto: from
        ``model_path`` (``.pt`` -> torch, ``.onnx`` or a directory of them -> onnxruntime,
        ``.engine`` / ``.plan`` -> tensorrt), so a parameter file switches between the INT8
        artefact and the FP32 checkpoint with ``model_path`` alone.
    score_threshold: detections below it are not returned.
    threads: compute threads of the detector, 0 = the libraries' defaults (every core, and ONNX
        Runtime's pool busy-waits between runs). On a vehicle computer shared with other nodes give
        each detector its share: torch intra-op threads (process-wide: one detector per node
        process) and ONNX Runtime intra-op threads with spinning off. Measured through the lidar
        node on the shared 2-core machine: with the default pools INT8 lost its speed-up over FP32.
    """

    name: str = "classical"
    model_path: str = ""
    model_config: str = ""
    device: str = "cpu"
    backend: Literal["torch", "onnxruntime", "tensorrt", "auto"] = "torch"
    score_threshold: float = 0.1
    threads: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = library default), got {self.threads}")


def _apply_torch_threads(cfg: DetectorConfig) -> None:
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


def _build_classical(cfg: DetectorConfig) -> Detector:
    from qd_perception.models.classical import ClassicalConfig, ClassicalDetector

    ccfg = load_yaml(ClassicalConfig, cfg.model_config) if cfg.model_config else ClassicalConfig()
    return ClassicalDetector(dataclasses.replace(ccfg, score_threshold=cfg.score_threshold))


def _build_bev(cfg: DetectorConfig) -> Detector:
    """Camera BEVFormer: ``model_path`` is a ``train bev`` checkpoint (backend torch) or the
    ``bevformer.onnx`` of ``export bev`` (backend onnxruntime); the model config travels inside."""
    from qd_perception.runtime.bev import OrtBEVDetector, TorchBEVDetector

    if not cfg.model_path:
        raise ConfigError("detector 'bev' needs model_path (a checkpoint .pt or an exported .onnx)")
    _apply_torch_threads(cfg)  # the ORT backend's host parts are torch too
    if cfg.backend == "torch":
        return TorchBEVDetector.from_checkpoint(cfg.model_path, cfg.score_threshold, cfg.device)
    if cfg.backend == "onnxruntime":
        return OrtBEVDetector(cfg.model_path, cfg.score_threshold, cfg.threads)
    raise ConfigError(f"detector 'bev' has no {cfg.backend!r} backend (torch, onnxruntime)")


def _build_centerpoint(cfg: DetectorConfig) -> Detector:
    """Lidar CenterPoint: ``model_path`` is a ``train lidar`` checkpoint (backend torch) or the
    export directory / one of its ``.onnx`` files of ``export lidar`` (backend onnxruntime)."""
    from qd_perception.runtime.centerpoint import OrtCenterPointDetector, TorchCenterPointDetector

    if not cfg.model_path:
        raise ConfigError("detector 'centerpoint' needs model_path (a checkpoint .pt or an export dir)")
    _apply_torch_threads(cfg)  # the ORT backend's host parts (voxelisation, scatter) are torch too
    if cfg.backend == "torch":
        return TorchCenterPointDetector.from_checkpoint(cfg.model_path, cfg.score_threshold)
    if cfg.backend == "onnxruntime":
        return OrtCenterPointDetector(cfg.model_path, cfg.score_threshold, threads=cfg.threads)
    if cfg.backend == "tensorrt":  # a `quantize lidar --target trt` (or `export lidar`) directory
        from qd_perception.runtime.trt import TrtCenterPointDetector

        return TrtCenterPointDetector(cfg.model_path, cfg.score_threshold)
    raise ConfigError(f"detector 'centerpoint' has no {cfg.backend!r} backend (torch, onnxruntime, tensorrt)")


#: name -> builder. CenterPoint and camera-BEV engineers add "centerpoint" and "bev" here.
BUILDERS: dict[str, Callable[[DetectorConfig], Detector]] = {
    "classical": _build_classical,
    "bev": _build_bev,
    "centerpoint": _build_centerpoint,
}


def detector_names() -> tuple[str, ...]:
    return tuple(BUILDERS)


def build_detector(cfg: DetectorConfig) -> Detector:
    """Build the detector ``cfg.name``; clear errors for unknown names and missing files."""
    builder = BUILDERS.get(cfg.name)
    if builder is None:
        raise ValueError(f"unknown detector {cfg.name!r}; available: {list(BUILDERS)}")
    resolved = {}
    for what in ("model_path", "model_config"):
        p = getattr(cfg, what)
        if p:
            found = resolve_package_file(p)
            if found is None:
                raise ConfigError(f"detector {cfg.name!r}: {what} {p!r} does not exist")
            resolved[what] = str(found)
    if cfg.backend == "auto":
        resolved["backend"] = infer_backend(Path(resolved.get("model_path", "")))
    return builder(dataclasses.replace(cfg, **resolved))


def infer_backend(model_path: Path) -> str:
    """``backend: auto``: the runtime a model file (or artefact directory) is for."""
    if str(model_path) in ("", "."):
        return "torch"  # no model file (the classical baseline)
    suffix = model_path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "torch"
    if suffix in (".engine", ".plan"):
        return "tensorrt"
    if suffix == ".onnx":
        return "onnxruntime"
    if model_path.is_dir():
        import yaml

        quant = model_path / "quant.yaml"  # a `quantize lidar` artefact says its runtime
        if quant.exists() and (yaml.safe_load(quant.read_text()) or {}).get("target") == "trt":
            return "tensorrt"
        if any(model_path.glob("*.onnx")):
            return "onnxruntime"
    raise ConfigError(
        f"backend auto: cannot tell the runtime of model_path {str(model_path)!r} "
        "(.pt: torch; .onnx or a directory of them: onnxruntime; .engine / .plan: tensorrt); "
        "set detector.backend"
    )


def resolve_package_file(p: str | Path) -> Path | None:
    """``p`` as given if it exists, else relative to the package's share directory (so a parameter
    file can name shipped files like ``weights/bevformer_nano.pt`` in a checkout and installed)."""
    path = Path(p)
    if path.exists():
        return path
    if not path.is_absolute():
        try:
            cand = share_dir() / path
        except FileNotFoundError:
            return None
        if cand.exists():
            return cand
    return None
