"""Calibrators (range estimators) behind one API: ``collect(x)``, ``reset()``, ``compute_amax(bits)``.

:data:`CALIBRATORS` is the one explicit name -> calibrator table: the quantizer builds from it,
configs validate the method name against it (``CalibSpec.method``), the per-channel and the
symmetric / asymmetric rules are its ``per_channel`` and ``ranges`` columns, and the CLI's
activation presets (``quantize lidar --method``, :data:`ACT_PRESETS`) are its ``preset`` column.
A new calibrator is one class and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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
    ranges: the quantizers it serves: ``both``; ``symmetric`` (it histograms ``|x|``: an
        asymmetric quantizer would get ``[-amax, amax]`` and waste half its grid on ReLU outputs,
        so the presets make its quantizers symmetric); ``asymmetric`` only (a symmetric quantizer
        using it is refused).
    preset: the name of the activation preset that calibrates with it (``quant.config.preset``,
        ``quantize lidar --method``); ``None``: not offered as an activation preset.
    """

    cls: type[Calibrator]
    build: Callable[[CalibSpec, int | None], Calibrator]
    per_channel: bool = False
    ranges: Literal["both", "symmetric", "asymmetric"] = "both"
    preset: str | None = None


CALIBRATORS: dict[str, CalibratorKind] = {
    "max": CalibratorKind(
        MaxCalibrator, lambda c, axis: MaxCalibrator(axis=axis), per_channel=True, preset="minmax"
    ),
    "percentile": CalibratorKind(
        PercentileCalibrator,
        lambda c, _: PercentileCalibrator(percentile=c.percentile, num_bins=c.num_bins),
        ranges="symmetric",
        preset="percentile",
    ),
    "mse": CalibratorKind(
        MSECalibrator,
        lambda c, _: MSECalibrator(num_bins=c.num_bins, start_bin=c.start_bin),
        ranges="symmetric",
        preset="mse",
    ),
    "entropy": CalibratorKind(
        EntropyCalibrator,
        lambda c, _: EntropyCalibrator(num_bins=c.num_bins),
        ranges="symmetric",
        preset="entropy",
    ),
    "uh": CalibratorKind(
        UnilateralHistogramCalibrator,
        lambda c, _: UnilateralHistogramCalibrator(num_bins=c.num_bins, start_bin=c.start_bin),
        ranges="asymmetric",
        preset="uh",
    ),
    # LiDAR-PTQ's weight and activation grid search (quant.ptq.lidar_ptq), not a preset of its own
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
#: activation preset name -> calibrator (``minmax`` -> ``max``, ...), in table order
ACT_PRESETS: dict[str, str] = {kind.preset: name for name, kind in CALIBRATORS.items() if kind.preset}


def make_calibrator(spec: CalibSpec, axis: int | None) -> Calibrator:
    """The calibrator ``spec.method`` names, built from :data:`CALIBRATORS`."""
    kind = CALIBRATORS.get(spec.method)
    if kind is None:
        raise ValueError(f"unknown calibration method {spec.method!r}; known: {sorted(CALIBRATORS)}")
    if axis is not None and not kind.per_channel:
        raise ValueError(f"calibrator {spec.method!r} is per-tensor only")
    return kind.build(spec, axis)


__all__ = [
    "ACT_PRESETS",
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
