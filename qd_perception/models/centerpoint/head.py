"""CenterPoint center head: per task group a class heatmap and the box regression maps.

Outputs are typed (:class:`TaskOutput`) so losses, decode and the LiDAR-PTQ TGPL loss address
them by name; :func:`flatten_outputs` / :func:`unflatten_outputs` give the fixed tensor order
used as ONNX graph outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Regression branches and their channels, in box-code order (offset, z, log size, sin/cos yaw, vel).
REG_BRANCHES: tuple[tuple[str, int], ...] = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))
HEATMAP_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1: the focal-loss prior of CornerNet/CenterPoint


@dataclass(frozen=True)
class TaskOutput:
    """Raw head maps of one task group, each (B, ch, H, W) on the head grid.

    heatmap: class logits (sigmoid -> centre probability), one channel per class of the group
    reg: sub-cell centre offset (x, y) in cells; height: centre z (m); dim: log (dx, dy, dz) (m);
    rot: (sin yaw, cos yaw); vel: (vx, vy) m/s or None without velocity.
    """

    heatmap: torch.Tensor
    reg: torch.Tensor
    height: torch.Tensor
    dim: torch.Tensor
    rot: torch.Tensor
    vel: torch.Tensor | None = None

    def box_code(self) -> torch.Tensor:
        """(B, 8 or 10, H, W) regression maps concatenated in box-code order."""
        parts = [self.reg, self.height, self.dim, self.rot] + ([self.vel] if self.vel is not None else [])
        return torch.cat(parts, dim=1)


def flatten_outputs(outputs: list[TaskOutput]) -> tuple[torch.Tensor, ...]:
    """Fixed order: for each task, heatmap, reg, height, dim, rot[, vel]."""
    flat: list[torch.Tensor] = []
    for t in outputs:
        flat += [t.heatmap, t.reg, t.height, t.dim, t.rot] + ([t.vel] if t.vel is not None else [])
    return tuple(flat)


def output_names(num_tasks: int, with_velocity: bool) -> list[str]:
    names = ["heatmap", "reg", "height", "dim", "rot"] + (["vel"] if with_velocity else [])
    return [f"{n}_{i}" for i in range(num_tasks) for n in names]


def unflatten_outputs(flat: list[torch.Tensor], num_tasks: int, with_velocity: bool) -> list[TaskOutput]:
    per = 6 if with_velocity else 5
    if len(flat) != per * num_tasks:
        raise ValueError(f"expected {per * num_tasks} head tensors, got {len(flat)}")
    return [TaskOutput(*flat[i * per : (i + 1) * per]) for i in range(num_tasks)]


class SepHead(nn.Module):
    """One branch: Conv3x3 + BN + ReLU, then a Conv3x3 to the output channels."""

    def __init__(self, cin: int, mid: int, cout: int, bias_init: float | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, cout, 3, padding=1, bias=True),
        )
        if bias_init is not None:
            nn.init.constant_(self.net[-1].bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TaskHead(nn.Module):
    def __init__(self, cin: int, mid: int, num_classes: int, with_velocity: bool) -> None:
        super().__init__()
        self.heatmap = SepHead(cin, mid, num_classes, HEATMAP_BIAS)
        self.branches = nn.ModuleDict(
            {n: SepHead(cin, mid, c) for n, c in REG_BRANCHES if with_velocity or n != "vel"}
        )

    def forward(self, x: torch.Tensor) -> TaskOutput:
        return TaskOutput(self.heatmap(x), **{n: b(x) for n, b in self.branches.items()})


class CenterHead(nn.Module):
    """(B, C, H, W) BEV features -> one :class:`TaskOutput` per task group."""

    def __init__(
        self,
        in_channels: int,
        tasks: tuple[tuple[str, ...], ...],
        share_channels: int,
        head_channels: int,
        with_velocity: bool,
    ) -> None:
        super().__init__()
        self.shared = nn.Sequential(
            nn.Conv2d(in_channels, share_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(share_channels),
            nn.ReLU(),
        )
        self.tasks = nn.ModuleList(
            TaskHead(share_channels, head_channels, len(t), with_velocity) for t in tasks
        )

    def forward(self, x: torch.Tensor) -> list[TaskOutput]:
        x = self.shared(x)
        return [t(x) for t in self.tasks]
