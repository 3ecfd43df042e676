"""CenterPoint training targets: Gaussian centre heatmaps and box codes per task group.

Box code (per object, at its integer centre cell)::

    [dx_cell, dy_cell, z, log dx, log dy, log dz, sin yaw, cos yaw, vx, vy]

``dx_cell, dy_cell`` is the sub-cell offset of the centre on the head grid, ``z`` the box centre
height (m, ego frame). The Gaussian radius follows CenterPoint: CornerNet's ``gaussian_radius``
on the box footprint in head cells with ``min_overlap`` (0.1), at least ``min_radius`` (2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qd_perception.classes import CLASS_ID
from qd_perception.models.centerpoint.config import CenterPointConfig


def gaussian_radius(height: float, width: float, min_overlap: float) -> float:
    """CornerNet radius (cells): the largest corner shift keeping IoU >= min_overlap, 3 cases."""
    h, w, o = height, width, min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """In place: heatmap = max(heatmap, exp(-d^2 / 2 sigma^2)) around (cx, cy), sigma = (2r+1)/6."""
    sigma = (2 * radius + 1) / 6.0
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(region, patch, out=region)


@dataclass(frozen=True)
class TaskTargets:
    """Targets of one task group (numpy for one sample, torch with a batch dim after collate).

    heatmap: (K, H, W) float32; ind: (max_objs,) int64 flat cell index y * W + x;
    mask: (max_objs,) float32 1 where an object is; box: (max_objs, code) float32;
    cls: (max_objs,) int64 class index within the task group.
    """

    heatmap: np.ndarray | torch.Tensor
    ind: np.ndarray | torch.Tensor
    mask: np.ndarray | torch.Tensor
    box: np.ndarray | torch.Tensor
    cls: np.ndarray | torch.Tensor


def build_targets(boxes: np.ndarray, labels: np.ndarray, cfg: CenterPointConfig) -> list[TaskTargets]:
    """(N, 9) ego-frame boxes, (N,) global class ids -> one :class:`TaskTargets` per task group."""
    vcfg, hcfg, tcfg = cfg.voxelization, cfg.head, cfg.target
    h, w = cfg.feature_map_size
    f = hcfg.out_size_factor
    cell_x, cell_y = vcfg.voxel_size[0] * f, vcfg.voxel_size[1] * f
    x0, y0 = vcfg.point_range[0], vcfg.point_range[1]
    code = 10 if hcfg.with_velocity else 8
    out = []
    for task in hcfg.tasks:
        ids = [CLASS_ID[c] for c in task]
        hm = np.zeros((len(task), h, w), np.float32)
        ind = np.zeros(tcfg.max_objs, np.int64)
        mask = np.zeros(tcfg.max_objs, np.float32)
        box = np.zeros((tcfg.max_objs, code), np.float32)
        cls = np.zeros(tcfg.max_objs, np.int64)
        k = 0
        for b, lab in zip(boxes, labels):
            if int(lab) not in ids or k >= tcfg.max_objs:
                continue
            if b[3] <= 0 or b[4] <= 0 or not np.all(np.isfinite(b)):
                continue
            fx, fy = (b[0] - x0) / cell_x, (b[1] - y0) / cell_y
            cx, cy = math.floor(fx), math.floor(fy)
            if not (0 <= cx < w and 0 <= cy < h):
                continue
            radius = gaussian_radius(b[3] / cell_x, b[4] / cell_y, tcfg.gaussian_overlap)
            radius = max(tcfg.min_radius, int(radius))
            c = ids.index(int(lab))
            draw_gaussian(hm[c], cx, cy, radius)
            ind[k] = cy * w + cx
            mask[k] = 1.0
            cls[k] = c
            row = [fx - cx, fy - cy, b[2], *np.log(b[3:6]), math.sin(b[6]), math.cos(b[6])]
            box[k] = row + ([b[7], b[8]] if hcfg.with_velocity else [])
            k += 1
        out.append(TaskTargets(hm, ind, mask, box, cls))
    return out


def collate_targets(batch: list[list[TaskTargets]]) -> list[TaskTargets]:
    """Per-sample numpy targets -> batched torch targets (one entry per task group)."""
    out = []
    for t in range(len(batch[0])):
        out.append(
            TaskTargets(
                *(
                    torch.from_numpy(np.stack([getattr(s[t], n) for s in batch]))
                    for n in TaskTargets.__annotations__
                )
            )
        )
    return out
