"""Calibrators (range estimators) behind one API: ``collect(x)``, ``reset()``, ``compute_amax(bits)``.

:data:`CALIBRATORS` is the one explicit name -> calibrator table: the quantizer builds from it,
configs validate the method name against it (``CalibSpec.method``) and the per-channel rule is its
``per_channel`` column. A new calibrator is one class and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from qd_perception.quant.quantizer import CalibSpec


@dataclass(frozen=True)
class CalibratorKind:
    """One row of :data:`CALIBRATORS`.

    build: ``(spec, axis) -> Calibrator``, the spec's knobs (``quant.quantizer.CalibSpec``) applied;
        ``axis`` is the channel axis (``None`` = per tensor).
    per_channel: whether it estimates one range per channel when given an axis.
    """

    cls: type[Calibrator]
    build: Callable[[CalibSpec, int | None], Calibrator]
    per_channel: bool = False


CALIBRATORS: dict[str, CalibratorKind] = {
    "max": CalibratorKind(MaxCalibrator, lambda c, axis: MaxCalibrator(axis=axis), per_channel=True),
    "percentile": CalibratorKind(
        PercentileCalibrator, lambda c, _: PercentileCalibrator(percentile=c.percentile, num_bins=c.num_bins)
    ),
    "mse": CalibratorKind(
        MSECalibrator, lambda c, _: MSECalibrator(num_bins=c.num_bins, start_bin=c.start_bin)
    ),
    "entropy": CalibratorKind(EntropyCalibrator, lambda c, _: EntropyCalibrator(num_bins=c.num_bins)),
    "uh": CalibratorKind(
        UnilateralHistogramCalibrator,
        lambda c, _: UnilateralHistogramCalibrator(num_bins=c.num_bins, start_bin=c.start_bin),
    ),
    "sparsity_grid": CalibratorKind(
        SparsityGridCalibrator,
        lambda c, axis: SparsityGridCalibrator(
            axis=axis,
            r_min=c.grid_r_min,
            r_max=c.grid_r_max,
            steps=c.grid_steps,
            occupied_only=c.occupied_only,
        ),
        per_channel=True,
    ),
}

#: calibrators that estimate one range per channel when given an axis
PER_CHANNEL_CAPABLE = frozenset(name for name, kind in CALIBRATORS.items() if kind.per_channel)


def make_calibrator(spec: CalibSpec, axis: int | None) -> Calibrator:
    """The calibrator ``spec.method`` names, built from :data:`CALIBRATORS`."""
    kind = CALIBRATORS.get(spec.method)
    if kind is None:
        raise ValueError(f"unknown calibration method {spec.method!r}; known: {sorted(CALIBRATORS)}")
    if axis is not None and not kind.per_channel:
        raise ValueError(f"calibrator {spec.method!r} is per-tensor only")
    return kind.build(spec, axis)


__all__ = [
    "CALIBRATORS",
    "PER_CHANNEL_CAPABLE",
    "Calibrator",
    "CalibratorKind",
    "EntropyCalibrator",
    "GrowingHistogram",
    "MSECalibrator",
    "MaxCalibrator",
    "NothingCollectedError",
    "PercentileCalibrator",
    "SparsityGridCalibrator",
    "UnilateralHistogramCalibrator",
    "make_calibrator",
    "occupied_values",
]
