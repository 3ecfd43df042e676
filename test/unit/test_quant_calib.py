"""Calibrators on known distributions, each checked against a brute-force reference written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qd_perception.quant.calib import (
    EntropyCalibrator,
    GrowingHistogram,
    MaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    SparsityGridCalibrator,
    UnilateralHistogramCalibrator,
)


def _fq_sym(v: np.ndarray, amax: float, bits: int) -> np.ndarray:
    s = amax / (2 ** (bits - 1) - 1)
    return np.clip(np.rint(v / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s


def test_max_calibrator_per_tensor_and_per_channel():
    x = torch.tensor([[1.0, -5.0, 2.0], [0.5, 0.25, -0.125]])
    c = MaxCalibrator()
    c.collect(x)
    c.collect(x * 0.5)
    assert float(c.compute_amax(8)) == 5.0
    lo, hi = c.compute_range(8)
    assert (float(lo), float(hi)) == (-5.0, 2.0)
    cc = MaxCalibrator(axis=0)
    cc.collect(x)
    assert cc.compute_amax(8).tolist() == [5.0, 0.5]


def test_growing_histogram_keeps_bin_width_and_counts():
    h = GrowingHistogram(num_bins=16)
    h.add(torch.tensor([0.0, 0.0]))  # zeros before any width is known are not lost
    h.add(torch.linspace(0, 1.6, 17))
    w = h.width
    h.add(torch.tensor([3.0]))  # beyond the range: bins of the same width appended
    assert h.width == w and len(h.counts) == math.floor(3.0 / w) + 1
    assert h.counts.sum() == 2 + 17 + 1 and h.counts[-1] == 1


def test_percentile_on_uniform():
    torch.manual_seed(0)
    c = PercentileCalibrator(percentile=90.0, num_bins=1000)
    c.collect(torch.rand(200_000) * 2 - 1)
    assert abs(float(c.compute_amax(8)) - 0.9) < 0.01


def test_mse_clips_a_heavy_tail_at_low_bits_and_matches_brute_force():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(50_000), torch.tensor([30.0])])  # one far outlier
    c = MSECalibrator(num_bins=512, start_bin=8)
    c.collect(x)
    amax = float(c.compute_amax(4))
    assert amax < 10.0  # far below the outlier
    # brute force over the same candidates with the histogram's bin centres
    h = c.hist
    cand = h.edges[8:]
    err = [float((h.counts * (_fq_sym(h.centres, a, 4) - h.centres) ** 2).sum()) for a in cand]
    assert amax == pytest.approx(cand[int(np.argmin(err))], rel=1e-6)


def brute_force_kl_amax(counts: np.ndarray, width: float, bits: int) -> float:
    """TensorRT's entropy calibration written out with plain loops (Migacz 2017)."""
    levels = 2 ** (bits - 1)
    best, best_i = math.inf, len(counts)
    for i in range(levels, len(counts) + 1):
        p = [float(c) for c in counts[:i]]
        p[i - 1] += float(sum(counts[i:]))
        # Q: merge the unclipped bins into `levels` groups and spread back over non-zero bins of P
        q = [0.0] * i
        step = i // levels
        for j in range(levels):
            a, b = j * step, (i if j == levels - 1 else (j + 1) * step)
            nz = [k for k in range(a, b) if p[k] != 0]
            total = float(sum(counts[a:b]))
            for k in nz:
                q[k] = total / len(nz)
        sp, sq = sum(p), sum(q)
        if sp == 0 or sq == 0:
            continue
        kl = 0.0
        for pk, qk in zip(p, q):
            if pk > 0:
                if qk == 0:
                    kl = math.inf
                    break
                kl += pk / sp * math.log((pk / sp) / (qk / sq))
        if kl < best:
            best, best_i = kl, i
    return best_i * width


def test_entropy_matches_brute_force_kl_search():
    torch.manual_seed(1)
    x = torch.cat([torch.randn(20_000).abs() ** 1.5, torch.tensor([12.0])])
    c = EntropyCalibrator(num_bins=128)
    c.collect(x)
    got = float(c.compute_amax(4))
    want = brute_force_kl_amax(c.hist.counts, c.hist.width, 4)
    assert got == pytest.approx(want, rel=1e-6)
    assert got < 12.0  # KL clips the lone outlier


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def test_uh_clips_silu_tail_below_the_max_and_beats_max_min():
    torch.manual_seed(0)
    x = silu(torch.randn(100_000) * 2.5)  # hard lower bound -0.2785, long upper tail
    c = UnilateralHistogramCalibrator(num_bins=2048, start_bin=128)
    c.collect(x[:50_000])
    c.collect(x[50_000:])
    lo, hi = c.compute_range(4)
    assert float(lo) == pytest.approx(float(x.min()))
    assert -0.2786 < float(lo) < -0.2
    assert float(hi) < 0.9 * float(x.max())

    def err(lo_, hi_):
        s = (hi_ - lo_) / 15
        z = round(-lo_ / s)
        xq = (torch.clamp(torch.round(x / s) + z, 0, 15) - z) * s
        return float(((xq - x) ** 2).mean())

    assert err(float(lo), float(hi)) < err(float(x.min()), float(x.max()))
    # brute force of the same UH objective over all candidates (bin centres from 128 on)
    h = c.hist
    m = min(float(x.min()), 0.0)
    best, best_u = math.inf, None
    for u in h.centres[128:]:
        s = (u - m) / 15
        z = np.clip(np.rint(-m / s), 0, 15)
        ch = (np.clip(np.rint(h.centres / s) + z, 0, 15) - z) * s
        e = float((h.counts * (ch - h.centres) ** 2).sum())
        if e < best:
            best, best_u = e, u
    assert float(hi) == pytest.approx(best_u, rel=1e-5)


def test_sparsity_grid_ignores_empty_positions():
    torch.manual_seed(0)
    # a BEV-like map: 90 % of cells empty (all channels 0), occupied cells hold a long-tailed signal
    x = torch.zeros(2, 8, 32, 32)
    occ = torch.rand(2, 1, 32, 32) < 0.1
    vals = torch.randn(2, 8, 32, 32).abs() ** 2
    x = torch.where(occ, vals, x)
    c = SparsityGridCalibrator(steps=51)
    c.collect(x)
    amax, errs = c.search(4)
    # reference: the same grid scored only on the occupied cells, by hand
    v = x.permute(0, 2, 3, 1)[occ[:, 0]].reshape(-1).numpy()
    mx = float(x.abs().max())
    grid = np.linspace(0.5, 1.0, 51)
    ref = [float(((_fq_sym(v, r * mx, 4) - v) ** 2).mean()) for r in grid]
    np.testing.assert_allclose(errs.numpy(), ref, rtol=1e-4, atol=1e-9)
    assert float(amax) == pytest.approx(grid[int(np.argmin(ref))] * mx, rel=1e-5)
    # adding more empty cells changes nothing, and no empty value is even stored ...
    c2 = SparsityGridCalibrator(steps=51)
    more = torch.cat([x, torch.zeros(6, 8, 32, 32)])
    c2.collect(more)
    assert float(c2.compute_amax(4)) == pytest.approx(float(amax))
    assert sum(t.numel() for t in c2._samples) == v.size
    # ... while a distribution-based calibrator is dragged down by them
    p1, p2 = PercentileCalibrator(99.0), PercentileCalibrator(99.0)
    p1.collect(x)
    p2.collect(more)
    assert float(p2.compute_amax(4)) < 0.8 * float(p1.compute_amax(4))


def test_sparsity_grid_per_channel_weights():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 0, 0] = 20.0  # an outlier in channel 0 only
    c = SparsityGridCalibrator(axis=0, steps=11)
    c.collect(w)
    amax = c.compute_amax(4)
    assert amax.shape == (4,)
    assert float(amax[0]) <= 20.0 and float(amax[0]) >= 10.0
    for ch in range(1, 4):
        v = w[ch].reshape(-1).numpy()
        mx = float(np.abs(v).max())
        errs = [float(((_fq_sym(v, r * mx, 4) - v) ** 2).mean()) for r in np.linspace(0.5, 1, 11)]
        assert float(amax[ch]) == pytest.approx(np.linspace(0.5, 1, 11)[int(np.argmin(errs))] * mx, rel=1e-5)


def test_every_calibrator_of_the_table_builds_from_a_spec():
    from qd_perception.quant.calib import CALIBRATORS, PER_CHANNEL_CAPABLE, make_calibrator
    from qd_perception.quant.quantizer import CalibSpec, QuantSpec

    for name, kind in CALIBRATORS.items():
        assert type(make_calibrator(CalibSpec(method=name), None)) is kind.cls
        if name in PER_CHANNEL_CAPABLE:
            assert type(make_calibrator(CalibSpec(method=name), 0)) is kind.cls
            QuantSpec(per_channel=True, calib=CalibSpec(method=name))
        else:
            with pytest.raises(ValueError, match="per-tensor only"):
                make_calibrator(CalibSpec(method=name), 0)
    assert PER_CHANNEL_CAPABLE == {"max", "sparsity_grid"}


def test_presets_and_their_rules_come_from_the_table():
    from qd_perception.quant.calib import ACT_PRESETS, CALIBRATORS
    from qd_perception.quant.config import preset
    from qd_perception.quant.quantizer import CalibSpec, QuantSpec

    # the CLI's activation presets, in table order: max-min is offered as "minmax"
    assert ACT_PRESETS == {
        "minmax": "max",
        "percentile": "percentile",
        "mse": "mse",
        "entropy": "entropy",
        "uh": "uh",
    }
    for name, calibrator in ACT_PRESETS.items():
        kind = CALIBRATORS[calibrator]
        act = preset(name, "w8a8", "ort").act
        assert act.calib.method == calibrator and act.symmetric == (kind.ranges == "symmetric")
        if kind.ranges == "asymmetric":
            with pytest.raises(ValueError, match="TensorRT needs symmetric"):
                preset(name, "w8a8", "trt")
            with pytest.raises(ValueError, match="asymmetric range"):
                QuantSpec(symmetric=True, calib=CalibSpec(method=calibrator))
        else:
            assert preset(name, "w8a8", "trt").act.symmetric
    assert preset("lidar_ptq", "w8a8", "ort").act.calib.method == "max"
    with pytest.raises(ValueError, match="unknown method"):
        preset("kl", "w8a8")
