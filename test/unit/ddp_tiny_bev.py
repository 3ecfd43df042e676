"""``train bev`` in one process of a torchrun job, each rank then writing its own parameters (the
worker of test_train_distributed.py; the command's checkpoint is rank 0's alone).

    python -m torch.distributed.run --standalone --nproc_per_node 2 test/unit/ddp_tiny_bev.py \
        --ranks-out DIR <train bev arguments>

Each rank writes the trained module's parameters and buffers to ``DIR/rank<r>.pt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# Run as a script: this checkout's package, whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from qd_perception.train import bev
from qd_perception.train.distributed import cpu_state, distributed, runtime_from_args

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ranks-out", type=Path, required=True)
    bev.add_arguments(p)
    args = p.parse_args()
    runtime = runtime_from_args(args)
    with distributed(runtime.device) as dist:
        model = bev.train(args, runtime, dist)
        args.ranks_out.mkdir(parents=True, exist_ok=True)
        torch.save(cpu_state(model.state_dict()), args.ranks_out / f"rank{dist.rank}.pt")
