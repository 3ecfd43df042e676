"""CenterPoint detectors: torch FP32 and ONNX Runtime FP32, sharing pre- and post-processing.

Both run the same :class:`CenterPointPipeline`: points from the :class:`Frame` (ego frame, multi-
sweep) -> voxelisation (torch) -> network -> the same decode + NMS. They differ only in who runs
the network: torch modules, or the exported ONNX graphs (pillar: PFN graph, scatter in torch,
dense graph; voxel: spconv encoder in torch, dense graph in ONNX Runtime).

Pillar host path (both backends): the PFN runs on the K real points of a sweep, not on V x M
padded rows (torch: ``PillarFeatureNet.forward_points``; ORT: ``pfn.onnx`` cut before its max,
:func:`pointwise_pfn_graph`), the max per pillar is a scatter on the host, and the BEV canvas is
reused from sweep to sweep (:class:`BevCanvas`). Results equal the padded path to float rounding
(``test_pillar_host_path.py``).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qd_perception.config import ConfigError, to_dict
from qd_perception.data.types import Detections, Frame, Timing
from qd_perception.model_files import load_torch_file, ort_session
from qd_perception.models.build import build_model, config_from_dict, load_model_file
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.decode import decode
from qd_perception.models.centerpoint.head import TaskOutput, unflatten_outputs
from qd_perception.models.centerpoint.model import CenterPoint
from qd_perception.models.centerpoint.vfe import PILLAR_EXTRA_FEATURES, segment_max
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
    ckpt = load_torch_file(path, "CenterPoint checkpoint", map_location)
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

    @property
    def nsweeps(self) -> int:
        """Lidar sweeps the model expects merged into one frame (the time-lag channel's range)."""
        return int(self.cfg.nsweeps)

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
        self.canvas = model.new_canvas()

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
            return self.model(vox, self.canvas)


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
            # An idle pool that busy-waits steals the cores other nodes were given.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers or ["CPUExecutionProvider"]
        self.dense = ort_session(export_dir / EXPORT_DENSE, opts, providers)
        # Host-side parts (voxelisation, feature augmentation, scatter, spconv) use the torch module;
        # for the pillar variant it holds no weights that the ONNX graphs also hold.
        self.model: CenterPoint = build_model("centerpoint", cfg).eval()
        self.canvas = self.model.new_canvas()
        self.pfn_points = None
        if cfg.variant == "pillar":
            self.pfn = ort_session(export_dir / EXPORT_PFN, opts, providers)
            point_graph = pointwise_pfn_graph(export_dir / EXPORT_PFN)
            if point_graph is not None:
                self.pfn_points = ort.InferenceSession(point_graph, opts, providers=providers)
                self.pfn_pad = torch.from_numpy(
                    self._pfn_point_run(np.zeros((1, self.pfn_features), np.float32))
                )
                if not self._point_path_matches_padded():
                    self.pfn_points = None
        else:
            state = load_torch_file(export_dir / EXPORT_SPARSE, "sparse encoder weights")
            self.model.sparse.load_state_dict(state)

    def preprocess(self, frame: Frame) -> Voxels:
        return self.model.preprocess([frame_points(frame)])

    @property
    def pfn_features(self) -> int:
        """F, the augmented point features the PFN graph takes."""
        return self.cfg.num_point_features + PILLAR_EXTRA_FEATURES

    def _pfn_point_run(self, feats: np.ndarray) -> np.ndarray:
        """(K, F) float32 augmented points -> (K, C) per-point PFN features (the graph's part
        before the max over the pillar)."""
        assert self.pfn_points is not None
        # ONNX Runtime reads numpy buffers as dense C-order: never hand it a strided view.
        (out,) = self.pfn_points.run(None, {"pillar_points": np.ascontiguousarray(feats)[None]})
        return out[0]

    def _pfn_pillars(self, feats: np.ndarray, vox: Voxels) -> torch.Tensor:
        """(K, F) augmented points -> (V, C) pillar features through the point-wise graph."""
        x = torch.from_numpy(self._pfn_point_run(feats))
        return segment_max(x, vox.point_voxel, vox.num_points, vox.max_points, self.pfn_pad)

    def _point_path_matches_padded(self) -> bool:
        """Load-time self-check of the point-wise PFN against the graph it was cut from, on a few
        synthetic pillars (one full, the others padded); a mismatch keeps the padded graph."""
        m, f = self.cfg.voxelization.max_points_per_voxel, self.pfn_features
        rng = np.random.default_rng(0)
        num = np.array([m, 1, max(1, m // 2), max(1, m - 1)], np.int32)
        pts = rng.normal(0.0, 3.0, (int(num.sum()), f)).astype(np.float32)
        vid = torch.from_numpy(np.repeat(np.arange(len(num)), num))
        rank = torch.arange(len(pts)) - torch.from_numpy(np.cumsum(num) - num).long()[vid]
        padded = np.zeros((len(num), m, f), np.float32)
        padded[vid.numpy(), rank.numpy()] = pts
        (ref,) = self.pfn.run(None, {"pillar_points": padded})
        vox = Voxels(
            torch.from_numpy(num),
            torch.zeros((len(num), 4), dtype=torch.int32),
            1,
            torch.from_numpy(pts),
            vid,
            m,
        )
        got = self._pfn_pillars(pts, vox).numpy()
        ok = got.shape == ref.shape and np.allclose(got, ref, rtol=1e-4, atol=1e-5)
        if not ok:
            warnings.warn("point-wise PFN does not match pfn.onnx; using the padded graph", stacklevel=2)
        return ok

    def run_network(self, vox: Voxels) -> list[TaskOutput]:
        if self.cfg.variant == "pillar":
            if self.pfn_points is not None:
                pillars = self._pfn_pillars(self.model.pillar_point_inputs(vox).numpy(), vox)
            else:
                # ONNX Runtime reads numpy buffers as dense C-order: never hand it a strided view.
                feats = np.ascontiguousarray(self.model.pillar_inputs(vox).numpy())
                pillars = torch.from_numpy(self.pfn.run(None, {"pillar_points": feats})[0])
            bev = self.model.scatter(pillars, vox, self.canvas)
        else:
            with torch.no_grad():
                bev = self.model.encode(vox)
        flat = self.dense.run(None, {"bev": np.ascontiguousarray(bev.numpy())})
        return unflatten_outputs(
            [torch.from_numpy(x) for x in flat], len(self.cfg.head.tasks), self.cfg.head.with_velocity
        )


#: Ops that may act on the points in a point-wise PFN graph: each maps one point's features to
#: that point's outputs (Transpose only moves the channel axis around BatchNormalization). Nodes
#: that compute on constants only (a quantizer's scale arithmetic) may be anything.
_POINTWISE_OPS = frozenset(
    {
        "MatMul", "Add", "Mul", "Sub", "Div", "Neg", "Round", "Max", "Min", "Transpose",
        "BatchNormalization", "Relu", "Clip", "QuantizeLinear", "DequantizeLinear", "Identity",
        "Cast",
    }
)  # fmt: skip


def pointwise_pfn_graph(pfn_path: str | Path) -> bytes | None:
    """The per-point part of a one-layer PFN graph (``pfn.onnx``), as serialised ONNX, or None.

    ``pfn.onnx`` takes padded pillars (V, M, F) and ends in a max over M. Everything before that
    max acts on each point alone, so the same graph cut before the ``ReduceMax`` runs on the K
    real points as (1, K, F) -> (1, K, C); :func:`segment_max` then takes the max per pillar on
    the host, with the padded rows' value added back. Existing exports (FP32 and ``quantize
    lidar`` artefacts) gain this without re-export. None when the graph is not of this form
    (several PFN layers: the max feeds back into the points).
    """
    import onnx

    model = onnx.load(str(pfn_path))
    g = model.graph
    reduce = [n for n in g.node if n.op_type == "ReduceMax"]
    if len(reduce) != 1 or len(g.input) != 1 or len(g.input[0].type.tensor_type.shape.dim) != 3:
        return None
    # Walk back from the max's input to the graph input, keeping the nodes it needs.
    producer = {o: n for n in g.node for o in n.output}
    needed, stack = set(), [reduce[0].input[0]]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    keep = [n for n in g.node if id(n) in needed]  # graph order is topological
    on_points = {g.input[0].name}
    for n in keep:
        if any(i in on_points for i in n.input):
            if n.op_type not in _POINTWISE_OPS:
                return None
            on_points.update(n.output)
    if reduce[0].input[0] not in on_points:
        return None
    used = {i for n in keep for i in n.input}
    inp = onnx.ValueInfoProto()
    inp.CopyFrom(g.input[0])
    dims = inp.type.tensor_type.shape.dim
    dims[0].dim_param, dims[1].dim_param = "batch", "num_points"
    out = onnx.helper.make_tensor_value_info(reduce[0].input[0], onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph(
        keep, "pfn_points", [inp], [out], [t for t in g.initializer if t.name in used]
    )
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return sub.SerializeToString()


def model_yaml_text(cfg: CenterPointConfig) -> dict[str, Any]:
    return {"arch": "centerpoint", "model": to_dict(cfg)}
