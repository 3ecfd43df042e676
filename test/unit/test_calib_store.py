"""Calibration store: diversity-preserving selection, eviction, atomic files, resume, read-back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qd_perception.data import calib_store as cs
from qd_perception.data.calib_store import (
    LAYOUT_NAME,
    CalibrationSet,
    CalibrationStore,
    CalibStoreConfig,
    input_layout,
    scene_features,
)
from qd_perception.data.types import CameraInput, Detections, Frame


def make_frame(i: int, kind: str, rng: np.random.Generator, with_image: bool = False) -> Frame:
    """kind: 'city' (dense, near, bright, cars), 'highway' (sparse, far), 'night' (dark image)."""
    kinds = {"city": (3000, 25.0, 170), "highway": (300, 70.0, 160), "night": (2500, 25.0, 20)}
    n, rmax, bright = kinds[kind]
    n = int(n * rng.uniform(0.9, 1.1))
    r = rng.uniform(1.0, rmax, n)
    a = rng.uniform(-np.pi, np.pi, n)
    pts = np.stack(
        [r * np.cos(a), r * np.sin(a), rng.normal(0, 0.5, n), rng.uniform(0, 255, n), np.zeros(n)], 1
    ).astype(np.float32)
    cams = ()
    if with_image or kind == "night":
        img = np.clip(rng.normal(bright, 10, (16, 24, 3)), 0, 255).astype(np.uint8)
        cams = (CameraInput("CAM_FRONT", img, np.eye(3), np.eye(4), 1000 * i),)
    labels = np.array([0, 0, 8] if kind != "highway" else [1, 1], np.int64)
    gt = Detections(np.zeros((len(labels), 9)), labels, np.ones(len(labels), np.float32))
    return Frame(f"tok{i}", "scene", 100_000 * i, np.eye(4), pts, cams, None, gt)


def stream(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["city", "highway", "night"], size=n, p=[0.9, 0.05, 0.05])
    # Make sure the rare conditions also occur after the store is full.
    kinds[[i for i in (40, 120) if i < n]] = "highway"
    kinds[[i for i in (50, 150) if i < n]] = "night"
    return [(k, make_frame(i, k, rng)) for i, k in enumerate(kinds)]


def min_pairwise(z: np.ndarray) -> float:
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def test_selection_keeps_rare_conditions_and_diversity_grows(tmp_path):
    frames = stream(200)
    store = CalibrationStore(tmp_path / "c", CalibStoreConfig(capacity=6))
    kept_kind = {}
    first_min = None
    for k, f in frames:
        res = store.offer(f)
        if res.stored:
            kept_kind[f.token] = k
        if len(store) == 6 and first_min is None:
            first_min = min_pairwise(store.standardized_features())
    members = CalibrationSet(tmp_path / "c")
    kinds = {kept_kind[fr.token] for fr in members}
    # 90 % of the drive is city; a reservoir of 6 would usually hold no highway or night frame.
    assert kinds == {"city", "highway", "night"}
    assert len(store) == len(members) == 6
    assert min_pairwise(store.standardized_features()) >= first_min * 0.5
    assert len(list((tmp_path / "c" / "frames").iterdir())) == 6  # evicted files are deleted


def test_diverse_subset_for_a_shorter_ptq_run(tmp_path):
    rng = np.random.default_rng(7)
    store = CalibrationStore(tmp_path, CalibStoreConfig(capacity=20))
    kinds = ["city"] * 17 + ["highway", "night", "city"]
    for i, k in enumerate(kinds):
        store.offer(make_frame(i, k, rng))
    cset = CalibrationSet(tmp_path)
    assert cset.features.shape == (20, len(cs.FEATURE_NAMES))
    idx = cset.diverse_indices(3)
    assert len(idx) == 3 and idx == sorted(idx)
    # The first three frames are all city; a diverse three includes both rare conditions.
    assert {cset[i].token for i in idx} >= {"tok17", "tok18"}
    assert cset.diverse_indices(50) == list(range(20)) and cset.diverse_indices(0) == []


def test_eviction_removes_the_redundant_member(tmp_path):
    rng = np.random.default_rng(1)
    store = CalibrationStore(tmp_path, CalibStoreConfig(capacity=3))
    a = [make_frame(i, "city", rng) for i in range(3)]
    for f in a:
        assert store.offer(f).stored
    # A highway frame is far from three city twins: it replaces one of them.
    res = store.offer(make_frame(3, "highway", rng))
    assert res.stored and res.evicted_id in (0, 1, 2)
    assert {fr.token for fr in CalibrationSet(tmp_path)} >= {"tok3"}


def test_sampling_rate_and_min_interval(tmp_path):
    rng = np.random.default_rng(2)
    store = CalibrationStore(tmp_path, CalibStoreConfig(capacity=100, sample_every=3))
    for i in range(10):
        store.offer(make_frame(i, "city", rng))
    assert store.counters == {"offered": 10, "considered": 4, "stored": 4, "invalid": 0}
    store2 = CalibrationStore(tmp_path / "b", CalibStoreConfig(capacity=100, min_interval_s=0.25))
    for i in range(10):  # frames 0.1 s apart: keep every third
        store2.offer(make_frame(i, "city", rng))
    assert [f.timestamp_us for f in CalibrationSet(tmp_path / "b")] == [0, 300_000, 600_000, 900_000]


def test_round_trip_frame_content(tmp_path):
    rng = np.random.default_rng(3)
    f = make_frame(5, "city", rng, with_image=True)
    store = CalibrationStore(tmp_path, CalibStoreConfig(capacity=4))
    store.offer(f)
    g = CalibrationSet(tmp_path)[0]
    assert g.token == f.token and g.timestamp_us == f.timestamp_us
    np.testing.assert_array_equal(g.points, f.points)
    assert g.points.shape[1] == 5 and g.points.dtype == np.float32
    np.testing.assert_array_equal(g.cameras[0].image, f.cameras[0].image)
    assert g.cameras[0].name == "CAM_FRONT"
    np.testing.assert_array_equal(g.gt.labels, f.gt.labels)
    # images can be left out (lidar-only PTQ)
    store2 = CalibrationStore(tmp_path / "noimg", CalibStoreConfig(store_images=False))
    store2.offer(f)
    assert CalibrationSet(tmp_path / "noimg")[0].cameras == ()


def test_failed_write_loses_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    store = CalibrationStore(tmp_path, CalibStoreConfig(capacity=4))
    store.offer(make_frame(0, "city", rng))
    index_before = (tmp_path / "index.json").read_text()

    def boom(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cs.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        store.offer(make_frame(1, "night", rng))
    monkeypatch.undo()
    assert (tmp_path / "index.json").read_text() == index_before
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["00000000.npz"]
    assert len(CalibrationSet(tmp_path)) == 1


def test_resume_after_restart(tmp_path):
    frames = stream(60, seed=5)
    cfg = CalibStoreConfig(capacity=5)
    store = CalibrationStore(tmp_path, cfg)
    for _, f in frames[:30]:
        store.offer(f)
    store.flush()  # counters of rejected offers are otherwise written at most once a second
    ids, counters = store.ids, store.counters
    # Simulate a crash that left an unlisted frame, a temp file and a vanished member.
    (tmp_path / "frames" / "99999999.npz").write_bytes(b"orphan")
    (tmp_path / "frames" / ".00000099.npz.k3j_x.tmp").write_bytes(b"tmp")  # as _atomic_write_bytes names it
    (tmp_path / "frames" / "notes.txt").write_text("not the store's")  # never deleted
    store2 = CalibrationStore.open(tmp_path, cfg)
    assert store2.ids == ids and store2.counters == counters
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"{i:08d}.npz" for i in sorted(ids)] + ["notes.txt"]
    (tmp_path / "frames" / "notes.txt").unlink()
    (tmp_path / "frames" / f"{ids[0]:08d}.npz").unlink()
    store3 = CalibrationStore.open(tmp_path, cfg)
    assert len(store3) == 4
    for _, f in frames[30:]:
        store3.offer(f)
    assert len(store3) == 5 and store3.counters["offered"] == 60
    assert max(store3.ids) >= max(ids)  # ids keep increasing: no file name reuse
    # A smaller capacity on reopen shrinks the set by the same rule.
    assert len(CalibrationStore.open(tmp_path, CalibStoreConfig(capacity=2))) == 2
    assert len(CalibrationSet(tmp_path)) == 2


def test_bad_index_is_a_clear_error(tmp_path):
    CalibrationStore(tmp_path).offer(make_frame(0, "city", np.random.default_rng(0)))
    data = json.loads((tmp_path / "index.json").read_text())
    data["version"] = 99
    (tmp_path / "index.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unsupported version"):
        CalibrationSet(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a calibration set"):
        CalibrationSet(tmp_path / "nothing")


def test_features_reflect_conditions():
    rng = np.random.default_rng(6)
    city, hw, night = (scene_features(make_frame(0, k, rng)) for k in ("city", "highway", "night"))
    names = cs.FEATURE_NAMES
    assert city[names.index("log_points")] > hw[names.index("log_points")]
    assert hw[names.index("frac_far_40m")] > city[names.index("frac_far_40m")]
    assert night[names.index("image_brightness")] < 0.2
    assert city[names.index("class_car")] == pytest.approx(2 / 3)
    assert hw[names.index("class_truck")] == 1.0
    with pytest.raises(ValueError):
        CalibStoreConfig(capacity=0)


def test_calibrate_command_on_a_synthetic_data_set(tmp_path):
    """``qd-perception calibrate`` on a tiny data set from the real world, through the CLI."""
    from qd_perception.cli import main
    from qd_perception.sim.generate import GenerateConfig, generate
    from qd_perception.train.quantize_lidar import calibration_frames

    generate(
        GenerateConfig(scenes=1, samples=4, resolution=(32, 64), workers=1),
        tmp_path / "d",
        show_progress=False,
    )
    out = tmp_path / "calib"
    argv = ["calibrate", "--data", str(tmp_path / "d"), "--split", "all", "--out", str(out), "--frames", "3"]
    assert main([*argv, "--nsweeps", "2"]) == 0
    cs = CalibrationSet(out)
    assert len(cs) == 3
    f = cs[0]
    assert f.points.shape[1] == 5 and len(f.cameras) == 6 and f.gt is not None
    assert (out / "selection.png").stat().st_size > 5000
    # Re-running resumes the same set (4 more offers, still 3 members, counters carried on).
    assert main([*argv, "--nsweeps", "2"]) == 0
    assert json.loads((out / "index.json").read_text())["offered"] == 8
    assert main(["calibrate", "--data", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    # the same layout record as the calibration node's: what `quantize` checks against the model
    layout = json.loads((out / LAYOUT_NAME).read_text())
    assert layout == input_layout(2, ("lidar", "cameras"), [c.name for c in f.cameras])
    with pytest.raises(ValueError, match="recorded with 2 merged sweeps per frame but the model reads 5"):
        calibration_frames(out, 5)
    # more frames of another sweep count are not mixed into it
    assert main([*argv, "--nsweeps", "5"]) == 2
    assert json.loads((out / "index.json").read_text())["offered"] == 8


def test_calibration_recorder_param_file_matches_its_schema():
    """config/calibration_recorder.param.yaml is exactly the node's defaults (no drift, no typo)."""
    from pathlib import Path

    import yaml

    from qd_perception.config import from_dict
    from qd_perception.ros.calibration import NODE_NAME, CalibrationRecorderConfig, ptq_argv
    from qd_perception.ros.params import nest

    root = Path(__file__).resolve().parents[2]
    flat = yaml.safe_load((root / "config" / "calibration_recorder.param.yaml").read_text())[NODE_NAME][
        "ros__parameters"
    ]
    cfg = from_dict(CalibrationRecorderConfig, nest(flat, CalibrationRecorderConfig))
    assert cfg == CalibrationRecorderConfig()
    argv = ptq_argv(CalibrationRecorderConfig(out_dir="/c", ptq_model="/m.pt"))
    assert argv[3:5] == ["quantize", "lidar"] and "/c" in argv and "/m.pt" in argv  # after {python} -m
    with pytest.raises(ValueError, match="min_frames"):
        CalibrationRecorderConfig(min_frames=500)


def test_foreign_directory_refused_and_untouched(tmp_path):
    """A mistyped out_dir (a non-empty directory that is not a calibration set) is refused
    before anything is written or deleted there."""
    other = tmp_path / "dataset"
    (other / "frames").mkdir(parents=True)
    (other / "frames" / "00000001.npz").write_bytes(b"someone else's")
    (other / "readme.md").write_text("x")
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    with pytest.raises(ValueError, match="not a calibration set"):
        CalibrationStore.open(other)
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before
    # a new store in an empty (or missing) directory writes its marker at once
    CalibrationStore.open(tmp_path / "new")
    assert (tmp_path / "new" / "index.json").is_file()
    assert len(CalibrationStore.open(tmp_path / "new")) == 0


def test_invalid_frames_refused_on_offer_and_on_load(tmp_path):
    rng = np.random.default_rng(4)
    store = CalibrationStore(tmp_path, CalibStoreConfig(capacity=10))
    bad = make_frame(0, "city", rng)
    pts = bad.points.copy()
    pts[:3, 0] = 8.8e29
    res = store.offer(dataclasses.replace(bad, points=pts))
    assert not res.stored and "beyond" in res.reason and store.counters["invalid"] == 1
    pts[:3, 0] = np.nan
    assert not store.offer(dataclasses.replace(bad, points=pts)).stored
    assert store.offer(make_frame(1, "city", rng)).stored
    # a poisoned file already in a set (recorded before the checks): a clear error naming it
    path = tmp_path / "frames" / f"{store.ids[0]:08d}.npz"
    cs.save_frame(path, dataclasses.replace(bad, points=pts))
    with pytest.raises(ValueError, match=f"{path.name}: points are not all finite"):
        CalibrationSet(tmp_path)[0]


def test_layout_record_refuses_mixing_and_reads_older_records(tmp_path):
    from qd_perception.config import ConfigError

    five = input_layout(5, ("lidar",))
    cs.check_and_write_layout(tmp_path, five, stored=0)
    cs.check_and_write_layout(tmp_path, five, stored=3)  # same layout: resumed
    with pytest.raises(ConfigError, match=r"max_sweeps: 5 stored, 1 now"):
        cs.check_and_write_layout(tmp_path, input_layout(1, ("lidar",)), stored=3)
    # a record of an older writer (no cameras key) is compared on what it has
    (tmp_path / LAYOUT_NAME).write_text(json.dumps({"max_sweeps": 5, "modalities": ["lidar"]}))
    cs.check_and_write_layout(tmp_path, five, stored=3)
    assert json.loads((tmp_path / LAYOUT_NAME).read_text()) == five
