"""What every speed figure is printed beside: the CPU, its vector extensions and the load."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: the flags that change the speed of the int8 and float kernels measured here
FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


def cpu_flags() -> dict[str, bool]:
    """Flag -> present, from /proc/cpuinfo (all False where it cannot be read)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        words = set()
    return {f: f in words for f in FLAGS}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_line() -> str:
    """One line: model, cores, flags (yes/no), 1-minute load average."""
    flags = " ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu_flags().items())
    return f"{cpu_model()}, {os.cpu_count()} cores, {flags}, load {os.getloadavg()[0]:.1f}"


def label_path(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` (an argparse ``type``) -> (label, path); the first ``=`` splits."""
    import argparse

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return name, Path(path)
