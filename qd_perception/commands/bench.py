"""``qd-perception bench``: run the benchmark suite of ``benchmarks/run_all.py`` from a checkout.

The benchmarks are scripts of the repository, not of the installed package: this command runs
``python -m benchmarks.run_all`` in the repository root (the folder holding ``benchmarks/``), with
the same ``--only NAME ...`` / ``--list`` options. Each benchmark prints its markdown rows for
docs/benchmarks.md; the summary at the end says which benchmarks ran, which were skipped and why.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from qd_perception.paths import share_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    # The same two options as benchmarks/run_all.py (not importable from an installed package).
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks of the suite only")
    p.add_argument("--list", action="store_true", help="list the suite and exit")


def run(args: argparse.Namespace) -> int:
    root = Path(share_dir())
    if not (root / "benchmarks" / "run_all.py").is_file():
        print(
            f"qd-perception bench: no benchmarks/ in {root} (run it from a source checkout)", file=sys.stderr
        )
        return 2
    cmd = [sys.executable, "-m", "benchmarks.run_all"]
    cmd += ["--list"] if args.list else []
    cmd += ["--only", *args.only] if args.only else []
    return subprocess.call(cmd, cwd=root)
