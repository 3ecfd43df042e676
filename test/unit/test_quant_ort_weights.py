"""8-bit weights on ONNX Runtime: 7-bit grid by default without VNNI, full 8-bit with it (chosen by
CPU capability, ``--ort-weights``); artefact graphs folded to int8 initializers compute the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_quant_export import _net, _ort_run

from qd_perception.quant.config import cpu_has_vnni, ort_reduce_range, preset
from qd_perception.quant.export import export_onnx, fold_weight_quantization, onnx_op_counts
from qd_perception.quant.model import calibrate, quantize_model

pytest.importorskip("onnxruntime")

EPYC_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ALDER_LAKE = "flags\t\t: fpu avx2 avx_vnni\n"


def test_cpu_flags_and_the_weight_grid(monkeypatch):
    assert cpu_has_vnni(EPYC_VNNI) and cpu_has_vnni(ALDER_LAKE)
    assert not cpu_has_vnni(EPYC_AVX2) and not cpu_has_vnni("")
    assert ort_reduce_range("7bit") and not ort_reduce_range("8bit")
    import qd_perception.quant.config as qc

    monkeypatch.setattr(qc, "cpu_has_vnni", lambda: True)
    assert not qc.ort_reduce_range("auto")
    assert preset("lidar_ptq", "w8a8", "ort", reduce_range=False).weight.bits == 8
    monkeypatch.setattr(qc, "cpu_has_vnni", lambda: False)
    assert qc.ort_reduce_range("auto")
    assert preset("lidar_ptq", "w8a8", "ort", reduce_range=True).weight.bits == 7
    with pytest.raises(ValueError, match="ort weights"):
        qc.ort_reduce_range("9bit")


def _quantized(bits: str):
    q = quantize_model(_net(), preset("minmax", bits, target="ort", reduce_range=False))
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 8, 24, 24, generator=gen) for _ in range(3)]
    calibrate(q, lambda: [q(x) for x in xs])
    return q, xs[0]


def _steps_off(q, x, path) -> float:
    with torch.no_grad():
        want = q(x).numpy()
    step = float(q[2].output_quantizer.amax - q[2].output_quantizer.amin) / 255
    return float(np.abs(_ort_run(path, x) - want).max() / step)


@pytest.mark.skipif(not cpu_has_vnni(), reason="full 8-bit weights saturate in ORT without VNNI")
def test_full_8bit_weights_are_exact_with_vnni(tmp_path):
    """With VNNI, u8 x s8 products accumulate in int32: w8a8 matches fake-quant torch as w7a8
    does (within ORT's requantization rounding; without VNNI this net was 28 steps off)."""
    q, x = _quantized("w8a8")
    path = export_onnx(q, (x,), tmp_path / "m.onnx", "ort", input_names=["x"])
    assert _steps_off(q, x, path) <= 2.0


def test_folded_graph_holds_int8_weights_and_computes_the_same(tmp_path):
    q, x = _quantized("w7a8")
    path = export_onnx(q, (x,), tmp_path / "m.onnx", "ort", input_names=["x"])
    before = _ort_run(path, x)
    raw = onnx_op_counts(path)
    info = fold_weight_quantization(path)
    import onnx

    m = onnx.load(str(path))
    assert info["max_abs_diff"] == 0.0 and info["to_mib"] < info["from_mib"]
    assert sum(len(n.input) for n in m.graph.node if n.op_type == "Round") == 0 < raw["Round"]
    int8 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8) == 3  # the three conv weights, stored as int8
    np.testing.assert_array_equal(_ort_run(path, x), before)
