"""CenterPoint losses: CornerNet focal loss on heatmaps, weighted L1 on box codes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qd_perception.models.centerpoint.config import LossConfig
from qd_perception.models.centerpoint.head import TaskOutput
from qd_perception.models.centerpoint.targets import TaskTargets


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CornerNet variant (alpha 2, beta 4) on sigmoid(logits), normalised by the number of peaks."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg
    num_pos = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos.clamp(min=1.0)


def gather_code(code_map: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) maps, (B, K) flat indices -> (B, K, D)."""
    b, d, _, _ = code_map.shape
    flat = code_map.reshape(b, d, -1).permute(0, 2, 1)
    return flat.gather(1, ind.unsqueeze(-1).expand(-1, -1, d))


def reg_l1_loss(code_map: torch.Tensor, tgt: TaskTargets) -> torch.Tensor:
    """Per-channel L1 (D,) summed over objects and divided by their number."""
    pred = gather_code(code_map, tgt.ind)
    mask = tgt.mask.unsqueeze(-1)
    loss = (torch.abs(pred - tgt.box) * mask).sum(dim=(0, 1))
    return loss / (tgt.mask.sum() + 1e-4)


@dataclass(frozen=True)
class LossOutput:
    total: torch.Tensor
    heatmap: torch.Tensor  # sum over tasks
    loc: torch.Tensor  # weighted L1, sum over tasks
    per_channel_l1: torch.Tensor  # (D,) unweighted, summed over tasks (for logs)


def centerpoint_loss(outputs: list[TaskOutput], targets: list[TaskTargets], cfg: LossConfig) -> LossOutput:
    dev = outputs[0].heatmap.device
    w = torch.tensor(cfg.code_weights, device=dev)
    hm_total = torch.zeros((), device=dev)
    loc_total = torch.zeros((), device=dev)
    per_ch = torch.zeros(len(cfg.code_weights), device=dev)
    for out, tgt in zip(outputs, targets):
        hm_total = hm_total + focal_loss(out.heatmap, tgt.heatmap)
        l1 = reg_l1_loss(out.box_code(), tgt)
        loc_total = loc_total + (l1 * w).sum()
        per_ch = per_ch + l1.detach()
    total = cfg.hm_weight * hm_total + cfg.loc_weight * loc_total
    return LossOutput(total, hm_total.detach(), loc_total.detach(), per_ch)
