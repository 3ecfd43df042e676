"""A few data-parallel training steps of a tiny pillar CenterPoint (the worker of
test_train_distributed.py, run under torchrun or in the test process itself).

    python -m torch.distributed.run --standalone --nproc_per_node 2 test/unit/ddp_tiny_centerpoint.py \
        --out DIR --batch-size 1 --grad-accum 2

Each rank writes its parameters and buffers to ``DIR/rank<r>.pt``. BatchNorm is frozen (running
statistics): torch's SyncBatchNorm has no CPU kernels, and per-rank batch statistics would make
the data-parallel result differ from the one-process one by design. The frames all hold the same
objects, so each rank's loss normaliser (its object count) is the same share of the combined one.
SGD, not Adam: Adam's first steps move each weight by about ``lr * sign(grad)``, so a gradient
that is zero up to rounding (summation order differs between the runs) could move by ``lr``
either way; SGD keeps rounding differences at rounding size.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

# Run as a script: this checkout's package and the test helpers, whatever is installed.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from test_centerpoint_model import tiny_frame  # noqa: E402
from test_centerpoint_targets import TINY  # noqa: E402

from qd_perception.classes import CLASS_NAMES  # noqa: E402
from qd_perception.models.build import build_model, config_from_dict  # noqa: E402
from qd_perception.train.distributed import Stepper, accumulate, cpu_state, distributed, wrap  # noqa: E402
from qd_perception.train.lidar import batch_loss, epoch_loader  # noqa: E402
from qd_perception.train.lidar_data import LidarDataset  # noqa: E402

FRAMES = 8
EPOCHS = 2
#: One task group with every class: each group has objects in every frame. (A group without
#: objects has its focal loss normalised by 1, not by its object count, so that term is a sum
#: over the batch and grows with the per-process batch, as in CenterPoint's reference code.)
CONFIG = {
    **TINY,
    "head": {**TINY["head"], "tasks": [list(CLASS_NAMES)]},
    "decode": {"circle_radius_m": [1.0]},
}


def train_tiny(out: Path, batch_size: int, grad_accum: int) -> None:
    """``EPOCHS`` epochs over ``FRAMES`` tiny frames (no augmentation) -> ``out/rank<r>.pt``."""
    torch.set_num_threads(1)
    with distributed("cpu") as dist:
        torch.manual_seed(0)
        cfg = config_from_dict("centerpoint", CONFIG)
        model = build_model("centerpoint", cfg)
        ddp = wrap(model, dist)
        stepper = Stepper(
            ddp, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), dist, grad_clip=35.0
        )
        dataset = LidarDataset([tiny_frame(i) for i in range(FRAMES)], cfg)
        loss_fn = functools.partial(batch_loss, frozen_batchnorm=True)
        for epoch in range(EPOCHS):
            for micro in accumulate(epoch_loader(dataset, epoch, batch_size, 0, 0, dist), grad_accum):
                stepper.step(micro, loss_fn)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(cpu_state(model.state_dict()), out / f"rank{dist.rank}.pt")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    a = p.parse_args()
    train_tiny(a.out, a.batch_size, a.grad_accum)
