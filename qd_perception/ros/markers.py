"""Detections -> ``visualization_msgs/MarkerArray`` for RViz.

One DELETEALL marker first (so boxes of the previous frame never linger), then per detection a
LINE_LIST of the 12 box edges in its class colour and a TEXT_VIEW_FACING label
"class score | speed m/s" above the box.
"""

from __future__ import annotations

import copy as _copy
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
    """:class:`Detections` -> ``MarkerArray`` (DELETEALL, then boxes and labels).

    Built for speed (it runs for every frame someone visualises): each marker is a shallow copy of
    a prototype (``Marker()`` constructs ~15 sub-messages, 60 us), the 24 line vertices of a box
    reference its 8 corner ``Point`` objects, and read-only sub-messages (header, colour, scale,
    orientation) are shared between markers; serialisation only reads them.
    """
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
    from std_msgs.msg import ColorRGBA, Header
    from visualization_msgs.msg import Marker, MarkerArray

    header = Header(stamp=stamp, frame_id=frame_id)
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    n = len(dets)
    if not n:
        return MarkerArray(markers=markers)
    upright = Quaternion(w=1.0)
    line_proto = Marker(
        header=header, ns=f"{ns}/boxes", type=Marker.LINE_LIST, action=Marker.ADD,
        pose=Pose(orientation=upright), scale=Vector3(x=0.08), lifetime=life,
    )  # fmt: skip
    text_proto = Marker(
        header=header, ns=f"{ns}/labels", type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
        scale=Vector3(z=0.6), lifetime=life,
    )  # fmt: skip
    colors = [ColorRGBA(r=r, g=g, b=b, a=1.0) for r, g, b in CLASS_COLORS]
    boxes = np.asarray(dets.boxes, np.float64)
    corners = box_corners(boxes).tolist()  # (N, 8, 3) as lists: no numpy scalars per vertex
    tops = box_corners(boxes)[:, :, 2].max(1) + 0.6
    speeds = np.hypot(boxes[:, 7], boxes[:, 8]).tolist()
    labels = np.asarray(dets.labels).tolist()
    scores = np.asarray(dets.scores, np.float64).tolist()
    xy = boxes[:, :2].tolist()
    edge_idx = _EDGE_IDX.tolist()
    copy = _copy.copy
    for k in range(n):
        cid = labels[k]
        line = copy(line_proto)
        line.id = k
        line.color = colors[cid]
        pts = [Point(x=c[0], y=c[1], z=c[2]) for c in corners[k]]
        line.points = [pts[i] for i in edge_idx]
        markers.append(line)
        text = copy(text_proto)
        text.id = k
        text.pose = Pose(position=Point(x=xy[k][0], y=xy[k][1], z=float(tops[k])), orientation=upright)
        text.color = colors[cid]
        text.text = f"{CLASS_NAMES[cid]} {scores[k]:.2f} | {speeds[k]:.1f} m/s"
        markers.append(text)
    return MarkerArray(markers=markers)
