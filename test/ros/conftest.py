"""Fixtures for tests with real node processes on loopback DDS (helpers: ros_harness.py).

Every test session gets its own ``ROS_DOMAIN_ID`` (from the process id) so concurrent test runs
on one machine never see each other's topics; discovery stays on localhost
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, set by ``test/conftest.py``). Tests here are marked
``ros`` and skipped, with the reason, where rclpy or the built messages are missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["ROS_DOMAIN_ID"] = str(120 + os.getpid() % 90)

try:
    import rclpy  # noqa: F401
    from qd_perception.msg import Detection3DArray  # noqa: F401

    HAVE_ROS = True
    WHY = ""
except ImportError as e:  # pragma: no cover - depends on the environment
    HAVE_ROS = False
    WHY = f"rclpy or the built qd_perception messages are not importable ({e}); run `make setup`"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.ros)
            if not HAVE_ROS:
                item.add_marker(pytest.mark.skip(reason=WHY))


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from ros_harness import Driver

    d = Driver()
    yield d
    d.close()
