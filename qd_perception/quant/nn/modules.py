"""Quantized drop-in modules: the float module's parameters plus input / weight / output quantizers.

Each wrapper *is* its float class (subclass) with the same parameters, so ``state_dict`` keys of
the float model still load, optimisers still see the same tensors, and spconv's indice caches
keep working. Wrappers are built from an existing module with :meth:`QuantModule.adopt` (no copy,
no re-initialisation).

* ``input_quantizer`` — activations entering the layer (TensorRT places Q/DQ here);
* ``weight_quantizer`` — per output channel by default (``weight_axis``);
* ``output_quantizer`` — optional, after the layer: what ONNX Runtime needs to fuse
  ``DQ -> Conv -> Q`` into QLinearConv (see ``quant/export.py``).
* ``quantize_bias`` (convs, ONNX Runtime target) — the bias on the int32 grid of step
  ``s_in * s_w[c]``, as QLinearConv stores it. Measured on the trained pillar CenterPoint at
  W4A8: without it the fake-quant model and its ORT artefact differed by up to 1.6 heatmap logits
  (a per-channel bias offset of up to ``s_in * s_w / 2`` in every layer, compounding); the
  optimised ORT graph's first conv alone was 1e-3 off the exact result.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from qd_perception.quant.quantizer import QuantSpec, TensorQuantizer
from qd_perception.quant.tensor_quant import affine_params, round_ste, symmetric_scale


class QuantModule:
    """Mixin holding the quantizers; ``quant_stage`` names the stage the layer belongs to."""

    weight_axis: ClassVar[int] = 0
    input_quantizer: TensorQuantizer
    weight_quantizer: TensorQuantizer
    output_quantizer: TensorQuantizer | None
    quant_stage: str | None
    #: emulate the integer runtime's int32 bias (set by ``quantize_model`` for ORT-target convs)
    quantize_bias: bool = False

    @classmethod
    def adopt(
        cls,
        module: nn.Module,
        weight: QuantSpec,
        act: QuantSpec,
        quantize_output: bool = False,
        stage: str | None = None,
    ):
        """A ``cls`` instance sharing ``module``'s parameters, buffers and settings."""
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
        # own containers: adding quantizers must not change the float module
        for k in ("_modules", "_parameters", "_buffers"):
            new.__dict__[k] = dict(module.__dict__[k])
        new.input_quantizer = TensorQuantizer(act)
        new.weight_quantizer = TensorQuantizer(weight, axis=cls.weight_axis)
        new.output_quantizer = TensorQuantizer(act) if quantize_output else None
        if new.output_quantizer is not None:
            new.output_quantizer.clamp_after = True  # keeps ORT's integer fusion at < 8 bits
        new.quant_stage = stage
        return new

    def quantizers(self) -> list[TensorQuantizer]:
        qs = [self.input_quantizer, self.weight_quantizer]
        return qs + ([self.output_quantizer] if self.output_quantizer is not None else [])

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(y) if self.output_quantizer is not None else y

    def bias_scale(self) -> torch.Tensor | None:
        """(C_out,) step of the int32 bias an integer conv uses, ``s_in * s_w[c]`` (no gradient);
        None unless the input and weight quantizers are both quantizing, the weights symmetric."""
        iq, wq = self.input_quantizer, self.weight_quantizer
        if iq.mode != "quantize" or wq.mode != "quantize" or not wq.symmetric:
            return None
        if not (iq.calibrated or iq.scale is not None) or not (wq.calibrated or wq.scale is not None):
            return None
        if iq.scale is not None and iq.lsq_active:
            s_in = iq.scale.detach().abs()
        elif iq.symmetric:
            s_in = symmetric_scale(iq.effective_amax(), iq.bits)
        else:
            s_in = affine_params(iq.amin, iq.amax, iq.bits)[0]
        return (s_in * symmetric_scale(wq.effective_amax().detach(), wq.bits)).reshape(-1)

    def _bias(self) -> torch.Tensor | None:
        b = self.bias
        if b is None or not self.quantize_bias:
            return b
        step = self.bias_scale()
        if step is None:
            return b
        return round_ste(b / step) * step  # int32 never saturates here (int32_bias_overflows)


class QuantConv2d(nn.Conv2d, QuantModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self._bias())
        return self._out(y)


class QuantConv1d(nn.Conv1d, QuantModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self._bias())
        return self._out(y)


class QuantConvTranspose2d(nn.ConvTranspose2d, QuantModule):
    # weight is (in, out / groups, kH, kW): output channels on axis 1
    weight_axis: ClassVar[int] = 1

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.groups != 1 and self.weight_quantizer.axis is not None:
            raise NotImplementedError("per-channel quantized grouped ConvTranspose2d")
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        y = F.conv_transpose2d(
            self.input_quantizer(x),
            self.weight_quantizer(self.weight),
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )
        return self._out(y)


class QuantLinear(nn.Linear, QuantModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self._bias()))


class QuantAct(nn.Module):
    """Wraps any activation / elementwise module and quantizes its output (``QuantAct(nn.ReLU())``)."""

    def __init__(self, module: nn.Module, spec: QuantSpec | None = None, stage: str | None = None) -> None:
        super().__init__()
        self.module = module
        self.output_quantizer = TensorQuantizer(spec or QuantSpec())
        self.output_quantizer.clamp_after = True  # keeps ORT's integer fusion at < 8 bits
        self.quant_stage = stage

    def quantizers(self) -> list[TensorQuantizer]:
        return [self.output_quantizer]

    def forward(self, *args, **kwargs):
        return self.output_quantizer(self.module(*args, **kwargs))


# ---- spconv (voxel CenterPoint's sparse backbone) -----------------------------------------------
try:
    import spconv.pytorch as spconv

    class _QuantSparseConvMixin(QuantModule):
        # spconv 2.x weight layout is (out, *kernel, in): output channels on axis 0
        weight_axis: ClassVar[int] = 0

        def forward(self, input, add_input=None):
            x = input.replace_feature(self.input_quantizer(input.features))
            # spconv 2.3.8's CPU kernels reject a bias in eval mode: add it to the features here
            out = self._conv_forward(
                self.training,
                x,
                self.weight_quantizer(self.weight),
                None,
                add_input,
                name=self.name,
                sparse_unique_name=self._sparse_unique_name,
                act_type=self.act_type,
                act_alpha=self.act_alpha,
                act_beta=self.act_beta,
            )
            if self.bias is not None:
                out = out.replace_feature(out.features + self.bias)
            if self.output_quantizer is not None:
                out = out.replace_feature(self.output_quantizer(out.features))
            return out

    class QuantSubMConv3d(_QuantSparseConvMixin, spconv.SubMConv3d):
        pass

    class QuantSparseConv3d(_QuantSparseConvMixin, spconv.SparseConv3d):
        pass

    class QuantSparseInverseConv3d(_QuantSparseConvMixin, spconv.SparseInverseConv3d):
        pass

    SPCONV_WRAPPERS: dict[type, type] = {
        spconv.SubMConv3d: QuantSubMConv3d,
        spconv.SparseConv3d: QuantSparseConv3d,
        spconv.SparseInverseConv3d: QuantSparseInverseConv3d,
    }
except ImportError:  # spconv is optional: pillar models and the camera path do not need it
    SPCONV_WRAPPERS = {}

#: float module type -> quantized wrapper; exact types only (subclasses are not silently wrapped)
WRAPPERS: dict[type, type] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Linear: QuantLinear,
    **SPCONV_WRAPPERS,
}
