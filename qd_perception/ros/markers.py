"""Detections -> ``visualization_msgs/MarkerArray`` for RViz.

One DELETEALL marker first (so boxes of the previous frame never linger), then per detection a
LINE_LIST of the 12 box edges in its class colour and a TEXT_VIEW_FACING label
"class score | speed m/s" above the box.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.types import Detections
from qd_perception.geometry.boxes import BOX_EDGES, box_corners

#: RGB in [0, 1] per class (index = class_id); vehicles warm, vulnerable road users cool.
CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.00, 0.62, 0.00),  # car
    (1.00, 0.30, 0.10),  # truck
    (0.80, 0.60, 0.20),  # construction_vehicle
    (1.00, 0.85, 0.10),  # bus
    (0.75, 0.40, 0.00),  # trailer
    (0.60, 0.60, 0.60),  # barrier
    (0.90, 0.10, 0.60),  # motorcycle
    (0.70, 0.20, 1.00),  # bicycle
    (0.10, 0.60, 1.00),  # pedestrian
    (0.10, 1.00, 0.40),  # traffic_cone
)
assert len(CLASS_COLORS) == len(CLASS_NAMES)

_EDGE_IDX = np.array(BOX_EDGES).reshape(-1)  # (24,) corner index per line vertex


def detections_to_markers(
    dets: Detections, stamp: Any, frame_id: str = "base_link", lifetime_s: float = 0.0, ns: str = "qd"
) -> Any:
    """:class:`Detections` -> ``MarkerArray`` (DELETEALL, then boxes and labels)."""
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA, Header
    from visualization_msgs.msg import Marker, MarkerArray

    header = Header(stamp=stamp, frame_id=frame_id)
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    if len(dets):
        corners = box_corners(np.asarray(dets.boxes))  # (N, 8, 3)
        speeds = np.hypot(dets.boxes[:, 7], dets.boxes[:, 8])
    for k in range(len(dets)):
        cid = int(dets.labels[k])
        r, g, b = CLASS_COLORS[cid]
        color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        line = Marker(header=header, ns=f"{ns}/boxes", id=k, type=Marker.LINE_LIST, action=Marker.ADD)
        line.pose.orientation.w = 1.0
        line.scale.x = 0.08
        line.color = color
        line.lifetime = life
        line.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in corners[k][_EDGE_IDX]]
        markers.append(line)
        text = Marker(header=header, ns=f"{ns}/labels", id=k, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        top = corners[k][:, 2].max()
        text.pose.position = Point(x=float(dets.boxes[k, 0]), y=float(dets.boxes[k, 1]), z=float(top + 0.6))
        text.pose.orientation.w = 1.0
        text.scale.z = 0.6
        text.color = color
        text.lifetime = life
        text.text = f"{CLASS_NAMES[cid]} {float(dets.scores[k]):.2f} | {speeds[k]:.1f} m/s"
        markers.append(text)
    return MarkerArray(markers=markers)
