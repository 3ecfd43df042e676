"""``lidar_detector``: lidar (+ odometry) -> 3-D detections.

Default detector: CenterPoint, the shipped pillar model (``config/lidar_detector.param.yaml``:
``detector.name: centerpoint``, ``weights/centerpoint_pillar_cpu.pt``). Started without a parameter
file, the node runs ``classical``, the clustering baseline that needs no model. Topics and
parameters: :mod:`qd_perception.ros.node_config`, ``config/lidar_detector.param.yaml``."""

from __future__ import annotations

import sys

from qd_perception.ros.detector_node import main_for

NODE_NAME = "lidar_detector"
#: The detector without a parameter file (the shipped one names CenterPoint): needs no model.
DEFAULT_DETECTOR = "classical"


def main(argv: list[str] | None = None) -> int:
    return main_for(NODE_NAME, DEFAULT_DETECTOR, argv)


if __name__ == "__main__":
    sys.exit(main())
