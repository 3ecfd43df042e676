"""``qd-perception export bev --model CKPT --out DIR``: the BEVFormer detector to ONNX.

Writes into DIR:

* ``bevformer.onnx``: one graph, the temporal state as explicit tensors (inputs ``images``,
  ``intrinsics``, ``cam2ego``, ``prev_bev``, ``prev_valid``, ``prev_from_cur``; outputs
  ``cls_logits``, ``box_codes``, ``bev``); the model config is stored in its metadata;
* ``model.yaml``: ``arch`` + ``model`` (as ``config/models/*.model.yaml``);
* ``export.json``: opset, shapes and the torch-vs-ONNX-Runtime parity on two consecutive
  synthetic frames (the second uses the first's BEV).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from qd_perception.fileio import atomic_output, atomic_write_json, atomic_write_text

OPSET = 17


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint written by `train bev`")
    p.add_argument("--out", required=True, help="output folder")


def example_frames(cfg, n: int = 2, seed: int = 0, speed_mps: float = 5.0):
    """``n`` consecutive synthetic Frames (random images, the nuScenes-like rig at the model's
    resolution, ego driving forward on a slight turn, 0.5 s apart) for tracing and parity."""
    from qd_perception.data.types import CameraInput, Frame
    from qd_perception.geometry.rig import load_rig
    from qd_perception.geometry.transforms import make_transform

    rig = load_rig()
    rng = np.random.default_rng(seed)
    H, W = cfg.image_size
    frames = []
    for k in range(n):
        t_us = 1_000_000 + k * 500_000
        yaw = 0.05 * k
        pose = make_transform(
            np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]),
            np.array([speed_mps * 0.5 * k, 0.1 * k, 0.0]),
        )
        cams = tuple(
            CameraInput(
                name,
                rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                rig.intrinsics(name, (H, W)),
                rig.cam2ego(name),
                t_us,
            )
            for name in cfg.camera_names
        )
        frames.append(Frame(token=f"example{k}", scene_token="example", timestamp_us=t_us, ego2global=pose,
                            cameras=cams))  # fmt: skip
    return frames


def export_onnx(model, path: str | Path, history: bool = True) -> Path:
    """Trace ``model`` (eval mode) into ``path`` atomically, with the config and ``history`` (feed
    it the previous BEV at inference: False for a model trained with queue 1) in the metadata."""
    import onnx
    import torch

    from qd_perception.models.bevformer.model import BEVFormerExportWrapper
    from qd_perception.runtime.bev import ONNX_INPUTS, ONNX_OUTPUTS, BEVDetectorBase, onnx_metadata

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    x = BEVDetectorBase(cfg).prepare(example_frames(cfg, 1)[0])
    args = tuple(torch.from_numpy(getattr(x, k)) for k in ONNX_INPUTS)
    wrapper = BEVFormerExportWrapper(model).eval()
    with atomic_output(path) as tmp:
        # TorchScript exporter: the dynamo one needs onnxscript, which the core does not install.
        # Shapes are static per model (image size, BEV grid), so the tracer's constant warnings are moot.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper, args, str(tmp), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=list(ONNX_INPUTS), output_names=list(ONNX_OUTPUTS),
            )  # fmt: skip
        m = onnx.load(str(tmp))
        for key, value in onnx_metadata(cfg, history).items():
            entry = m.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(m, str(tmp))
    return path


def compare_backends(
    model, onnx_path: str | Path, frames, radius_m: float = 0.5
) -> tuple[dict[str, float], dict[str, float]]:
    """Torch vs ONNX Runtime over consecutive ``frames``, each backend carrying its own temporal
    state, in one pass. Returns (raw, detections): ``raw`` the max abs difference of the raw
    outputs (``cls_logits``, ``box_codes``, ``bev``); ``detections`` the agreement of the decoded
    detections: ``matched``, the fraction of either side's detections with a partner of the same
    class within ``radius_m`` (ego xy), ``max_score_diff`` over those pairs, ``detections`` (both
    sides, all frames). A two-stage model's queries are the heatmap's top-k: a near-tie may pick
    another peak in one backend, which moves a whole row of the raw outputs without changing what
    is detected."""
    from qd_perception.models.bevformer.coder import decode_predictions
    from qd_perception.runtime.bev import OrtBEVDetector, TemporalState, TorchBEVDetector

    cfg = model.cfg
    tdet, odet = TorchBEVDetector(model), OrtBEVDetector(onnx_path)
    raw = {"cls_logits": 0.0, "box_codes": 0.0, "bev": 0.0}
    n_det = n_matched = 0
    score_diff = 0.0
    for f in frames:
        outs_t, outs_o = tdet._infer(tdet.prepare(f)), odet._infer(odet.prepare(f))
        for det, outs in ((tdet, outs_t), (odet, outs_o)):
            det.state = TemporalState(outs[2], f.scene_token, f.timestamp_us, f.ego2global)
        for name, a, b in zip(raw, outs_t, outs_o):
            raw[name] = max(raw[name], float(np.abs(a - b).max()))
        a, b = (
            decode_predictions(o[0][0], o[1][0], tdet.score_threshold, cfg.max_detections, cfg.pc_range)
            for o in (outs_t, outs_o)
        )
        n_det += len(a.boxes) + len(b.boxes)
        if not (len(a.boxes) and len(b.boxes)):
            continue
        dist = np.linalg.norm(a.boxes[:, None, :2] - b.boxes[None, :, :2], axis=-1)
        near = (dist < radius_m) & (a.labels[:, None] == b.labels[None, :])
        n_matched += int(near.any(1).sum() + near.any(0).sum())
        i, j = np.nonzero(near)
        if len(i):
            score_diff = max(score_diff, float(np.abs(a.scores[i] - b.scores[j]).max()))
    agreement = {
        "matched": n_matched / n_det if n_det else 1.0,
        "max_score_diff": score_diff,
        "detections": n_det,
    }
    return raw, agreement


def parity(model, onnx_path: str | Path, n_frames: int = 2, frames=None) -> dict[str, float]:
    """Max abs difference torch vs ONNX Runtime of the raw outputs over ``frames`` (default:
    ``n_frames`` consecutive synthetic frames); see :func:`compare_backends`."""
    frames = frames if frames is not None else example_frames(model.cfg, n_frames)
    return compare_backends(model, onnx_path, frames)[0]


def run(args: argparse.Namespace) -> int:
    import yaml

    from qd_perception.config import to_dict
    from qd_perception.models.bevformer.checkpoint import (
        ARCH,
        model_from_checkpoint,
        read_checkpoint,
        trained_queue_length,
    )
    from qd_perception.runtime.bev import uses_history

    ckpt = read_checkpoint(args.model)
    model = model_from_checkpoint(ckpt, args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history = uses_history(trained_queue_length(ckpt))
    onnx_path = export_onnx(model, out / "bevformer.onnx", history)
    atomic_write_text(
        out / "model.yaml", yaml.safe_dump({"arch": ARCH, "model": to_dict(model.cfg)}, sort_keys=False)
    )
    diffs = parity(model, onnx_path)
    cfg = model.cfg
    report = {
        "onnx": onnx_path.name,
        "opset": OPSET,
        "checkpoint": str(args.model),
        "image_size": list(cfg.image_size),
        "cameras": list(cfg.camera_names),
        "bev": [cfg.bev_h, cfg.bev_w, cfg.embed_dims],
        "parity_max_abs_diff": diffs,
    }
    atomic_write_json(out / "export.json", report, indent=2)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB); torch vs ORT max |diff|: {diffs}")
    return 0
