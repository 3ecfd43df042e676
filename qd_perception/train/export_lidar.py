"""``qd-perception export lidar --model CKPT --out DIR``: CenterPoint to ONNX, split as deployers do.

Writes into DIR:

* ``model.yaml``: ``arch`` + the model config (the ONNX runtime needs nothing else);
* pillar variant: ``pfn.onnx`` (augmented pillar points (V, M, F) -> pillar features (V, C), V
  dynamic) and ``dense.onnx`` (BEV canvas -> head maps); voxelisation, the PFN input
  augmentation and the scatter stay in torch between them;
* voxel variant: ``dense.onnx`` only. The spconv sparse encoder has no ONNX export; it runs in
  torch from ``sparse_encoder.pt`` (its weights);
* ``export.json``: opsets, shapes, the torch-vs-ONNX-Runtime parity (max abs diff of the
  head maps on a synthetic sweep) and, pillar variant, ``pfn_point_wise``: whether ONNX Runtime
  runs ``pfn.onnx`` on the real points (cut before its max over the pillar, no padding).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from qd_perception.data.types import Frame
from qd_perception.fileio import atomic_output, atomic_write_bytes
from qd_perception.models.centerpoint.head import output_names
from qd_perception.models.centerpoint.model import CenterPoint, DenseGraph

OPSET = 18


def _export_onnx(
    module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic
) -> None:
    # TorchScript exporter: the dynamo one needs onnxscript, which the core does not install.
    with atomic_output(path) as tmp:
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            opset_version=OPSET,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


def example_frame(cfg, n_points: int = 20000, seed: int = 0) -> Frame:
    """A synthetic sweep (points on a ground plane and a few boxes) for tracing and parity."""
    rng = np.random.default_rng(seed)
    r = cfg.voxelization.point_range
    xy = rng.uniform([r[0] * 0.6, r[1] * 0.6], [r[3] * 0.6, r[4] * 0.6], (n_points, 2))
    z = rng.normal(-1.6, 0.05, n_points)
    blobs = rng.uniform(-20, 20, (20, 2))
    k = n_points // 4
    xy[:k] = blobs[rng.integers(0, 20, k)] + rng.normal(0, 0.8, (k, 2))
    z[:k] = rng.uniform(-1.6, 0.2, k)
    pts = np.column_stack([xy, z, rng.uniform(0, 255, n_points), rng.choice([0.0, 0.05, 0.1], n_points)])
    return Frame("example", "example", 0, np.eye(4), points=pts.astype(np.float32))


def export(model: CenterPoint, out_dir: str | Path, parity_frame: Frame | None = None) -> dict:
    """Export ``model`` into ``out_dir`` (files in the module docstring) -> the export report."""
    from qd_perception.runtime.centerpoint import (
        EXPORT_DENSE,
        EXPORT_MODEL_YAML,
        EXPORT_PFN,
        EXPORT_SPARSE,
        OrtCenterPointDetector,
        TorchCenterPointDetector,
        model_yaml_text,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.cfg
    frame = parity_frame or example_frame(cfg)
    torch_det = TorchCenterPointDetector(model)
    vox = torch_det.preprocess(frame)
    report: dict = {"name": cfg.name, "variant": cfg.variant, "opset": OPSET}
    with torch.no_grad():
        if cfg.variant == "pillar":
            feats = model.pillar_inputs(vox)
            dyn = {"pillar_points": {0: "num_pillars"}, "pillar_features": {0: "num_pillars"}}
            _export_onnx(model.pfn, (feats,), out / EXPORT_PFN, ["pillar_points"], ["pillar_features"], dyn)
            report["pfn_input"] = ["num_pillars", *feats.shape[1:]]
            bev = model.scatter(model.pfn(feats), vox)
        else:
            bev = model.encode(vox)
            buf = out / EXPORT_SPARSE
            with atomic_output(buf) as tmp:
                torch.save(model.sparse.state_dict(), tmp)
            report["sparse_encoder"] = "torch (spconv has no ONNX export)"
        names = output_names(len(cfg.head.tasks), cfg.head.with_velocity)
        _export_onnx(DenseGraph(model), (bev,), out / EXPORT_DENSE, ["bev"], names, None)
        report["dense_input"] = list(bev.shape)
    model.eval()  # the exporter restores modes recursively; make sure parity runs in eval mode
    atomic_write_bytes(
        out / EXPORT_MODEL_YAML, yaml.safe_dump(model_yaml_text(cfg), sort_keys=False).encode()
    )
    # Parity: same frame through both backends, compare every head map.
    ort_det = OrtCenterPointDetector(out)
    a = torch_det.outputs(frame)
    b = ort_det.outputs(frame)
    diffs = [
        float((x - y).abs().max())
        for ta, tb in zip(a, b)
        for x, y in zip(ta.__dict__.values(), tb.__dict__.values())
        if x is not None
    ]
    report["parity_max_abs_diff"] = max(diffs)
    if cfg.variant == "pillar":
        # Whether ONNX Runtime runs pfn.onnx cut before its max on the real points (the fast host
        # path; checked against the padded graph at load) or on padded pillars.
        report["pfn_point_wise"] = ort_det.pfn_points is not None
    atomic_write_bytes(out / "export.json", json.dumps(report, indent=2).encode())
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="checkpoint from `train lidar`")
    parser.add_argument("--out", required=True, type=Path, help="export directory")


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad input gets one clear line on stderr (exit 2) instead of a traceback."""
    import sys

    from qd_perception.config import ConfigError
    from qd_perception.data.nuscenes import DatasetError

    try:
        return _run(args)
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from qd_perception.runtime.centerpoint import load_checkpoint

    _, model, _ = load_checkpoint(args.model)
    report = export(model, args.out)
    print(json.dumps(report, indent=2))
    print(f"exported to {args.out}")
    return 0
