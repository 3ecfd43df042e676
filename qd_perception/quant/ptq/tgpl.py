"""TGPL, LiDAR-PTQ's task-guided global positive loss (LiDAR-PTQ, Zhou et al., ICLR 2024, step 2).

The float model's own confident detections are the pseudo labels: **positives** are heatmap
peaks (local maxima in a ``nms_kernel`` window) whose score exceeds ``score_threshold``, at most
``top_k`` per sample over all task groups, anywhere in the scene (global, not per object size).
At those cells the quantized head outputs are pulled towards the float ones:

* heatmap term — binary cross-entropy of the quantized logits against the float probabilities
  (soft targets), over every class channel of the task, averaged over positives;
* box term — L1 between the quantized and float box codes (offset, z, log size, sin/cos yaw,
  velocity), averaged over positives and channels.

``loss = heatmap_weight * heatmap + box_weight * box``. The paper publishes neither the threshold,
``k`` nor the weights: they are config.

Interface a head must satisfy (CenterPoint's ``TaskOutput`` does): each task output has
``heatmap`` (B, K, H, W) logits and ``box_code()`` -> (B, R, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class HeadOutput(Protocol):
    heatmap: torch.Tensor  # (B, K, H, W) class logits

    def box_code(self) -> torch.Tensor: ...  # (B, R, H, W)


@dataclass(frozen=True)
class TGPLConfig:
    score_threshold: float = 0.3
    top_k: int = 100
    nms_kernel: int = 3
    heatmap_weight: float = 1.0
    box_weight: float = 0.25


@torch.no_grad()
def positive_masks(fp_outputs: Sequence[HeadOutput], cfg: TGPLConfig) -> list[torch.Tensor]:
    """One (B, H, W) bool mask per task: the float model's confident peaks (see module docstring)."""
    scores = []
    for t in fp_outputs:
        s = torch.sigmoid(t.heatmap).amax(dim=1)  # (B, H, W)
        k = cfg.nms_kernel
        if k > 1:
            peak = F.max_pool2d(s[:, None], k, stride=1, padding=k // 2)[:, 0]
            s = torch.where(s >= peak, s, torch.zeros_like(s))
        scores.append(s)
    allsc = torch.stack(scores, 1)  # (B, T, H, W)
    b, t, h, w = allsc.shape
    flat = allsc.reshape(b, -1)
    k = min(cfg.top_k, flat.shape[1])
    top, idx = flat.topk(k, dim=1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, idx, top > cfg.score_threshold)
    keep = keep.reshape(b, t, h, w)
    return [keep[:, i] for i in range(t)]


def tgpl_loss(
    q_outputs: Sequence[HeadOutput],
    fp_outputs: Sequence[HeadOutput],
    masks: Sequence[torch.Tensor],
    cfg: TGPLConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TGPL between quantized and float outputs at the positives ``masks`` -> (loss, parts)."""
    hm_terms, box_terms, n_pos = [], [], 0
    for q, f, m in zip(q_outputs, fp_outputs, masks):
        n = int(m.sum())
        if n == 0:
            continue
        n_pos += n
        qh = q.heatmap.permute(0, 2, 3, 1)[m]  # (n, K)
        fh = torch.sigmoid(f.heatmap.detach()).permute(0, 2, 3, 1)[m]
        hm_terms.append(F.binary_cross_entropy_with_logits(qh, fh, reduction="sum") / qh.shape[1])
        qb = q.box_code().permute(0, 2, 3, 1)[m]
        fb = f.box_code().detach().permute(0, 2, 3, 1)[m]
        box_terms.append(F.l1_loss(qb, fb, reduction="sum") / qb.shape[1])
    if n_pos == 0:
        zero = q_outputs[0].heatmap.sum() * 0.0
        return zero, {"heatmap": 0.0, "box": 0.0, "positives": 0}
    hm = torch.stack(hm_terms).sum() / n_pos
    box = torch.stack(box_terms).sum() / n_pos
    loss = cfg.heatmap_weight * hm + cfg.box_weight * box
    return loss, {"heatmap": float(hm), "box": float(box), "positives": n_pos}
