"""``bev_detector``: six cameras (+ odometry) -> 3-D detections with the camera BEV detector
(``detector.name: bev``). Topics and parameters: :mod:`qd_perception.ros.node_config`,
``config/bev_detector.param.yaml``."""

from __future__ import annotations

import sys

from qd_perception.ros.detector_node import main_for
from qd_perception.ros.node_config import BEV_DETECTOR_DEFAULTS

NODE_NAME = "bev_detector"


def main(argv: list[str] | None = None) -> int:
    return main_for(NODE_NAME, BEV_DETECTOR_DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())
