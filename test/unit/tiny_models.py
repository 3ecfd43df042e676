"""Tiny CenterPoint configurations and a synthetic frame shared by the unit tests.

Small enough that a model builds, trains a few steps and exports in seconds on one thread:
``TINY_BEV`` (camera BEVFormer), ``TINY`` (pillar, 25.6 m square, 0.2 m pillars), ``TINY_VOXEL``
(the same with a sparse 3-D encoder), four ground-truth boxes of different classes and a frame
of points on their faces.
"""

from __future__ import annotations

import numpy as np

from qd_perception.classes import CLASS_ID
from qd_perception.data.types import Detections, Frame
from qd_perception.geometry.boxes import box_corners

#: the tiny camera BEVFormer (``model:`` block): 64x112 images, 16x16 BEV, seconds per step
TINY_BEV = {
    "name": "tiny_bev", "image_size": [64, 112],
    "backbone": {"block": "basic", "layers": [1, 1, 1, 1], "base_width": 8, "out_indices": [2, 3]},
    "embed_dims": 32, "ffn_dims": 64, "num_heads": 4, "num_levels": 2, "bev_h": 16, "bev_w": 16,
    "sca_num_points": 4, "tsa_num_points": 2, "decoder_num_points": 2,
    "encoder_layers": 1, "decoder_layers": 2, "num_queries": 20, "max_detections": 20,
}  # fmt: skip

TINY = {
    "name": "tiny",
    "variant": "pillar",
    "nsweeps": 1,
    "voxelization": {
        "point_range": [-12.8, -12.8, -3.0, 12.8, 12.8, 3.0],
        "voxel_size": [0.2, 0.2, 6.0],
        "max_points_per_voxel": 8,
        "max_voxels": 4000,
    },
    "pillar_channels": [16],
    "backbone": {
        "layer_nums": [1, 1],
        "layer_strides": [2, 2],
        "num_filters": [16, 32],
        "upsample_strides": [1, 2],
        "num_upsample_filters": [16, 16],
    },
    "head": {"share_conv_channels": 16, "head_conv_channels": 8, "out_size_factor": 2},
}

TINY_VOXEL = {
    **TINY,
    "name": "tiny_voxel",
    "variant": "voxel",
    "voxelization": {
        "point_range": [-12.8, -12.8, -3.0, 12.8, 12.8, 3.0],
        "voxel_size": [0.2, 0.2, 0.5],
        "max_points_per_voxel": 5,
        "max_voxels": 8000,
    },
    "sparse": {"channels": [8, 16], "blocks": 1, "out_channels": 16},
    "backbone": {
        "layer_nums": [1, 1],
        "layer_strides": [1, 2],
        "num_filters": [16, 32],
        "upsample_strides": [1, 2],
        "num_upsample_filters": [16, 16],
    },
}


def scene_boxes() -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array(
        [
            [5.13, 2.27, 0.8, 4.6, 1.9, 1.6, 0.4, 3.0, -1.0],  # car
            [-6.21, -4.05, 1.4, 10.5, 2.9, 3.4, -2.9, 0.0, 0.0],  # bus
            [2.05, -7.33, 0.9, 0.7, 0.6, 1.8, 1.2, 1.1, 0.3],  # pedestrian
            [-3.37, 8.61, 0.5, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0],  # traffic cone
        ]
    )
    labels = np.array([CLASS_ID[c] for c in ("car", "bus", "pedestrian", "traffic_cone")])
    return boxes, labels


def surface_points(boxes: np.ndarray, rng: np.random.Generator, per_box: int = 300) -> np.ndarray:
    """Points on the box faces (ego frame) plus a ground plane, as (P, 5) [x, y, z, i, lag]."""
    pts = []
    for b in boxes:
        c = box_corners(b[None])[0]
        u = rng.random((per_box, 3))
        # Random point in the box, then pushed onto one of the 4 side faces or the top.
        local = (u - 0.5) * b[3:6]
        face = rng.integers(0, 5, per_box)
        for axis, sign, f in ((0, 1, 0), (0, -1, 1), (1, 1, 2), (1, -1, 3), (2, 1, 4)):
            local[face == f, axis] = sign * b[3 + axis] / 2
        cy, sy = np.cos(b[6]), np.sin(b[6])
        xy = local[:, :2] @ np.array([[cy, sy], [-sy, cy]]) + b[:2]
        pts.append(np.column_stack([xy, local[:, 2] + b[2]]))
        assert np.isfinite(c).all()
    ground = np.column_stack([rng.uniform(-12.8, 12.8, (3000, 2)), rng.normal(0.0, 0.02, 3000)])
    xyz = np.concatenate([*pts, ground])
    extra = np.column_stack([rng.uniform(0, 255, len(xyz)), rng.choice([0.0, 0.05], len(xyz))])
    return np.column_stack([xyz, extra]).astype(np.float32)


def tiny_frame(seed: int = 0) -> Frame:
    boxes, labels = scene_boxes()
    pts = surface_points(boxes, np.random.default_rng(seed))
    gt = Detections(boxes, labels, np.ones(len(boxes), np.float32))
    return Frame(f"tok{seed}", "scene", 0, np.eye(4), points=pts, gt=gt)
