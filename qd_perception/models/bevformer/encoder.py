"""BEV encoder: layers of temporal self-attention -> norm -> spatial cross-attention -> norm ->
FFN -> norm (BEVFormer's post-norm order)."""

from __future__ import annotations

import torch
from torch import nn

from qd_perception.models.bevformer.attention import SpatialCrossAttention, TemporalSelfAttention
from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.geometry import bev_reference_2d, pillar_reference_points


class FFN(nn.Module):
    def __init__(self, dims: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.relu(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        C = cfg.embed_dims
        self.temporal_attn = TemporalSelfAttention(C, cfg.num_heads, cfg.tsa_num_points)
        self.norm1 = nn.LayerNorm(C)
        self.spatial_attn = SpatialCrossAttention(
            C, cfg.num_heads, cfg.num_levels, cfg.sca_num_points, cfg.num_points_in_pillar
        )
        self.norm2 = nn.LayerNorm(C)
        self.ffn = FFN(C, cfg.ffn_dims)
        self.norm3 = nn.LayerNorm(C)

    def forward(
        self,
        query: torch.Tensor,
        bev_pos: torch.Tensor,
        prev_bev: torch.Tensor,
        ref_2d: torch.Tensor,
        bev_hw: tuple[int, int],
        feats: list[torch.Tensor],
        shapes: list[tuple[int, int]],
        ref_uv: torch.Tensor,
        bev_mask: torch.Tensor,
    ) -> torch.Tensor:
        q = query + bev_pos
        query = self.norm1(query + self.temporal_attn(q, prev_bev, ref_2d, bev_hw))
        q = query + bev_pos
        query = self.norm2(query + self.spatial_attn(q, feats, shapes, ref_uv, bev_mask))
        return self.norm3(self.ffn(query))


class BEVEncoder(nn.Module):
    """Stack of :class:`EncoderLayer`. Reference points are buffers (not learned)."""

    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        self.bev_hw = (cfg.bev_h, cfg.bev_w)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.register_buffer("ref_2d", bev_reference_2d(cfg.bev_h, cfg.bev_w), persistent=False)
        self.register_buffer(
            "ref_3d",
            pillar_reference_points(cfg.bev_h, cfg.bev_w, cfg.pc_range, cfg.num_points_in_pillar),
            persistent=False,
        )

    def forward(
        self,
        bev_query: torch.Tensor,
        bev_pos: torch.Tensor,
        prev_bev: torch.Tensor,
        feats: list[torch.Tensor],
        shapes: list[tuple[int, int]],
        ref_uv: torch.Tensor,
        bev_mask: torch.Tensor,
    ) -> torch.Tensor:
        """bev_query, bev_pos, prev_bev (B, Q, C) -> BEV features (B, Q, C)."""
        x = bev_query
        for layer in self.layers:
            x = layer(x, bev_pos, prev_bev, self.ref_2d, self.bev_hw, feats, shapes, ref_uv, bev_mask)
        return x
