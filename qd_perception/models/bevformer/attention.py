"""Attention modules: multi-scale deformable attention (pure torch via ``grid_sample``), BEVFormer's
temporal self-attention and spatial cross-attention, and plain multi-head self-attention built
from ``nn.Linear`` (so quantized wrappers can replace every projection by type).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def deformable_sample(
    values: list[torch.Tensor],
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Core of multi-scale deformable attention.

    Args:
        values: per level (B, H_l*W_l, heads, Dh).
        shapes: per level (H_l, W_l).
        locations: (B, Q, heads, L, P, 2) normalised [x, y] in [0, 1] (x along W).
        weights: (B, Q, heads, L, P), already normalised.
    Returns:
        (B, Q, heads*Dh)
    """
    B, Q, Hh, L, P, _ = locations.shape
    Dh = values[0].shape[-1]
    grids = 2.0 * locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].permute(0, 2, 3, 1).reshape(B * Hh, Dh, h, w)
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(B * Hh, Q, P, 2)
        # (B*heads, Dh, Q, P); zeros outside the map, as the CUDA kernel
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    s = torch.stack(sampled, dim=-2).reshape(B * Hh, Dh, Q, L * P)
    a = weights.permute(0, 2, 1, 3, 4).reshape(B * Hh, 1, Q, L * P)
    out = (s * a).sum(-1).reshape(B, Hh * Dh, Q)
    return out.transpose(1, 2)


def _init_offsets(linear: nn.Linear, heads: int, groups: int, points: int) -> None:
    """Deformable-DETR style initialisation: offsets start on rays in ``heads`` directions at
    growing distances; attention weights start uniform."""
    nn.init.zeros_(linear.weight)
    theta = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([theta.cos(), theta.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True)[0]
    grid = grid.view(heads, 1, 1, 2).repeat(1, groups, points, 1)
    for i in range(points):
        grid[:, :, i, :] *= i + 1
    with torch.no_grad():
        linear.bias.copy_(grid.reshape(-1))


def _add_deformable_projections(
    module: nn.Module, embed_dims: int, num_heads: int, num_levels: int, num_points: int
) -> None:
    """The four linear layers of a deformable attention (offsets, weights, value and output
    projections) as attributes of ``module``, initialised as in Deformable DETR."""
    module.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
    module.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
    module.value_proj = nn.Linear(embed_dims, embed_dims)
    module.output_proj = nn.Linear(embed_dims, embed_dims)
    _init_offsets(module.sampling_offsets, num_heads, num_levels, num_points)
    nn.init.zeros_(module.attention_weights.weight)
    nn.init.zeros_(module.attention_weights.bias)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention of a query set into feature maps (decoder -> BEV)."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.h, self.l, self.p = num_heads, num_levels, num_points
        _add_deformable_projections(self, embed_dims, num_heads, num_levels, num_points)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        values: list[torch.Tensor],
        shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query (B, Q, C), reference (B, Q, 2) in [0, 1], values per level (B, H_l*W_l, C)."""
        B, Q, C = query.shape
        v = [self.value_proj(x).reshape(B, x.shape[1], self.h, C // self.h) for x in values]
        off = self.sampling_offsets(query).reshape(B, Q, self.h, self.l, self.p, 2)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        loc = reference[:, :, None, None, None, :] + off / norm[None, None, None, :, None, :]
        a = self.attention_weights(query).reshape(B, Q, self.h, self.l * self.p).softmax(-1)
        a = a.reshape(B, Q, self.h, self.l, self.p)
        return self.output_proj(deformable_sample(v, shapes, loc, a))


class TemporalSelfAttention(nn.Module):
    """BEVFormer's temporal self-attention: each BEV query attends (deformably, around its own
    cell) to the ego-motion-aligned previous BEV and to the current BEV queries; offsets and weights
    come from [previous BEV, query] concatenated; the two frames' results are averaged."""

    def __init__(self, embed_dims: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        self.h, self.p, self.frames = num_heads, num_points, 2
        self.sampling_offsets = nn.Linear(2 * embed_dims, self.frames * num_heads * num_points * 2)
        self.attention_weights = nn.Linear(2 * embed_dims, self.frames * num_heads * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        _init_offsets(self.sampling_offsets, num_heads, self.frames, num_points)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(
        self, query: torch.Tensor, prev_bev: torch.Tensor, reference: torch.Tensor, bev_hw: tuple[int, int]
    ) -> torch.Tensor:
        """query, prev_bev (B, Q, C) (query includes the positional embedding); reference (Q, 2)."""
        B, Q, C = query.shape
        F_ = self.frames
        x = torch.cat([prev_bev, query], dim=-1)
        off = self.sampling_offsets(x).reshape(B, Q, self.h, F_, self.p, 2)
        a = self.attention_weights(x).reshape(B, Q, self.h, F_, self.p).softmax(-1)
        # frames folded into the batch, one "level" each
        off = off.permute(0, 3, 1, 2, 4, 5).reshape(B * F_, Q, self.h, 1, self.p, 2)
        a = a.permute(0, 3, 1, 2, 4).reshape(B * F_, Q, self.h, 1, self.p)
        h, w = bev_hw
        norm = torch.tensor([w, h], dtype=query.dtype, device=query.device)
        loc = reference[None, :, None, None, None, :] + off / norm
        v = self.value_proj(torch.stack([prev_bev, query], dim=1).reshape(B * F_, Q, C))
        v = v.reshape(B * F_, Q, self.h, C // self.h)
        out = deformable_sample([v], [bev_hw], loc, a).reshape(B, F_, Q, C).mean(1)
        return self.output_proj(out)


class SpatialCrossAttention(nn.Module):
    """BEVFormer's spatial cross-attention.

    Every BEV query has Z reference points (its pillar) projected into each camera; in each camera
    it samples ``num_points`` learned offsets spread over the Z projected anchors at every FPN level.
    The results are summed over the cameras whose image contains at least one of the query's
    anchors (``bev_mask``) and divided by their number. Dense over cameras (no per-camera gather
    of visible queries as the CUDA version does) so it exports to ONNX with static shapes.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, num_z: int) -> None:
        super().__init__()
        self.h, self.l, self.p, self.z = num_heads, num_levels, num_points, num_z
        _add_deformable_projections(self, embed_dims, num_heads, num_levels, num_points)

    def forward(
        self,
        query: torch.Tensor,
        feats: list[torch.Tensor],
        shapes: list[tuple[int, int]],
        ref_uv: torch.Tensor,
        bev_mask: torch.Tensor,
    ) -> torch.Tensor:
        """query (B, Q, C); feats per level (B*N, H_l*W_l, C) camera-major within each sample;
        ref_uv (N, B, Q, Z, 2); bev_mask (N, B, Q, Z) bool. Returns (B, Q, C)."""
        B, Q, C = query.shape
        N = ref_uv.shape[0]
        BN = B * N
        q = query[:, None].expand(B, N, Q, C).reshape(BN, Q, C)
        ref = ref_uv.transpose(0, 1).reshape(BN, Q, self.z, 2)
        off = self.sampling_offsets(q).reshape(BN, Q, self.h, self.l, self.p // self.z, self.z, 2)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=q.dtype, device=q.device)
        off = off / norm[None, None, None, :, None, None, :]
        loc = ref[:, :, None, None, None, :, :] + off
        loc = loc.reshape(BN, Q, self.h, self.l, self.p, 2)
        a = self.attention_weights(q).reshape(BN, Q, self.h, self.l * self.p).softmax(-1)
        a = a.reshape(BN, Q, self.h, self.l, self.p)
        v = [self.value_proj(f).reshape(BN, f.shape[1], self.h, C // self.h) for f in feats]
        per_cam = deformable_sample(v, shapes, loc, a).reshape(B, N, Q, C)
        seen = bev_mask.any(-1).transpose(0, 1).to(query.dtype)  # (B, N, Q)
        count = seen.sum(1).clamp(min=1.0)  # (B, Q)
        out = (per_cam * seen[..., None]).sum(1) / count[..., None]
        return self.output_proj(out)


class MultiheadSelfAttention(nn.Module):
    """Scaled dot-product self-attention with separate q/k/v/out ``nn.Linear`` projections."""

    def __init__(self, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        self.h = num_heads
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(embed_dims, embed_dims)
        self.v_proj = nn.Linear(embed_dims, embed_dims)
        self.out_proj = nn.Linear(embed_dims, embed_dims)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, Q, C) each -> (B, Q, C). ``attn_mask`` (B, Q, Q) bool, True where query row may not
        look at key column (every row needs one key it may see); None: all see all."""
        B, Q, C = query.shape
        d = C // self.h
        q = self.q_proj(query).reshape(B, Q, self.h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(B, Q, self.h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(B, Q, self.h, d).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        if attn_mask is not None:
            att = att.masked_fill(attn_mask[:, None], float("-inf"))
        out = att.softmax(-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(B, Q, C))
