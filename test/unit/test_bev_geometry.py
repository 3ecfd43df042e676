"""Camera BEV geometry: reference-point projection against the rig (bev_mask, seams) and the
ego-motion alignment of the previous BEV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qd_perception.geometry.rig import load_rig
from qd_perception.geometry.transforms import make_transform
from qd_perception.models.bevformer.config import NUSCENES_CAMERAS
from qd_perception.models.bevformer.geometry import (
    align_prev_bev,
    bev_cell_centers,
    pillar_reference_points,
    project_to_cameras,
    relative_ego_motion,
)

HW = (225, 400)
PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def _rig_tensors():
    rig = load_rig()
    K = np.stack([rig.intrinsics(n, HW) for n in NUSCENES_CAMERAS])
    E = np.stack([rig.cam2ego(n) for n in NUSCENES_CAMERAS])
    return rig, torch.tensor(K, dtype=torch.float64)[None], torch.tensor(E, dtype=torch.float64)[None]


def _frustum_contains(rig, name: str, pts: np.ndarray) -> np.ndarray:
    """Independent test: the four side planes through the optical centre and the image corners'
    back-projected rays (plus depth > 0). pts (P, 3) ego -> (P,) bool."""
    K = rig.intrinsics(name, HW)
    T = rig.cam2ego(name)
    H, W = HW
    corners = np.array([[0, 0, 1], [W, 0, 1], [W, H, 1], [0, H, 1]], dtype=np.float64)
    rays = (T[:3, :3] @ (np.linalg.inv(K) @ corners.T)).T  # ego directions of the 4 corner rays
    axis = T[:3, :3] @ np.array([0.0, 0.0, 1.0])
    rel = pts - T[:3, 3]
    inside = rel @ axis > 1e-5
    for i in range(4):
        n = np.cross(rays[i], rays[(i + 1) % 4])
        n = n if n @ axis > 0 else -n  # inward normal
        inside &= rel @ n > 0
    return inside


def test_projection_matches_rig_frusta_on_random_points():
    rig, K, E = _rig_tensors()
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-50, 50, 4000), rng.uniform(-50, 50, 4000), rng.uniform(-4, 3, 4000)])
    _, mask = project_to_cameras(torch.tensor(pts)[None], K, E, HW)  # Z=1 "pillar" of P points
    mask = mask[:, 0, :, 0].numpy()  # (N, P)
    for c, name in enumerate(NUSCENES_CAMERAS):
        expect = _frustum_contains(rig, name, pts)
        assert expect.sum() > 100
        assert np.array_equal(mask[c], expect), name


def test_bev_mask_at_the_seams_between_cameras():
    """On a ring at camera height, every azimuth is seen (the nuScenes rig covers 360 deg) and the
    overlaps between neighbouring cameras are seen by exactly those two cameras."""
    rig, K, E = _rig_tensors()
    az = np.deg2rad(np.arange(0.0, 360.0, 0.25))
    r = 20.0
    pts = np.column_stack([0.9 + r * np.cos(az), r * np.sin(az), np.full_like(az, 1.5)])
    _, mask = project_to_cameras(torch.tensor(pts)[None], K, E, HW)
    seen = mask[:, 0, :, 0].numpy()  # (N, P)
    count = seen.sum(0)
    assert count.min() >= 1, "a gap in the 360 deg coverage"
    assert count.max() <= 2
    for c, name in enumerate(NUSCENES_CAMERAS):
        assert np.array_equal(seen[c], _frustum_contains(rig, name, pts)), name
    # the seam between CAM_FRONT (yaw 0) and CAM_FRONT_LEFT (yaw 55): both see its middle
    f, fl = NUSCENES_CAMERAS.index("CAM_FRONT"), NUSCENES_CAMERAS.index("CAM_FRONT_LEFT")
    both = np.flatnonzero(seen[f] & seen[fl])
    assert len(both) > 0
    mid = both[len(both) // 2]
    assert count[mid] == 2
    # just outside the overlap only one of them sees it
    assert seen[f, both[-1] + 2] != seen[fl, both[-1] + 2]
    assert seen[f, both[0] - 2] != seen[fl, both[0] - 2]


def test_pillar_reference_points_and_mask_shape():
    _, K, E = _rig_tensors()
    ref = pillar_reference_points(8, 10, PC_RANGE, 4, dtype=torch.float64)
    assert ref.shape == (4, 80, 3)
    assert torch.allclose(ref[:, 0, 2], torch.tensor([-4.0, -2.0, 0.0, 2.0], dtype=torch.float64))
    assert torch.allclose(ref[0, :, :2], bev_cell_centers(8, 10, PC_RANGE, torch.float64))
    uv, mask = project_to_cameras(ref, K.expand(2, -1, -1, -1), E.expand(2, -1, -1, -1), HW)
    assert uv.shape == (6, 2, 80, 4, 2) and mask.shape == (6, 2, 80, 4) and mask.dtype == torch.bool
    vis = uv[mask]
    assert (vis > 0).all() and (vis < 1).all()
    # a cell right under the ego origin is seen by no camera (behind/below every image)
    ego_cell = pillar_reference_points(1, 1, (-0.1, -0.1, -5.0, 0.1, 0.1, 3.0), 4, dtype=torch.float64)
    _, m0 = project_to_cameras(ego_cell, K, E, HW)
    assert not m0[:, :, :, :2].any()  # the two lowest points are under the ground, below all views


def _yaw(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("yaw_deg", [0.0, 90.0, -30.0])
def test_previous_bev_aligned_under_known_ego_motion(yaw_deg: float):
    """A blob at a fixed world point, drawn on the previous grid, lands at that point's cell in the
    current ego frame after alignment."""
    H = W = 64
    pr = (-32.0, -32.0, -5.0, 32.0, 32.0, 3.0)  # 1 m cells
    prev_pose = make_transform(_yaw(10.0), np.array([100.0, 50.0, 0.0]))
    cur_pose = prev_pose @ make_transform(_yaw(yaw_deg), np.array([6.0, 2.0, 0.0]))
    world = prev_pose @ np.array([12.5, -4.5, 0.0, 1.0])  # at a cell centre of the previous grid
    centres = bev_cell_centers(H, W, pr, torch.float64).numpy()
    p_prev = (np.linalg.inv(prev_pose) @ world)[:2]
    d2 = ((centres - p_prev) ** 2).sum(1)
    prev = torch.tensor(np.exp(-d2 / 2.0), dtype=torch.float32).reshape(1, 1, H, W)
    T = relative_ego_motion(prev_pose, cur_pose)
    aligned = align_prev_bev(prev, torch.tensor(T, dtype=torch.float32)[None], pr)[0, 0].numpy()
    p_cur = (np.linalg.inv(cur_pose) @ world)[:2]
    expect = int(np.argmin(((centres - p_cur) ** 2).sum(1)))
    assert int(np.argmax(aligned)) == expect
    assert aligned.max() > 0.5


def test_alignment_identity_and_out_of_grid():
    prev = torch.randn(2, 3, 16, 16)
    T = torch.eye(4).expand(2, 4, 4)
    assert torch.allclose(align_prev_bev(prev, T, PC_RANGE), prev, atol=1e-5)
    far = torch.eye(4).repeat(2, 1, 1)
    far[:, 0, 3] = 500.0  # the current grid lies entirely outside the previous one
    assert align_prev_bev(prev, far, PC_RANGE).abs().max() == 0
