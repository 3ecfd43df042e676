"""Model size with weights packed at their bit width (how QD-BEV reports 15.8 MB for W4A6).

Counted per parameter tensor:

* weights of quantized layers whose weight quantizer is enabled: ``ceil(numel * bits / 8)`` bytes
  (int4 packs two per byte, int6 four per three bytes), plus one float32 scale per channel (or per
  tensor) and, for asymmetric weights, one zero point per scale at the weight bit width rounded
  up to a byte;
* every other parameter and every buffer except quantizer ranges (biases, BN, float layers) at
  its own dtype size. Activation quantizer ranges add one float32 scale (+ int32 zero point
  when asymmetric) each: they are part of the deployed artefact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from qd_perception.quant.nn.modules import QuantModule
from qd_perception.quant.quantizer import TensorQuantizer


@dataclass(frozen=True)
class SizeReport:
    packed_weight_bytes: int  # quantized weights at their bit width
    scale_bytes: int  # weight scales / zero points and activation ranges
    float_bytes: int  # everything kept in floating point
    fp32_bytes: int  # the same model with every parameter in float32 (the reference)

    @property
    def total_bytes(self) -> int:
        return self.packed_weight_bytes + self.scale_bytes + self.float_bytes

    @property
    def compression(self) -> float:
        return self.fp32_bytes / max(self.total_bytes, 1)

    def summary(self) -> str:
        mb = 1 / 2**20
        return (
            f"{self.total_bytes * mb:.3f} MiB (packed weights {self.packed_weight_bytes * mb:.3f}, "
            f"scales {self.scale_bytes * mb:.3f}, float {self.float_bytes * mb:.3f}); "
            f"FP32 {self.fp32_bytes * mb:.3f} MiB, {self.compression:.2f}x smaller"
        )


def model_size(model: nn.Module) -> SizeReport:
    """Size accounting of ``model`` (float or fake-quant). Shared parameters are counted once."""
    packed = scales = floats = fp32 = 0
    quant_weights: dict[int, TensorQuantizer] = {}
    for m in model.modules():
        if isinstance(m, QuantModule) and m.weight_quantizer.mode == "quantize":
            quant_weights[id(m.weight)] = m.weight_quantizer
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        fp32 += p.numel() * 4
        wq = quant_weights.get(id(p))
        if wq is None:
            floats += p.numel() * p.element_size()
            continue
        packed += math.ceil(p.numel() * wq.bits / 8)
        n_scales = p.shape[wq.axis] if wq.axis is not None else 1
        scales += n_scales * 4 + (0 if wq.symmetric else n_scales * math.ceil(wq.bits / 8))
    for m in model.modules():
        if isinstance(m, TensorQuantizer):
            if m.mode == "quantize" and id(m) not in {id(q) for q in quant_weights.values()}:
                scales += 4 + (0 if m.symmetric else 4)
            continue
        for name, b in m.named_buffers(recurse=False):
            if name == "num_batches_tracked":
                continue
            floats += b.numel() * b.element_size()
            fp32 += b.numel() * 4
    return SizeReport(packed, scales, floats, fp32)
