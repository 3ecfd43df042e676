"""Perspective supervision (BEVFormer v2): an auxiliary per-camera head on the image features.

On the first FPN level of every camera, a small CenterNet-style head predicts a heatmap of the
projected 3-D box centres per class and, at each centre, the sub-cell offset of the projection
and the log depth (metres along the optical axis) of the box centre. Its loss trains the image
backbone directly to find objects and how far they are: the BEV encoder alone gives the backbone
only an indirect signal, the main reason BEV detectors converge slowly from scratch. The depth
term is the box-centre form of BEVDepth's depth supervision. Training only: the head is not in
the deployed graph.

Targets per camera, on the level-0 grid (h, w) of stride s (pixels of the network input):
heatmap (K, h, w), codes (h*w, 3) [du, dv, log depth], centre mask (h*w,).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.dense_head import gaussian_focal_loss

MIN_DEPTH_M = 0.5


class PerspectiveHead(nn.Module):
    """Level-0 features (B, N, C, h, w) -> heatmap logits (B, N, K, h, w), codes (B, N, 3, h, w)."""

    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        C, K = cfg.embed_dims, cfg.num_classes
        h = cfg.perspective_head.hidden
        self.shared = nn.Sequential(nn.Conv2d(C, h, 3, padding=1), nn.ReLU(inplace=True))
        self.heatmap = nn.Conv2d(h, K, 1)
        self.reg = nn.Conv2d(h, 3, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = feat.shape[:2]
        x = self.shared(feat.flatten(0, 1))
        return (
            self.heatmap(x).reshape(B, N, -1, *x.shape[-2:]),
            self.reg(x).reshape(B, N, 3, *x.shape[-2:]),
        )


def perspective_targets(
    boxes: np.ndarray,
    labels: np.ndarray,
    intrinsics: np.ndarray,
    cam2ego: np.ndarray,
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample: (M, 9) ego boxes, (M,) labels, (N, 3, 3) K, (N, 4, 4) ego <- optical ->
    heatmap (N, K, h, w), codes (N, h*w, 3), mask (N, h*w) for the level-0 grid ``grid_hw``."""
    from qd_perception.models.centerpoint.targets import draw_gaussian

    N = len(intrinsics)
    h, w = grid_hw
    sy, sx = image_hw[0] / h, image_hw[1] / w
    hm = np.zeros((N, num_classes, h, w), np.float32)
    codes = np.zeros((N, h * w, 3), np.float32)
    mask = np.zeros((N, h * w), bool)
    if len(boxes) == 0:
        return hm, codes, mask
    centres = np.concatenate([boxes[:, :3], np.ones((len(boxes), 1))], axis=1).astype(np.float64)
    for n in range(N):
        pc = (np.linalg.inv(cam2ego[n].astype(np.float64)) @ centres.T).T[:, :3]
        z = pc[:, 2]
        for i in np.flatnonzero(z > MIN_DEPTH_M):
            u, v = (intrinsics[n] @ pc[i])[:2] / z[i]
            gu, gv = u / sx, v / sy
            iu, iv = math.floor(gu), math.floor(gv)
            if not (0 <= iu < w and 0 <= iv < h):
                continue
            # the box's apparent half-size in grid cells sets the Gaussian
            size_px = float(intrinsics[n][0, 0]) * float(max(boxes[i, 3], boxes[i, 4])) / z[i]
            r = max(0, int(0.5 * size_px / sx))
            draw_gaussian(hm[n, int(labels[i])], iu, iv, r)
            c = iv * w + iu
            codes[n, c] = (gu - iu, gv - iv, math.log(z[i]))
            mask[n, c] = True
    return hm, codes, mask


def perspective_loss(
    heat: torch.Tensor, reg: torch.Tensor, batch, cfg: BEVFormerConfig
) -> tuple[torch.Tensor, float]:
    """Focal heatmap + L1 (offset, log depth) over every camera of the batch, normalised by the
    number of centres. ``batch`` needs ``targets``, ``intrinsics`` and ``cam2ego``."""
    grid = tuple(heat.shape[-2:])
    per = [
        perspective_targets(
            t.boxes.numpy(), t.labels.numpy(), K.numpy(), E.numpy(), cfg.image_size, grid, cfg.num_classes
        )
        for t, K, E in zip(batch.targets, batch.intrinsics, batch.cam2ego)
    ]
    hm = torch.from_numpy(np.stack([p[0] for p in per])).to(heat)
    code = torch.from_numpy(np.stack([p[1] for p in per])).to(reg)
    mask = torch.from_numpy(np.stack([p[2] for p in per])).to(reg.device)
    n = max(1.0, float(mask.sum()))
    l_hm = gaussian_focal_loss(heat, hm) / n
    pred = reg.flatten(3).transpose(2, 3)  # (B, N, h*w, 3)
    l_reg = ((pred - code).abs() * mask[..., None]).sum() / n
    total = cfg.perspective_head.weight * (l_hm + l_reg)
    return total, float(total.detach())
