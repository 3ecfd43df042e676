"""DETR-style decoder: object queries attend to each other, then deformably to the BEV around
their reference point; each layer has its own classification and regression branch and refines
the reference point (BEVFormer's ``with_box_refine``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from qd_perception.models.bevformer.attention import MSDeformAttn, MultiheadSelfAttention
from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.encoder import FFN

CODE_SIZE = 10  # [x, y, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        C = cfg.embed_dims
        self.self_attn = MultiheadSelfAttention(C, cfg.num_heads)
        self.norm1 = nn.LayerNorm(C)
        self.cross_attn = MSDeformAttn(C, cfg.num_heads, 1, cfg.decoder_num_points)
        self.norm2 = nn.LayerNorm(C)
        self.ffn = FFN(C, cfg.ffn_dims)
        self.norm3 = nn.LayerNorm(C)

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        ref_xy: torch.Tensor,
        bev: torch.Tensor,
        bev_hw: tuple[int, int],
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, x, attn_mask))
        x = self.norm2(x + self.cross_attn(x + pos, ref_xy, [bev], [bev_hw]))
        return self.norm3(self.ffn(x))


def _cls_branch(C: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(C, C), nn.LayerNorm(C), nn.ReLU(inplace=True),
        nn.Linear(C, C), nn.LayerNorm(C), nn.ReLU(inplace=True),
        nn.Linear(C, num_classes),
    )  # fmt: skip


def _reg_branch(C: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(C, C), nn.ReLU(inplace=True),
        nn.Linear(C, C), nn.ReLU(inplace=True),
        nn.Linear(C, CODE_SIZE),
    )  # fmt: skip


class BEVDecoder(nn.Module):
    """Object queries -> per-layer class logits and box codes.

    Box code: x, y, z in metres (ego frame; the network predicts them as refinements of sigmoid
    reference points over ``pc_range``), log of length/width/height (m), sin/cos yaw, vx, vy (m/s).
    """

    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        C = cfg.embed_dims
        self.bev_hw = (cfg.bev_h, cfg.bev_w)
        self.query_embedding = nn.Embedding(cfg.num_queries, 2 * C)
        self.reference_points = nn.Linear(C, 3)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.cls_branches = nn.ModuleList(_cls_branch(C, cfg.num_classes) for _ in range(cfg.decoder_layers))
        self.reg_branches = nn.ModuleList(_reg_branch(C) for _ in range(cfg.decoder_layers))
        pr = cfg.pc_range
        self.register_buffer("range_min", torch.tensor(pr[:3], dtype=torch.float32), persistent=False)
        self.register_buffer(
            "range_size", torch.tensor([pr[3] - pr[0], pr[4] - pr[1], pr[5] - pr[2]]), persistent=False
        )
        # focal-loss prior: initial foreground probability 0.01
        for b in self.cls_branches:
            nn.init.constant_(b[-1].bias, -4.595)
        for b in self.reg_branches:
            nn.init.zeros_(b[-1].weight)
            nn.init.zeros_(b[-1].bias)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        self.two_stage = cfg.dense_head.two_stage
        if self.two_stage:
            # queries from heatmap peaks: positional embedding of the peak's centre, and class
            # embedding added to its BEV feature; the branches start as the identity on the
            # peak's own logits and code (zero residuals)
            self.class_embed = nn.Embedding(cfg.num_classes, C)
            self.pos_mlp = nn.Sequential(nn.Linear(3, C), nn.ReLU(inplace=True), nn.Linear(C, C))
            for b in self.cls_branches:
                nn.init.zeros_(b[-1].weight)
                nn.init.zeros_(b[-1].bias)

    def forward(self, bev: torch.Tensor, proposals=None, dn=None) -> tuple[torch.Tensor, torch.Tensor]:
        """bev (B, Q_bev, C) -> cls_logits (L, B, Q, K), box_codes (L, B, Q, 10).

        ``proposals`` (:class:`~qd_perception.models.bevformer.dense_head.Proposals`, two-stage
        only): queries start at the heatmap peaks and every layer's logits and size / yaw /
        velocity codes are residuals on the peak's own. ``dn``
        (:class:`~qd_perception.models.bevformer.denoising.DNQueries`, training only): D
        denoising queries decoded beside them under its attention mask; the outputs then hold
        Q + D queries, the matched ones first."""
        if proposals is None:
            return self._forward_learned(bev)
        mask = None
        if dn is not None:
            cat = {f.name: torch.cat([getattr(proposals, f.name), getattr(dn.proposals, f.name)], 1)
                   for f in dataclasses.fields(proposals)}  # fmt: skip
            proposals = type(proposals)(**cat)
            mask = dn.attn_mask
        x, ref = proposals.content, proposals.ref
        all_cls, all_box = [], []
        for layer, cls_b, reg_b in zip(self.layers, self.cls_branches, self.reg_branches):
            pos = self.pos_mlp(ref)
            x = layer(x, pos, ref[..., :2], bev, self.bev_hw, mask)
            reg = reg_b(x)
            new_ref = (reg[..., 0:3] + inverse_sigmoid(ref)).sigmoid()
            rest = reg[..., 3:] + proposals.codes[..., 3:]
            all_box.append(torch.cat([new_ref * self.range_size + self.range_min, rest], dim=-1))
            all_cls.append(cls_b(x) + proposals.logits)
            ref = new_ref.detach()
        return torch.stack(all_cls), torch.stack(all_box)

    def _forward_learned(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = bev.shape[0]
        pos, x = self.query_embedding.weight.chunk(2, dim=-1)
        pos = pos[None].expand(B, -1, -1)
        x = x[None].expand(B, -1, -1)
        ref = self.reference_points(pos).sigmoid()  # (B, Q, 3) normalised over pc_range
        all_cls, all_box = [], []
        for layer, cls_b, reg_b in zip(self.layers, self.cls_branches, self.reg_branches):
            x = layer(x, pos, ref[..., :2], bev, self.bev_hw)
            reg = reg_b(x)
            centre = reg[..., 0:3] + inverse_sigmoid(ref)
            new_ref = centre.sigmoid()
            box = torch.cat([new_ref * self.range_size + self.range_min, reg[..., 3:]], dim=-1)
            all_cls.append(cls_b(x))
            all_box.append(box)
            ref = new_ref.detach()
        return torch.stack(all_cls), torch.stack(all_box)
