"""The Detector protocol every backend (torch, ONNX Runtime, TensorRT, classical) implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from qd_perception.data.types import Detections, Frame


@runtime_checkable
class Detector(Protocol):
    """Turns one synchronised :class:`Frame` into :class:`Detections` (ego frame)."""

    #: Which inputs the detector needs: "lidar", "cameras", or both.
    modalities: tuple[str, ...]

    def detect(self, frame: Frame) -> Detections: ...

    def reset(self) -> None:
        """Forget temporal state (scene change, clock jump)."""
        ...
