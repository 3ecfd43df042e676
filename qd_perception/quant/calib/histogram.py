"""Histogram calibrators: percentile, MSE, entropy (TensorRT KL) and Q-YOLO's unilateral histogram.

All keep a histogram of non-negative values on ``[0, running max]`` with a fixed bin width chosen
on the first batch (``num_bins`` bins); when a later batch exceeds the range, bins of the same
width are appended, so no batch is ever re-binned.
The symmetric calibrators histogram ``|x|``; UH histograms ``x >= 0`` and keeps the running
minimum separately.

Bin ``i`` covers ``[i*w, (i+1)*w)``; its centre ``(i + 0.5) * w`` stands for all its values when
a candidate clip is scored.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qd_perception.quant.calib.base import Calibrator, NothingCollectedError


class GrowingHistogram:
    """Counts of non-negative values in equal-width bins on ``[0, hi)``, extended as needed."""

    def __init__(self, num_bins: int = 2048) -> None:
        if num_bins < 16:
            raise ValueError(f"num_bins must be >= 16, got {num_bins}")
        self.num_bins = num_bins
        self.counts = np.zeros(0, np.float64)
        self.width = 0.0
        self._pending_zeros = 0.0  # zeros seen before any positive value fixed the bin width

    @property
    def empty(self) -> bool:
        return len(self.counts) == 0 and self._pending_zeros == 0

    @torch.no_grad()
    def add(self, v: torch.Tensor) -> None:
        """Add values ``v >= 0`` (any shape)."""
        v = v.detach().reshape(-1).float()
        if v.numel() == 0:
            return
        vmax = float(v.max())
        if self.width == 0.0:
            if vmax <= 0.0:
                self._pending_zeros += v.numel()
                return
            self.width = vmax / self.num_bins
            self.counts = np.zeros(self.num_bins, np.float64)
            self.counts[0] += self._pending_zeros
            self._pending_zeros = 0.0
        n = len(self.counts)
        if vmax >= n * self.width:
            n = math.floor(vmax / self.width) + 1
            self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts))])
        idx = torch.clamp((v / self.width).long(), 0, n - 1)
        self.counts += torch.bincount(idx, minlength=n).double().numpy()

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1, dtype=np.float64) * self.width

    @property
    def centres(self) -> np.ndarray:
        return (np.arange(len(self.counts), dtype=np.float64) + 0.5) * self.width


def _fq_sym_np(c: np.ndarray, amax: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric fake quant of magnitudes ``c`` (N,) for each clip in ``amax`` (K,) -> (K, N)."""
    qmax = 2 ** (bits - 1) - 1
    s = np.maximum(amax[:, None] / qmax, 1e-12)
    return np.clip(np.round(c[None, :] / s), -qmax - 1, qmax) * s


def _fq_affine_np(c: np.ndarray, lo: float, hi: np.ndarray, bits: int) -> np.ndarray:
    """Asymmetric fake quant of ``c`` (N,) on ``[lo, hi_k]`` for each ``hi_k`` (K,) -> (K, N)."""
    qmax = 2**bits - 1
    lo = min(lo, 0.0)
    s = np.maximum((hi[:, None] - lo) / qmax, 1e-12)
    z = np.clip(np.round(-lo / s), 0, qmax)
    return (np.clip(np.round(c[None, :] / s) + z, 0, qmax) - z) * s


def _weighted_sq_error(counts: np.ndarray, centres: np.ndarray, fq, chunk: int = 256) -> np.ndarray:
    """``sum_i counts_i (fq_k(c_i) - c_i)^2`` for every candidate k, computed in chunks of candidates."""
    out = []
    for k0 in range(0, fq.num, chunk):
        c_hat = fq(k0, min(k0 + chunk, fq.num))
        out.append(((c_hat - centres[None, :]) ** 2 * counts[None, :]).sum(axis=1))
    return np.concatenate(out)


class _Candidates:
    def __init__(self, num: int, fn) -> None:
        self.num, self._fn = num, fn

    def __call__(self, a: int, b: int) -> np.ndarray:
        return self._fn(a, b)


class _AbsHistogramCalibrator(Calibrator):
    axis = None

    def __init__(self, num_bins: int = 2048) -> None:
        self.num_bins = num_bins
        self.reset()

    def reset(self) -> None:
        self.hist = GrowingHistogram(self.num_bins)

    @property
    def empty(self) -> bool:
        return self.hist.empty

    def collect(self, x: torch.Tensor) -> None:
        self.hist.add(x.detach().abs())

    def _check(self) -> None:
        if self.hist.empty:
            raise NothingCollectedError(f"{type(self).__name__}: no data collected")
        if self.hist.width == 0.0:  # only zeros seen
            raise NothingCollectedError(f"{type(self).__name__}: only zeros collected")


class PercentileCalibrator(_AbsHistogramCalibrator):
    """``amax`` = the ``percentile`` of ``|x|`` (upper edge of the bin where the CDF crosses it)."""

    def __init__(self, percentile: float = 99.99, num_bins: int = 2048) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile
        super().__init__(num_bins)

    def compute_amax(self, bits: int) -> torch.Tensor:
        self._check()
        cdf = np.cumsum(self.hist.counts) / self.hist.counts.sum()
        i = int(np.searchsorted(cdf, self.percentile / 100.0 - 1e-12))
        i = min(i, len(cdf) - 1)
        return torch.tensor(self.hist.edges[i + 1], dtype=torch.float32)


class MSECalibrator(_AbsHistogramCalibrator):
    """``amax`` minimising the histogram-weighted squared error of symmetric fake quant.

    Candidates are the bin edges from ``start_bin`` to the last one (every ``stride``-th).
    """

    def __init__(self, num_bins: int = 2048, start_bin: int = 128, stride: int = 1) -> None:
        self.start_bin, self.stride = start_bin, stride
        super().__init__(num_bins)

    def compute_amax(self, bits: int) -> torch.Tensor:
        self._check()
        counts, centres, edges = self.hist.counts, self.hist.centres, self.hist.edges
        start = min(self.start_bin, len(counts))
        cand = edges[start : len(edges) : self.stride]
        err = _weighted_sq_error(
            counts, centres, _Candidates(len(cand), lambda a, b: _fq_sym_np(centres, cand[a:b], bits))
        )
        return torch.tensor(cand[int(np.argmin(err))], dtype=torch.float32)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p || q)`` of two unnormalised histograms; ``inf`` where ``p > 0`` but ``q == 0``."""
    p = p / p.sum()
    q = q / q.sum()
    m = p > 0
    if np.any(q[m] == 0):
        return math.inf
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def quantize_distribution(hist: np.ndarray, p: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT's candidate Q: merge ``hist`` (i bins) into ``levels`` groups, spread each group's
    total evenly over the bins of the group where the reference ``p`` is non-zero.

    Groups are ``i // levels`` bins wide; the last group also takes the remainder.
    """
    i = len(hist)
    step = i // levels
    group = np.minimum(np.arange(i) // step, levels - 1)
    nz = p != 0
    totals = np.bincount(group, weights=hist, minlength=levels)
    n_nz = np.bincount(group, weights=nz.astype(np.float64), minlength=levels)
    per_bin = np.divide(totals, n_nz, out=np.zeros(levels), where=n_nz > 0)
    return np.where(nz, per_bin[group], 0.0)


class EntropyCalibrator(_AbsHistogramCalibrator):
    """TensorRT's entropy (KL) calibration (Migacz, "8-bit inference with TensorRT", 2017).

    For each candidate ``i`` (``2^(b-1)`` .. number of bins): the reference P is the first ``i``
    bins with every count beyond folded into bin ``i-1`` (clipped values land on the clip); Q is
    the first ``i`` bins (unfolded) merged into ``2^(b-1)`` levels and expanded back
    (:func:`quantize_distribution`). ``amax`` = upper edge of bin ``i-1`` (``i * width``) for the
    ``i`` with the smallest ``KL(P || Q)``.
    """

    def compute_amax(self, bits: int) -> torch.Tensor:
        self._check()
        counts = self.hist.counts
        levels = 2 ** (bits - 1)
        n = len(counts)
        if n <= levels:
            return torch.tensor(n * self.hist.width, dtype=torch.float32)
        best_i, best_kl = n, math.inf
        suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # suffix[i] = sum(counts[i:])
        for i in range(levels, n + 1):
            p = counts[:i].copy()
            p[i - 1] += suffix[i]
            if p.sum() == 0:
                continue
            kl = kl_divergence(p, quantize_distribution(counts[:i], p, levels))
            if kl < best_kl:
                best_i, best_kl = i, kl
        return torch.tensor(best_i * self.hist.width, dtype=torch.float32)


class UnilateralHistogramCalibrator(Calibrator):
    """Q-YOLO's unilateral histogram (UH; Wang et al., 2023).

    Histogram of the values in ``[0, running max]`` (``num_bins`` bins, extended with bins of the
    same width when the max grows) plus the running minimum ``m``. For each candidate upper bound
    ``u`` = centre of bin ``i``, ``i = start_bin .. last``, the bin centres are fake-quantized
    asymmetrically on ``[m, u]`` with ``b`` bits and scored by ``sum_i count_i (c_hat_i - c_i)^2``;
    the best ``u`` wins and the lower bound stays ``m``. Meant for activations with a hard lower
    bound (ReLU 0, SiLU -0.2785) and a long upper tail; the quantizer using it must be asymmetric
    (``compute_range``). ``compute_amax`` returns ``max(|m|, u)`` for symmetric use.
    """

    axis = None

    def __init__(self, num_bins: int = 2048, start_bin: int = 128) -> None:
        self.num_bins, self.start_bin = num_bins, start_bin
        self.reset()

    def reset(self) -> None:
        self.hist = GrowingHistogram(self.num_bins)
        self.running_min = math.inf

    @property
    def empty(self) -> bool:
        return self.hist.empty and self.running_min == math.inf

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if x.numel() == 0:
            return
        self.running_min = min(self.running_min, float(x.min()))
        self.hist.add(x[x >= 0])

    def compute_range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.empty:
            raise NothingCollectedError("UnilateralHistogramCalibrator: no data collected")
        m = min(self.running_min, 0.0)
        counts, centres = self.hist.counts, self.hist.centres
        if len(counts) == 0:  # nothing >= 0 above zero: the range is [m, 0]
            return torch.tensor(m), torch.tensor(0.0)
        start = min(self.start_bin, len(counts) - 1)
        cand = centres[start:]
        err = _weighted_sq_error(
            counts, centres, _Candidates(len(cand), lambda a, b: _fq_affine_np(centres, m, cand[a:b], bits))
        )
        u = cand[int(np.argmin(err))]
        return torch.tensor(m, dtype=torch.float32), torch.tensor(u, dtype=torch.float32)

    def compute_amax(self, bits: int) -> torch.Tensor:
        lo, hi = self.compute_range(bits)
        return torch.maximum(lo.abs(), hi)
