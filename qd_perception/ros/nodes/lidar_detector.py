"""``lidar_detector``: lidar (+ odometry) -> 3-D detections. Default detector: ``classical``
(CenterPoint with ``detector.name: centerpoint``). Topics and parameters:
:mod:`qd_perception.ros.node_config`, ``config/lidar_detector.param.yaml``."""

from __future__ import annotations

import sys

from qd_perception.ros.detector_node import main_for

NODE_NAME = "lidar_detector"
DEFAULT_DETECTOR = "classical"


def main(argv: list[str] | None = None) -> int:
    return main_for(NODE_NAME, DEFAULT_DETECTOR, argv)


if __name__ == "__main__":
    sys.exit(main())
