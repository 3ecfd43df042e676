"""BEV grid geometry: pillar reference points, their projection into the cameras (``bev_mask``)
and ego-motion alignment of the previous BEV. Pure torch, exportable to ONNX (no matrix inverse
op: rigid transforms are inverted in closed form).

BEV layout: the BEV tensor is (B, C, H_bev, W_bev) with rows along ego +y and columns along ego +x;
flattened index q = row * W_bev + col. Cell (row, col) has its centre at
``x = x_min + (col + 0.5) * dx``, ``y = y_min + (row + 0.5) * dy``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: a reference point counts as in front of a camera only beyond this depth (metres)
DEPTH_EPS = 1e-5


def bev_cell_centers(
    bev_h: int, bev_w: int, pc_range: tuple[float, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(H_bev*W_bev, 2) [x, y] metres of every BEV cell centre (ego frame), row-major."""
    x0, y0, _, x1, y1, _ = pc_range
    xs = x0 + (torch.arange(bev_w, dtype=dtype) + 0.5) * (x1 - x0) / bev_w
    ys = y0 + (torch.arange(bev_h, dtype=dtype) + 0.5) * (y1 - y0) / bev_h
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def bev_reference_2d(bev_h: int, bev_w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H_bev*W_bev, 2) normalised [u, v] in (0, 1) of every BEV cell (u along x, v along y)."""
    u = (torch.arange(bev_w, dtype=dtype) + 0.5) / bev_w
    v = (torch.arange(bev_h, dtype=dtype) + 0.5) / bev_h
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1)


def pillar_reference_points(
    bev_h: int, bev_w: int, pc_range: tuple[float, ...], num_z: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(Z, H_bev*W_bev, 3) [x, y, z] metres: ``num_z`` heights per BEV pillar, evenly spread over
    [z_min, z_max] at the centres of ``num_z`` equal slices (as BEVFormer)."""
    z0, z1 = pc_range[2], pc_range[5]
    zs = z0 + (torch.arange(num_z, dtype=dtype) + 0.5) * (z1 - z0) / num_z
    xy = bev_cell_centers(bev_h, bev_w, pc_range, dtype)
    n = xy.shape[0]
    return torch.cat([xy[None].expand(num_z, n, 2), zs[:, None, None].expand(num_z, n, 1)], dim=-1)


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) rigid transforms -> inverses, closed form."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], dim=-1)
    bottom = torch.zeros_like(T[..., 3:, :]) + torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype)
    return torch.cat([top, bottom], dim=-2)


def project_to_cameras(
    ref_points: torch.Tensor,
    intrinsics: torch.Tensor,
    cam2ego: torch.Tensor,
    image_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ego-frame points into every camera.

    Args:
        ref_points: (Z, Q, 3) metres, ego frame (Q = H_bev*W_bev).
        intrinsics: (B, N, 3, 3) K for images of ``image_hw``.
        cam2ego: (B, N, 4, 4) ego <- optical.
        image_hw: (H, W) pixels of the images K refers to.
    Returns:
        uv: (N, B, Q, Z, 2) normalised image coordinates [u/W, v/H] (meaningless where not visible).
        bev_mask: (N, B, Q, Z) bool, BEVFormer's mask: depth > eps and 0 < u/W < 1 and 0 < v/H < 1.

    A camera whose K is all zeros sees no point (every depth is 0): its mask rows are empty. That
    is how a missing camera is taken out of a frame (``inputs.camera_tensors``), in the torch
    model and in exported graphs, without another network input.
    """
    H, W = image_hw
    ego2cam = invert_rigid(cam2ego)  # (B, N, 4, 4)
    R = ego2cam[..., :3, :3]
    t = ego2cam[..., :3, 3]
    # (B, N, Z, Q, 3) camera-frame points
    pc = torch.einsum("bnij,zqj->bnzqi", R, ref_points) + t[:, :, None, None, :]
    pix = torch.einsum("bnij,bnzqj->bnzqi", intrinsics, pc)
    depth = pix[..., 2:3]
    uv = pix[..., :2] / torch.clamp(depth, min=DEPTH_EPS)
    scale = torch.tensor([W, H], dtype=uv.dtype, device=uv.device)
    uv = uv / scale
    mask = (
        (depth[..., 0] > DEPTH_EPS)
        & (uv[..., 0] > 0.0)
        & (uv[..., 0] < 1.0)
        & (uv[..., 1] > 0.0)
        & (uv[..., 1] < 1.0)
    )
    # (B, N, Z, Q, ...) -> (N, B, Q, Z, ...)
    uv = uv.permute(1, 0, 3, 2, 4)
    mask = mask.permute(1, 0, 3, 2)
    return uv, mask


def align_prev_bev(
    prev_bev: torch.Tensor, prev_from_cur: torch.Tensor, pc_range: tuple[float, ...]
) -> torch.Tensor:
    """Resample the previous BEV into the current ego frame.

    Args:
        prev_bev: (B, C, H_bev, W_bev) features laid out on the grid of the previous ego frame.
        prev_from_cur: (B, 4, 4) transform ego_prev <- ego_cur.
    Returns:
        (B, C, H_bev, W_bev) on the current grid; cells that fall outside the previous grid are 0.
    """
    B, _, Hb, Wb = prev_bev.shape
    xy = bev_cell_centers(Hb, Wb, pc_range, prev_bev.dtype).to(prev_bev.device)  # (Q, 2)
    R = prev_from_cur[:, :2, :2]
    t = prev_from_cur[:, :2, 3]
    p = torch.einsum("bij,qj->bqi", R, xy) + t[:, None, :]  # (B, Q, 2) in the previous ego frame
    x0, y0, _, x1, y1, _ = pc_range
    gx = (p[..., 0] - x0) / (x1 - x0) * 2.0 - 1.0
    gy = (p[..., 1] - y0) / (y1 - y0) * 2.0 - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(B, Hb, Wb, 2)
    return F.grid_sample(prev_bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def relative_ego_motion(prev_ego2global: np.ndarray, cur_ego2global: np.ndarray) -> np.ndarray:
    """(4, 4) ego_prev <- ego_cur from two ego poses (global <- ego)."""
    R = prev_ego2global[:3, :3]
    t = prev_ego2global[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv @ cur_ego2global
