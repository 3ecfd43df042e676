"""Run the benchmark suite: every benchmark script that needs nothing but this repository.

``make bench`` and ``qd-perception bench`` run this module. Each entry of :data:`SUITE` is one
script of ``benchmarks/`` with the arguments of its docs/benchmarks.md row; an entry whose inputs
(trained weights in ``weights/``) are missing is skipped with the reason. The scripts that need a
data set generated first (``classical_baseline``, ``lidar_path_profile``, ``quant_error_bars``,
``quant_lidar_ablation``, ``quant_ptq_vs_qat``, ``temporal_distill``) or run for an hour
(``ptq_closed_loop``) are not in the suite: their docstrings give the commands. Each script prints
its markdown rows; this module prints, at the end, which benchmarks ran, which were skipped and
which failed, and exits non-zero when one failed::

    python -m benchmarks.run_all                 # the whole suite (long)
    python -m benchmarks.run_all --only sync_policy sim_world_timing
    python -m benchmarks.run_all --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    """One script of ``benchmarks/``: ``python -m benchmarks.<name> <args>``, run from the repository root."""

    name: str
    args: tuple[str, ...] = ()
    #: Paths (relative to the repository root) the run needs; missing ones skip it.
    needs: tuple[str, ...] = ()


#: The suite, quickest first. Explicit: a new benchmark is added here.
SUITE: tuple[Benchmark, ...] = (
    Benchmark("sync_policy"),
    Benchmark("sim_world_timing", ("--scenes", "2", "--keyframes", "2")),
    Benchmark("sim_throughput", ("--scenes", "1", "--samples", "2", "--resolution", "450x800")),
    Benchmark("quant_calibrators", ("--frames", "4")),
    Benchmark(
        "bev_latency",
        ("--model", "weights/bevformer_nano.pt", "--threads", "1"),
        ("weights/bevformer_nano.pt",),
    ),
    Benchmark(
        "centerpoint_latency",
        ("--ckpt", "weights/centerpoint_pillar_cpu.pt"),
        ("weights/centerpoint_pillar_cpu.pt",),
    ),
    Benchmark(
        "quant_latency",
        ("--ckpt", "weights/centerpoint_pillar_cpu.pt"),
        ("weights/centerpoint_pillar_cpu.pt",),
    ),
    Benchmark("ros_node_latency", ("--rates", "2,5", "--duration", "10")),
    Benchmark("replay_lidar"),
)


def missing_inputs(bench: Benchmark, root: Path = ROOT) -> list[str]:
    """The paths of ``bench.needs`` that do not exist under ``root``."""
    return [p for p in bench.needs if not (root / p).exists()]


def run(names: list[str] | None = None, root: Path = ROOT) -> int:
    """Run the benchmarks ``names`` (default: all of :data:`SUITE`) and print what ran.

    Returns the number of benchmarks that failed (non-zero exit status).
    """
    table = {b.name: b for b in SUITE}
    unknown = sorted(set(names or ()) - table.keys())
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {sorted(table)}")
    chosen = [table[n] for n in names] if names else list(SUITE)
    outcome: list[tuple[str, str]] = []
    for bench in chosen:
        missing = missing_inputs(bench, root)
        if missing:
            outcome.append((bench.name, f"skipped: missing {', '.join(missing)}"))
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{bench.name}", *bench.args]
        print(f"\n### {bench.name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd, cwd=root)
        took = time.monotonic() - t0
        outcome.append(
            (bench.name, f"ran in {took:.0f} s" if rc == 0 else f"FAILED (exit {rc}) after {took:.0f} s")
        )
    print("\n| benchmark | result |\n|---|---|")
    for name, result in outcome:
        print(f"| {name} | {result} |")
    return sum(result.startswith("FAILED") for _, result in outcome)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks of the suite only")
    p.add_argument("--list", action="store_true", help="list the suite and exit")

    args = p.parse_args(argv)
    if args.list:
        for b in SUITE:
            missing = missing_inputs(b)
            note = f"  (skipped: missing {', '.join(missing)})" if missing else ""
            print(f"{b.name} {' '.join(b.args)}{note}")
        return 0
    return 1 if run(args.only) else 0


if __name__ == "__main__":
    sys.exit(main())
