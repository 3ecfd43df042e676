"""TensorRT backend: engines built from the TensorRT-flavour Q/DQ ONNX (explicit quantization).

TensorRT cannot be installed on the development machines (its PyPI packages download the real
libraries at build time), so this module imports ``tensorrt`` lazily and raises
:class:`TensorRTUnavailable` with the reason; its tests skip cleanly. The code follows the
TensorRT >= 8.6 / 10 Python API:

* :func:`build_engine`: ``Builder`` -> network (explicit batch; ``STRONGLY_TYPED`` optional) ->
  ``OnnxParser`` -> builder config with the ``INT8`` flag (explicit quantization: the scales come
  from the Q/DQ nodes, no calibrator) and optionally ``FP16`` for the layers left in float ->
  optimisation profile for dynamic inputs -> ``build_serialized_network``. Engines are cached
  beside the ONNX file, keyed by TensorRT version and device name.
* :class:`TrtEngine`: deserialises an engine and runs it with torch CUDA tensors
  (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``).
* :class:`TrtCenterPointDetector`: the shared CenterPoint pre/post-processing with the PFN and
  dense graphs of a ``quantize lidar --target trt`` (or ``export lidar``) directory in TensorRT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qd_perception.fileio import atomic_write_bytes
from qd_perception.model_files import load_torch_file


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA device) is not available on this machine."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed (it is not pip-installable on this machine; use the "
            "onnxruntime backend, or install TensorRT from NVIDIA on a GPU machine)"
        ) from e
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA device; none is visible")
    return trt


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def build_engine(
    onnx_path: str | Path,
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
    fp16: bool = True,
    strongly_typed: bool = False,
    workspace_bytes: int = 1 << 30,
) -> bytes:
    """Serialized engine from a Q/DQ ONNX file.

    ``shapes``: input name -> (min, opt, max) shapes for dynamic inputs.
    """
    trt = import_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if not strongly_typed:  # strongly typed networks take precisions from the graph itself
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales from Q/DQ nodes
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(engine)


def cached_engine(onnx_path: str | Path, **build_kwargs: Any) -> bytes:
    """Engine for ``onnx_path``, built once and cached beside it (written atomically)."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    key = hashlib.sha1(
        onnx_path.read_bytes()
        + trt.__version__.encode()
        + torch.cuda.get_device_name().encode()
        + repr(sorted(build_kwargs.items())).encode()
    ).hexdigest()[:12]
    path = onnx_path.with_name(f"{onnx_path.stem}.{key}.engine")
    if path.exists():
        return path.read_bytes()
    data = build_engine(onnx_path, **build_kwargs)
    atomic_write_bytes(path, data)
    return data


_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT8": torch.int8}


class TrtEngine:
    """A deserialized engine run on torch CUDA tensors: ``engine({"bev": t}) -> {"heatmap_0": t, ...}``."""

    def __init__(self, serialized: bytes) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inputs = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise ValueError(f"missing engine inputs {sorted(missing)}")
        keep = []
        for name in self.inputs:
            t = inputs[name].cuda().contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _DTYPES[self.engine.get_tensor_dtype(name).name]
            outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outs


def _centerpoint_base():
    from qd_perception.runtime.centerpoint import CenterPointPipeline

    return CenterPointPipeline


class TrtCenterPointDetector(_centerpoint_base()):  # type: ignore[misc]
    """CenterPoint with its ONNX graphs (pillar: PFN + dense; voxel: dense) in TensorRT."""

    def __init__(self, export_dir: str | Path, score_threshold: float | None = None, fp16: bool = True):
        from qd_perception.config import ConfigError
        from qd_perception.models.build import build_model, load_model_file
        from qd_perception.runtime.centerpoint import (
            EXPORT_DENSE,
            EXPORT_MODEL_YAML,
            EXPORT_PFN,
            EXPORT_SPARSE,
        )

        import_tensorrt()  # fail early with the reason
        export_dir = Path(export_dir)
        if export_dir.is_file():
            export_dir = export_dir.parent
        arch, cfg = load_model_file(export_dir / EXPORT_MODEL_YAML)
        if arch != "centerpoint":
            raise ConfigError(f"{export_dir}: arch {arch!r} is not centerpoint")
        super().__init__(cfg, score_threshold)
        self.model = build_model("centerpoint", cfg).eval()
        self.dense = TrtEngine(cached_engine(export_dir / EXPORT_DENSE, fp16=fp16))
        self.pfn = None
        if cfg.variant == "pillar":
            m = cfg.voxelization.max_points_per_voxel
            f = cfg.num_point_features + 5
            v = cfg.voxelization.max_voxels
            shapes = {"pillar_points": ((1, m, f), (v // 2, m, f), (v, m, f))}
            self.pfn = TrtEngine(cached_engine(export_dir / EXPORT_PFN, shapes=shapes, fp16=fp16))
        else:
            state = load_torch_file(export_dir / EXPORT_SPARSE, "sparse encoder weights")
            self.model.sparse.load_state_dict(state)

    def preprocess(self, frame):
        from qd_perception.runtime.centerpoint import frame_points

        return self.model.preprocess([frame_points(frame)])

    def run_network(self, vox):
        from qd_perception.models.centerpoint.head import output_names, unflatten_outputs

        with torch.no_grad():
            if self.pfn is not None:
                pillars = self.pfn({"pillar_points": self.model.pillar_inputs(vox)})["pillar_features"]
                bev = self.model.scatter(pillars.float().cpu(), vox)
            else:
                bev = self.model.encode(vox)
            flat = self.dense({"bev": bev})
        names = output_names(len(self.cfg.head.tasks), self.cfg.head.with_velocity)  # ONNX order
        return unflatten_outputs(
            [flat[n].float().cpu() for n in names], len(self.cfg.head.tasks), self.cfg.head.with_velocity
        )
