"""``lidar_detector``: lidar (+ odometry) -> 3-D detections.

Default detector (:data:`~qd_perception.ros.node_config.LIDAR_DETECTOR_DEFAULTS`, the same values
as ``config/lidar_detector.param.yaml``): CenterPoint, the LiDAR-PTQ INT8 artefact of the shipped
pillar model (``weights/centerpoint_pillar_int8_ort``, ``detector.backend: auto`` -> ONNX
Runtime) on 5 merged sweeps; ``detector.name: classical`` runs the clustering baseline that needs
no model. Topics and parameters: :mod:`qd_perception.ros.node_config`, docs/ros.md."""

from __future__ import annotations

import sys

from qd_perception.ros.detector_node import main_for
from qd_perception.ros.node_config import LIDAR_DETECTOR_DEFAULTS

NODE_NAME = "lidar_detector"


def main(argv: list[str] | None = None) -> int:
    return main_for(NODE_NAME, LIDAR_DETECTOR_DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())
