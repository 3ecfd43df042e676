"""CenterPoint detectors: torch FP32 and ONNX Runtime FP32, sharing pre- and post-processing.

Both run the same :class:`CenterPointPipeline`: points from the :class:`Frame` (ego frame, multi-
sweep) -> voxelisation (torch) -> network -> the same decode + NMS. They differ only in who runs
the network: torch modules, or the exported ONNX graphs (pillar: PFN graph, scatter in torch,
dense graph; voxel: spconv encoder in torch, dense graph in ONNX Runtime).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qd_perception.config import ConfigError, to_dict
from qd_perception.data.types import Detections, Frame, Timing
from qd_perception.models.build import build_model, config_from_dict, load_model_file
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.decode import decode
from qd_perception.models.centerpoint.head import TaskOutput, unflatten_outputs
from qd_perception.models.centerpoint.model import CenterPoint
from qd_perception.models.centerpoint.voxelize import Voxels

#: Files of an export directory (``qd-perception export lidar``).
EXPORT_MODEL_YAML = "model.yaml"
EXPORT_PFN = "pfn.onnx"
EXPORT_DENSE = "dense.onnx"
EXPORT_SPARSE = "sparse_encoder.pt"


def load_checkpoint(
    path: str | Path, map_location: str = "cpu"
) -> tuple[CenterPointConfig, CenterPoint, dict]:
    """Checkpoint written by ``train lidar`` -> (config, model in eval mode, raw checkpoint dict).

    The checkpoint embeds the model config, so no YAML is needed beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ConfigError(f"{path}: not a qd_perception checkpoint (needs 'config' and 'model')")
    if ckpt.get("arch") != "centerpoint":
        raise ConfigError(f"{path}: arch {ckpt.get('arch')!r} is not centerpoint")
    cfg = config_from_dict("centerpoint", ckpt["config"])
    model = build_model("centerpoint", cfg)
    model.load_state_dict(ckpt["model"])
    return cfg, model.eval(), ckpt


def frame_points(frame: Frame) -> torch.Tensor:
    """(P, 5) float32 points of a frame; a clear error when the frame has none."""
    if frame.points is None:
        raise ValueError(f"frame {frame.token}: CenterPoint needs lidar points, the frame has none")
    pts = np.asarray(frame.points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] < 5:
        raise ValueError(f"frame {frame.token}: points must be (P, 5), got {pts.shape}")
    return torch.from_numpy(pts)


class CenterPointPipeline:
    """Shared pre/post-processing; ``run_network(vox) -> list[TaskOutput]`` is the backend's part."""

    modalities: tuple[str, ...] = ("lidar",)

    def __init__(self, cfg: CenterPointConfig, score_threshold: float | None = None) -> None:
        if score_threshold is not None:
            cfg = dataclasses.replace(
                cfg, decode=dataclasses.replace(cfg.decode, score_threshold=score_threshold)
            )
        self.cfg = cfg
        self.last_timing = Timing()

    def preprocess(self, frame: Frame) -> Voxels:
        raise NotImplementedError

    def run_network(self, vox: Voxels) -> list[TaskOutput]:
        raise NotImplementedError

    def outputs(self, frame: Frame) -> list[TaskOutput]:
        """Raw head maps for a frame (used by parity tests and quantization)."""
        return self.run_network(self.preprocess(frame))

    def detect(self, frame: Frame) -> Detections:
        t0 = time.perf_counter()
        vox = self.preprocess(frame)
        t1 = time.perf_counter()
        with torch.inference_mode():
            outs = self.run_network(vox)
        t2 = time.perf_counter()
        det = decode(outs, self.cfg)[0]
        t3 = time.perf_counter()
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return det

    def reset(self) -> None:
        """CenterPoint is single-frame (sweeps are merged by the reader / node): nothing to forget."""


class TorchCenterPointDetector(CenterPointPipeline):
    """CenterPoint in torch (FP32, or fake-quant after the quantizer swapped its modules)."""

    def __init__(self, model: CenterPoint, score_threshold: float | None = None) -> None:
        super().__init__(model.cfg, score_threshold)
        self.model = model.eval()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, score_threshold: float | None = None
    ) -> TorchCenterPointDetector:
        _, model, _ = load_checkpoint(path)
        return cls(model, score_threshold)

    def preprocess(self, frame: Frame) -> Voxels:
        return self.model.preprocess([frame_points(frame)])

    def run_network(self, vox: Voxels) -> list[TaskOutput]:
        with torch.no_grad():
            return self.model(vox)


class OrtCenterPointDetector(CenterPointPipeline):
    """CenterPoint from an export directory, networks in ONNX Runtime (CPU by default)."""

    def __init__(
        self,
        export_dir: str | Path,
        score_threshold: float | None = None,
        providers: list[str] | None = None,
        threads: int = 0,  # ORT intra-op threads (0 = ORT default: all cores)
    ):
        import onnxruntime as ort

        export_dir = Path(export_dir)
        if export_dir.is_file():  # a path to one of the graphs: use its folder
            export_dir = export_dir.parent
        arch, cfg = load_model_file(export_dir / EXPORT_MODEL_YAML)
        if arch != "centerpoint":
            raise ConfigError(f"{export_dir}: arch {arch!r} is not centerpoint")
        super().__init__(cfg, score_threshold)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.dense = ort.InferenceSession(str(export_dir / EXPORT_DENSE), opts, providers=providers)
        # Host-side parts (voxelisation, feature augmentation, scatter, spconv) use the torch module;
        # for the pillar variant it holds no weights that the ONNX graphs also hold.
        self.model: CenterPoint = build_model("centerpoint", cfg).eval()
        if cfg.variant == "pillar":
            self.pfn = ort.InferenceSession(str(export_dir / EXPORT_PFN), opts, providers=providers)
        else:
            state = torch.load(export_dir / EXPORT_SPARSE, map_location="cpu", weights_only=True)
            self.model.sparse.load_state_dict(state)

    def preprocess(self, frame: Frame) -> Voxels:
        return self.model.preprocess([frame_points(frame)])

    def run_network(self, vox: Voxels) -> list[TaskOutput]:
        if self.cfg.variant == "pillar":
            # ONNX Runtime reads numpy buffers as dense C-order: never hand it a strided view.
            feats = np.ascontiguousarray(self.model.pillar_inputs(vox).numpy())
            (pillars,) = self.pfn.run(None, {"pillar_points": feats})
            bev = self.model.scatter(torch.from_numpy(pillars), vox)
        else:
            with torch.no_grad():
                bev = self.model.encode(vox)
        flat = self.dense.run(None, {"bev": np.ascontiguousarray(bev.numpy())})
        return unflatten_outputs(
            [torch.from_numpy(x) for x in flat], len(self.cfg.head.tasks), self.cfg.head.with_velocity
        )


def model_yaml_text(cfg: CenterPointConfig) -> dict[str, Any]:
    return {"arch": "centerpoint", "model": to_dict(cfg)}
