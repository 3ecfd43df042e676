"""Head maps -> ego-frame :class:`Detections`: top-k, score threshold, box decode, NMS.

Shared by training-time evaluation and every runtime backend (torch and ONNX Runtime feed the same
:class:`TaskOutput` maps here).
"""

from __future__ import annotations

import numpy as np
import torch

from qd_perception.classes import CLASS_ID, CLASS_NAMES, attribute_for
from qd_perception.data.types import Detections
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.head import TaskOutput
from qd_perception.models.centerpoint.nms import circle_nms, rotated_nms


def decode_task(out: TaskOutput, b: int, cfg: CenterPointConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k cells of sample ``b`` of one task -> boxes (K, 9), scores (K,), class-in-task (K,).

    No NMS and no threshold beyond ``decode.score_threshold`` and ``post_center_range``.
    """
    d, v = cfg.decode, cfg.voxelization
    f = cfg.head.out_size_factor
    hm = torch.sigmoid(out.heatmap[b].float())
    _, h, w = hm.shape
    k = min(d.pre_max_size, hm.numel())
    scores, idx = torch.topk(hm.reshape(-1), k)
    keep = scores > d.score_threshold
    scores, idx = scores[keep], idx[keep]
    cls = idx // (h * w)
    pos = idx % (h * w)
    ys, xs = (pos // w).float(), (pos % w).float()
    code_map = out.box_code()[b]
    code = code_map.reshape(code_map.shape[0], -1)[:, pos].T.float()  # (K, D)
    x = (xs + code[:, 0]) * (v.voxel_size[0] * f) + v.point_range[0]
    y = (ys + code[:, 1]) * (v.voxel_size[1] * f) + v.point_range[1]
    z = code[:, 2]
    dims = torch.exp(code[:, 3:6].clamp(max=5.0))
    yaw = torch.atan2(code[:, 6], code[:, 7])
    vel = code[:, 8:10] if code.shape[1] >= 10 else torch.zeros((len(code), 2))
    boxes = torch.cat([x[:, None], y[:, None], z[:, None], dims, yaw[:, None], vel], dim=1)
    r = torch.tensor(d.post_center_range)
    inside = ((boxes[:, :3] >= r[:3]) & (boxes[:, :3] <= r[3:])).all(1)
    return (
        boxes[inside].detach().cpu().numpy().astype(np.float64),
        scores[inside].detach().cpu().numpy().astype(np.float32),
        cls[inside].cpu().numpy().astype(np.int64),
    )


def decode(outputs: list[TaskOutput], cfg: CenterPointConfig) -> list[Detections]:
    """Head outputs of a batch -> one :class:`Detections` per sample (ego frame)."""
    d = cfg.decode
    batch = outputs[0].heatmap.shape[0]
    results = []
    for b in range(batch):
        all_boxes, all_scores, all_labels = [], [], []
        for t, (task, out) in enumerate(zip(cfg.head.tasks, outputs)):
            boxes, scores, cls = decode_task(out, b, cfg)
            if len(boxes) == 0:
                continue
            if d.nms == "circle":
                keep = circle_nms(boxes[:, :2], scores, d.circle_radius_m[t], d.post_max_size)
            elif d.nms == "rotated":
                keep = rotated_nms(boxes[:, [0, 1, 3, 4, 6]], scores, d.iou_threshold, d.post_max_size)
            else:
                keep = np.argsort(-scores, kind="stable")[: d.post_max_size]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(np.array([CLASS_ID[task[c]] for c in cls[keep]], np.int64))
        if not all_boxes:
            results.append(Detections.empty())
            continue
        boxes = np.concatenate(all_boxes)
        labels = np.concatenate(all_labels)
        speed = np.hypot(boxes[:, 7], boxes[:, 8])
        attrs = tuple(attribute_for(CLASS_NAMES[int(i)], float(s)) for i, s in zip(labels, speed))
        results.append(Detections(boxes, labels, np.concatenate(all_scores), attrs))
    return results
