"""Fake quantization on ``torch.fake_quantize_*`` primitives (straight-through estimator).

Conventions (TensorRT's, which QD-BEV, LiDAR-PTQ and Q-YOLO also use):

* **symmetric**, ``b`` bits: ``s = amax / (2^(b-1) - 1)``, ``q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1)``,
  ``x_hat = s * q`` (zero point 0). ``amax`` is a scalar (per tensor) or one value per slice along
  ``axis`` (per channel).
* **asymmetric** on ``[lo, hi]``: ``s = (hi - lo) / (2^b - 1)``, ``z = round(-lo / s)`` clamped to
  ``[0, 2^b - 1]``, ``q = clamp(round(x / s) + z, 0, 2^b - 1)``, ``x_hat = s * (q - z)``.

Gradients: ``torch.fake_quantize_*`` pass the gradient straight through inside the clipping range
and zero it outside (the STE of QAT).

**Export.** ONNX QuantizeLinear/DequantizeLinear only exist for 8-bit integers, and both torch
exporters only accept the ranges (-128, 127) and (0, 255). So every fake quantizer here is built as
``clamp to the b-bit range`` followed by an 8-bit fake quant with the same scale and zero point;
for ``b = 8`` the clamp is omitted. The clamp makes ``round(x / s)`` land inside the b-bit range,
so the result is identical to a b-bit fake quant, and an exported < 8-bit model is an int8 Q/DQ
graph whose values happen to use only ``2^b`` levels (a runtime gains no speed from the narrower
range; the size accounting in :mod:`qd_perception.quant.size` counts the packed width).
Zero points are int32 tensors (what the Dynamo exporter needs) and scales are float32 tensors.
"""

from __future__ import annotations

import torch

#: smallest scale used anywhere; an all-zero tensor quantizes to zeros instead of dividing by 0.
EPS = 1e-8


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range of a ``bits``-bit quantizer: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def symmetric_scale(amax: torch.Tensor, bits: int) -> torch.Tensor:
    """``s = amax / (2^(b-1) - 1)``, floored at :data:`EPS`."""
    return (amax / (2 ** (bits - 1) - 1)).clamp_min(EPS)


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and int32 zero point of the asymmetric ``bits``-bit grid covering ``[lo, hi]``.

    ``lo`` is raised to at most 0 and ``hi`` to at least 0 so that 0 is exactly representable
    (zero padding and ReLU zeros must stay exact).
    """
    qmin, qmax = qrange(bits, signed=False)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(EPS)
    zp = torch.clamp(torch.round(-lo / scale), qmin, qmax).to(torch.int32)
    return scale, zp


def _expand(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


def _fq8(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int | None, signed: bool
) -> torch.Tensor:
    qmin, qmax = (-128, 127) if signed else (0, 255)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zp.reshape(()), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale.reshape(-1), zp.reshape(-1), axis, qmin, qmax)


def fake_quant_symmetric(
    x: torch.Tensor, amax: torch.Tensor, bits: int = 8, axis: int | None = None
) -> torch.Tensor:
    """Symmetric fake quant of ``x`` with clipping value ``amax`` (scalar, or (C,) along ``axis``)."""
    qmin, qmax = qrange(bits, signed=True)
    amax = amax.detach().to(x.dtype)
    scale = symmetric_scale(amax, bits)
    zp = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
    if bits < 8:
        lo, hi = scale * qmin, scale * qmax
        if axis is not None:
            lo, hi = _expand(lo, x, axis), _expand(hi, x, axis)
        x = torch.clamp(x, lo, hi)
    return _fq8(x, scale, zp, axis, signed=True)


def fake_quant_affine(
    x: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bits: int = 8,
    axis: int | None = None,
    clamp_after: bool = False,
) -> torch.Tensor:
    """Asymmetric fake quant of ``x`` on ``[lo, hi]`` (scalars, or (C,) along ``axis``); unsigned grid.

    ``clamp_after`` (sub-8-bit only): clamp to the ``bits`` range after the 8-bit Q/DQ instead of
    before (same values: both clamp to integer levels of one grid; the straight-through gradient
    also passes for inputs less than half a step outside the range, which round onto it). Output
    quantizers use it so the exported ``Op -> Q -> DQ -> Clip`` keeps ``Op -> Q`` adjacent and
    ONNX Runtime still fuses the producing layer (QLinearConv / QGemm) at a 6-bit activation grid;
    input quantizers keep the clamp before (``Clip -> Q -> DQ -> Op``) for the consuming layer.
    """
    scale, zp = affine_params(lo.detach().to(x.dtype), hi.detach().to(x.dtype), bits)
    if bits < 8:
        qmin, qmax = qrange(bits, signed=False)
        a, b = (qmin - zp) * scale, (qmax - zp) * scale
        if axis is not None:
            a, b = _expand(a, x, axis), _expand(b, x, axis)
        if clamp_after:
            return torch.clamp(_fq8(x, scale, zp, axis, signed=False), a, b)
        x = torch.clamp(x, a, b)
    return _fq8(x, scale, zp, axis, signed=False)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` whose gradient is the identity (straight-through)."""
    return (torch.round(x) - x).detach() + x


def fake_quant_lsq(
    x: torch.Tensor, scale: torch.Tensor, bits: int = 8, axis: int | None = None
) -> torch.Tensor:
    """Symmetric fake quant with a *learned* step size (LSQ, Esser et al. 2020).

    The gradient reaches ``scale`` (scaled by ``1 / sqrt(numel * qmax)`` as LSQ recommends, so the
    step size learns at a rate comparable to the weights) and ``x`` (STE inside the range).
    Used only in training; export converts the learned scale back to ``amax``.
    """
    qmin, qmax = qrange(bits, signed=True)
    n = x.numel() if axis is None else x.numel() // x.shape[axis]
    g = 1.0 / (max(n, 1) * qmax) ** 0.5
    s = scale * g + (scale - scale * g).detach()  # value = scale, gradient scaled by g
    s = s.abs().clamp_min(EPS)
    if axis is not None:
        s = _expand(s, x, axis)
    return torch.clamp(round_ste(x / s), qmin, qmax) * s


def fake_quant_lsq_affine(
    x: torch.Tensor, scale: torch.Tensor, zero_point: int, bits: int = 8
) -> torch.Tensor:
    """Asymmetric (unsigned, per-tensor) fake quant with a learned step and a fixed zero point."""
    qmin, qmax = qrange(bits, signed=False)
    g = 1.0 / (max(x.numel(), 1) * qmax) ** 0.5
    s = scale * g + (scale - scale * g).detach()
    s = s.abs().clamp_min(EPS)
    return (torch.clamp(round_ste(x / s) + zero_point, qmin, qmax) - zero_point) * s


def quantize_int(x: torch.Tensor, amax: torch.Tensor, bits: int = 8, axis: int | None = None) -> torch.Tensor:
    """The integer codes (int8 storage) of the symmetric quantizer; ``q * scale`` is the fake quant."""
    qmin, qmax = qrange(bits, signed=True)
    scale = symmetric_scale(amax.to(x.dtype), bits)
    if axis is not None:
        scale = _expand(scale, x, axis)
    return torch.clamp(torch.round(x / scale), qmin, qmax).to(torch.int8)
