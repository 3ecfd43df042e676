"""Fake-quant primitives and TensorQuantizer against first-principles reference formulas.

The golden file holds inputs and the reference outputs computed by the numpy code below (never by
the implementation); regenerate with ``QD_REGEN_GOLDEN=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qd_perception.quant.quantizer import CalibSpec, QuantSpec, TensorQuantizer
from qd_perception.quant.tensor_quant import (
    fake_quant_affine,
    fake_quant_lsq,
    fake_quant_symmetric,
    quantize_int,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "quant_tensor.npz"


def ref_symmetric(x: np.ndarray, amax: np.ndarray, bits: int) -> np.ndarray:
    """s = amax / (2^(b-1)-1), q = clamp(round_half_even(x/s), -2^(b-1), 2^(b-1)-1), x_hat = s q."""
    s = amax / (2 ** (bits - 1) - 1)
    q = np.clip(np.rint(x / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q * s).astype(np.float32)


def ref_affine(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    qmax = 2**bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = np.float32((hi - lo) / qmax)
    z = np.clip(np.rint(-lo / s), 0, qmax)
    return ((np.clip(np.rint(x / s) + z, 0, qmax) - z) * s).astype(np.float32)


def _golden() -> dict[str, np.ndarray]:
    if GOLDEN.exists() and not os.environ.get("QD_REGEN_GOLDEN"):
        return dict(np.load(GOLDEN))
    rng = np.random.default_rng(42)
    out: dict[str, np.ndarray] = {}
    x = (rng.standard_normal((4, 6, 5)) * 2).astype(np.float32)
    ch_amax = np.abs(x).reshape(4, -1).max(1).astype(np.float32) * np.float32(0.8)
    out["x"] = x
    out["ch_amax"] = ch_amax
    for bits in (2, 3, 4, 6, 8):
        out[f"sym_t_{bits}"] = ref_symmetric(x, np.float32(1.5), bits)
        out[f"sym_c_{bits}"] = ref_symmetric(x, ch_amax[:, None, None], bits)
        out[f"aff_{bits}"] = ref_affine(x, -0.7, 3.1, bits)
    np.savez_compressed(GOLDEN, **out)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_fake_quant_matches_reference(bits):
    g = _golden()
    x = torch.from_numpy(g["x"])
    np.testing.assert_allclose(
        fake_quant_symmetric(x, torch.tensor(1.5), bits).numpy(), g[f"sym_t_{bits}"], rtol=0, atol=1e-6
    )
    got = fake_quant_symmetric(x, torch.from_numpy(g["ch_amax"]), bits, axis=0).numpy()
    np.testing.assert_allclose(got, g[f"sym_c_{bits}"], rtol=0, atol=1e-6)
    got = fake_quant_affine(x, torch.tensor(-0.7), torch.tensor(3.1), bits).numpy()
    np.testing.assert_allclose(got, g[f"aff_{bits}"], rtol=0, atol=2e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_round_trip_is_idempotent_and_uses_2_pow_b_levels(bits):
    x = torch.linspace(-3, 3, 10001)
    y = fake_quant_symmetric(x, torch.tensor(2.0), bits)
    assert torch.equal(fake_quant_symmetric(y, torch.tensor(2.0), bits), y)  # Q(DQ(Q(x))) = Q(x)
    assert len(torch.unique(y)) == 2**bits  # clipped at -2^(b-1) s and (2^(b-1)-1) s
    s = 2.0 / (2 ** (bits - 1) - 1)
    assert float((y - x).abs()[x.abs() <= 2.0].max()) <= s / 2 + 1e-6  # error <= half a step inside
    q = quantize_int(x, torch.tensor(2.0), bits)
    assert torch.allclose(q.float() * s, y, atol=1e-6)


def test_ste_gradient_passes_inside_and_blocks_outside():
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 3.0], requires_grad=True)
    fake_quant_symmetric(x, torch.tensor(1.0), 4).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_learns_the_step_size():
    torch.manual_seed(0)
    x = torch.randn(1000)
    scale = torch.nn.Parameter(torch.tensor(0.3 / 7))
    y = fake_quant_lsq(x, scale, bits=4)
    np.testing.assert_allclose(y.detach().numpy(), ref_symmetric(x.numpy(), np.float32(0.3), 4), atol=1e-6)
    ((y - x) ** 2).mean().backward()
    assert scale.grad is not None and scale.grad < 0  # the clip 0.3 is far too small: grow the step


def test_quantizer_modes_and_state_dict_round_trip():
    q = TensorQuantizer(QuantSpec(bits=8, per_channel=True), axis=0)
    w = torch.randn(5, 3, 3, 3)
    assert torch.equal(q(w), w)  # disabled
    q.set_mode("calibrate")
    assert torch.equal(q(w), w)
    q.load_calib_amax()
    q.set_mode("quantize")
    np.testing.assert_allclose(q.amax.numpy(), w.abs().amax(dim=(1, 2, 3)).numpy())
    y = q(w)
    assert not torch.equal(y, w) and float((y - w).abs().max()) < float(q.amax.max()) / 127
    q2 = TensorQuantizer(QuantSpec(bits=8, per_channel=True), axis=0)
    q2.load_state_dict(q.state_dict())  # per-channel shape restored from the checkpoint
    q2.set_mode("quantize")
    assert torch.equal(q2(w), y)


def test_quantizer_refuses_bad_use():
    q = TensorQuantizer(QuantSpec())
    q.set_mode("quantize")
    with pytest.raises(RuntimeError, match="before calibration"):
        q(torch.ones(3))
    with pytest.raises(ValueError, match="mode"):
        q.set_mode("fast")
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=9)
    with pytest.raises(ValueError, match="asymmetric"):
        QuantSpec(calib=CalibSpec(method="uh"))
    with pytest.raises(ValueError, match="per-tensor only"):
        QuantSpec(per_channel=True, calib=CalibSpec(method="entropy"))
