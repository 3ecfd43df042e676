"""Channel-wise distillation (CWD, Shu et al. 2021) on image and BEV features: the KL terms that
view-guided distillation (:mod:`qd_perception.distill.vgd`) combines, and the two single-domain
baselines QD-BEV (Zhang et al., ICCV 2023) is compared with.

All losses are KL(teacher || student) between temperature-softened distributions, scaled by
``T^2`` so the gradient magnitude does not depend on ``T``. The teacher tensors are detached here:
the teacher is frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """``sum_dim p_T * (log p_T - log p_S)`` with ``p = softmax(x / T)`` along ``dim`` (that axis is
    reduced away), times ``T^2``. Computed in float32 (the student may run fake-quant)."""
    if teacher.shape != student.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_t = F.log_softmax(teacher.detach().float() / temperature, dim=dim)
    log_s = F.log_softmax(student.float() / temperature, dim=dim)
    return (log_t.exp() * (log_t - log_s)).sum(dim) * temperature**2


def image_kl_per_camera(
    teacher: list[torch.Tensor], student: list[torch.Tensor], temperature: float
) -> torch.Tensor:
    """Per-camera channel-wise KL of the neck features -> (N_cam,).

    ``teacher`` / ``student``: per FPN level (B, N_cam, C, H_l, W_l). Each channel is a
    distribution over its H*W positions; the KL is summed over positions, averaged over batch and
    channels (``T^2 / (B*C) * sum_{b,c} KL``, step 1 of QD-BEV's VGD), then averaged over the
    FPN levels (the paper distils one neck output; with several levels each weighs the same).
    """
    if len(teacher) != len(student) or not teacher:
        raise ValueError(f"need the same non-zero number of levels, got {len(teacher)} and {len(student)}")
    per_level = []
    for t, s in zip(teacher, student):
        if t.dim() != 5:
            raise ValueError(f"image features must be (B, N_cam, C, H, W), got {tuple(t.shape)}")
        kl = softmax_kl(t.flatten(3), s.flatten(3), temperature, dim=-1)  # (B, N, C)
        per_level.append(kl.mean(dim=(0, 2)))
    return torch.stack(per_level).mean(0)


def bev_kl_map(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-BEV-cell KL over the channels: (B, H_bev*W_bev, C) -> (B, H_bev*W_bev)
    (step 2 of QD-BEV's VGD)."""
    if teacher.dim() != 3:
        raise ValueError(f"BEV features must be (B, H_bev*W_bev, C), got {tuple(teacher.shape)}")
    return softmax_kl(teacher, student, temperature, dim=-1)


def cwd_image_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], temperature: float
) -> torch.Tensor:
    """Baseline: CWD on the image (neck) features only, the mean over cameras (scalar)."""
    return image_kl_per_camera(teacher, student, temperature).mean()


def cwd_bev_loss(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Baseline: KL over channels of the BEV features only, the mean over cells and batch (scalar)."""
    return bev_kl_map(teacher, student, temperature).mean()
