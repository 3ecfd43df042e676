"""SECOND-style 2-D BEV backbone and upsampling neck (Conv2d / ConvTranspose2d + BN + ReLU)."""

from __future__ import annotations

import torch
from torch import nn

from qd_perception.models.centerpoint.config import Backbone2dConfig


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=s, padding=k // 2 if k == 3 else 0, bias=False),
        nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
        nn.ReLU(),
    ]


class SecondBackbone(nn.Module):
    """(B, C_in, H, W) -> (B, sum(num_upsample_filters), H / stride, W / stride).

    Stage i: a stride ``layer_strides[i]`` conv then ``layer_nums[i]`` convs; neck branch i
    brings stage i to a common resolution (ConvTranspose2d when upsampling, strided conv when the
    stride is < 1) and the branches are concatenated.
    """

    def __init__(self, in_channels: int, cfg: Backbone2dConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        cin = in_channels
        cum = 1
        out_strides = []
        for i, (n, s, f) in enumerate(zip(cfg.layer_nums, cfg.layer_strides, cfg.num_filters)):
            layers = _cbr(cin, f, 3, s)
            for _ in range(n):
                layers += _cbr(f, f)
            self.blocks.append(nn.Sequential(*layers))
            cum *= s
            up = cfg.upsample_strides[i]
            uf = cfg.num_upsample_filters[i]
            if up >= 1:
                k = round(up)
                self.deblocks.append(
                    nn.Sequential(
                        nn.ConvTranspose2d(f, uf, k, stride=k, bias=False),
                        nn.BatchNorm2d(uf, eps=1e-3, momentum=0.01),
                        nn.ReLU(),
                    )
                )
                out_strides.append(cum / k)
            else:
                k = round(1 / up)
                self.deblocks.append(nn.Sequential(*_cbr(f, uf, k, k)))
                out_strides.append(cum * k)
            cin = f
        if len(set(out_strides)) != 1:
            raise ValueError(f"neck branches end at different strides {out_strides}")
        self.stride = out_strides[0]
        self.out_channels = sum(cfg.num_upsample_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for block, deblock in zip(self.blocks, self.deblocks):
            x = block(x)
            outs.append(deblock(x))
        return torch.cat(outs, dim=1)
