"""Box code <-> (N, 9) boxes, and decoding of the network outputs into detections (numpy, shared
by the torch and ONNX Runtime backends)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def encode_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 9) [x, y, z, l, w, h, yaw, vx, vy] -> (N, 10) code
    [x, y, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]."""
    size = boxes[:, 3:6].clamp(min=1e-3).log()
    yaw = boxes[:, 6:7]
    return torch.cat([boxes[:, 0:3], size, yaw.sin(), yaw.cos(), boxes[:, 7:9]], dim=-1)


def decode_codes(codes: np.ndarray) -> np.ndarray:
    """(..., 10) codes -> (..., 9) boxes."""
    size = np.exp(np.clip(codes[..., 3:6], -5.0, 5.0))
    yaw = np.arctan2(codes[..., 6], codes[..., 7])
    return np.concatenate([codes[..., 0:3], size, yaw[..., None], codes[..., 8:10]], axis=-1)


@dataclass(frozen=True)
class DecodedBoxes:
    boxes: np.ndarray  # (M, 9)
    labels: np.ndarray  # (M,) int64
    scores: np.ndarray  # (M,) float32


def decode_predictions(
    cls_logits: np.ndarray,
    box_codes: np.ndarray,
    score_threshold: float,
    max_detections: int,
    pc_range: tuple[float, ...],
) -> DecodedBoxes:
    """One sample's last-layer outputs (Q, K) logits and (Q, 10) codes -> top-k detections.

    NMS-free (set prediction): top ``max_detections`` (query, class) pairs by sigmoid score, kept
    above ``score_threshold`` and with centres inside ``pc_range`` grown by 10 m (BEVFormer's
    post-centre range).
    """
    K = cls_logits.shape[1]
    scores = 1.0 / (1.0 + np.exp(-cls_logits.astype(np.float64)))
    flat = scores.reshape(-1)
    k = min(max_detections, flat.size)
    idx = np.argpartition(-flat, k - 1)[:k]
    idx = idx[np.argsort(-flat[idx], kind="stable")]
    s = flat[idx]
    labels = idx % K
    boxes = decode_codes(box_codes[idx // K].astype(np.float64))
    lo = np.array(pc_range[:3]) - 10.0
    hi = np.array(pc_range[3:]) + 10.0
    keep = (s >= score_threshold) & np.all((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi), axis=1)
    return DecodedBoxes(boxes[keep], labels[keep].astype(np.int64), s[keep].astype(np.float32))
