"""CenterPoint (pillar or spconv voxel) as one module, split where deployers split it.

    points --voxelize--> Voxels --encode--> BEV (B, C, ny', nx') --dense--> [TaskOutput per task]

* pillar: ``pillar_inputs`` (feature augmentation, torch) -> ``pfn`` (ONNX graph 1) -> scatter
  (torch) -> ``forward_dense`` (ONNX graph 2). At inference the torch model runs the PFN on the
  points themselves (``pillar_point_inputs`` -> ``pfn.forward_points``): same features, no padding.
* voxel: mean VFE + spconv backbone (torch only: spconv has no ONNX export) -> ``forward_dense``
  (ONNX).
Voxelisation and decode (``models.centerpoint.decode``) stay outside every graph.
"""

from __future__ import annotations

import torch
from torch import nn

from qd_perception.models.centerpoint.backbone2d import SecondBackbone
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.head import CenterHead, TaskOutput, flatten_outputs
from qd_perception.models.centerpoint.vfe import (
    PILLAR_EXTRA_FEATURES,
    BevCanvas,
    PillarFeatureNet,
    augment_pillar_features,
    mean_vfe,
    pillar_point_features,
    scatter_to_bev,
)
from qd_perception.models.centerpoint.voxelize import Voxels, voxelize_batch


class CenterPoint(nn.Module):
    def __init__(self, cfg: CenterPointConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nx, ny, nz = cfg.voxelization.grid_size
        c = cfg.num_point_features
        if cfg.variant == "pillar":
            if nz != 1:
                raise ValueError(f"pillar variant needs one z cell, the grid has {nz}")
            self.pfn = PillarFeatureNet(c + PILLAR_EXTRA_FEATURES, cfg.pillar_channels)
            bev_channels, enc_stride = self.pfn.out_channels, 1
            self.sparse = None
        else:
            from qd_perception.models.centerpoint.sparse import SparseBackbone

            self.pfn = None
            self.sparse = SparseBackbone(c, (nx, ny, nz), cfg.sparse)
            bev_channels, enc_stride = self.sparse.out_channels, self.sparse.stride
        self.backbone = SecondBackbone(bev_channels, cfg.backbone)
        if enc_stride * self.backbone.stride != cfg.head.out_size_factor:
            raise ValueError(
                f"encoder stride {enc_stride} x backbone stride {self.backbone.stride} != "
                f"head.out_size_factor {cfg.head.out_size_factor}"
            )
        self.head = CenterHead(
            self.backbone.out_channels,
            cfg.head.tasks,
            cfg.head.share_conv_channels,
            cfg.head.head_conv_channels,
            cfg.head.with_velocity,
        )
        self.bev_channels = bev_channels

    # -- pre-processing (outside graphs) --------------------------------------------------------
    def preprocess(self, points: list[torch.Tensor], generator: torch.Generator | None = None) -> Voxels:
        """Per-sample (P, >=5) [x, y, z, intensity 0..255, time_lag] ego-frame points -> Voxels."""
        c = self.cfg.num_point_features
        for p in points:
            if p.ndim != 2 or p.shape[1] < c:
                raise ValueError(f"points must be (P, >={c}), got {tuple(p.shape)}")
        vox = voxelize_batch([p[:, :c] for p in points], self.cfg.voxelization, generator)
        # Scaled after voxelisation, on the kept points only (a fresh gather: the caller's points
        # are not touched); the padded layout is built from these on first use.
        vox.points[:, 3] /= self.cfg.intensity_scale
        return vox

    def pillar_inputs(self, vox: Voxels) -> torch.Tensor:
        """(V, M, C + 5) augmented pillar points, the input of the PFN graph."""
        return augment_pillar_features(vox.voxels, vox.num_points, vox.coords, self.cfg.voxelization)

    def pillar_point_inputs(self, vox: Voxels) -> torch.Tensor:
        """(K, C + 5) the same augmented points without the padding (point layout of ``vox``)."""
        return pillar_point_features(
            vox.points, vox.point_voxel, vox.num_points, vox.coords, self.cfg.voxelization
        )

    def scatter(
        self, pillar_features: torch.Tensor, vox: Voxels, canvas: BevCanvas | None = None
    ) -> torch.Tensor:
        """(V, C) pillar features -> (B, C, ny, nx); into ``canvas`` (reused, inference) if given."""
        if canvas is not None:
            return canvas.scatter(pillar_features, vox.coords, vox.batch_size)
        nx, ny, _ = self.cfg.voxelization.grid_size
        return scatter_to_bev(pillar_features, vox.coords, vox.batch_size, ny, nx)

    def new_canvas(self) -> BevCanvas:
        """A reusable BEV canvas for :meth:`forward` / :meth:`scatter` at inference (pillar)."""
        nx, ny, _ = self.cfg.voxelization.grid_size
        return BevCanvas(ny, nx)

    # -- network ---------------------------------------------------------------------------------
    def encode(self, vox: Voxels, canvas: BevCanvas | None = None) -> torch.Tensor:
        """Voxels -> dense BEV features (B, C, H', W'); ``canvas``: see :class:`BevCanvas`."""
        if self.pfn is not None:
            if self.pfn.supports_points():  # inference: same result, no padded rows
                feats = self.pfn.forward_points(
                    self.pillar_point_inputs(vox), vox.point_voxel, vox.num_points, vox.max_points
                )
            else:
                feats = self.pfn(self.pillar_inputs(vox))
            return self.scatter(feats, vox, canvas)
        assert self.sparse is not None
        return self.sparse(mean_vfe(vox.voxels, vox.num_points), vox.coords, vox.batch_size)

    def forward_dense(self, bev: torch.Tensor) -> list[TaskOutput]:
        return self.head(self.backbone(bev))

    def forward(self, vox: Voxels, canvas: BevCanvas | None = None) -> list[TaskOutput]:
        return self.forward_dense(self.encode(vox, canvas))


class DenseGraph(nn.Module):
    """ONNX wrapper: BEV (B, C, H', W') -> flat head tensors (see head.output_names)."""

    def __init__(self, model: CenterPoint) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        # The exporter restores the wrapper's mode afterwards, recursively: a wrapper left in
        # training mode would flip the shared BatchNorms of ``model`` to batch statistics.
        self.train(model.training)

    def forward(self, bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self.head(self.backbone(bev)))
