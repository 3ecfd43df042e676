"""The synthetic data set writers against the real world, the real devkit and real rosbags.

One tiny data set (3 scenes x 3 keyframes, 48x84 images, bags on) is generated once per module
with 2 workers; the CLI regenerates it with 1 worker to prove same seed => same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from qd_perception.classes import CLASS_ID, CLASS_NAMES
from qd_perception.data.nuscenes import DatasetError, NuScenesReader
from qd_perception.data.rosbag import detections_from_msg
from qd_perception.data.types import Detections
from qd_perception.eval.nuscenes_eval import evaluate
from qd_perception.geometry.boxes import points_in_boxes, transform_boxes, wrap_angle
from qd_perception.geometry.transforms import apply, invert
from qd_perception.sim import generate as gen
from qd_perception.sim import rosmsgs as rm
from qd_perception.sim.nuscenes_writer import DEFAULT_VERSION, TABLE_NAMES, make_token

ROOT = Path(__file__).resolve().parents[2]
# Two val scenes: in a 1.5 s scene occlusion can hide every object of a class from the lidar (a
# bus behind a parked truck), and the devkit scores an absent class AP 0.
CFG = gen.GenerateConfig(
    scenes=3, samples=3, seed=0, resolution=(48, 84), bag=True, workers=2, val_fraction=0.5
)
VAL_SCENE = 1  # the first val scene


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "ds"
    gen.generate(CFG, out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def world_val():
    return gen._world_scene(CFG, VAL_SCENE)


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _instance_token(scene: int, iid: int) -> str:
    return make_token(CFG.seed, gen.scene_name(scene), "instance", iid)


def test_custom_message_hashes_match_rosidl():
    built = ROOT / ".venv" / "share" / "qd_perception" / "msg"
    if not built.is_dir():
        pytest.skip("messages not built (make venv builds them)")
    for name in ("BoundingBox3D", "Detection3D", "Detection3DArray"):
        desc = json.loads((built / f"{name}.json").read_text())
        want = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}[f"qd_perception/msg/{name}"]
        assert rm.typestore().hash_rihs01(f"qd_perception/msg/{name}") == want


def test_devkit_loads_all_tables(dataset):
    from nuscenes import NuScenes

    nusc = NuScenes(DEFAULT_VERSION, str(dataset), verbose=False)
    assert len(nusc.scene) == CFG.scenes and len(nusc.sample) == CFG.scenes * CFG.samples
    for name in TABLE_NAMES:
        assert (dataset / DEFAULT_VERSION / f"{name}.json").is_file()
    assert (dataset / nusc.map[0]["filename"]).is_file()
    cams = {s["channel"] for s in nusc.sensor if s["modality"] == "camera"}
    assert len(cams) == 6
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP"} | cams
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pts = np.fromfile(dataset / sd["filename"], np.float32).reshape(-1, 5)
        assert len(pts) > 1000 and np.all((pts[:, 4] >= 0) & (pts[:, 4] < 32))
    # 20 Hz lidar: 10 sweeps per 0.5 s keyframe interval, linked per channel in time order.
    lidar = [sd for sd in nusc.sample_data if sd["channel"] == "LIDAR_TOP"]
    assert len(lidar) == CFG.scenes * CFG.samples * 10
    assert sum(not sd["is_key_frame"] for sd in lidar) == CFG.scenes * CFG.samples * 9
    for sd in lidar:
        # a sweep's sample is the nearest keyframe in time (as in nuScenes)
        sample = nusc.get("sample", sd["sample_token"])
        scene = nusc.get("scene", sample["scene_token"])
        first = nusc.get("sample", scene["first_sample_token"])["timestamp"]
        gaps = [abs(sd["timestamp"] - first - k * 500_000) for k in range(CFG.samples)]
        assert abs(sd["timestamp"] - sample["timestamp"]) == min(gaps)
        if sd["next"]:
            nxt = nusc.get("sample_data", sd["next"])
            assert nxt["timestamp"] - sd["timestamp"] == 50_000 and nxt["channel"] == "LIDAR_TOP"
    # annotations: prev/next within one instance, 0.5 s apart; attributes for every non-static class.
    for ann in nusc.sample_annotation:
        if ann["next"]:
            nxt = nusc.get("sample_annotation", ann["next"])
            assert nxt["instance_token"] == ann["instance_token"]
            dt = (
                nusc.get("sample", nxt["sample_token"])["timestamp"]
                - nusc.get("sample", ann["sample_token"])["timestamp"]
            )
            assert 0 < dt <= 1_500_000
        cat = ann["category_name"]
        assert bool(ann["attribute_tokens"]) == (
            cat not in ("movable_object.barrier", "movable_object.trafficcone")
        )
    splits = json.loads((dataset / DEFAULT_VERSION / "splits.json").read_text())
    assert splits == {"synthetic_train": ["scene-0000"], "synthetic_val": ["scene-0001", "scene-0002"]}


def test_ground_truth_as_predictions_scores_perfectly(dataset, tmp_path):
    reader = NuScenesReader(dataset, split="val", nsweeps=0, load_images=False)
    preds = {}
    for t in reader.sample_tokens:
        # the devkit drops GT boxes without lidar/radar points; submitted, they would be FPs
        d = reader.gt(t)
        k = d.num_lidar_pts > 0
        preds[t] = Detections(d.boxes[k], d.labels[k], d.scores[k], tuple(np.asarray(d.attributes)[k]))
    present = {CLASS_NAMES[i] for d in preds.values() for i in d.labels}
    per_class = {c: sum(int((d.labels == CLASS_ID[c]).sum()) for d in preds.values()) for c in CLASS_NAMES}
    assert gen.visible_class_counts(dataset)["val"] == per_class  # what `qd-perception sim` prints
    assert present == set(CLASS_NAMES), f"val lacks classes {set(CLASS_NAMES) - present}"
    m = evaluate(dataset, DEFAULT_VERSION, "val", preds, tmp_path)
    assert m.nds >= 0.99 and m.map >= 0.99, m.summary()
    assert all(m.class_ap[c] >= 0.99 for c in CLASS_NAMES), m.class_ap
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["nds"] == pytest.approx(m.nds)
    sub = json.loads((tmp_path / "results_nusc.json").read_text())
    assert "meta" in sub and set(sub["results"]) == set(reader.sample_tokens)
    # a wrong prediction must cost: drop every car -> car AP 0
    no_car = {
        t: Detections(d.boxes[d.labels != 0], d.labels[d.labels != 0], d.scores[d.labels != 0])
        for t, d in preds.items()
    }
    assert evaluate(dataset, DEFAULT_VERSION, "val", no_car, tmp_path / "b").class_ap["car"] == 0.0


def test_reader_gt_equals_world_annotations_in_ego(dataset, world_val):
    reader = NuScenesReader(dataset, split="val", nsweeps=1, load_images=False)
    assert len(reader) == 2 * CFG.samples
    for k, token in enumerate(reader.sample_tokens[: CFG.samples]):
        t = world_val.start_us + k * gen.KEYFRAME_PERIOD_US
        assert reader.timestamp(token) == t
        ann = world_val.annotations(t)
        ego2global = world_val.ego(t).ego2global
        np.testing.assert_allclose(reader.ego2global(token), ego2global, atol=1e-9)
        want = transform_boxes(ann.boxes, invert(ego2global))
        gt = reader.gt(token)
        assert len(gt) == len(ann)
        order = {_instance_token(VAL_SCENE, int(i)): j for j, i in enumerate(ann.instance_ids)}
        idx = np.array([order[str(i)] for i in gt.instance_ids])
        np.testing.assert_allclose(gt.boxes[:, :6], want[idx, :6], atol=1e-6, err_msg=f"keyframe {k}")
        np.testing.assert_allclose(wrap_angle(gt.boxes[:, 6] - want[idx, 6]), 0, atol=1e-6)
        assert [CLASS_NAMES[i] for i in gt.labels] == [ann.class_names[j] for j in idx]
        assert list(gt.attributes) == [ann.attributes[j] for j in idx]
        # velocities are finite differences of neighbouring annotations (as the devkit does):
        # they agree with the world's instantaneous velocities up to curvature/acceleration.
        speed_err = np.hypot(*(gt.boxes[:, 7:9] - want[idx, 7:9]).T)
        assert np.median(speed_err) < 0.2, speed_err


def test_lidar_points_lie_in_their_boxes(dataset, world_val):
    reader = NuScenesReader(dataset, split="val", nsweeps=1, load_images=False)
    token = reader.sample_tokens[1]
    t = reader.timestamp(token)
    sweep = world_val.lidar(t)
    frame = reader.frame(token)
    # reader: lidar -> ego with the written calibration == the rig's transform of the raw points
    np.testing.assert_allclose(
        frame.points[:, :3], apply(world_val.rig.lidar2ego(), sweep.points[:, :3]), atol=1e-4
    )
    assert np.all(frame.points[:, 4] == 0)
    gt = frame.gt
    inside = points_in_boxes(frame.points, gt.boxes, margin=0.05)
    checked = 0
    for j, inst in enumerate(gt.instance_ids):
        iid = next(i for i in np.unique(sweep.instance_ids) if _instance_token(VAL_SCENE, int(i)) == inst) \
            if gt.num_lidar_pts[j] else None  # fmt: skip
        if iid is None:
            continue
        mine = sweep.instance_ids == iid
        assert gt.num_lidar_pts[j] == mine.sum()
        assert inside[j, mine].mean() >= 0.99, (CLASS_NAMES[gt.labels[j]], inside[j, mine].mean())
        checked += 1
    assert checked >= 5


def test_multisweep_points_are_motion_compensated(dataset, world_val):
    reader = NuScenesReader(dataset, split="val", nsweeps=10, load_images=False)
    token = reader.sample_tokens[2]
    f = reader.frame(token)
    np.testing.assert_allclose(np.unique(f.points[:, 4]), np.arange(10) * 0.05, atol=1e-6)
    # the oldest sweep: lidar -> ego(t - 0.45 s) -> global -> ego(t), near-sensor returns removed
    t_old = reader.timestamp(token) - 450_000
    old = world_val.lidar(t_old)
    keep = np.linalg.norm(old.points[:, :2], axis=1) >= 1.0
    T = invert(world_val.ego(reader.timestamp(token)).ego2global) @ old.ego2global @ world_val.rig.lidar2ego()
    want = apply(T, old.points[keep, :3].astype(np.float64))
    got = f.points[np.isclose(f.points[:, 4], 0.45), :3]
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.linalg.norm(T[:3, 3] - world_val.rig.lidar2ego()[:3, 3]) > 0.1  # the ego did move


def test_box_corners_project_onto_the_objects_pixels(dataset, world_val):
    from qd_perception.eval.viz import project_boxes

    reader = NuScenesReader(dataset, split="val", nsweeps=0, load_images=True)
    token = reader.sample_tokens[0]
    frame = reader.frame(token)
    rendered = {c.camera: c for c in world_val.cameras(reader.timestamp(token))}
    ids = {
        str(inst): int(i)
        for i in world_val.annotations(reader.timestamp(token)).instance_ids
        for inst in [_instance_token(VAL_SCENE, int(i))]
    }
    checked = 0
    for cam in frame.cameras:
        assert cam.image.shape == (*CFG.resolution, 3)
        uv, ok = project_boxes(frame.gt.boxes, cam.intrinsics, cam.cam2ego)
        inst_img = rendered[cam.name].instance_ids
        for j in np.flatnonzero(ok):
            v, u = np.nonzero(inst_img == ids[str(frame.gt.instance_ids[j])])
            if len(u) < 20:
                continue
            lo, hi = uv[j].min(0) - 1.5, uv[j].max(0) + 1.5
            inside = (u + 0.5 >= lo[0]) & (u + 0.5 <= hi[0]) & (v + 0.5 >= lo[1]) & (v + 0.5 <= hi[1])
            assert inside.mean() >= 0.98, (cam.name, CLASS_NAMES[frame.gt.labels[j]], inside.mean())
            checked += 1
    assert checked >= 3


def test_bag_topics_types_stamps_and_frames(dataset):
    from rosbags.rosbag2 import Reader

    bag = dataset / "bags" / gen.scene_name(VAL_SCENE)
    reader = NuScenesReader(dataset, split="val", nsweeps=0, load_images=False)
    keyframes = {reader.timestamp(t): t for t in reader.sample_tokens}
    cams = reader.cameras
    want_types = {
        rm.LIDAR_TOPIC: rm.POINTCLOUD2,
        rm.ODOM_TOPIC: rm.ODOMETRY,
        rm.GT_TOPIC: rm.DETECTION3D_ARRAY,
    }
    for c in cams:
        want_types[rm.image_topic(c)] = rm.IMAGE
        want_types[rm.camera_info_topic(c)] = rm.CAMERA_INFO
    duration = CFG.samples * 0.5
    with Reader(bag) as r:
        assert {c.topic: c.msgtype for c in r.connections} == want_types
        counts = {c.topic: c.msgcount for c in r.connections}
        assert counts[rm.LIDAR_TOPIC] == counts[rm.GT_TOPIC] == round(duration * 20)
        assert counts[rm.ODOM_TOPIC] == round(duration * 50)
        assert counts[rm.image_topic("CAM_FRONT")] == round(duration * 12)
        last, gt_checked = -1, 0
        for conn, t_ns, raw in r.messages():
            msg = rm.deserialize(raw, conn.msgtype)
            stamp = rm.stamp_us(msg.header)
            assert stamp * 1000 == t_ns and t_ns >= last
            last = t_ns
            if conn.topic == rm.LIDAR_TOPIC:
                assert msg.header.frame_id == rm.LIDAR_FRAME
                pts = rm.pointcloud2_to_array(msg)
                assert len(pts) == msg.width > 1000 and pts["ring"].max() < 32
            elif conn.topic == rm.ODOM_TOPIC:
                assert (msg.header.frame_id, msg.child_frame_id) == (rm.MAP_FRAME, rm.EGO_FRAME)
            elif conn.msgtype == rm.IMAGE:
                assert msg.encoding == "rgb8" and (msg.height, msg.width) == CFG.resolution
                assert msg.header.frame_id == rm.camera_frame(conn.topic.split("/")[3].upper())
            elif conn.msgtype == rm.CAMERA_INFO:
                cam = conn.topic.split("/")[3].upper()
                assert msg.header.frame_id == rm.camera_frame(cam)
                np.testing.assert_allclose(msg.k.reshape(3, 3), reader._by_token["calibrated_sensor"][
                    reader._by_token["sample_data"][reader._key_data[reader.sample_tokens[0]][cam]][
                        "calibrated_sensor_token"]]["camera_intrinsic"])  # fmt: skip
            elif conn.topic == rm.GT_TOPIC:
                assert msg.header.frame_id == rm.EGO_FRAME
                if stamp in keyframes:
                    got = detections_from_msg(msg)
                    boxes, labels = got.boxes, got.labels
                    gt = reader.gt(keyframes[stamp])
                    row = {str(tok): j for j, tok in enumerate(gt.instance_ids)}
                    o = [row[_instance_token(VAL_SCENE, int(d.instance_id))] for d in msg.detections]
                    assert sorted(o) == list(range(len(gt)))
                    np.testing.assert_allclose(boxes[:, :6], gt.boxes[o, :6], atol=1e-6)
                    assert list(labels) == list(gt.labels[o])
                    assert [d.num_lidar_points for d in msg.detections] == list(gt.num_lidar_pts[o])
                    assert [d.class_name for d in msg.detections] == [CLASS_NAMES[i] for i in labels]
                    gt_checked += 1
        assert gt_checked == CFG.samples  # the bag's keyframe stamps are this scene's samples


def test_cli_same_seed_same_bytes_and_preview(dataset, tmp_path):
    from qd_perception.cli import main

    out = tmp_path / "again"
    argv = ["sim", "--out", str(out), "--scenes", "3", "--samples", "3", "--seed", str(CFG.seed)]
    argv += ["--bag", "--resolution", "48x84", "--workers", "1", "--val-fraction", "0.5"]
    assert main(argv) == 0
    a, b = _tree_hash(dataset), _tree_hash(out)
    assert a.keys() == b.keys() and a == b
    assert main(argv) == 2  # refuses to overwrite an existing set
    png = tmp_path / "p.png"
    assert main(["sim-preview", str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # predictions from a result file: the submission of the GT comes back equal in the ego frame
    from qd_perception.eval.nuscenes_eval import atomic_write_json, load_submission, to_submission

    reader = NuScenesReader(out, split="val", nsweeps=0, load_images=False)
    token = reader.sample_tokens[0]
    atomic_write_json(tmp_path / "r.json", to_submission(reader, {token: reader.gt(token)}))
    back = load_submission(tmp_path / "r.json", {token: reader.ego2global(token)})[token]
    np.testing.assert_allclose(back.boxes, reader.gt(token).boxes, atol=1e-6)
    argv = ["sim-preview", str(out), "--sample", token, "--results", str(tmp_path / "r.json")]
    assert main([*argv, "--out", str(tmp_path / "q.png")]) == 0


def test_errors_are_clear(dataset, tmp_path):
    with pytest.raises(DatasetError, match="no nuScenes tables"):
        NuScenesReader(tmp_path, split="val")
    with pytest.raises(DatasetError, match="unknown split"):
        NuScenesReader(dataset, split="nope")
    reader = NuScenesReader(dataset, split="val", nsweeps=0, load_images=False)
    with pytest.raises(ValueError, match="no prediction"):
        evaluate(dataset, DEFAULT_VERSION, "val", {reader.sample_tokens[0]: Detections.empty()}, tmp_path)
    with pytest.raises(ValueError, match="resolution"):
        gen.GenerateConfig(resolution=(4, 4))
    assert CLASS_ID["car"] == 0


def test_schedule_rates(world_val):
    s = gen.make_schedule(world_val, CFG.samples, all_cameras=True, odom_rate_hz=50.0)
    t0 = world_val.start_us
    assert s.keyframes == (t0, t0 + 500_000, t0 + 1_000_000)
    assert len(s.lidar) == 30 and set(np.diff(s.lidar)) == {50_000} and set(s.keyframes) <= set(s.lidar)
    assert len(s.cameras) == 18 and set(s.keyframes) <= set(s.cameras)
    assert set(np.diff(s.cameras)) <= {83_333, 83_334}  # 12 Hz on integer microseconds
    assert len(s.odom) == 75
    only_key = gen.make_schedule(world_val, CFG.samples, all_cameras=False, odom_rate_hz=50.0)
    assert only_key.cameras == s.keyframes
    # camera training sets: the lidar only at the keyframes (what the devkit and depth need)
    key_lidar = gen.make_schedule(world_val, CFG.samples, False, 50.0, lidar_sweeps=False)
    assert key_lidar.lidar == s.keyframes
    with pytest.raises(ValueError, match="writes no bag"):
        gen.GenerateConfig(lidar_sweeps="keyframes", bag=True)


def test_bag_cameras_keyframes_or_none(tmp_path):
    from rosbags.rosbag2 import Reader

    for mode, n_images in (("keyframes", 2), ("none", 0)):
        cfg = gen.GenerateConfig(
            scenes=1, samples=2, seed=1, resolution=(16, 28), bag=True, bag_cameras=mode, workers=1
        )
        out = gen.generate(cfg, tmp_path / mode, show_progress=False)
        with Reader(out / "bags" / "scene-0000") as r:
            counts = {c.topic: c.msgcount for c in r.connections}
        assert counts.get(rm.image_topic("CAM_BACK"), 0) == n_images
        assert counts[rm.LIDAR_TOPIC] == 20 and counts[rm.GT_TOPIC] == 20
        assert len(list((out / "samples" / "CAM_BACK").iterdir())) == 2  # nuScenes keyframes regardless


class _FailingScene:
    """The real world, whose lidar fails after 0.2 s (a crash in the middle of a scene)."""

    def __init__(self, scene) -> None:
        self._scene = scene

    def __getattr__(self, name):
        return getattr(self._scene, name)

    def lidar(self, t_us: int):
        if t_us > self._scene.start_us + 200_000:
            raise RuntimeError("sensor failure")
        return self._scene.lidar(t_us)


def _failing_factory(cfg, index):
    return _FailingScene(gen._world_scene(cfg, index))


def test_failed_run_leaves_no_partial_bag_and_can_be_rerun(tmp_path):
    cfg = gen.GenerateConfig(scenes=1, samples=1, seed=2, resolution=(16, 28), bag=True, bag_cameras="none")
    with pytest.raises(RuntimeError, match="sensor failure"):
        gen.generate(cfg, tmp_path, factory=_failing_factory, show_progress=False)
    assert not (tmp_path / "bags").exists() and not (tmp_path / DEFAULT_VERSION).exists()
    gen.generate(cfg, tmp_path, show_progress=False)
    assert (tmp_path / "bags" / "scene-0000" / "metadata.yaml").is_file()
    assert len(NuScenesReader(tmp_path, split="all", nsweeps=1, load_images=False)) == 1
