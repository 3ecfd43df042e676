"""Max-min calibration: the range is the largest magnitude (or the min and max) ever seen."""

from __future__ import annotations

import torch

from qd_perception.quant.calib.base import Calibrator, NothingCollectedError, reduce_dims


class MaxCalibrator(Calibrator):
    """Running ``max |x|`` (and min / max for asymmetric use), per tensor or per channel along ``axis``."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.reset()

    def reset(self) -> None:
        self._min: torch.Tensor | None = None
        self._max: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self._max is None

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        dims = reduce_dims(x, self.axis)
        lo = torch.amin(x, dim=dims) if dims else x.clone()
        hi = torch.amax(x, dim=dims) if dims else x.clone()
        if self._max is None:
            self._min, self._max = lo, hi
        else:
            self._min, self._max = torch.minimum(self._min, lo), torch.maximum(self._max, hi)

    def compute_amax(self, bits: int) -> torch.Tensor:
        if self._max is None or self._min is None:
            raise NothingCollectedError("MaxCalibrator: no data collected")
        return torch.maximum(self._max.abs(), self._min.abs())

    def compute_range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._max is None or self._min is None:
            raise NothingCollectedError("MaxCalibrator: no data collected")
        return self._min.clone(), self._max.clone()
