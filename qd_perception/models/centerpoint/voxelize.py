"""Voxelisation in torch (outside every ONNX graph): shared by training, evaluation and runtimes.

Points ``(P, C)`` with ``[x, y, z, ...]`` in the ego frame are binned into the grid of a
:class:`VoxelizationConfig`. Each non-empty voxel keeps at most ``max_points_per_voxel`` points
(first ones in input order); at most ``max_voxels`` voxels are kept (first in raster order, or a
random subset when a generator is given, as training pipelines do).

:class:`Voxels` stores the kept points once, unpadded and grouped by voxel; the padded (V, M, C)
tensor is derived on demand. Inference never builds it (pillar PFN on the points themselves), so
voxelisation costs one stable sort of int32 cell keys and one gather of the kept points.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from qd_perception.models.centerpoint.config import VoxelizationConfig


@dataclass(frozen=True)
class Voxels:
    """Voxels of a batch. The kept points are stored once, without padding (point layout).

        points: (K, C) float32 kept points, grouped by voxel in voxel order, input order inside
        point_voxel: (K,) int64 voxel index (row of ``coords``) of each point
        num_points: (V,) int32 valid points per voxel (1..max_points); ``K == num_points.sum()``
        coords: (V, 4) int32 [batch, z, y, x] cell indices
        batch_size: number of samples
        max_points: M, the voxel capacity (``max_points_per_voxel``)

    :attr:`voxels` is the padded layout (V, M, C) that training, spconv and the padded PFN graph
    take; it is built on first use, so the inference host path never pays for it.
    """

    num_points: torch.Tensor
    coords: torch.Tensor
    batch_size: int
    points: torch.Tensor
    point_voxel: torch.Tensor
    max_points: int

    @functools.cached_property
    def point_rank(self) -> torch.Tensor:
        """(K,) int64 position of each point inside its voxel (0..M-1)."""
        n = self.num_points.long()
        return torch.arange(len(self.points), device=n.device) - (torch.cumsum(n, 0) - n)[self.point_voxel]

    @functools.cached_property
    def voxels(self) -> torch.Tensor:
        """(V, M, C) float32 points per voxel, zero padded."""
        shape = (len(self.num_points), self.max_points, self.points.shape[1])
        v = torch.zeros(shape, dtype=torch.float32, device=self.points.device)
        v[self.point_voxel, self.point_rank] = self.points
        return v

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Voxels:
        """The same voxels on ``device`` (voxelisation runs on the CPU; training may not)."""
        t = functools.partial(torch.Tensor.to, device=device, non_blocking=non_blocking)
        n, c, p, pv = (t(x) for x in (self.num_points, self.coords, self.points, self.point_voxel))
        return Voxels(n, c, self.batch_size, p, pv, self.max_points)


def _group(
    points: torch.Tensor, cfg: VoxelizationConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, C) points -> kept points (K, C) grouped by voxel, their voxel (K,), their rank in the
    voxel (K,), num_points (V,) int32, coords (V, 3) int32 [z, y, x]."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (P, C>=3), got {tuple(points.shape)}")
    points = points.float()
    c = points.shape[1]
    m = cfg.max_points_per_voxel
    grid = cfg.grid_size
    nx, ny, nz = grid
    lo = torch.tensor(cfg.point_range[:3], dtype=torch.float32)
    vs = torch.tensor(cfg.voxel_size, dtype=torch.float32)
    # Column by column on 1-D tensors (no (P, 3) temporaries), compared as floats: NaN and +-inf
    # coordinates fail the range test by themselves, so only the other features need isfinite.
    cells, inside = [], None
    for i in range(3):
        f = torch.floor((points[:, i] - lo[i]) / vs[i])
        ok = (f >= 0) & (f < grid[i])
        inside = ok if inside is None else inside & ok
        cells.append(f)
    for i in range(3, c):
        inside &= torch.isfinite(points[:, i])
    idx = inside.nonzero().squeeze(1)
    if len(idx) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return (
            torch.zeros((0, c)),
            empty,
            empty,
            torch.zeros(0, dtype=torch.int32),
            torch.zeros((0, 3), dtype=torch.int32),
        )
    # int32 keys sort ~3x faster than int64 ones; fall back for (unrealistic) > 2^31-cell grids.
    key = torch.int32 if nx * ny * nz < 2**31 else torch.int64
    ix, iy, iz = (f.index_select(0, idx).to(key) for f in cells)
    lin = (iz * ny + iy) * nx + ix
    # One stable sort groups the points by voxel (raster order) and keeps their input order.
    lin_sorted, order = torch.sort(lin, stable=True)
    uniq, counts = torch.unique_consecutive(lin_sorted, return_counts=True)
    inv_sorted = torch.repeat_interleave(torch.arange(len(uniq)), counts)
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
    else:
        vid = inv_sorted
        keep = rank < m
    num_points = torch.clamp(counts[voxel_ids], max=m).to(torch.int32)
    u = uniq[voxel_ids].long()
    coords = torch.stack([u // (nx * ny), (u // nx) % ny, u % nx], dim=1).to(torch.int32)
    # index_select: measured ~2x faster than advanced indexing for this row gather
    return points.index_select(0, idx[order[keep]]), vid[keep], rank[keep], num_points, coords


def voxelize_one(
    points: torch.Tensor, cfg: VoxelizationConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, C) points -> voxels (V, M, C), num_points (V,), coords (V, 3) [z, y, x]."""
    pts, vid, rank, num_points, coords = _group(points, cfg, generator)
    voxels = torch.zeros((len(num_points), cfg.max_points_per_voxel, pts.shape[1]), dtype=torch.float32)
    voxels[vid, rank] = pts
    return voxels, num_points, coords


def voxelize_batch(
    points: list[torch.Tensor], cfg: VoxelizationConfig, generator: torch.Generator | None = None
) -> Voxels:
    """Voxelise each sample of a batch and concatenate with the batch index in ``coords[:, 0]``."""
    ns, cs, ps, pvs = [], [], [], []
    offset = 0
    for b, p in enumerate(points):
        pts, vid, _rank, n, c = _group(p, cfg, generator)
        ns.append(n)
        cs.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], dim=1))
        ps.append(pts)
        pvs.append(vid + offset if offset else vid)
        offset += len(n)
    if len(points) == 1:  # the runtime's case: no concatenation copies
        return Voxels(ns[0], cs[0], 1, ps[0], pvs[0], cfg.max_points_per_voxel)
    return Voxels(
        torch.cat(ns), torch.cat(cs), len(points), torch.cat(ps), torch.cat(pvs), cfg.max_points_per_voxel
    )
