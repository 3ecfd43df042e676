"""The calibration recorder's parameters and ROS-free parts (pure: importable without ROS).

:class:`CalibrationRecorderConfig` (the node's parameters, ``config/calibration_recorder.param.yaml``),
the check that the model to quantize reads what the node stores (:func:`check_ptq_model`), the
set's layout record (``recorder.json``), the trigger's command line and the PTQ subprocess
(:class:`PtqRunner`). The node over them: :mod:`qd_perception.ros.nodes.calibration_recorder`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qd_perception.config import ConfigError
from qd_perception.data.calib_store import POINT_FEATURES, CalibStoreConfig, input_layout
from qd_perception.ros.frontend import InputChecks
from qd_perception.ros.node_config import DEFAULT_CAMERAS
from qd_perception.ros.processes import stop_process
from qd_perception.runtime.sweeps import SweepConfig
from qd_perception.sync.approximate_time import SyncConfig

NODE_NAME = "calibration_recorder"
ODOM = "odom"
#: The FP32 model the default trigger quantizes: the shipped pillar CenterPoint (5 sweeps).
DEFAULT_PTQ_MODEL = "weights/centerpoint_pillar_cpu.pt"


@dataclass(frozen=True)
class CalibrationRecorderConfig:
    """Parameters of ``calibration_recorder`` (dotted names, e.g. ``store.capacity``).

    out_dir: the calibration set directory (``qd-perception quantize ... --calib out_dir``).
    modalities: inputs a frame needs: "lidar" and/or "cameras" (images are stored when
        ``store.store_images``).
    input_checks: the detector nodes' message checks (:class:`~qd_perception.ros.frontend.InputChecks`).
    detections_wait_s: how long a frame waits for the detector output with its stamp (object mix).
    sweeps: lidar sweeps merged per frame; ``max_sweeps`` must equal ``ptq_model``'s nsweeps.
    min_frames: fewest stored frames for which ``~/run_ptq`` starts the command.
    ptq_command: argument list run by the trigger; ``{calib_dir}`` becomes ``out_dir``,
        ``{model}`` the resolved ``ptq_model`` and ``{python}`` this node's Python interpreter.
    ptq_model: the FP32 checkpoint to quantize (``train lidar`` output) for ``{model}``; relative
        paths resolve like the detector's ``model_path`` (as given, else the package share dir).
    ptq_niceness: added to the PTQ process's nice value (0..19) so the detectors keep the CPU.
    auto_trigger: run ``ptq_command`` once, when the set first becomes full.
    """

    out_dir: str = ".cache/calibration"
    store: CalibStoreConfig = field(
        default_factory=lambda: CalibStoreConfig(capacity=128, sample_every=5, store_images=False)
    )
    modalities: tuple[str, ...] = ("lidar",)
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    rig: str = "nuscenes_like"
    frame_id: str = "base_link"
    lidar_frame: str = "lidar_top"
    sync: SyncConfig = field(default_factory=lambda: SyncConfig(slop_s=0.05, queue_size=10))
    sweeps: SweepConfig = field(default_factory=lambda: SweepConfig(max_sweeps=5))
    input_checks: InputChecks = field(default_factory=InputChecks)
    use_odometry: bool = True
    detections_wait_s: float = 0.5
    min_frames: int = 16
    ptq_command: tuple[str, ...] = (
        "{python}",
        "-m",
        "qd_perception.cli",
        "quantize",
        "lidar",
        "--model",
        "{model}",
        "--calib",
        "{calib_dir}",
        "--method",
        "lidar_ptq",
        "--bits",
        "w8a8",
        "--out",
        "{calib_dir}/lidar_int8",
    )
    ptq_model: str = DEFAULT_PTQ_MODEL
    ptq_niceness: int = 10
    auto_trigger: bool = False
    status_period_s: float = 1.0

    def __post_init__(self) -> None:
        bad = sorted(set(self.modalities) - {"lidar", "cameras"})
        if bad or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of ['lidar', 'cameras'], got {bad}")
        if not 1 <= self.min_frames <= self.store.capacity:
            raise ValueError(
                f"min_frames must be in [1, store.capacity={self.store.capacity}], got {self.min_frames}"
            )
        if not self.ptq_command:
            raise ValueError("ptq_command must not be empty")
        if self.detections_wait_s < 0 or self.status_period_s <= 0:
            raise ValueError("detections_wait_s must be >= 0 and status_period_s > 0")
        if not 0 <= self.ptq_niceness <= 19:
            raise ValueError(f"ptq_niceness must be in [0, 19], got {self.ptq_niceness}")
        if self.sweeps.max_sweeps > 1 and not self.use_odometry and "lidar" in self.modalities:
            raise ValueError(
                f"sweeps.max_sweeps: {self.sweeps.max_sweeps} needs use_odometry: true (older sweeps are "
                "motion-compensated with the ego poses; without them no frame would be complete)"
            )

    @property
    def uses_model(self) -> bool:
        return any("{model}" in a for a in self.ptq_command)


def ptq_argv(cfg: CalibrationRecorderConfig, model: str | Path | None = None) -> list[str]:
    """The trigger's command with ``{calib_dir}``, ``{model}`` (``model`` if given, else
    ``ptq_model`` as written) and ``{python}`` substituted."""
    m = str(model) if model is not None else cfg.ptq_model
    subs = {"{calib_dir}": str(Path(cfg.out_dir)), "{model}": m, "{python}": sys.executable}
    out = []
    for a in cfg.ptq_command:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@dataclass(frozen=True)
class PtqModelInputs:
    """What the model to quantize reads: checked against the recorder's settings."""

    path: Path
    name: str
    nsweeps: int
    num_point_features: int


def check_ptq_model(cfg: CalibrationRecorderConfig) -> PtqModelInputs | None:
    """Read ``ptq_model`` and check that the frames this node stores are its input.

    Returns None when the command does not use ``{model}`` or ``ptq_model`` is empty (the trigger
    then refuses with a message). Raises :class:`ConfigError` naming the parameters on a missing
    or unreadable checkpoint, a sweep-count mismatch, another point layout, or no lidar input.
    """
    if not cfg.uses_model or not cfg.ptq_model:
        return None
    from qd_perception.runtime.factory import resolve_package_file

    path = resolve_package_file(cfg.ptq_model)
    if path is None:
        raise ConfigError(
            f"ptq_model {cfg.ptq_model!r} does not exist (as given, or under the package share dir)"
        )
    if path.is_dir():
        raise ConfigError(
            f"ptq_model {str(path)!r} is a directory (an export or INT8 artefact?); PTQ starts from the "
            "FP32 checkpoint written by `qd-perception train lidar` (.pt)"
        )
    from qd_perception.model_files import load_torch_file
    from qd_perception.models.build import config_from_dict

    # Only the embedded config is needed (the quantize command loads the weights itself).
    try:
        ckpt = load_torch_file(path, "ptq_model")
        if not isinstance(ckpt, dict) or ckpt.get("arch") != "centerpoint" or "config" not in ckpt:
            raise ConfigError("not a CenterPoint checkpoint of `qd-perception train lidar`")
        mcfg = config_from_dict("centerpoint", ckpt["config"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"ptq_model {str(path)!r}: {e}") from e
    model = PtqModelInputs(path.resolve(), mcfg.name, int(mcfg.nsweeps), int(mcfg.num_point_features))
    if "lidar" not in cfg.modalities:
        raise ConfigError(
            f"ptq_model {model.name} is a lidar model but modalities is {list(cfg.modalities)}: add lidar"
        )
    if model.num_point_features != len(POINT_FEATURES):
        raise ConfigError(
            f"ptq_model {model.name} reads {model.num_point_features} features per point; this node "
            f"stores {len(POINT_FEATURES)} {list(POINT_FEATURES)}"
        )
    if cfg.sweeps.max_sweeps != model.nsweeps:
        raise ConfigError(
            f"sweeps.max_sweeps is {cfg.sweeps.max_sweeps} but ptq_model {model.name} ({path}) reads "
            f"{model.nsweeps} merged sweeps: a calibration set of {cfg.sweeps.max_sweeps}-sweep frames "
            f"would calibrate it on the wrong point density. Set sweeps.max_sweeps: {model.nsweeps} "
            "(the same value as the lidar_detector's)"
        )
    return model


def merged_sweeps(points: np.ndarray) -> int:
    """Sweeps in a merged ``(P, 5)`` cloud: SweepAccumulator concatenates one block per sweep, each
    with one ``time_lag``, so counting blocks is O(P) (``np.unique`` would sort 10^5 values at 20 Hz).
    Never fewer than the true count."""
    if len(points) == 0:
        return 0
    return int(np.count_nonzero(np.diff(points[:, 4]))) + 1


def set_layout(cfg: CalibrationRecorderConfig) -> dict[str, Any]:
    """The layout of the frames this node stores (``recorder.json``,
    :func:`~qd_perception.data.calib_store.input_layout`)."""
    images = "cameras" in cfg.modalities and cfg.store.store_images
    return input_layout(
        cfg.sweeps.max_sweeps,
        cfg.modalities,
        cameras=cfg.cameras if images else (),
        max_age_s=cfg.sweeps.max_age_s,
        frame_id=cfg.frame_id,
    )


class PtqRunner:
    """Runs the PTQ command once at a time in a subprocess; thread-safe state for the status."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.state = "idle"  # idle | running | succeeded | failed
        self.returncode: int | None = None
        self.runs = 0
        self.pid: int | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def start(self, argv: list[str], on_done=None, niceness: int = 0) -> tuple[bool, str]:
        with self._lock:
            if self.state == "running":
                return False, f"PTQ already running (pid {self.pid})"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # closed by the waiter thread
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                if niceness:
                    # Lower the child only (preexec_fn is unsafe in this threaded node). Set before
                    # the interpreter has started its compute threads, which inherit the value.
                    os.setpriority(os.PRIO_PROCESS, self._proc.pid, niceness)
            except OSError as e:
                log.close()
                self.state, self.returncode = "failed", None
                return False, f"cannot start {argv[0]!r}: {e}"
            self.state, self.returncode, self.pid = "running", None, self._proc.pid
            self.runs += 1
        threading.Thread(target=self._wait, args=(self._proc, log, on_done), daemon=True).start()
        return True, f"started PTQ (pid {self.pid}): {' '.join(argv)}; log {self.log_path}"

    def _wait(self, proc: subprocess.Popen, log, on_done) -> None:
        rc = proc.wait()
        log.close()
        with self._lock:
            self.returncode = rc
            self.state = "succeeded" if rc == 0 else "failed"
        if on_done is not None:
            on_done(rc)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM a running PTQ command, SIGKILL it after ``timeout_s``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            stop_process(proc, timeout_s, signal.SIGTERM)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "returncode": self.returncode,
            "runs": self.runs,
            "pid": self.pid,
            "log": str(self.log_path),
        }
