"""Voxel feature encoders and the BEV scatter.

* :func:`augment_pillar_features` + :class:`PillarFeatureNet` (PointPillars PFN: Linear + BN + ReLU,
  max over the points of a pillar). The augmentation runs outside the pillar-encoder ONNX graph,
  as deployers do, so the ONNX encoder is a plain (V, M, F) -> (V, C) network.
* :func:`mean_vfe` (voxel variant: mean of the points of a voxel, as CenterPoint's voxel net).
* :func:`scatter_to_bev`: (V, C) pillar features -> dense (B, C, ny, nx) canvas.
"""

from __future__ import annotations

import torch
from torch import nn

from qd_perception.models.centerpoint.config import VoxelizationConfig

#: Augmented pillar point features: the C input features + cluster offset (3) + pillar-centre offset (2).
PILLAR_EXTRA_FEATURES = 5


def point_mask(num_points: torch.Tensor, max_points: int) -> torch.Tensor:
    """(V,) counts -> (V, M) bool mask of valid points."""
    return torch.arange(max_points, device=num_points.device)[None, :] < num_points[:, None].long()


def augment_pillar_features(
    voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor, cfg: VoxelizationConfig
) -> torch.Tensor:
    """(V, M, C) pillar points -> (V, M, C + 5): + offset to the points' mean (x, y, z) and to
    the pillar centre (x, y). Padded points are all zeros."""
    v, m, _ = voxels.shape
    mask = point_mask(num_points, m).unsqueeze(-1).to(voxels.dtype)
    xyz = voxels[..., :3]
    n = num_points.clamp(min=1).to(voxels.dtype).view(v, 1, 1)
    mean = (xyz * mask).sum(dim=1, keepdim=True) / n
    f_cluster = xyz - mean
    vx, vy = cfg.voxel_size[0], cfg.voxel_size[1]
    cx = coords[:, 3].to(voxels.dtype) * vx + (vx / 2 + cfg.point_range[0])
    cy = coords[:, 2].to(voxels.dtype) * vy + (vy / 2 + cfg.point_range[1])
    f_center = xyz[..., :2] - torch.stack([cx, cy], dim=-1).unsqueeze(1)
    return torch.cat([voxels, f_cluster, f_center], dim=-1) * mask


class PFNLayer(nn.Module):
    """Linear (no bias) + BatchNorm + ReLU per point, then max over the pillar's points."""

    def __init__(self, in_channels: int, out_channels: int, last: bool) -> None:
        super().__init__()
        self.last = last
        width = out_channels if last else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=False)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(V, M, F) -> (V, M', C): M' = 1 for the last layer (the max), else M (concat with the max)."""
        x = self.linear(x)
        x = self.relu(self.norm(x.permute(0, 2, 1)).permute(0, 2, 1))
        x_max = x.max(dim=1, keepdim=True).values
        if self.last:
            return x_max
        return torch.cat([x, x_max.expand_as(x)], dim=-1)


class PillarFeatureNet(nn.Module):
    """PFN: (V, M, F) augmented pillar points -> (V, C) pillar features."""

    def __init__(self, in_features: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        dims = (in_features, *channels)
        self.layers = nn.ModuleList(
            PFNLayer(dims[i], dims[i + 1], last=i == len(channels) - 1) for i in range(len(channels))
        )
        self.out_channels = channels[-1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for layer in self.layers:
            x = layer(x)
        return x.squeeze(1)


def mean_vfe(voxels: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
    """(V, M, C) -> (V, C) mean of the valid points of each voxel."""
    mask = point_mask(num_points, voxels.shape[1]).unsqueeze(-1).to(voxels.dtype)
    return (voxels * mask).sum(1) / num_points.clamp(min=1).to(voxels.dtype).unsqueeze(-1)


def scatter_to_bev(
    features: torch.Tensor, coords: torch.Tensor, batch_size: int, ny: int, nx: int
) -> torch.Tensor:
    """(V, C) features at coords (V, 4) [b, z, y, x] -> (B, C, ny, nx), zeros where empty."""
    c = features.shape[1]
    canvas = features.new_zeros((batch_size, ny * nx, c))
    b = coords[:, 0].long()
    idx = coords[:, 2].long() * nx + coords[:, 3].long()
    canvas = canvas.index_put((b, idx), features)
    return canvas.permute(0, 2, 1).reshape(batch_size, c, ny, nx).contiguous()
