"""Data-parallel scaling of ``train lidar``: samples/s with 1 process vs 2 processes (torchrun, gloo).

Runs the real CLI on a small synthetic data set (or ``--data``) for ``--epochs`` epochs without
augmentation, in these layouts, and prints one markdown row each for docs/benchmarks.md::

    nice -n 10 python benchmarks/train_scaling.py --config config/models/centerpoint_pillar_cpu.model.yaml

* 1 process x ``--threads / 2`` threads, batch ``2 * --batch-size`` (the per-core baseline)
* 1 process x ``--threads`` torch threads, batch ``2 * --batch-size``
* 2 processes (``torchrun --nproc_per_node 2``) x ``--threads / 2`` threads, batch ``--batch-size``
  each: the same global batch and the same cores, only the split differs.

samples/s = samples trained (the ranks' padded shares) / the checkpoint's ``train_seconds``
(the training loop itself: no interpreter start, data indexing or rendezvous). On a small shared
CPU machine this measures the overhead of the data-parallel path, not a speed-up.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import cpu_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not an installed copy


def run_layout(
    procs: int, threads: int, batch: int, args: argparse.Namespace, data: Path, work: Path
) -> tuple[float, float, int]:
    """-> (train seconds, wall seconds of the command, samples trained)."""
    import torch

    out = work / f"p{procs}.pt"
    cli = ["train", "lidar", "--config", str(args.config), "--data", str(data), "--out", str(out), "--fresh"]
    cli += ["--epochs", str(args.epochs), "--batch-size", str(batch), "--threads", str(threads)]
    cli += ["--device", "cpu", "--no-augment", "--workers", str(args.workers)]
    if procs == 1:
        cmd = [sys.executable, "-m", "qd_perception.cli", *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += ["-m", "qd_perception.cli", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    samples = args.epochs * math.ceil(args.samples_per_epoch / procs) * procs
    return float(ckpt["train_seconds"]), wall, samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "config/models/centerpoint_pillar_cpu.model.yaml")
    p.add_argument("--data", type=Path, default=None, help="nuScenes-format dataroot (default: generate one)")
    p.add_argument("--scenes", type=int, default=3, help="generated scenes (train split: all but one)")
    p.add_argument("--samples", type=int, default=4, help="keyframes per generated scene")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1, help="per process in the 2-process layout")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the whole job")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()

    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.sim.generate import GenerateConfig, generate

    with tempfile.TemporaryDirectory(prefix="train_scaling_") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            cfg = GenerateConfig(
                scenes=args.scenes,
                samples=args.samples,
                seed=13,
                resolution=(16, 32),
                val_fraction=0.01,
                workers=1,
            )
            data = generate(cfg, work / "ds", show_progress=False)
        reader = NuScenesReader(data, "v1.0-synthetic", "train", nsweeps=1, load_images=False)
        args.samples_per_epoch = len(reader)
        print(
            f"{args.samples_per_epoch} train samples x {args.epochs} epochs, {args.config.name}, {cpu_line()}"
        )
        cols = ("processes", "threads/process", "batch/process", "global batch", "samples", "train s")
        cols += ("samples/s", "wall s")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        half = max(1, args.threads // 2)
        layouts = ((1, half, 2 * args.batch_size), (1, args.threads, 2 * args.batch_size))
        layouts += ((2, half, args.batch_size),)
        for procs, threads, batch in dict.fromkeys(layouts):
            train_s, wall, samples = run_layout(procs, threads, batch, args, data, work)
            print(
                f"| {procs} | {threads} | {batch} | {procs * batch} | {samples} | {train_s:.1f} | "
                f"{samples / train_s:.2f} | {wall:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
