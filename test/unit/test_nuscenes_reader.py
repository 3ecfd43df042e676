"""The reader on a hand-made data set with real nuScenes features the synthetic set lacks.

Official version/split names (``v1.0-mini`` / ``mini_val``), a radar channel, camera and lidar
at different times (different ego poses), categories outside the 10 detection classes, sub-
categories (``human.pedestrian.child``, ``vehicle.bus.bendy``), a rotated ego.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qd_perception.classes import CLASS_ID
from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.geometry.transforms import apply, invert, make_transform, matrix_to_quat, yaw_to_quat

T0 = 1_533_151_603_547_590
LIDAR2EGO = make_transform(np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), np.array([0.94, 0.0, 1.84]))
CAM2EGO = make_transform(np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]), np.array([1.7, 0.0, 1.5]))
K = [[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]
STATIC = np.array([[130.0, 215.0, 1.0], [95.0, 190.0, 0.5], [110.0, 230.0, 2.0]])  # global points


def _ego(t_us: int) -> np.ndarray:
    """Ego at 10 m/s along a 30 deg heading, turning at 0.1 rad/s."""
    s = (t_us - T0) * 1e-6
    yaw = np.deg2rad(30) + 0.1 * s
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    return make_transform(R, np.array([100.0, 200.0, 0.0]) + 10 * s * R[:, 0])


def _pose(T: np.ndarray) -> dict:
    return {"translation": T[:3, 3].tolist(), "rotation": matrix_to_quat(T[:3, :3]).tolist()}


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini")
    v = root / "v1.0-mini"
    v.mkdir()
    tables: dict[str, list] = {n: [] for n in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
        "log", "scene", "sample", "sample_data", "sample_annotation", "map")}  # fmt: skip
    for ch, mod in (("LIDAR_TOP", "lidar"), ("CAM_FRONT", "camera"), ("RADAR_FRONT", "radar")):
        tables["sensor"].append({"token": f"s_{ch}", "channel": ch, "modality": mod})
    for ch, T, k in (("LIDAR_TOP", LIDAR2EGO, []), ("CAM_FRONT", CAM2EGO, K), ("RADAR_FRONT", np.eye(4), [])):
        tables["calibrated_sensor"].append(
            {"token": f"c_{ch}", "sensor_token": f"s_{ch}", **_pose(T), "camera_intrinsic": k}
        )
    for name in ("human.pedestrian.child", "animal", "vehicle.bus.bendy", "vehicle.emergency.police"):
        tables["category"].append({"token": f"cat_{name}", "name": name, "description": ""})
    tables["log"].append({"token": "log", "logfile": "n008", "vehicle": "n008", "date_captured": "2018-08-01",
                          "location": "singapore-onenorth"})  # fmt: skip
    tables["map"].append({"token": "m", "log_tokens": ["log"], "category": "semantic_prior", "filename": ""})
    tables["visibility"].append({"token": "4", "level": "v80-100", "description": ""})
    tables["attribute"].append({"token": "a_moving", "name": "vehicle.moving", "description": ""})
    tables["scene"].append({"token": "sc", "log_token": "log", "nbr_samples": 2, "first_sample_token": "k0",
                            "last_sample_token": "k1", "name": "scene-0103", "description": ""})  # fmt: skip
    tables["sample"] += [
        {"token": "k0", "timestamp": T0, "prev": "", "next": "k1", "scene_token": "sc"},
        {"token": "k1", "timestamp": T0 + 500_000, "prev": "k0", "next": "", "scene_token": "sc"},
    ]
    # lidar: keyframe k0, sweep at +0.25 s, keyframe k1; camera and radar 20 ms after each keyframe
    lidar = [("l0", T0, "k0", True), ("l1", T0 + 250_000, "k1", False), ("l2", T0 + 500_000, "k1", True)]
    for i, (tok, t, sample, key) in enumerate(lidar):
        pts = apply(invert(_ego(t) @ LIDAR2EGO), STATIC)
        raw = np.c_[pts, np.full(len(pts), 7.0), np.arange(len(pts))].astype(np.float32)
        fn = f"{'samples' if key else 'sweeps'}/LIDAR_TOP/{tok}.pcd.bin"
        (root / fn).parent.mkdir(parents=True, exist_ok=True)
        raw.tofile(root / fn)
        tables["ego_pose"].append({"token": tok, "timestamp": t, **_pose(_ego(t))})
        tables["sample_data"].append({
            "token": tok, "sample_token": sample, "ego_pose_token": tok,
            "calibrated_sensor_token": "c_LIDAR_TOP",
            "timestamp": t, "fileformat": "pcd", "is_key_frame": key, "height": 0, "width": 0, "filename": fn,
            "prev": lidar[i - 1][0] if i else "", "next": lidar[i + 1][0] if i < 2 else ""})  # fmt: skip
    from PIL import Image

    for ch, ext in (("CAM_FRONT", "jpg"), ("RADAR_FRONT", "pcd")):
        for j, sample in enumerate(("k0", "k1")):
            tok, t = f"{ch}{j}", T0 + j * 500_000 + 20_000
            fn = f"samples/{ch}/{tok}.{ext}"
            (root / fn).parent.mkdir(parents=True, exist_ok=True)
            if ext == "jpg":
                Image.fromarray(np.full((9, 16, 3), 90, np.uint8)).save(root / fn)
            tables["ego_pose"].append({"token": tok, "timestamp": t, **_pose(_ego(t))})
            tables["sample_data"].append({
                "token": tok, "sample_token": sample, "ego_pose_token": tok,
                "calibrated_sensor_token": f"c_{ch}",
                "timestamp": t, "fileformat": ext, "is_key_frame": True, "height": 9, "width": 16,
                "filename": fn, "prev": f"{ch}0" if j else "", "next": "" if j else f"{ch}1"})  # fmt: skip
    # annotations: a child (-> pedestrian), an animal (dropped), a bendy bus moving 2 m/s along +x
    for inst, cat in (
        ("i_child", "human.pedestrian.child"),
        ("i_animal", "animal"),
        ("i_bus", "vehicle.bus.bendy"),
    ):
        tables["instance"].append({"token": inst, "category_token": f"cat_{cat}", "nbr_annotations": 2,
                                   "first_annotation_token": f"{inst}0",
                                   "last_annotation_token": f"{inst}1"})  # fmt: skip
        for j, sample in enumerate(("k0", "k1")):
            x = 120.0 + (j * 1.0 if inst == "i_bus" else 0.0)
            tables["sample_annotation"].append({
                "token": f"{inst}{j}", "sample_token": sample, "instance_token": inst,
                "visibility_token": "4",
                "attribute_tokens": ["a_moving"] if inst == "i_bus" else [], "translation": [x, 210.0, 1.5],
                "size": [2.9, 18.0, 3.5] if inst == "i_bus" else [0.5, 0.5, 1.2],
                "rotation": yaw_to_quat(0.3).tolist(), "prev": f"{inst}0" if j else "",
                "next": "" if j else f"{inst}1", "num_lidar_pts": 12, "num_radar_pts": 0})  # fmt: skip
    for n, rows in tables.items():
        (v / f"{n}.json").write_text(json.dumps(rows))
    return root


def test_official_split_and_channels(mini):
    r = NuScenesReader(mini, "v1.0-mini", "mini_val", nsweeps=10)
    assert r.sample_tokens == ["k0", "k1"] and r.eval_set == "mini_val"
    assert r.cameras == ("CAM_FRONT",)  # radar is ignored, only present cameras are listed
    assert r.scene_name("k1") == "scene-0103"


def test_gt_labels_boxes_velocity(mini):
    r = NuScenesReader(mini, "v1.0-mini", "mini_val", nsweeps=1, load_images=False)
    gt = r.gt("k1")
    assert list(gt.labels) == [CLASS_ID["pedestrian"], CLASS_ID["bus"]]  # animal dropped
    E = _ego(T0 + 500_000)
    bus_ego = apply(invert(E), np.array([[121.0, 210.0, 1.5]]))[0]
    np.testing.assert_allclose(gt.boxes[1, :3], bus_ego, atol=1e-9)
    np.testing.assert_allclose(gt.boxes[1, 3:6], [18.0, 2.9, 3.5])  # (l, w, h) from nuScenes wlh
    yaw_ego = 0.3 - np.arctan2(E[1, 0], E[0, 0])
    assert np.isclose(np.angle(np.exp(1j * (gt.boxes[1, 6] - yaw_ego))), 0, atol=1e-9)
    v_ego = E[:3, :3].T @ np.array([2.0, 0.0, 0.0])  # 1 m in 0.5 s, rotated into the ego frame
    np.testing.assert_allclose(gt.boxes[1, 7:9], v_ego[:2], atol=1e-9)
    np.testing.assert_allclose(gt.boxes[0, 7:9], 0.0)  # a static child
    assert gt.attributes == ("", "vehicle.moving") and list(gt.num_lidar_pts) == [12, 12]


def test_multisweep_static_points_coincide_in_keyframe_ego(mini):
    r = NuScenesReader(mini, "v1.0-mini", "mini_val", nsweeps=10, load_images=False)
    pts = r.frame("k1").points
    np.testing.assert_allclose(np.unique(pts[:, 4]), [0.0, 0.25, 0.5], atol=1e-6)  # k1, sweep, k0
    want = apply(invert(_ego(T0 + 500_000)), STATIC)
    for lag in (0.0, 0.25, 0.5):
        np.testing.assert_allclose(pts[np.isclose(pts[:, 4], lag), :3], want, atol=1e-4)
    assert np.all(pts[:, 3] == 7.0)
    r2 = NuScenesReader(mini, "v1.0-mini", "mini_val", nsweeps=2, load_images=False)
    assert len(r2.frame("k1").points) == 2 * len(STATIC)
    assert len(r.frame("k0").points) == len(STATIC)  # the scene's first sweep: nothing before it


def test_camera_extrinsics_fold_in_ego_motion(mini):
    r = NuScenesReader(mini, "v1.0-mini", "mini_val", nsweeps=0)
    cam = r.frame("k0").cameras[0]
    t_cam = T0 + 20_000
    assert cam.timestamp_us == t_cam and cam.image.shape == (9, 16, 3)
    np.testing.assert_allclose(cam.intrinsics, K)
    want = invert(_ego(T0)) @ _ego(t_cam) @ CAM2EGO
    np.testing.assert_allclose(cam.cam2ego, want, atol=1e-9)
    assert np.linalg.norm(cam.cam2ego[:3, 3] - CAM2EGO[:3, 3]) > 0.15  # 20 ms at 10 m/s


def test_evaluate_on_an_official_split(mini, tmp_path):
    from qd_perception.eval.nuscenes_eval import evaluate

    r = NuScenesReader(mini, "v1.0-mini", "mini_val", nsweeps=0, load_images=False)
    preds = {t: r.gt(t) for t in r.sample_tokens}
    m = evaluate(mini, "v1.0-mini", "mini_val", preds, tmp_path)
    assert m.class_ap["bus"] == pytest.approx(1.0) and m.class_ap["pedestrian"] == pytest.approx(1.0)
    assert m.class_ap["car"] == 0.0  # absent classes score 0, as the devkit does
    assert m.map == pytest.approx(0.2)
    bus_err = m.class_tp_errors["bus"]
    assert bus_err["mate"] < 1e-6 and bus_err["mave"] < 1e-6 and bus_err["maoe"] < 1e-6
    sub = json.loads((tmp_path / "results_nusc.json").read_text())
    bus = next(b for b in sub["results"]["k1"] if b["detection_name"] == "bus")
    np.testing.assert_allclose(bus["translation"], [121.0, 210.0, 1.5], atol=1e-9)  # back in global
    np.testing.assert_allclose(bus["velocity"], [2.0, 0.0], atol=1e-9)
