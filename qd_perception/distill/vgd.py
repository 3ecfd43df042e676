"""View-guided distillation (VGD of QD-BEV, Zhang et al., ICCV 2023): the float model teaches its own
fake-quantized copy through the image and the BEV features at once, tied by the camera geometry.

1. ``L_img[cam]``: channel-wise KL of the neck features, one value per camera
   (:func:`~qd_perception.distill.cwd.image_kl_per_camera`);
2. ``L_bev``: KL over channels per BEV cell, (B, H_bev*W_bev)
   (:func:`~qd_perception.distill.cwd.bev_kl_map`);
3. view mask ``M``: BEVFormer's ``bev_mask`` (N_cam, B, H_bev*W_bev, Z) averaged over the Z
   reference heights -> the fraction of each cell's pillar that camera sees;
4. ``L_view = sum_cam M_cam * L_img[cam]``: each camera's image loss spread onto the cells it sees;
5. ``L_vgd = mean(L_view * L_bev)`` (``combine="product"``, default) or ``mean(L_view + L_bev)``
   (``combine="sum"``). The paper's eq. 6 is not in the material we have; both are options to
   ablate (docs/quantization.md).

Cells no camera sees have ``L_view = 0``: under ``product`` they contribute nothing, under ``sum``
only their BEV term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from qd_perception.distill.cwd import bev_kl_map, cwd_bev_loss, cwd_image_loss, image_kl_per_camera

Combine = Literal["product", "sum"]
COMBINES: tuple[str, ...] = ("product", "sum")
DistillKind = Literal["none", "vgd", "cwd_img", "cwd_bev"]
DISTILL_KINDS: tuple[str, ...] = ("none", "vgd", "cwd_img", "cwd_bev")


def view_mask(bev_mask: torch.Tensor) -> torch.Tensor:
    """(N_cam, B, H_bev*W_bev, Z) bool/float -> (N_cam, B, H_bev*W_bev) float, the mean over Z."""
    if bev_mask.dim() != 4:
        raise ValueError(f"bev_mask must be (N_cam, B, H_bev*W_bev, Z), got {tuple(bev_mask.shape)}")
    return bev_mask.detach().float().mean(-1)


def view_loss(img_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_cam M_cam * L_img[cam]``: img_loss (N_cam,), mask (N_cam, B, HW) -> (B, HW)."""
    if img_loss.shape != mask.shape[:1]:
        raise ValueError(f"img_loss {tuple(img_loss.shape)} does not match mask {tuple(mask.shape)}")
    return (mask * img_loss[:, None, None]).sum(0)


def vgd_loss(
    teacher_img: list[torch.Tensor],
    student_img: list[torch.Tensor],
    teacher_bev: torch.Tensor,
    student_bev: torch.Tensor,
    bev_mask: torch.Tensor,
    temperature: float = 1.0,
    combine: Combine = "product",
) -> torch.Tensor:
    """The VGD objective (scalar). Image features per level (B, N_cam, C, H, W), BEV features
    (B, H_bev*W_bev, C), ``bev_mask`` (N_cam, B, H_bev*W_bev, Z)."""
    l_view = view_loss(image_kl_per_camera(teacher_img, student_img, temperature), view_mask(bev_mask))
    l_bev = bev_kl_map(teacher_bev, student_bev, temperature)
    if l_view.shape != l_bev.shape:
        raise ValueError(f"view loss {tuple(l_view.shape)} vs BEV loss {tuple(l_bev.shape)}: grids differ")
    if combine == "product":
        return (l_view * l_bev).mean()
    if combine == "sum":
        return (l_view + l_bev).mean()
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


@dataclass(frozen=True)
class DistillConfig:
    """``kind``: ``vgd`` (QD-BEV), ``cwd_img`` / ``cwd_bev`` (the baselines) or ``none``;
    total loss = detection loss + ``weight`` * distillation loss."""

    kind: DistillKind = "vgd"
    temperature: float = 1.0
    weight: float = 1.0
    combine: Combine = "product"

    def __post_init__(self) -> None:
        if self.kind not in DISTILL_KINDS:
            raise ValueError(f"distill kind must be one of {DISTILL_KINDS}, got {self.kind!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.temperature <= 0 or self.weight < 0:
            raise ValueError("temperature must be > 0 and weight >= 0")


def _vgd(t, s, c: DistillConfig) -> torch.Tensor:
    return vgd_loss(t.img_feats, s.img_feats, t.bev, s.bev, t.bev_mask, c.temperature, c.combine)


#: kind -> loss of (teacher outputs, student outputs, config); outputs are ``BEVFormerOutputs``
#: (or anything with ``img_feats``, ``bev``, ``bev_mask``)
DISTILL_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "vgd": _vgd,
    "cwd_img": lambda t, s, c: cwd_image_loss(t.img_feats, s.img_feats, c.temperature),
    "cwd_bev": lambda t, s, c: cwd_bev_loss(t.bev, s.bev, c.temperature),
}


def distill_loss(teacher_out, student_out, cfg: DistillConfig) -> torch.Tensor | None:
    """The configured distillation loss (unweighted), None for ``kind="none"``."""
    if cfg.kind == "none":
        return None
    return DISTILL_LOSSES[cfg.kind](teacher_out, student_out, cfg)
