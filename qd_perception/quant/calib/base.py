"""The calibrator API every range estimator implements: ``collect(x)``, ``reset()``, ``compute_amax(bits)``.

A calibrator watches the tensors a :class:`~qd_perception.quant.quantizer.TensorQuantizer` sees in
``calibrate`` mode and then proposes its clipping range:

* ``compute_amax(bits)`` -> the symmetric clipping value ``amax`` (scalar tensor, or ``(C,)`` for a
  per-channel calibrator with ``axis`` set);
* ``compute_range(bits)`` -> ``(lo, hi)`` for asymmetric quantizers. Symmetric calibrators return
  ``(-amax, amax)``; the unilateral histogram (UH) and max-min return their real lower bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Calibrator(ABC):
    """Base class; ``axis`` is the per-channel axis (``None`` = one range for the whole tensor)."""

    #: per-channel calibrators keep one range per slice along this axis
    axis: int | None = None

    @abstractmethod
    def collect(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one calibration tensor (any shape; not modified)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything collected."""

    @abstractmethod
    def compute_amax(self, bits: int) -> torch.Tensor:
        """Symmetric clipping value for a ``bits``-bit quantizer (float32 tensor)."""

    def compute_range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        amax = self.compute_amax(bits)
        return -amax, amax

    @property
    @abstractmethod
    def empty(self) -> bool:
        """True while nothing has been collected (compute_* would have nothing to go on)."""


def reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    """All dimensions except ``axis`` (all of them when ``axis`` is None)."""
    if axis is None:
        return list(range(x.dim()))
    axis = axis % x.dim()
    return [d for d in range(x.dim()) if d != axis]


class NothingCollectedError(RuntimeError):
    """compute_amax was called before any calibration data reached the calibrator."""
