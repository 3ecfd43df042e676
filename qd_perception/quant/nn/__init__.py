"""Quantized module wrappers and the float type -> wrapper table."""

from qd_perception.quant.nn.modules import (
    SPCONV_WRAPPERS,
    WRAPPERS,
    QuantAct,
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    QuantModule,
)

__all__ = [
    "SPCONV_WRAPPERS",
    "WRAPPERS",
    "QuantAct",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvTranspose2d",
    "QuantLinear",
    "QuantModule",
]
