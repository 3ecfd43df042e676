"""bev_detector as a real process with one camera falling silent while five keep streaming
(``missing_cameras.*``, docs/ros.md): ``degrade`` keeps publishing detections, every one flagged
in the diagnostics; ``wait`` publishes nothing and says why (ERROR, the camera named); both
resume on their own when the camera is back."""

from __future__ import annotations

import time

import pytest
from ros_harness import NodeProcess, diag_values
from test_detector_node import _stamp, image_msg

from qd_perception.ros.node_config import DEFAULT_CAMERAS

MS = 1_000_000
SILENT = "CAM_BACK"
HW = (128, 224)


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from qd_perception.models.bevformer import BEVFormer, preset
    from qd_perception.models.bevformer.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("mc") / "nano.pt", BEVFormer(preset("nano")).eval())


class CameraRig:
    """Publishes camera sets to one bev_detector process and records its outputs."""

    def __init__(self, driver, proc: NodeProcess, name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from qd_perception.msg import Detection3DArray

        self.d, self.proc, self.name = driver, proc, name
        self.dets = driver.record(Detection3DArray, f"/{name}/output/detections")
        self.diags = driver.record(DiagnosticArray, f"/{name}/output/diagnostics")
        self.t = 100 * 10**9
        assert proc.wait_output("detector 'bev'", 90), proc.output()[-3000:]
        for c in DEFAULT_CAMERAS:  # best-effort samples sent before the match are lost
            driver.publish(self.topic(c), image_msg(1, c, hw=HW))
            assert driver.wait_for_subscribers(self.topic(c))
        assert driver.wait_for_publishers(f"/{name}/output/detections")

    def topic(self, cam: str) -> str:
        return f"/{self.name}/cams/{cam.lower()}/image"

    def frame(self, cams) -> int:
        """One set 100 ms after the last (cameras 1 ms apart); returns its reference stamp."""
        self.t += 100 * MS
        for i, c in enumerate(DEFAULT_CAMERAS):
            if c in cams:
                self.d.publish(self.topic(c), image_msg(self.t + i * MS, c, hw=HW))
        return self.t

    def stream_until(self, cond, cams, stamps: list[int], timeout: float = 40.0) -> bool:
        """Publish sets of ``cams`` (a new stamp each, recorded in ``stamps``) until ``cond``;
        best-effort QoS may drop any one of them, so keep sending instead of waiting for one."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            stamps.append(self.frame(cams))
            if self.d.spin_until(cond, 0.1):
                return True
        return cond()

    def diag(self) -> dict[str, str]:
        return diag_values(self.diags[-1]) if self.diags else {}

    def level(self) -> bytes | None:
        return self.diags[-1].status[0].level if self.diags else None

    def outputs(self, stamps: list[int]) -> list:
        got = set(stamps)
        return [m for m in self.dets if _stamp(m) in got]


def _start(driver, tmp_path, ckpt, mode: str) -> tuple[CameraRig, NodeProcess]:
    name = f"bev_{mode}"
    args = [
        "-r", f"__node:={name}", "-p", f"detector.model_path:={ckpt}",
        "-p", "detector.score_threshold:=0.0", "-p", "use_odometry:=false",
        "-p", "diagnostics_period_s:=0.3", "-p", f"missing_cameras.mode:={mode}",
        "-p", "missing_cameras.timeout_s:=0.4",
    ]  # fmt: skip
    for c in DEFAULT_CAMERAS:
        args += ["-r", f"~/input/{c.lower()}/image:=/{name}/cams/{c.lower()}/image"]
    proc = NodeProcess.module("qd_perception.ros.nodes.bev_detector", args, tmp_path / f"{name}.log")
    return CameraRig(driver, proc, name), proc


FIVE = tuple(c for c in DEFAULT_CAMERAS if c != SILENT)


def test_degrade_keeps_detecting_and_flags_every_output(driver, tmp_path, nano_checkpoint):
    from diagnostic_msgs.msg import DiagnosticStatus

    rig, proc = _start(driver, tmp_path, nano_checkpoint, "degrade")
    try:
        full: list[int] = []
        assert rig.stream_until(lambda: rig.outputs(full), DEFAULT_CAMERAS, full), proc.output()[-3000:]
        assert driver.spin_until(lambda: rig.diag().get("degraded") == "0", 10), rig.diag()
        assert rig.diag()["missing_cameras.mode"] == "degrade" and rig.diag()["missing_cameras"] == ""

        five: list[int] = []

        def degraded() -> bool:
            d = rig.diag()
            return (
                len(rig.outputs(five)) >= 3
                and d.get("degraded") == "1"
                and d.get("degraded.cameras") == SILENT
                and d.get("missing_cameras") == SILENT
                and int(d.get("degraded_frames", 0)) >= 3
            )

        assert rig.stream_until(degraded, FIVE, five), (rig.diag(), proc.output()[-3000:])
        assert rig.level() == DiagnosticStatus.WARN
        assert rig.diags[-1].status[0].message.startswith(f"degraded: detections without {SILENT}")
        # every output from the first degraded one on is counted as degraded
        since = rig.diag()["degraded.since"]
        sec, nsec = (int(x) for x in since.split("."))
        flagged = [m for m in rig.outputs(five) if _stamp(m) >= sec * 10**9 + nsec]
        assert 1 <= len(flagged) <= int(rig.diag()["degraded_frames"])
        assert int(rig.diag()[f"sync.{SILENT}.matched"]) > 0  # matched while it streamed
        assert proc.wait_output(f"camera(s) ['{SILENT}'] missing", 5), proc.output()[-3000:]
        assert "(missing_cameras.mode: degrade)" in proc.output()
        assert proc.wait_output(f"without camera(s) ['{SILENT}']", 5)  # the throttled per-output line

        back: list[int] = []

        def recovered() -> bool:
            d = rig.diag()
            return bool(rig.outputs(back)) and d.get("degraded") == "0" and d.get("missing_cameras") == ""

        assert rig.stream_until(recovered, DEFAULT_CAMERAS, back), (rig.diag(), proc.output()[-3000:])
        assert rig.diag()["degraded.since"] == ""
        assert proc.wait_output("every camera is back", 5)
        assert int(rig.diag()["detector_errors"]) == 0
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()[-2000:]


def test_wait_publishes_nothing_and_names_the_missing_camera(driver, tmp_path, nano_checkpoint):
    from diagnostic_msgs.msg import DiagnosticStatus

    rig, proc = _start(driver, tmp_path, nano_checkpoint, "wait")
    try:
        full: list[int] = []
        assert rig.stream_until(lambda: rig.outputs(full), DEFAULT_CAMERAS, full), proc.output()[-3000:]

        five: list[int] = []

        def waiting() -> bool:
            return rig.level() == DiagnosticStatus.ERROR and rig.diag().get("missing_cameras") == SILENT

        assert rig.stream_until(waiting, FIVE, five), (rig.diag(), proc.output()[-3000:])
        message = rig.diags[-1].status[0].message
        assert message.startswith(f"no output: waiting for missing camera(s) {SILENT}")
        sets = int(rig.diag()["sync.sets"])  # (frames_out may still grow: a full set in the worker)
        # five more sets the node has received (its counters say so) still give nothing
        received = int(rig.diag()["sync.CAM_FRONT.received"])
        more: list[int] = []
        assert rig.stream_until(
            lambda: int(rig.diag().get("sync.CAM_FRONT.received", 0)) >= received + 5, FIVE, more
        ), rig.diag()
        assert rig.outputs(five + more) == []
        assert int(rig.diag()["sync.sets"]) == sets and rig.diag()["degraded_frames"] == "0"
        assert rig.level() == DiagnosticStatus.ERROR
        assert proc.wait_output(f"camera(s) ['{SILENT}'] missing", 5), proc.output()[-3000:]
        assert "no output until they are back (missing_cameras.mode: wait)" in proc.output()

        back: list[int] = []
        assert rig.stream_until(
            lambda: bool(rig.outputs(back)) and rig.diag().get("missing_cameras") == "",
            DEFAULT_CAMERAS,
            back,
        ), (rig.diag(), proc.output()[-3000:])
        assert rig.level() != DiagnosticStatus.ERROR
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()[-2000:]


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"missing_cameras": {"mode": "skip"}}, "missing_cameras.mode: 'skip' is not one of"),
        ({"missing_cameras": {"timeout_s": 0.02}}, "must lie between sync.slop_s"),
        ({"missing_cameras": {"timeout_s": 1.5}}, "sync.reset_after_jump_s (1.0 s: a clock jump)"),
        ({"missing_cameras": {"max_missing": 0}}, "max_missing must be >= 1"),
        ({"missing_cameras": {"mode": "degrade", "max_missing": 6}}, "must leave a camera: there are 6"),
    ],
)
def test_missing_cameras_parameters_are_validated(params, expected):
    from qd_perception.config import ConfigError, from_dict
    from qd_perception.ros.node_config import DetectorNodeConfig

    with pytest.raises(ConfigError) as e:
        from_dict(DetectorNodeConfig, params, where="bev_detector")
    assert expected in str(e.value)
