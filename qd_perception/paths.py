"""Where the package's data files are: ``config/``, ``msg/``, ``launch/``, ``weights/``.

Running from a checkout they are the source tree's; installed by CMake/colcon (ROS) or by pip
(``setup.py`` data files) they are under ``<prefix>/share/qd_perception``. Code never builds these
paths from ``__file__`` itself, so the same call works in all three layouts.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

PACKAGE = "qd_perception"
_CHECKOUT = Path(__file__).resolve().parents[1]


def _is_share(p: Path) -> bool:
    return (p / "config" / "rig").is_dir()


@cache
def share_dir() -> Path:
    """The directory holding ``config/``, ``msg/``, ``launch/`` (and ``weights/`` if shipped)."""
    if (_CHECKOUT / "package.xml").is_file() and _is_share(_CHECKOUT):
        return _CHECKOUT
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix, str(_CHECKOUT.parents[2])]  # venv prefix; <prefix>/lib/pythonX/site-packages
    for prefix in prefixes:
        cand = Path(prefix) / "share" / PACKAGE
        if _is_share(cand):
            return cand
    try:  # a ROS install whose prefix is not on AMENT_PREFIX_PATH of this process
        from ament_index_python.packages import get_package_share_directory

        cand = Path(get_package_share_directory(PACKAGE))
        if _is_share(cand):
            return cand
    except Exception:
        pass
    raise FileNotFoundError(
        f"cannot find the {PACKAGE} data files (config/rig/...): not running from a checkout and no "
        f"share/{PACKAGE} under AMENT_PREFIX_PATH or {sys.prefix}; build with `make setup` or colcon"
    )


def config_dir() -> Path:
    return share_dir() / "config"


def msg_dir() -> Path:
    return share_dir() / "msg"


def weights_dir() -> Path:
    """Shipped trained weights (may not exist)."""
    return share_dir() / "weights"
