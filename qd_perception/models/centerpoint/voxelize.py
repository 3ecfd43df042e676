"""Voxelisation in torch (outside every ONNX graph): shared by training, evaluation and runtimes.

Points ``(P, C)`` with ``[x, y, z, ...]`` in the ego frame are binned into the grid of a
:class:`VoxelizationConfig`. Each non-empty voxel keeps at most ``max_points_per_voxel`` points
(first ones in input order); at most ``max_voxels`` voxels are kept (first in raster order, or a
random subset when a generator is given, as training pipelines do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qd_perception.models.centerpoint.config import VoxelizationConfig


@dataclass(frozen=True)
class Voxels:
    """Voxels of a batch.

    voxels: (V, M, C) float32 points per voxel, zero padded
    num_points: (V,) int32 valid points per voxel (>= 1)
    coords: (V, 4) int32 [batch, z, y, x] cell indices
    batch_size: number of samples
    """

    voxels: torch.Tensor
    num_points: torch.Tensor
    coords: torch.Tensor
    batch_size: int


def voxelize_one(
    points: torch.Tensor, cfg: VoxelizationConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, C) points -> voxels (V, M, C), num_points (V,), coords (V, 3) [z, y, x]."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (P, C>=3), got {tuple(points.shape)}")
    points = points.float()
    c = points.shape[1]
    m = cfg.max_points_per_voxel
    nx, ny, nz = cfg.grid_size
    lo = torch.tensor(cfg.point_range[:3], dtype=torch.float32)
    vs = torch.tensor(cfg.voxel_size, dtype=torch.float32)
    finite = torch.isfinite(points).all(dim=1)
    cell = torch.floor((points[:, :3] - lo) / vs).long()
    inside = finite & (cell >= 0).all(1) & (cell < torch.tensor([nx, ny, nz])).all(1)
    points, cell = points[inside], cell[inside]
    if len(points) == 0:
        return (
            torch.zeros((0, m, c)),
            torch.zeros(0, dtype=torch.int32),
            torch.zeros((0, 3), dtype=torch.int32),
        )
    lin = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
    uniq, inverse = torch.unique(lin, sorted=True, return_inverse=True)
    order = torch.sort(inverse, stable=True).indices  # points grouped by voxel, input order kept
    inv_sorted = inverse[order]
    counts = torch.bincount(inv_sorted, minlength=len(uniq))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - starts[inv_sorted]
    voxel_ids = torch.arange(len(uniq))
    if len(uniq) > cfg.max_voxels:
        if generator is not None:
            voxel_ids = torch.randperm(len(uniq), generator=generator)[: cfg.max_voxels].sort().values
        else:
            voxel_ids = voxel_ids[: cfg.max_voxels]
    new_id = torch.full((len(uniq),), -1, dtype=torch.long)
    new_id[voxel_ids] = torch.arange(len(voxel_ids))
    vid = new_id[inv_sorted]
    keep = (rank < m) & (vid >= 0)
    voxels = torch.zeros((len(voxel_ids), m, c), dtype=torch.float32)
    voxels[vid[keep], rank[keep]] = points[order[keep]]
    num_points = torch.clamp(counts[voxel_ids], max=m).to(torch.int32)
    u = uniq[voxel_ids]
    coords = torch.stack([u // (nx * ny), (u // nx) % ny, u % nx], dim=1).to(torch.int32)
    return voxels, num_points, coords


def voxelize_batch(
    points: list[torch.Tensor], cfg: VoxelizationConfig, generator: torch.Generator | None = None
) -> Voxels:
    """Voxelise each sample of a batch and concatenate with the batch index in ``coords[:, 0]``."""
    vs, ns, cs = [], [], []
    for b, p in enumerate(points):
        v, n, c = voxelize_one(p, cfg, generator)
        vs.append(v)
        ns.append(n)
        cs.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], dim=1))
    return Voxels(torch.cat(vs), torch.cat(ns), torch.cat(cs), len(points))
