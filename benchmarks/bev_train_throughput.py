"""Camera BEV training throughput, before vs after the image cache and batching, side by side.

before: every step decodes and resizes the JPEGs of its sample and of its history frame (as the
first epoch of the previous loop did), batch 1, no DataLoader.
after: images from the uint8 memmap cache, batch ``--batch-size``, ``--workers`` DataLoader
workers, BEV + photometric augmentation on.
Both run the same model, the same queue length and the same number of torch threads, one after
the other in one process; samples/s and the ratio are printed with the CPU's vector flags.

    python -m benchmarks.bev_train_throughput --data .cache/bev/train --steps 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import cpu_line
from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.models.bevformer.config import load_model_config
from qd_perception.models.bevformer.model import BEVFormer
from qd_perception.train.bev import TrainConfig, open_cached_dataset, train_step
from qd_perception.train.bev_data import (
    NO_AUGMENT,
    AugmentConfig,
    BEVDataset,
    TemporalSamples,
    collate_temporal,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config/models/bevformer_nano.model.yaml")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_model_config(a.config)
    tcfg = TrainConfig(queue_length=2)
    model = BEVFormer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    order = np.random.default_rng(0).permutation(3000)

    # before: JPEG decode per step, batch 1; the time covers data loading and the step
    reader = NuScenesReader(a.data, "v1.0-synthetic", a.split, nsweeps=0, load_images=True)
    old = TemporalSamples(BEVDataset(reader, cfg, cache=False), 2, NO_AUGMENT)
    t0 = time.perf_counter()
    n_old = 0
    for i in order[: a.steps] % len(old):
        train_step(model, opt, collate_temporal([old[int(i)]]), tcfg)
        n_old += 1
    before = n_old / (time.perf_counter() - t0)

    cached = open_cached_dataset(a.data, "v1.0-synthetic", a.split, cfg, a.cache_dir)
    new = TemporalSamples(cached, 2, AugmentConfig())
    loader = torch.utils.data.DataLoader(
        new, batch_size=a.batch_size, sampler=(order % len(new)).tolist(), collate_fn=collate_temporal,
        num_workers=a.workers,
    )  # fmt: skip
    it = iter(loader)
    next(it)  # workers started
    t0 = time.perf_counter()
    n_new = 0
    for _ in range(max(1, a.steps // a.batch_size)):
        tb = next(it)
        train_step(model, opt, tb, tcfg)
        n_new += len(tb.current.targets)
    after = n_new / (time.perf_counter() - t0)
    H, W = reader[0].cameras[0].image.shape[:2]
    print(f"{cpu_line()}; torch threads {a.threads}; model {cfg.name}; queue 2; JPEGs {H}x{W}")
    print(f"before (JPEG per step, batch 1): {before:.3f} samples/s over {n_old} samples")
    what = f"cache, batch {a.batch_size}, {a.workers} workers, augment"
    print(f"after ({what}): {after:.3f} samples/s over {n_new} samples")
    print(f"ratio after/before: {after / before:.2f}x")


if __name__ == "__main__":
    main()
