"""Camera BEV detector backends: torch and ONNX Runtime, sharing pre/post-processing and the
temporal state.

The temporal state (previous BEV, its scene, timestamp and ego pose) lives here, outside the
network: each call feeds ``prev_bev``, ``prev_valid`` and ``prev_from_cur`` (ego_prev <- ego_cur,
from the two ``ego2global`` poses, i.e. odometry) and keeps the returned BEV. The state is dropped
(``prev_valid = 0``) on a scene change, a clock jump backwards, a gap longer than
``max_time_gap_s``, an ego jump (the pose moved faster than :data:`MAX_EGO_SPEED_MPS`: a
localisation reset, whose "motion" would slide the history off the grid), or :meth:`reset`; a
returned BEV with a non-finite value is never kept (fed
back, it would poison every later frame; counted in ``nonfinite_resets``).

A frame may declare cameras missing (``Frame.missing_cameras``, a failed sensor): the network
then runs on the others, the missing ones see no BEV point (``inputs.camera_tensors``).

A model trained without history (``train bev --queue-length 1``, e.g. a TempDistiller student)
is never fed one (``history=False``): it never saw a valid previous BEV in training.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qd_perception.classes import CLASS_NAMES, attribute_for
from qd_perception.config import ConfigError, from_dict, to_dict
from qd_perception.data.types import Detections, Frame, Timing
from qd_perception.model_files import ort_session
from qd_perception.models.bevformer.coder import decode_predictions
from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.geometry import relative_ego_motion
from qd_perception.models.bevformer.inputs import camera_tensors

#: ONNX graph input/output names (the export contract).
ONNX_INPUTS: tuple[str, ...] = ("images", "intrinsics", "cam2ego", "prev_bev", "prev_valid", "prev_from_cur")
ONNX_OUTPUTS: tuple[str, ...] = ("cls_logits", "box_codes", "bev")
#: metadata key holding the model config JSON in exported ONNX files
ONNX_CONFIG_KEY = "qd_perception.bevformer.config"
#: metadata key: "0" when the graph's model was trained without history (queue 1), else "1"
ONNX_HISTORY_KEY = "qd_perception.bevformer.history"
#: the graph's file name inside an artefact directory
ARTEFACT_ONNX = "bevformer.onnx"
#: ego speed (m/s) above which a pose change between two frames is a jump, not motion
MAX_EGO_SPEED_MPS = 70.0


def onnx_metadata(cfg: BEVFormerConfig, history: bool = True) -> dict[str, str]:
    """The metadata an exported BEVFormer graph carries (model config, history use): what
    :class:`OrtBEVDetector` reads back."""
    return {ONNX_CONFIG_KEY: json.dumps(to_dict(cfg)), ONNX_HISTORY_KEY: "1" if history else "0"}


def uses_history(queue_length: int | None) -> bool:
    """A model trained with ``queue_length`` frames is fed the previous BEV at inference unless it
    never saw one (queue 1); unknown (None) counts as with history."""
    return queue_length != 1


@dataclass
class TemporalState:
    bev: np.ndarray  # (1, H_bev*W_bev, C) float32
    scene_token: str
    timestamp_us: int
    ego2global: np.ndarray  # (4, 4)


@dataclass(frozen=True)
class NetworkInputs:
    images: np.ndarray  # (1, N, 3, H, W) float32 0..255
    intrinsics: np.ndarray  # (1, N, 3, 3) float32
    cam2ego: np.ndarray  # (1, N, 4, 4) float32
    prev_bev: np.ndarray  # (1, Q_bev, C) float32
    prev_valid: np.ndarray  # (1,) float32
    prev_from_cur: np.ndarray  # (1, 4, 4) float32


class BEVDetectorBase:
    """Shared logic; subclasses implement :meth:`_infer`."""

    modalities: tuple[str, ...] = ("cameras",)

    def __init__(
        self, cfg: BEVFormerConfig, score_threshold: float | None = None, history: bool = True
    ) -> None:
        self.cfg = cfg
        self.history = history  # feed the previous frame's BEV (False: every frame as a scene start)
        self.score_threshold = cfg.score_threshold if score_threshold is None else score_threshold
        self.state: TemporalState | None = None
        self.last_timing = Timing()
        self.resets = 0  # temporal resets other than the first frame (scene, clock or ego jump)
        self.nonfinite_resets = 0  # returned BEVs not kept as history because not finite

    def reset(self) -> None:
        self.state = None

    def _history_valid(self, frame: Frame) -> bool:
        s = self.state
        if s is None or not self.history:
            return False
        dt = (frame.timestamp_us - s.timestamp_us) * 1e-6
        ok = s.scene_token == frame.scene_token and 0.0 < dt <= self.cfg.max_time_gap_s
        if ok:
            moved = np.linalg.norm(np.asarray(frame.ego2global)[:3, 3] - s.ego2global[:3, 3])
            ok = bool(moved <= MAX_EGO_SPEED_MPS * dt)
        if not ok:
            self.resets += 1
            self.state = None
        return ok

    def prepare(self, frame: Frame) -> NetworkInputs:
        cams = camera_tensors(frame, self.cfg)
        valid = self._history_valid(frame)
        if valid:
            assert self.state is not None
            prev = self.state.bev
            T = relative_ego_motion(self.state.ego2global, np.asarray(frame.ego2global, np.float64))
        else:
            prev = np.zeros((1, self.cfg.num_bev, self.cfg.embed_dims), np.float32)
            T = np.eye(4)
        return NetworkInputs(
            images=cams.images[None].astype(np.float32),
            intrinsics=cams.intrinsics[None],
            cam2ego=cams.cam2ego[None],
            prev_bev=prev,
            prev_valid=np.array([1.0 if valid else 0.0], np.float32),
            prev_from_cur=T[None].astype(np.float32),
        )

    def _infer(self, x: NetworkInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> cls_logits (1, Q, K), box_codes (1, Q, 10), bev (1, Q_bev, C)."""
        raise NotImplementedError

    def detect(self, frame: Frame) -> Detections:
        t0 = time.perf_counter()
        x = self.prepare(frame)
        t1 = time.perf_counter()
        cls, box, bev = self._infer(x)
        t2 = time.perf_counter()
        bev = np.asarray(bev, np.float32)
        if np.isfinite(bev).all():
            self.state = TemporalState(
                bev, frame.scene_token, int(frame.timestamp_us), np.asarray(frame.ego2global, np.float64)
            )
        else:  # the inputs are validated upstream: a model overflowing on valid input
            self.state = None
            self.nonfinite_resets += 1
        d = decode_predictions(
            cls[0], box[0], self.score_threshold, self.cfg.max_detections, self.cfg.pc_range
        )
        attrs = tuple(
            attribute_for(CLASS_NAMES[int(lbl)], float(np.hypot(b[7], b[8])))
            for b, lbl in zip(d.boxes, d.labels)
        )
        t3 = time.perf_counter()
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return Detections(d.boxes, d.labels, d.scores, attrs)


class TorchBEVDetector(BEVDetectorBase):
    """FP32 torch backend (also runs fake-quantized models: any module tree with the same forward)."""

    def __init__(
        self, model, score_threshold: float | None = None, device: str = "cpu", history: bool = True
    ) -> None:
        super().__init__(model.cfg, score_threshold, history)
        self.device = device
        self.model = model.to(device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, score_threshold: float | None = None, device: str = "cpu"):
        """The checkpoint's model; without history when it was trained with ``queue_length`` 1."""
        from qd_perception.models.bevformer.checkpoint import (
            model_from_checkpoint,
            read_checkpoint,
            trained_queue_length,
        )

        ckpt = read_checkpoint(path)
        history = uses_history(trained_queue_length(ckpt))
        return cls(model_from_checkpoint(ckpt, path), score_threshold, device, history)

    def _infer(self, x: NetworkInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        t = {k: torch.from_numpy(getattr(x, k)).to(self.device) for k in ONNX_INPUTS}
        with torch.inference_mode():
            out = self.model(**t)
        return (out.cls_logits[-1].cpu().numpy(), out.box_codes[-1].cpu().numpy(), out.bev.cpu().numpy())


class OrtBEVDetector(BEVDetectorBase):
    """ONNX Runtime backend for a graph written by ``qd-perception export bev`` or ``quantize bev``
    (the ``.onnx`` file or its artefact directory); the model config travels in the ONNX metadata."""

    def __init__(self, path: str | Path, score_threshold: float | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():  # an artefact directory (`export bev`, `quantize bev`)
            path = path / ARTEFACT_ONNX
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see DetectorConfig
        self.session = ort_session(path, so)
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_CONFIG_KEY not in meta:
            raise ConfigError(
                f"{path} has no {ONNX_CONFIG_KEY} metadata; export it with `qd-perception export bev`"
            )
        cfg = from_dict(BEVFormerConfig, json.loads(meta[ONNX_CONFIG_KEY]), where=f"{path.name}:metadata")
        names = tuple(i.name for i in self.session.get_inputs())
        if names != ONNX_INPUTS:
            raise ConfigError(f"{path}: inputs {names}, expected {ONNX_INPUTS}")
        super().__init__(cfg, score_threshold, history=meta.get(ONNX_HISTORY_KEY, "1") != "0")

    def _infer(self, x: NetworkInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls, box, bev = self.session.run(list(ONNX_OUTPUTS), {k: getattr(x, k) for k in ONNX_INPUTS})
        return cls, box, bev


def load_bev_detector(
    model_path: str | Path, score_threshold: float | None = None, device: str = "cpu", threads: int = 0
) -> BEVDetectorBase:
    """A checkpoint (.pt) -> torch backend; an .onnx file or an artefact directory -> ONNX Runtime
    backend (``threads`` intra-op threads, 0 = ORT default)."""
    p = Path(model_path)
    if p.suffix == ".onnx" or p.is_dir():
        return OrtBEVDetector(p, score_threshold, threads)
    return TorchBEVDetector.from_checkpoint(p, score_threshold, device)
