"""Approximate-time sync: this project's O(N) policy vs message_filters-style product matching.

Both are fed the same arrivals for 7 inputs (6 cameras + lidar); prints markdown rows (time per
message, sets formed) for docs/benchmarks.md::

    nice -n 10 .venv/bin/python benchmarks/sync_policy.py

Scenarios: ``regular`` (12 Hz inputs with +-10 ms jitter, slop 40 ms: at most one candidate per
input, both form the same sets), ``worst`` (queues full of candidates with no valid combination:
the product is enumerated completely on every arrival).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.sync import ApproximateTimePolicy, SyncConfig

MS = 1_000_000


class Product:
    """message_filters' Python ApproximateTimeSynchronizer matching (itertools.product)."""

    def __init__(self, n: int, q: int, slop: int) -> None:
        self.queues: list[dict[int, int]] = [{} for _ in range(n)]
        self.q, self.slop = q, slop

    def add(self, i: int, stamp: int) -> tuple | None:
        qi = self.queues[i]
        qi[stamp] = stamp
        while len(qi) > self.q:
            del qi[min(qi)]
        cands = []
        for j, other in enumerate(self.queues):
            if j == i:
                continue
            c = sorted((s for s in other if abs(s - stamp) <= self.slop), key=lambda s: abs(s - stamp))
            if not c:
                return None
            cands.append(c)
        for vv in itertools.product(*cands):
            vv = list(vv)
            vv.insert(i, stamp)
            if max(vv) - min(vv) < self.slop:
                for j, s in enumerate(vv):
                    del self.queues[j][s]
                return tuple(vv)
        return None


def regular(n: int, frames: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    ev = []
    for s in range(n):
        for k in range(frames):
            stamp = int((k * 83.3 + rng.uniform(-10, 10)) * MS)
            ev.append((stamp + int(rng.uniform(0, 30) * MS), s, stamp))
    ev.sort()
    return [(s, t) for _, s, t in ev]


def worst(n: int, q: int, rounds: int) -> list[tuple[int, int]]:
    """Inputs 1..n-1 fill their queues with q stamps each; inputs 1 and 2 are 1.2 slop apart, so
    no combination is valid; then input 0 arrives ``rounds`` times."""
    ev = []
    t0 = 10_000 * MS
    for j in range(1, n):
        base = {1: -30, 2: 30}.get(j, 0)
        for k in range(q):
            ev.append((j, t0 + (base + k - q // 2) * MS // 2 + base * MS // 2))
    for r in range(rounds):
        ev.append((0, t0 + r))
    return ev


def run(events, n: int, q: int, slop_ms: float):
    names = [str(i) for i in range(n)]
    ours = ApproximateTimePolicy(names, SyncConfig(slop_s=slop_ms / 1000, queue_size=q))
    ref = Product(n, q, int(slop_ms * MS))
    t = time.perf_counter()
    a = [o.stamps_ns for s, st in events if (o := ours.add(str(s), st, None)) is not None]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    b = [o for s, st in events if (o := ref.add(s, st)) is not None]
    t_ref = time.perf_counter() - t
    return a, b, t_ours / len(events) * 1e6, t_ref / len(events) * 1e6


def main() -> None:
    cols = ["scenario", "inputs", "queue", "messages", "sets (ours / product)", "same sets"]
    cols += ["us/msg ours", "us/msg product"]
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|---|")
    n = 7
    ev = regular(n, 600)
    a, b, to, tr = run(ev, n, 10, 40)
    print(
        f"| regular 12 Hz, jitter +-10 ms, slop 40 ms | {n} | 10 | {len(ev)} | {len(a)} / {len(b)} "
        f"| {a == b} | {to:.1f} | {tr:.1f} |"
    )
    for q in (3, 5, 7):
        ev = worst(n, q, 5)
        a, b, to, tr = run(ev, n, q, 50)
        print(
            f"| worst case (no valid set), slop 50 ms | {n} | {q} | {len(ev)} | {len(a)} / {len(b)} "
            f"| {a == b} | {to:.1f} | {tr:.1f} |"
        )


if __name__ == "__main__":
    main()
