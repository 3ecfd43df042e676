"""Dense auxiliary BEV head (CenterPoint-style) on the encoder output, and the two-stage
query initialisation from its peaks (as BEVFormer v2 / TransFusion).

The head predicts, on the BEV grid (row = y, column = x, ego frame), a per-class centre heatmap
(K, H_bev, W_bev) and a box code per cell::

    [dx_cell, dy_cell, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]

with ``dx_cell, dy_cell`` the offset of the centre from the cell's lower corner in cells, ``z`` the
box centre height (m), sizes in metres, velocity in m/s. Its own loss (Gaussian focal loss on the
heatmap, L1 on the codes at the centre cells) gives the BEV features a dense, fast-converging
training signal. With ``two_stage`` the decoder's object queries start at the top-k heatmap peaks
(content = the BEV feature there plus a class embedding, reference point = the peak's box
centre) and the decoder refines the peak's class logits and box code as residuals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qd_perception.models.bevformer.config import BEVFormerConfig, DenseHeadConfig


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DenseHead(nn.Module):
    """BEV (B, H*W, C) -> heatmap logits (B, K, H, W), codes (B, 10, H, W)."""

    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        C, h, K = cfg.embed_dims, cfg.dense_head.hidden, cfg.num_classes
        self.hw = (cfg.bev_h, cfg.bev_w)
        self.shared = _conv_bn_relu(C, h)
        self.heatmap = nn.Sequential(_conv_bn_relu(h, h), nn.Conv2d(h, K, 1))
        self.reg = nn.Sequential(_conv_bn_relu(h, h), nn.Conv2d(h, 10, 1))
        # CenterPoint's prior: initial centre probability ~0.1
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def forward(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, C = bev.shape
        x = self.shared(bev.transpose(1, 2).reshape(B, C, *self.hw))
        return self.heatmap(x), self.reg(x)


@dataclass
class Proposals:
    """Decoder initialisation from the heatmap peaks (Q per sample).

    content (B, Q, C); ref (B, Q, 3) box centre normalised over ``pc_range`` in (0, 1);
    logits (B, Q, K) heatmap logits at the peak cell; codes (B, Q, 10) the peak's box code in the
    decoder's metric form [x, y, z, log l, log w, log h, sin, cos, vx, vy]; labels (B, Q).
    """

    content: torch.Tensor
    ref: torch.Tensor
    logits: torch.Tensor
    codes: torch.Tensor
    labels: torch.Tensor


def cell_codes_to_metric(reg: torch.Tensor, cell: torch.Tensor, cfg: BEVFormerConfig) -> torch.Tensor:
    """Cell-relative codes (..., 10) at flat BEV cell indices ``cell`` (...) -> metric codes."""
    x0, y0, _, x1, y1, _ = cfg.pc_range
    cw, ch = (x1 - x0) / cfg.bev_w, (y1 - y0) / cfg.bev_h
    ix = (cell % cfg.bev_w).to(reg.dtype)
    iy = torch.div(cell, cfg.bev_w, rounding_mode="floor").to(reg.dtype)
    x = x0 + (ix + reg[..., 0]) * cw
    y = y0 + (iy + reg[..., 1]) * ch
    return torch.cat([x[..., None], y[..., None], reg[..., 2:]], dim=-1)


def make_proposals(
    heat: torch.Tensor, reg: torch.Tensor, bev: torch.Tensor, class_embed: nn.Embedding, cfg: BEVFormerConfig
) -> Proposals:
    """Top ``cfg.num_queries`` (cell, class) peaks of the heatmap (3x3 max-pool suppression)."""
    B, K, H, W = heat.shape
    Q = cfg.num_queries
    hm = heat.detach().sigmoid()
    peak = hm * (F.max_pool2d(hm, 3, stride=1, padding=1) == hm).to(hm.dtype)
    _, idx = peak.flatten(1).topk(Q, dim=1)  # over K*H*W
    labels = torch.div(idx, H * W, rounding_mode="floor")
    cell = idx % (H * W)
    logits = torch.gather(heat.detach().flatten(2).transpose(1, 2), 1, cell[..., None].expand(B, Q, K))
    codes_cell = torch.gather(reg.detach().flatten(2).transpose(1, 2), 1, cell[..., None].expand(B, Q, 10))
    codes = cell_codes_to_metric(codes_cell, cell, cfg)
    content = torch.gather(bev, 1, cell[..., None].expand(B, Q, bev.shape[-1])) + class_embed(labels)
    lo = torch.tensor(cfg.pc_range[:3], dtype=codes.dtype, device=codes.device)
    size = torch.tensor(cfg.pc_range[3:], dtype=codes.dtype, device=codes.device) - lo
    ref = ((codes[..., :3] - lo) / size).clamp(1e-4, 1 - 1e-4)
    return Proposals(content, ref, logits, codes, labels)


# -- training targets and loss ------------------------------------------------------------------


def dense_targets(
    boxes: np.ndarray, labels: np.ndarray, cfg: BEVFormerConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, 9) ego boxes, (M,) labels -> heatmap (K, H, W) float32, codes (H*W, 10) float32 and
    centre mask (H*W,) bool (cells holding a box centre; the last box wins a shared cell)."""
    from qd_perception.models.centerpoint.targets import draw_gaussian, gaussian_radius

    dh: DenseHeadConfig = cfg.dense_head
    K, H, W = cfg.num_classes, cfg.bev_h, cfg.bev_w
    x0, y0, _, x1, y1, _ = cfg.pc_range
    cw, ch = (x1 - x0) / W, (y1 - y0) / H
    hm = np.zeros((K, H, W), np.float32)
    codes = np.zeros((H * W, 10), np.float32)
    mask = np.zeros(H * W, bool)
    for b, k in zip(np.asarray(boxes, np.float64), np.asarray(labels)):
        fx, fy = (b[0] - x0) / cw, (b[1] - y0) / ch
        ix, iy = math.floor(fx), math.floor(fy)
        if not (0 <= ix < W and 0 <= iy < H):
            continue
        r = max(dh.min_radius, int(gaussian_radius(b[4] / ch, b[3] / cw, dh.min_overlap)))
        draw_gaussian(hm[int(k)], ix, iy, r)
        c = iy * W + ix
        codes[c] = [fx - ix, fy - iy, b[2], *np.log(np.maximum(b[3:6], 1e-3)), math.sin(b[6]),
                    math.cos(b[6]), b[7], b[8]]  # fmt: skip
        mask[c] = True
    return hm, codes, mask


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed (normalise by the number of centres)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).to(p.dtype)
    pos_loss = -(1 - p).pow(2) * p.log() * pos
    neg_loss = -(1 - target).pow(4) * p.pow(2) * (1 - p).log() * (1 - pos)
    return (pos_loss + neg_loss).sum()


def dense_loss(
    heat: torch.Tensor, reg: torch.Tensor, targets, cfg: BEVFormerConfig
) -> tuple[torch.Tensor, float, float]:
    """Heatmap focal + code L1 of the dense head over a batch. Returns (weighted total, heatmap
    part, code part) normalised by the number of centre cells (at least 1)."""
    dh = cfg.dense_head
    hms, codes, masks = zip(*(dense_targets(t.boxes.numpy(), t.labels.numpy(), cfg) for t in targets))
    hm = torch.from_numpy(np.stack(hms)).to(heat)
    code = torch.from_numpy(np.stack(codes)).to(reg)
    mask = torch.from_numpy(np.stack(masks)).to(reg.device)
    n = max(1.0, float(mask.sum()))
    l_hm = gaussian_focal_loss(heat, hm) / n
    w = torch.tensor(cfg.loss.code_weights, dtype=reg.dtype, device=reg.device)
    pred = reg.flatten(2).transpose(1, 2)  # (B, H*W, 10)
    l_reg = ((pred - code).abs() * w * mask[..., None]).sum() / n
    total = dh.heatmap_weight * l_hm + dh.reg_weight * l_reg
    return total, float(l_hm.detach()), float(l_reg.detach())
