"""CenterPoint configuration: one frozen dataclass tree, loaded from ``config/models/*.model.yaml``.

Units are metres and seconds; all grids are in the **ego frame** (x forward, y left, z up), the
frame :class:`qd_perception.data.types.Frame` delivers points in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from qd_perception.classes import CLASS_NAMES

#: nuScenes task groups of CenterPoint (one heatmap head per group).
NUSCENES_TASKS: tuple[tuple[str, ...], ...] = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
#: CenterPoint's nuScenes circle-NMS thresholds per task group, converted to metres. CenterPoint
#: compares the *squared* centre distance to (4, 12, 10, 1, 0.85, 0.175); these are their roots.
NUSCENES_CIRCLE_RADIUS_M: tuple[float, ...] = tuple(
    round(math.sqrt(v), 4) for v in (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
)


@dataclass(frozen=True)
class VoxelizationConfig:
    """Grid over ``point_range`` = (xmin, ymin, zmin, xmax, ymax, zmax), cells of ``voxel_size``."""

    point_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    max_points_per_voxel: int = 20
    max_voxels: int = 30000

    def __post_init__(self) -> None:
        r, v = self.point_range, self.voxel_size
        if any(r[i + 3] <= r[i] for i in range(3)):
            raise ValueError(f"point_range max must exceed min: {r}")
        if any(x <= 0 for x in v):
            raise ValueError(f"voxel_size must be positive: {v}")
        for i in range(3):
            n = (r[i + 3] - r[i]) / v[i]
            if abs(n - round(n)) > 1e-4:
                raise ValueError(f"point_range extent {r[i + 3] - r[i]} is not a multiple of {v[i]}")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(nx, ny, nz) number of cells."""
        r, v = self.point_range, self.voxel_size
        return tuple(round((r[i + 3] - r[i]) / v[i]) for i in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class SparseBackboneConfig:
    """spconv 3-D backbone (voxel variant): stem SubMConv3d, then one stage per entry.

    Each stage after the first starts with a stride-2 SparseConv3d and has ``blocks`` SubMConv3d.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 2
    out_channels: int = 128  # after the final z-compressing SparseConv3d


@dataclass(frozen=True)
class Backbone2dConfig:
    """SECOND-style 2-D backbone (conv stages) and neck (one upsampling branch per stage)."""

    layer_nums: tuple[int, ...] = (3, 5, 5)
    layer_strides: tuple[int, ...] = (2, 2, 2)
    num_filters: tuple[int, ...] = (64, 128, 256)
    upsample_strides: tuple[float, ...] = (0.5, 1.0, 2.0)  # < 1 means a strided conv
    num_upsample_filters: tuple[int, ...] = (128, 128, 128)

    def __post_init__(self) -> None:
        n = len(self.layer_nums)
        if not (len(self.layer_strides) == len(self.num_filters) == n):
            raise ValueError("layer_nums, layer_strides and num_filters need one entry per stage")
        if not (len(self.upsample_strides) == len(self.num_upsample_filters) == n):
            raise ValueError("upsample_strides and num_upsample_filters need one entry per stage")


@dataclass(frozen=True)
class HeadConfig:
    """Center head: a shared conv, then per task group a heatmap and the regression branches."""

    tasks: tuple[tuple[str, ...], ...] = NUSCENES_TASKS
    share_conv_channels: int = 64
    head_conv_channels: int = 64
    out_size_factor: int = 4  # head map cell = voxel_size * out_size_factor
    with_velocity: bool = True

    def __post_init__(self) -> None:
        seen = [c for t in self.tasks for c in t]
        bad = sorted(set(seen) - set(CLASS_NAMES))
        if bad:
            raise ValueError(f"unknown class(es) in tasks: {bad}")
        if len(seen) != len(set(seen)):
            raise ValueError("a class appears in more than one task group")


@dataclass(frozen=True)
class TargetConfig:
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objs: int = 500


@dataclass(frozen=True)
class LossConfig:
    """Focal (CornerNet) loss on heatmaps + ``loc_weight`` * weighted L1 on the box code.

    Code order: offset x, offset y, z, log dx, log dy, log dz, sin yaw, cos yaw, vx, vy.
    """

    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    hm_weight: float = 1.0
    loc_weight: float = 0.25


@dataclass(frozen=True)
class DecodeConfig:
    score_threshold: float = 0.1
    pre_max_size: int = 1000  # top-k per task before NMS
    post_max_size: int = 83  # kept per task after NMS
    nms: Literal["circle", "rotated", "none"] = "circle"
    circle_radius_m: tuple[float, ...] = NUSCENES_CIRCLE_RADIUS_M  # one per task group
    iou_threshold: float = 0.2  # rotated BEV IoU NMS
    post_center_range: tuple[float, float, float, float, float, float] = (
        -61.2, -61.2, -10.0, 61.2, 61.2, 10.0,
    )  # fmt: skip


@dataclass(frozen=True)
class CenterPointConfig:
    """The whole model. ``variant`` picks the encoder: PointPillars PFN or spconv voxel backbone."""

    name: str
    variant: Literal["pillar", "voxel"]
    voxelization: VoxelizationConfig
    nsweeps: int = 10
    num_point_features: int = 5  # x, y, z, intensity, time_lag
    pillar_channels: tuple[int, ...] = (64,)  # PFN layers (pillar variant)
    sparse: SparseBackboneConfig = field(default_factory=SparseBackboneConfig)
    backbone: Backbone2dConfig = field(default_factory=Backbone2dConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    intensity_scale: float = 255.0  # intensity is divided by this before the network

    def __post_init__(self) -> None:
        if len(self.decode.circle_radius_m) != len(self.head.tasks):
            raise ValueError("decode.circle_radius_m needs one radius per head task group")
        if len(self.loss.code_weights) != (10 if self.head.with_velocity else 8):
            raise ValueError("loss.code_weights needs 10 entries (8 without velocity)")
        nx, ny, _ = self.voxelization.grid_size
        if nx % self.head.out_size_factor or ny % self.head.out_size_factor:
            raise ValueError("grid size must be divisible by head.out_size_factor")

    @property
    def feature_map_size(self) -> tuple[int, int]:
        """(H, W) = (ny, nx) of the head outputs."""
        nx, ny, _ = self.voxelization.grid_size
        f = self.head.out_size_factor
        return ny // f, nx // f
