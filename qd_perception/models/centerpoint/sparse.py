"""spconv 3-D sparse backbone of the voxel variant (SubMConv3d / SparseConv3d + BatchNorm1d + ReLU).

Layers are plain spconv / torch modules so that quantization can swap them by type.
spconv is imported lazily: the pillar variant never needs it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qd_perception.models.centerpoint.config import SparseBackboneConfig

_PATCHED = False


def import_spconv() -> Any:
    """``spconv.pytorch``, with the CPU-backward fix applied once.

    spconv 2.3.8's CPU build asks for a CUDA stream in its backward ops; returning 0 (no stream)
    makes backward work on CPU (an upstream bug of that release).
    """
    global _PATCHED
    try:
        import spconv.pytorch as spconv
        from spconv.pytorch import cppcore, hash, ops
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the voxel CenterPoint variant needs spconv (pip install spconv==2.3.8)") from e
    if not _PATCHED and not torch.cuda.is_available():
        for m in (ops, cppcore, hash):
            m.get_current_stream = lambda: 0
        _PATCHED = True
    return spconv


def _down(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class SparseBackbone(nn.Module):
    """Sparse voxel features -> dense BEV map.

    Input: features (V, C_in), coords (V, 4) int32 [b, z, y, x], grid (nx, ny, nz).
    Output: (B, out_channels * D, ny / s, nx / s) with s = 2 ** (len(channels) - 1) and D the
    z cells left after the stride-2 stages and the final (3, 1, 1) stride-(2, 1, 1) conv.
    """

    def __init__(self, in_channels: int, grid_size: tuple[int, int, int], cfg: SparseBackboneConfig):
        super().__init__()
        sp = import_spconv()
        self.grid_size = grid_size
        ch = cfg.channels

        def block(cin: int, cout: int, key: str) -> list[nn.Module]:
            return [
                sp.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key),
                nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01),
                nn.ReLU(),
            ]

        layers: list[nn.Module] = block(in_channels, ch[0], "subm0")
        for _ in range(cfg.blocks):
            layers += block(ch[0], ch[0], "subm0")
        nz = grid_size[2]
        for i in range(1, len(ch)):
            layers += [
                sp.SparseConv3d(ch[i - 1], ch[i], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm1d(ch[i], eps=1e-3, momentum=0.01),
                nn.ReLU(),
            ]
            for _ in range(cfg.blocks):
                layers += block(ch[i], ch[i], f"subm{i}")
            nz = _down(nz, 3, 2, 1)
        if nz < 3:
            raise ValueError(f"too few z cells ({nz}) left for the z-compressing conv; enlarge z range")
        layers += [
            sp.SparseConv3d(ch[-1], cfg.out_channels, (3, 1, 1), stride=(2, 1, 1), bias=False),
            nn.BatchNorm1d(cfg.out_channels, eps=1e-3, momentum=0.01),
            nn.ReLU(),
        ]
        self.net = sp.SparseSequential(*layers)
        self.out_depth = _down(nz, 3, 2, 0)
        self.out_channels = cfg.out_channels * self.out_depth
        self.stride = 2 ** (len(ch) - 1)

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        sp = import_spconv()
        nx, ny, nz = self.grid_size
        x = sp.SparseConvTensor(features, coords.int(), [nz, ny, nx], batch_size)
        threads = torch.get_num_threads()
        if features.device.type == "cpu" and threads > 1:
            # spconv 2.3.8's CPU kernels race with more than one torch thread: measured here, the
            # same input gave BEV features differing by 3.5 (of 4.9) between two runs. One thread
            # is exact and deterministic, so the sparse part always runs single-threaded on CPU.
            torch.set_num_threads(1)
        try:
            out = self.net(x)
        finally:
            torch.set_num_threads(threads)
        dense = out.dense()  # (B, C, D, H, W)
        b, c, d, h, w = dense.shape
        return dense.reshape(b, c * d, h, w)
