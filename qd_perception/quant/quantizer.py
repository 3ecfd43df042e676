"""``TensorQuantizer``: one quantization point (a tensor, its bit width, range, calibrator and mode).

Modes:

* ``disabled`` — identity (the module runs in float);
* ``calibrate`` — identity, and the calibrator collects the tensor;
* ``quantize`` — fake quant with the stored range (``amax``, plus ``amin`` when asymmetric), or
  with a learned step size when ``learn_scale`` (LSQ) is on.

Ranges are buffers, so a calibrated quantized model is saved and restored with its
``state_dict``; per-channel buffers take their shape from the checkpoint on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from qd_perception.quant.calib import CALIBRATORS, PER_CHANNEL_CAPABLE, Calibrator, make_calibrator
from qd_perception.quant.tensor_quant import (
    affine_params,
    fake_quant_affine,
    fake_quant_lsq,
    fake_quant_lsq_affine,
    fake_quant_symmetric,
    qrange,
)

Mode = Literal["disabled", "calibrate", "quantize"]
MODES: tuple[str, ...] = ("disabled", "calibrate", "quantize")
#: A name of :data:`~qd_perception.quant.calib.CALIBRATORS` (the config loader checks it).
CalibMethod = Literal[tuple(CALIBRATORS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class CalibSpec:
    """Which calibrator estimates the range, and its knobs (see ``quant/calib``)."""

    method: CalibMethod = "max"
    percentile: float = 99.99
    num_bins: int = 2048
    start_bin: int = 128
    grid_r_min: float = 0.5
    grid_r_max: float = 1.0
    grid_steps: int = 100
    occupied_only: bool = True


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer: bits 2..8, per-channel or per-tensor, symmetric or asymmetric, calibrator."""

    bits: int = 8
    per_channel: bool = False
    symmetric: bool = True
    learn_scale: bool = False
    calib: CalibSpec = field(default_factory=CalibSpec)

    def __post_init__(self) -> None:
        qrange(self.bits)  # validates 2..8
        if CALIBRATORS[self.calib.method].ranges == "asymmetric" and self.symmetric:
            raise ValueError(
                f"the {self.calib.method!r} calibrator gives an asymmetric range: set symmetric: false"
            )
        if self.per_channel and self.calib.method not in PER_CHANNEL_CAPABLE:
            raise ValueError(f"calibrator {self.calib.method!r} is per-tensor only")
        if self.learn_scale and not self.symmetric and self.per_channel:
            raise ValueError("learn_scale (LSQ) of asymmetric quantizers is per-tensor only")


class TensorQuantizer(nn.Module):
    """Fake-quantizes the tensors passing through it (see module docstring for the modes).

    ``axis`` is the channel axis for per-channel quantization (``None`` = per tensor).
    """

    def __init__(self, spec: QuantSpec | None = None, axis: int | None = None) -> None:
        super().__init__()
        self.spec = spec or QuantSpec()
        self.bits = self.spec.bits
        self.symmetric = self.spec.symmetric
        self.axis = axis if self.spec.per_channel else None
        self.mode: Mode = "disabled"
        #: sub-8-bit asymmetric: clamp after the Q/DQ (output quantizers; see fake_quant_affine)
        self.clamp_after = False
        self.calibrator: Calibrator | None = make_calibrator(self.spec.calib, self.axis)
        self.register_buffer("amax", torch.empty(0))
        self.register_buffer("amin", torch.empty(0))
        # LSQ step size; created by set_range when spec.learn_scale, or by enable_lsq()
        self.scale: nn.Parameter | None = None
        #: True: the forward uses the learnable-step formula (training); False: the Q/DQ primitive
        self.lsq_active = False
        self._lsq_zp = 0
        #: AdaRound state (a module computing the soft/hard rounded weight), set by quant.ptq.adaround
        self.rounding: nn.Module | None = None

    # ---- range -----------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return self.amax.numel() > 0

    def set_range(self, amax: torch.Tensor, amin: torch.Tensor | None = None) -> None:
        """Set the clipping range (``amin`` only for asymmetric quantizers)."""
        self.amax = amax.detach().float().clone().to(self.amax.device)
        if not self.symmetric:
            if amin is None:
                raise ValueError("asymmetric quantizer needs amin")
            self.amin = amin.detach().float().clone().to(self.amax.device)
        if self.spec.learn_scale:
            self.enable_lsq()

    def enable_lsq(self) -> nn.Parameter:
        """Make the step size learnable (LSQ), starting from the current range. Asymmetric
        quantizers (per tensor) learn the step with their zero point frozen."""
        if not self.calibrated:
            raise RuntimeError("enable_lsq needs a calibrated quantizer")
        if self.symmetric:
            self.scale = nn.Parameter(self.amax.clone() / qrange(self.bits)[1])
        else:
            if self.axis is not None:
                raise RuntimeError("LSQ for per-channel asymmetric quantizers is not implemented")
            scale, zp = affine_params(self.amin, self.amax, self.bits)
            self._lsq_zp = int(zp)
            self.scale = nn.Parameter(scale.clone())
        self.lsq_active = True
        return self.scale

    @torch.no_grad()
    def freeze_lsq(self) -> None:
        """Write the learned step size back to ``amax`` and drop the parameter (before export)."""
        if self.scale is not None:
            s = self.scale.detach().abs()
            if self.symmetric:
                self.amax = s * qrange(self.bits)[1]
            else:
                qmax = qrange(self.bits, signed=False)[1]
                self.amin = -self._lsq_zp * s
                self.amax = (qmax - self._lsq_zp) * s
            self.scale = None
        self.lsq_active = False

    def load_calib_amax(self) -> None:
        """Compute the range from what the calibrator collected."""
        if self.calibrator is None:
            raise RuntimeError("quantizer has no calibrator")
        if self.symmetric:
            self.set_range(self.calibrator.compute_amax(self.bits))
        else:
            lo, hi = self.calibrator.compute_range(self.bits)
            self.set_range(hi, lo)

    def effective_amax(self) -> torch.Tensor:
        """The symmetric clip actually used (the learned one under LSQ)."""
        if self.scale is not None and self.symmetric:
            return self.scale.detach().abs() * qrange(self.bits)[1]
        return self.amax

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "disabled":
            return x
        if self.mode == "calibrate":
            if self.calibrator is None:
                raise RuntimeError("quantizer in calibrate mode has no calibrator")
            self.calibrator.collect(x)
            return x
        if self.rounding is not None:
            return self.rounding(x)
        if not self.calibrated:
            raise RuntimeError("quantizer in quantize mode before calibration (no amax)")
        if self.scale is not None and self.lsq_active:
            if not self.symmetric:
                return fake_quant_lsq_affine(x, self.scale, self._lsq_zp, self.bits)
            return fake_quant_lsq(x, self.scale, self.bits, self.axis)
        if self.symmetric:
            return fake_quant_symmetric(x, self.effective_amax(), self.bits, self.axis)
        return fake_quant_affine(
            x, self.amin, self.amax, self.bits, self.axis, getattr(self, "clamp_after", False)
        )

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "calibrate" and self.calibrator is not None:
            self.calibrator.reset()
        self.mode = mode

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # per-channel ranges have a shape only known after calibration: take it from the checkpoint
        for name in ("amax", "amin"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        if prefix + "scale" in state_dict and self.scale is None:
            self.scale = nn.Parameter(torch.empty_like(state_dict[prefix + "scale"]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        ch = f" axis={self.axis}" if self.axis is not None else ""
        rng = ""
        if self.calibrated:
            a = self.effective_amax()
            rng = f" amax={float(a.max()):.4g}" if a.numel() else ""
        return f"{self.mode} int{self.bits} {kind}{ch} calib={self.spec.calib.method}{rng}"
