"""Denoising queries (DN-DETR) for the two-stage decoder, training only.

DN-DETR's finding: a DETR decoder converges slowly because Hungarian matching changes which query
learns which object from step to step. Besides the matched queries, the decoder is also fed
noised copies of the ground-truth boxes and must reconstruct the boxes from them, with a fixed
assignment (slot i of every group reconstructs ground truth i), so the box branches get a stable
signal from the first step.

Here a denoising query has the form of a two-stage proposal
(:class:`~qd_perception.models.bevformer.dense_head.Proposals`): content = the BEV feature at the
noised centre's cell plus the embedding of a (possibly flipped) class label, reference point =
the noised centre, base logits = the dense heatmap's logits at that cell, base box code = the
noised ground-truth code. The decoder's residual branches then learn exactly what they do on
real proposals: to correct a nearby, roughly sized box.

``groups`` copies of the ground truth, each noised independently. Attention mask (True = may not
look): the matched queries never see a denoising query (they must not learn from the answer), a
group sees the matched queries and itself only, and padding slots (samples of a batch with fewer
boxes than the largest) are seen by nobody. Not part of the deployed graph: the exported model
never builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.dense_head import Proposals


@dataclass
class DNQueries:
    """Denoising queries of a batch, D = groups * (largest box count of the batch).

    proposals: (B, D, ...) the queries in proposal form (see module docstring).
    valid: (B, D) bool, False on padding slots.
    gt_index: (B, D) int64, the ground-truth box each slot reconstructs (0 on padding).
    attn_mask: (B, Q + D, Q + D) bool, True where a query (row) may not look at a key (column);
    the Q matched queries come first.
    """

    proposals: Proposals
    valid: torch.Tensor
    gt_index: torch.Tensor
    attn_mask: torch.Tensor


@dataclass
class DNOutputs:
    """Decoder outputs on the denoising queries: cls_logits (L, B, D, K), box_codes (L, B, D, 10)
    in the decoder's metric code form."""

    cls_logits: torch.Tensor
    box_codes: torch.Tensor
    queries: DNQueries


def _noised_codes(boxes: torch.Tensor, cfg: BEVFormerConfig, gen: torch.Generator | None) -> torch.Tensor:
    """(M, 9) ego boxes -> (M, 10) noised metric codes [x, y, z, log l, log w, log h, sin, cos, vx, vy]."""
    dn = cfg.denoising

    def u(*shape: int) -> torch.Tensor:  # uniform in [-1, 1)
        return torch.rand(*shape, generator=gen, dtype=boxes.dtype) * 2.0 - 1.0

    M = boxes.shape[0]
    half = boxes[:, 3:5].max(dim=1).values / 2.0
    reach = dn.centre_noise * half + dn.centre_noise_min_m  # metres, per box
    xy = boxes[:, 0:2] + u(M, 2) * reach[:, None]
    z = boxes[:, 2:3] + u(M, 1) * dn.centre_noise * boxes[:, 5:6] / 2.0
    size = boxes[:, 3:6].clamp(min=1e-3).log() + u(M, 3) * dn.size_noise
    yaw = boxes[:, 6:7] + u(M, 1) * dn.yaw_noise
    vel = boxes[:, 7:9] + u(M, 2) * dn.velocity_noise
    return torch.cat([xy, z, size, yaw.sin(), yaw.cos(), vel], dim=1)


def make_dn_queries(
    targets,
    heat: torch.Tensor,
    bev: torch.Tensor,
    class_embed: nn.Embedding,
    num_queries: int,
    cfg: BEVFormerConfig,
    gen: torch.Generator | None = None,
) -> DNQueries | None:
    """Denoising queries from ``targets`` (list of ``losses.Targets``, one per sample, boxes (M, 9)
    ego frame, labels (M,)), the dense heatmap logits ``heat`` (B, K, H, W) and the BEV features
    ``bev`` (B, H*W, C). ``num_queries`` matched queries precede them in the decoder. None when
    the batch has no box (nothing to denoise). The noise comes from ``gen`` (torch's global
    generator when None), drawn on the CPU so a seeded run is reproducible on any device."""
    dn = cfg.denoising
    B, K, H, W = heat.shape
    counts = [len(t.labels) for t in targets]
    M = max(counts, default=0)
    if M == 0:
        return None
    G, D, Q = dn.groups, dn.groups * M, num_queries
    dev, dt = bev.device, bev.dtype
    codes = torch.zeros(B, D, 10)
    labels = torch.zeros(B, D, dtype=torch.int64)
    valid = torch.zeros(B, D, dtype=torch.bool)
    gt_index = torch.zeros(B, D, dtype=torch.int64)
    for b, t in enumerate(targets):
        m = counts[b]
        if m == 0:
            continue
        boxes = t.boxes.detach().to("cpu", torch.float32)
        for g in range(G):
            s = slice(g * M, g * M + m)
            codes[b, s] = _noised_codes(boxes, cfg, gen)
            lab = t.labels.detach().cpu().clone()
            flip = torch.rand(m, generator=gen) < dn.label_noise
            lab[flip] = torch.randint(0, K, (int(flip.sum()),), generator=gen)
            labels[b, s] = lab
            valid[b, s] = True
            gt_index[b, s] = torch.arange(m)
    codes, labels, valid, gt_index = codes.to(dev, dt), labels.to(dev), valid.to(dev), gt_index.to(dev)

    x0, y0, z0, x1, y1, z1 = cfg.pc_range
    ix = ((codes[..., 0] - x0) / ((x1 - x0) / W)).floor().clamp(0, W - 1).long()
    iy = ((codes[..., 1] - y0) / ((y1 - y0) / H)).floor().clamp(0, H - 1).long()
    cell = iy * W + ix
    content = torch.gather(bev, 1, cell[..., None].expand(B, D, bev.shape[-1])) + class_embed(labels)
    content = content * valid[..., None].to(dt)
    logits = torch.gather(heat.detach().flatten(2).transpose(1, 2), 1, cell[..., None].expand(B, D, K))
    lo = torch.tensor([x0, y0, z0], dtype=dt, device=dev)
    size = torch.tensor([x1 - x0, y1 - y0, z1 - z0], dtype=dt, device=dev)
    ref = ((codes[..., :3] - lo) / size).clamp(1e-4, 1 - 1e-4)

    T = Q + D
    mask = torch.zeros(B, T, T, dtype=torch.bool, device=dev)
    mask[:, :Q, Q:] = True  # matched queries never see the answers
    group = torch.arange(D, device=dev) // M
    mask[:, Q:, Q:] = group[:, None] != group[None, :]
    mask[:, :, Q:] |= ~valid[:, None, :]  # nobody looks at padding
    return DNQueries(Proposals(content, ref, logits, codes, labels), valid, gt_index, mask)


def dn_loss(out: DNOutputs, targets, cfg: BEVFormerConfig) -> torch.Tensor:
    """Reconstruction loss of the denoising queries, summed over decoder layers: sigmoid focal
    loss towards the true class and weighted L1 towards the true box code, as the matched loss
    but with the fixed assignment, normalised by the number of valid slots and weighted by
    ``denoising.weight``."""
    from qd_perception.models.bevformer.coder import encode_boxes
    from qd_perception.models.bevformer.losses import sigmoid_focal_loss

    lc, q = cfg.loss, out.queries
    L, B, D, K = out.cls_logits.shape
    n = max(1.0, float(q.valid.sum()))
    w = torch.tensor(lc.code_weights, dtype=out.box_codes.dtype, device=out.box_codes.device)
    tcode = torch.zeros(B, D, 10, dtype=out.box_codes.dtype, device=out.box_codes.device)
    onehot = torch.zeros(B, D, K, dtype=out.cls_logits.dtype, device=out.cls_logits.device)
    for b, t in enumerate(targets):
        v = q.valid[b]
        if not bool(v.any()):
            continue
        gi = q.gt_index[b, v]
        tcode[b, v] = encode_boxes(t.boxes.to(tcode)[gi])
        onehot[b, v, t.labels.to(tcode.device)[gi]] = 1.0
    vmask = q.valid[None, :, :, None].to(out.box_codes.dtype)
    total = out.cls_logits.new_zeros(())
    for layer in range(L):
        logits = out.cls_logits[layer][q.valid]
        cls = sigmoid_focal_loss(logits, onehot[q.valid], lc.focal_alpha, lc.focal_gamma)
        box = torch.nan_to_num((out.box_codes[layer] - tcode).abs() * w * vmask[0]).sum()
        total = total + lc.cls_weight * cls / n + lc.bbox_weight * box / n
    return cfg.denoising.weight * total
