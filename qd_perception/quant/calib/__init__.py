"""Calibrators (range estimators) behind one API: ``collect(x)``, ``reset()``, ``compute_amax(bits)``.

``CALIBRATORS`` is the explicit name -> class table used by configs and the CLI.
"""

from __future__ import annotations

from qd_perception.quant.calib.base import Calibrator, NothingCollectedError
from qd_perception.quant.calib.histogram import (
    EntropyCalibrator,
    GrowingHistogram,
    MSECalibrator,
    PercentileCalibrator,
    UnilateralHistogramCalibrator,
)
from qd_perception.quant.calib.maxmin import MaxCalibrator
from qd_perception.quant.calib.sparsity import SparsityGridCalibrator, occupied_values

CALIBRATORS: dict[str, type[Calibrator]] = {
    "max": MaxCalibrator,
    "percentile": PercentileCalibrator,
    "mse": MSECalibrator,
    "entropy": EntropyCalibrator,
    "uh": UnilateralHistogramCalibrator,
    "sparsity_grid": SparsityGridCalibrator,
}

#: calibrators that estimate one range per channel when given an axis
PER_CHANNEL_CAPABLE = frozenset({"max", "sparsity_grid"})

__all__ = [
    "CALIBRATORS",
    "PER_CHANNEL_CAPABLE",
    "Calibrator",
    "EntropyCalibrator",
    "GrowingHistogram",
    "MSECalibrator",
    "MaxCalibrator",
    "NothingCollectedError",
    "PercentileCalibrator",
    "SparsityGridCalibrator",
    "UnilateralHistogramCalibrator",
    "occupied_values",
]
