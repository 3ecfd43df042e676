"""A few QD-BEV steps (progressive QAT + VGD) of a tiny BEVFormer, in one process of a torchrun
job or in the test process itself (the worker of test_quant_bev_distributed.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 test/unit/ddp_tiny_qd_bev.py \
        --out DIR [--grad-accum 2] [--max-steps K]

``run_qat`` on ``DIR/qat`` (resumed when it holds a QAT state), then each rank writes the
fake-quant student's parameters and buffers (the quantizer ranges ``amax``/``amin`` included) and
the loss history to ``DIR/rank<r>.pt``. Every frame holds the same four objects. SGD, not the
command's AdamW: Adam's first steps move each weight by about ``lr * sign(grad)``, so a gradient
that is zero up to rounding (the summation order differs between the runs) could move by ``lr``
either way, and Adam does not see a wrong gradient scale at all; SGD keeps rounding differences
at rounding size and a scale error visible.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

# Run as a script: this checkout's package and the test helpers, whatever is installed.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from tiny_models import TINY_BEV, scene_boxes  # noqa: E402

from qd_perception.config import from_dict  # noqa: E402
from qd_perception.data.types import Detections  # noqa: E402
from qd_perception.distill.vgd import DistillConfig  # noqa: E402
from qd_perception.models.bevformer import BEVFormer, BEVFormerConfig  # noqa: E402
from qd_perception.train.bev_data import BEVDataset  # noqa: E402
from qd_perception.train.distributed import Runtime, cpu_state, distributed  # noqa: E402
from qd_perception.train.export_bev import example_frames  # noqa: E402
from qd_perception.train.quantize_bev import method_config, run_qat  # noqa: E402

FRAMES = 4
#: progressive QAT over two epochs (backbone, then backbone + neck) with VGD from the first step;
#: the VGD of a random tiny model is ~1e-6, weighted up so that its gradient counts
CONFIG = method_config(
    "qd_bev", "w4a6", epochs=2, calib_samples=3, lr=0.01, seed=1,
    distill=DistillConfig(kind="vgd", weight=1e4),
)  # fmt: skip


def fp_model() -> BEVFormer:
    torch.manual_seed(0)
    return BEVFormer(from_dict(BEVFormerConfig, {**TINY_BEV, "name": "ddp_qd_bev"})).eval()


def dataset(cfg: BEVFormerConfig) -> BEVDataset:
    """``FRAMES`` consecutive frames of one scene (history for the temporal queue), 4 objects each."""
    boxes, labels = scene_boxes()
    gt = Detections(boxes, labels, np.ones(len(labels), np.float32))
    return BEVDataset([dataclasses.replace(f, gt=gt) for f in example_frames(cfg, FRAMES)], cfg)


def qd_bev_tiny(out: Path, grad_accum: int = 1, max_steps: int = 0) -> None:
    torch.set_num_threads(1)
    with distributed("cpu") as dist:
        fp = fp_model()
        qmodel, state = run_qat(
            fp, dataset(fp.cfg), CONFIG, out / "qat", max_steps=max_steps, progress=False,
            runtime=Runtime(device="cpu", grad_accum=grad_accum), dist=dist,
            make_optimizer=lambda params: torch.optim.SGD(params, lr=CONFIG.lr, momentum=0.9),
        )  # fmt: skip
        payload = {"state_dict": cpu_state(qmodel.state_dict()), "history": state.history, "step": state.step}
        torch.save(payload, out / f"rank{dist.rank}.pt")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0)
    a = p.parse_args()
    qd_bev_tiny(a.out, a.grad_accum, a.max_steps)
