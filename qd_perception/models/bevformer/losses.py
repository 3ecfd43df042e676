"""Hungarian matching and the DETR-style set loss (sigmoid focal + weighted L1), over every
decoder layer (auxiliary losses, as BEVFormer)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from qd_perception.models.bevformer.coder import encode_boxes
from qd_perception.models.bevformer.config import LossConfig


@dataclass(frozen=True)
class Targets:
    """One sample's ground truth: boxes (M, 9) ego frame, labels (M,) int64."""

    boxes: torch.Tensor
    labels: torch.Tensor


def focal_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """(Q, K) logits, (M,) labels -> (Q, M) focal classification cost (as Deformable DETR)."""
    p = logits.sigmoid()
    neg = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    return (pos - neg)[:, labels]


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor, codes: torch.Tensor, targets: Targets, cfg: LossConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one assignment of queries to ground truth.

    Cost = cls_weight * focal cost + bbox_weight * L1 over the first 8 code entries (velocity
    excluded, as BEVFormer). Returns (query indices, target indices), each (min(Q, M),).
    """
    M = len(targets.labels)
    if M == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tcode = encode_boxes(targets.boxes)
    cost = cfg.cls_weight * focal_cost(logits, targets.labels, cfg.focal_alpha, cfg.focal_gamma)
    cost = cost + cfg.bbox_weight * torch.cdist(codes[:, :8], tcode[:, :8], p=1)
    qi, ti = linear_sum_assignment(cost.cpu().numpy())
    return qi.astype(np.int64), ti.astype(np.int64)


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Element-wise focal loss, summed."""
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    w = alpha * target + (1 - alpha) * (1 - target)
    return (w * (1 - pt) ** gamma * ce).sum()


@dataclass(frozen=True)
class LossBreakdown:
    total: torch.Tensor
    cls: float  # last layer, for logging
    bbox: float
    dense_heatmap: float = 0.0  # dense auxiliary head (0 without it)
    dense_reg: float = 0.0
    perspective: float = 0.0  # perspective supervision (training only)
    denoising: float = 0.0  # denoising queries (training only, 0 without them)


def set_loss(
    cls_logits: torch.Tensor, box_codes: torch.Tensor, targets: list[Targets], cfg: LossConfig
) -> LossBreakdown:
    """cls_logits (L, B, Q, K), box_codes (L, B, Q, 10): sum over layers of the matched set loss,
    each normalised by the number of ground-truth boxes in the batch (at least 1)."""
    L, B = cls_logits.shape[:2]
    num_gt = max(1.0, float(sum(len(t.labels) for t in targets)))
    w = torch.tensor(cfg.code_weights, dtype=box_codes.dtype, device=box_codes.device)
    total = cls_logits.new_zeros(())
    last_cls = last_box = 0.0
    for layer in range(L):
        lc = cls_logits.new_zeros(())
        lb = cls_logits.new_zeros(())
        for b in range(B):
            logits, codes, t = cls_logits[layer, b], box_codes[layer, b], targets[b]
            qi, ti = hungarian_match(logits, codes, t, cfg)
            onehot = torch.zeros_like(logits)
            if len(qi):
                onehot[torch.as_tensor(qi), t.labels[torch.as_tensor(ti)]] = 1.0
                tcode = encode_boxes(t.boxes[torch.as_tensor(ti)])
                diff = (codes[torch.as_tensor(qi)] - tcode).abs() * w
                lb = lb + torch.nan_to_num(diff).sum()
            lc = lc + sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma)
        lc = cfg.cls_weight * lc / num_gt
        lb = cfg.bbox_weight * lb / num_gt
        total = total + lc + lb
        if layer == L - 1:
            last_cls, last_box = float(lc.detach()), float(lb.detach())
    return LossBreakdown(total, last_cls, last_box)


def detection_loss(
    outputs, targets: list[Targets], cfg: LossConfig, extra=None, model_cfg=None
) -> LossBreakdown:
    """The training loss of a forward pass (``BEVFormerOutputs``), the one entry point every
    training loop (FP32 training, QAT, distillation) calls, so auxiliary heads added to the model
    are trained the same way everywhere. ``extra`` carries per-batch targets an auxiliary loss
    needs beyond the boxes: the batch itself (``train.bev_data.Batch``: intrinsics, cam2ego) for
    the perspective head. ``model_cfg``
    (the ``BEVFormerConfig``) is needed for the dense head's loss."""
    from qd_perception.models.bevformer.config import BEVFormerConfig

    if isinstance(cfg, BEVFormerConfig):
        model_cfg, cfg = cfg, cfg.loss
    out = set_loss(outputs.cls_logits, outputs.box_codes, targets, cfg)
    if outputs.dense_heatmap is None and outputs.perspective is None and outputs.dn is None:
        return out
    if model_cfg is None:
        raise ValueError("the model has auxiliary heads: pass its BEVFormerConfig to detection_loss")
    total, hm, reg, persp, dn = out.total, 0.0, 0.0, 0.0, 0.0
    if outputs.dn is not None:
        from qd_perception.models.bevformer.denoising import dn_loss

        d = dn_loss(outputs.dn, targets, model_cfg)
        total, dn = total + d, float(d.detach())
    if outputs.dense_heatmap is not None:
        from qd_perception.models.bevformer.dense_head import dense_loss

        d, hm, reg = dense_loss(outputs.dense_heatmap, outputs.dense_codes, targets, model_cfg)
        total = total + d
    if outputs.perspective is not None:
        from qd_perception.models.bevformer.perspective_head import perspective_loss

        if extra is None:
            raise ValueError("perspective supervision needs the batch (intrinsics, cam2ego) as extra")
        p, persp = perspective_loss(*outputs.perspective, extra, model_cfg)
        total = total + p
    return LossBreakdown(total, out.cls, out.bbox, hm, reg, persp, dn)
