"""Frame -> network inputs (shared by training, evaluation and the runtime backends).

Images are resized to ``cfg.image_size`` (antialiased bilinear) and K is scaled with them;
cameras are ordered as ``cfg.camera_names``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qd_perception.data.types import Frame
from qd_perception.models.bevformer.config import BEVFormerConfig


class MissingCameraError(ValueError):
    """A frame lacks a camera the model needs, or an image is malformed."""


@dataclass(frozen=True)
class CameraTensors:
    """One frame's camera inputs at the network resolution.

    images: (N, 3, H, W) uint8 RGB; intrinsics: (N, 3, 3) float32; cam2ego: (N, 4, 4) float32;
    present: (N,) bool, False for a camera the frame declares missing (its image and K are zeros).
    """

    images: np.ndarray
    intrinsics: np.ndarray
    cam2ego: np.ndarray
    present: np.ndarray


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, H, W) uint8, antialiased bilinear.

    Resized in uint8 and channels-last (the HWC image as it is, no copy): torch's vectorised
    uint8 kernel, ~6x faster than going through float32 on these CPUs and within 1 grey level
    of it (docs/benchmarks.md, camera node path), which matters at 6 cameras x 12 Hz."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # channels-last view
    if tuple(t.shape[-2:]) != tuple(size_hw):
        t = F.interpolate(t, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return np.ascontiguousarray(t[0].numpy())


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """K for an image resized from ``from_hw`` to ``to_hw``.

    Continuous pixel coordinates with the image spanning [0, W] x [0, H] (as ``Rig.intrinsics``
    scales K, and as ``grid_sample(align_corners=False)`` samples), so K scales linearly.
    """
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    S = np.diag([sx, sy, 1.0])
    return S @ K


def camera_tensors(frame: Frame, cfg: BEVFormerConfig) -> CameraTensors:
    """Select, order and resize the cameras of ``frame`` for the model ``cfg``.

    A camera of ``cfg.camera_names`` absent from ``frame.cameras`` is an error unless the frame
    names it in ``missing_cameras`` (which wins over an image it still carries): then its image
    is zeros and its K is all zeros. A zero K projects every point to depth 0, so the camera's
    ``bev_mask`` rows are empty (:func:`~qd_perception.models.bevformer.geometry.project_to_cameras`)
    and it contributes nothing to spatial cross-attention; the mask is computed inside the
    network, so this holds for the torch model and for every exported or quantized graph alike.
    """
    by_name = {c.name: c for c in frame.cameras}
    declared = set(frame.missing_cameras)
    missing = [n for n in cfg.camera_names if n not in by_name and n not in declared]
    if missing:
        raise MissingCameraError(f"frame {frame.token}: missing camera(s) {missing}; has {sorted(by_name)}")
    if len(declared & set(cfg.camera_names)) == len(cfg.camera_names):
        raise MissingCameraError(f"frame {frame.token}: every camera is declared missing")
    H, W = cfg.image_size
    imgs, Ks, Es, present = [], [], [], []
    for n in cfg.camera_names:
        c = by_name.get(n) if n not in declared else None
        present.append(c is not None)
        if c is None:
            imgs.append(np.zeros((3, H, W), np.uint8))
            Ks.append(np.zeros((3, 3)))
            Es.append(np.eye(4))  # unused: nothing projects into a camera with K = 0
            continue
        if c.image.ndim != 3 or c.image.shape[2] != 3 or c.image.dtype != np.uint8:
            raise MissingCameraError(
                f"frame {frame.token} camera {n}: expected (H, W, 3) uint8, "
                f"got {c.image.shape} {c.image.dtype}"
            )
        hw = c.image.shape[:2]
        imgs.append(resize_image(c.image, (H, W)))
        Ks.append(scale_intrinsics(np.asarray(c.intrinsics, np.float64), hw, (H, W)))
        Es.append(np.asarray(c.cam2ego, np.float64))
    return CameraTensors(
        np.stack(imgs), np.stack(Ks).astype(np.float32), np.stack(Es).astype(np.float32), np.array(present)
    )
