"""The BEVFormer model: backbone -> neck -> encoder -> decoder (named stages)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qd_perception.models.bevformer.backbone import FPN, ResNet
from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.decoder import BEVDecoder
from qd_perception.models.bevformer.denoising import DNOutputs, make_dn_queries
from qd_perception.models.bevformer.dense_head import DenseHead, make_proposals
from qd_perception.models.bevformer.encoder import BEVEncoder
from qd_perception.models.bevformer.geometry import align_prev_bev, project_to_cameras
from qd_perception.models.bevformer.perspective_head import PerspectiveHead


@dataclass
class BEVFormerOutputs:
    """Forward outputs.

    cls_logits: (L_dec, B, Q, K) per decoder layer (the last is the prediction).
    box_codes: (L_dec, B, Q, 10) [x, y, z (m, ego), log l, log w, log h, sin, cos, vx, vy].
    bev: (B, H_bev*W_bev, C) BEV features (the next frame's ``prev_bev``).
    bev_mask: (N_cam, B, H_bev*W_bev, Z) bool, which pillar point projects into which camera.
    img_feats: per FPN level (B, N_cam, C, H_l, W_l) neck features per camera.
    dense_heatmap: (B, K, H_bev, W_bev) logits of the dense head, None without it.
    dense_codes: (B, 10, H_bev, W_bev) cell-relative box codes of the dense head, or None.
    """

    cls_logits: torch.Tensor
    box_codes: torch.Tensor
    bev: torch.Tensor
    bev_mask: torch.Tensor
    img_feats: list[torch.Tensor]
    dense_heatmap: torch.Tensor | None = None
    dense_codes: torch.Tensor | None = None
    perspective: tuple[torch.Tensor, torch.Tensor] | None = None  # training only, see PerspectiveHead
    dn: DNOutputs | None = None  # training only: the denoising queries' outputs (DN-DETR)


@dataclass
class BEVEncoding:
    bev: torch.Tensor
    bev_mask: torch.Tensor
    img_feats: list[torch.Tensor]


class BEVFormer(nn.Module):
    def __init__(self, cfg: BEVFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dims
        self.backbone = ResNet(cfg.backbone)
        self.neck = FPN(self.backbone.selected_channels, C, cfg.num_levels)
        self.encoder = BEVEncoder(cfg)
        self.decoder = BEVDecoder(cfg)
        # the dense auxiliary head belongs to the head stage (with the decoder) for quantization
        self.dense_head = DenseHead(cfg) if cfg.dense_head.enabled else None
        # training-only perspective supervision on the image features (backbone/neck signal)
        self.perspective_head = PerspectiveHead(cfg) if cfg.perspective_head.enabled else None
        # BEV queries, learned positional encoding (row/column halves), camera and level embeddings
        # belong to the encoder stage
        self.encoder.bev_embedding = nn.Embedding(cfg.num_bev, C)
        self.encoder.row_embed = nn.Embedding(cfg.bev_h, C // 2)
        self.encoder.col_embed = nn.Embedding(cfg.bev_w, C - C // 2)
        self.encoder.cams_embeds = nn.Parameter(torch.randn(cfg.num_cams, C) * 0.02)
        self.encoder.level_embeds = nn.Parameter(torch.randn(cfg.num_levels, C) * 0.02)
        mean = torch.tensor(cfg.image_mean).view(1, 1, 3, 1, 1)
        std = torch.tensor(cfg.image_std).view(1, 1, 3, 1, 1)
        self.register_buffer("img_mean", mean * 255.0, persistent=False)
        self.register_buffer("img_std", std * 255.0, persistent=False)

    def bev_pos(self) -> torch.Tensor:
        """(H_bev*W_bev, C) learned positional encoding, row-major."""
        cfg = self.cfg
        col = self.encoder.col_embed.weight[None, :, :].expand(cfg.bev_h, cfg.bev_w, -1)
        row = self.encoder.row_embed.weight[:, None, :].expand(cfg.bev_h, cfg.bev_w, -1)
        return torch.cat([col, row], dim=-1).reshape(cfg.num_bev, -1)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, N, 3, H, W) RGB 0..255 float -> per level (B, N, C, H_l, W_l)."""
        B, N = images.shape[:2]
        x = ((images - self.img_mean) / self.img_std).flatten(0, 1)
        feats = self.neck(self.backbone(x))
        return [f.reshape(B, N, *f.shape[1:]) for f in feats]

    def encode(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        cam2ego: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        prev_valid: torch.Tensor | None = None,
        prev_from_cur: torch.Tensor | None = None,
    ) -> BEVEncoding:
        """Backbone, neck and encoder.

        Args:
            images: (B, N, 3, H, W) float RGB in 0..255 at ``cfg.image_size``, cameras in
                ``cfg.camera_names`` order.
            intrinsics: (B, N, 3, 3) K for ``cfg.image_size``.
            cam2ego: (B, N, 4, 4) ego <- optical.
            prev_bev: (B, H_bev*W_bev, C) previous frame's BEV (its own ego frame) or None.
            prev_valid: (B,) 1.0 where ``prev_bev`` belongs to the same scene, else 0.0.
            prev_from_cur: (B, 4, 4) ego_prev <- ego_cur.
        """
        cfg = self.cfg
        B, N = images.shape[:2]
        C = cfg.embed_dims
        img_feats = self.extract_features(images)
        enc = self.encoder
        feats, shapes = [], []
        for lvl, f in enumerate(img_feats):
            h, w = f.shape[-2:]
            shapes.append((int(h), int(w)))
            x = f.flatten(3).transpose(2, 3)  # (B, N, h*w, C)
            x = x + enc.cams_embeds[None, :, None, :] + enc.level_embeds[None, None, lvl : lvl + 1, :]
            feats.append(x.reshape(B * N, h * w, C))
        ref_uv, bev_mask = project_to_cameras(enc.ref_3d, intrinsics, cam2ego, cfg.image_size)
        query = enc.bev_embedding.weight[None].expand(B, -1, -1)
        pos = self.bev_pos()[None].expand(B, -1, -1)
        if prev_bev is None:
            prev = query
        else:
            if prev_valid is None or prev_from_cur is None:
                raise ValueError("prev_bev needs prev_valid and prev_from_cur")
            grid = prev_bev.transpose(1, 2).reshape(B, C, cfg.bev_h, cfg.bev_w)
            aligned = align_prev_bev(grid, prev_from_cur, cfg.pc_range).flatten(2).transpose(1, 2)
            v = prev_valid.to(query.dtype)[:, None, None]
            # BEVFormer uses the current queries in place of a missing history
            prev = v * aligned + (1.0 - v) * query
        bev = enc(query, pos, prev, feats, shapes, ref_uv, bev_mask)
        return BEVEncoding(bev=bev, bev_mask=bev_mask, img_feats=img_feats)

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        cam2ego: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        prev_valid: torch.Tensor | None = None,
        prev_from_cur: torch.Tensor | None = None,
        dn_targets: list | None = None,
    ) -> BEVFormerOutputs:
        """See :meth:`encode` for the inputs and :class:`BEVFormerOutputs` for the outputs.
        ``dn_targets`` (list of ``losses.Targets``, training only): the ground truth the
        denoising queries are made from when ``cfg.denoising.enabled``; ignored otherwise and in
        eval mode."""
        e = self.encode(images, intrinsics, cam2ego, prev_bev, prev_valid, prev_from_cur)
        heat = codes = proposals = dn = None
        if self.dense_head is not None:
            heat, codes = self.dense_head(e.bev)
            if self.cfg.dense_head.two_stage:
                proposals = make_proposals(heat, codes, e.bev, self.decoder.class_embed, self.cfg)
                if self.training and self.cfg.denoising.enabled and dn_targets is not None:
                    dn = make_dn_queries(
                        dn_targets, heat, e.bev, self.decoder.class_embed, self.cfg.num_queries, self.cfg
                    )
        cls, box = self.decoder(e.bev, proposals, dn)
        dn_out = None
        if dn is not None:
            Q = self.cfg.num_queries
            dn_out = DNOutputs(cls[:, :, Q:], box[:, :, Q:], dn)
            cls, box = cls[:, :, :Q], box[:, :, :Q]
        persp = None
        if self.perspective_head is not None and self.training:
            persp = self.perspective_head(e.img_feats[0])
        return BEVFormerOutputs(cls, box, e.bev, e.bev_mask, e.img_feats, heat, codes, persp, dn_out)


class BEVFormerExportWrapper(nn.Module):
    """Tensor-only interface for ONNX: the temporal state is an explicit input and output.

    inputs: images (B, N, 3, H, W) float 0..255, intrinsics (B, N, 3, 3), cam2ego (B, N, 4, 4),
    prev_bev (B, Q_bev, C), prev_valid (B,), prev_from_cur (B, 4, 4).
    outputs: cls_logits (B, Q, K), box_codes (B, Q, 10) of the last decoder layer, bev (B, Q_bev, C).
    """

    def __init__(self, model: BEVFormer) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        cam2ego: torch.Tensor,
        prev_bev: torch.Tensor,
        prev_valid: torch.Tensor,
        prev_from_cur: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(images, intrinsics, cam2ego, prev_bev, prev_valid, prev_from_cur)
        return out.cls_logits[-1], out.box_codes[-1], out.bev
