"""The output messages composed as CDR bytes (ros/cdr.py) carry exactly the field values of the
message objects they replaced: the object-building reference below is the former code path.
(Padding bytes are unspecified in CDR, so values are compared after deserialisation, the
reference after its own serialisation round trip: float32 fields hold what goes on the wire.)."""

from __future__ import annotations

import numpy as np
import pytest

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.types import Detections
from qd_perception.geometry.boxes import BOX_EDGES, box_corners
from qd_perception.ros.convert import detections_to_cdr, ns_to_stamp
from qd_perception.ros.markers import CLASS_COLORS, detections_to_markers_cdr

STAMP_NS = 1_700_000_123_456_789_012


def wire(msg):
    """``msg`` as a subscriber receives it."""
    from rclpy.serialization import deserialize_message, serialize_message

    return deserialize_message(serialize_message(msg), type(msg))


def reference_detections(dets: Detections, stamp_ns: int, frame_id: str):
    from geometry_msgs.msg import Point, Vector3
    from qd_perception.msg import BoundingBox3D, Detection3D, Detection3DArray
    from std_msgs.msg import Header

    out = Detection3DArray(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id))
    for k, b in enumerate(np.asarray(dets.boxes, np.float64).tolist()):
        cid = int(dets.labels[k])
        box = BoundingBox3D(
            center=Point(x=b[0], y=b[1], z=b[2]), size=Vector3(x=b[3], y=b[4], z=b[5]), yaw=b[6]
        )
        out.detections.append(
            Detection3D(
                box=box, velocity=Vector3(x=b[7], y=b[8], z=0.0), class_id=cid, class_name=CLASS_NAMES[cid],
                score=float(dets.scores[k]), attribute=dets.attributes[k] if dets.attributes else "",
                instance_id="" if dets.instance_ids is None else str(dets.instance_ids[k]),
                num_lidar_points=0 if dets.num_lidar_pts is None else int(dets.num_lidar_pts[k]),
            )
        )  # fmt: skip
    return out


def reference_markers(dets: Detections, stamp_ns: int, frame_id: str, lifetime_s: float, ns: str):
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
    from std_msgs.msg import ColorRGBA, Header
    from visualization_msgs.msg import Marker, MarkerArray

    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    boxes = np.asarray(dets.boxes, np.float64)
    corners = box_corners(boxes)
    edges = np.array(BOX_EDGES).reshape(-1)
    for k in range(len(dets)):
        cid = int(dets.labels[k])
        color = ColorRGBA(r=CLASS_COLORS[cid][0], g=CLASS_COLORS[cid][1], b=CLASS_COLORS[cid][2], a=1.0)
        pts = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in corners[k][edges]]
        markers.append(
            Marker(
                header=header, ns=f"{ns}/boxes", id=k, type=Marker.LINE_LIST, action=Marker.ADD,
                pose=Pose(orientation=Quaternion(w=1.0)), scale=Vector3(x=0.08), color=color,
                lifetime=life, points=pts,
            )
        )  # fmt: skip
        top = Point(x=boxes[k, 0], y=boxes[k, 1], z=float(corners[k, :, 2].max() + 0.6))
        speed = float(np.hypot(boxes[k, 7], boxes[k, 8]))
        markers.append(
            Marker(
                header=header, ns=f"{ns}/labels", id=k, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                pose=Pose(position=top, orientation=Quaternion(w=1.0)), scale=Vector3(z=0.6), color=color,
                lifetime=life, text=f"{CLASS_NAMES[cid]} {float(dets.scores[k]):.2f} | {speed:.1f} m/s",
            )
        )  # fmt: skip
    return MarkerArray(markers=markers)


def random_detections(n: int, seed: int, tracked: bool) -> Detections:
    rng = np.random.default_rng(seed)
    boxes = np.c_[
        rng.uniform(-50, 50, (n, 3)), rng.uniform(0.3, 12, (n, 3)), rng.uniform(-np.pi, np.pi, (n, 1)),
        rng.normal(0, 8, (n, 2)),
    ]  # fmt: skip
    attrs = tuple(str(a) for a in rng.choice(["", "vehicle.moving", "pedestrian.standing", "x"], n))
    extra = (
        dict(instance_ids=rng.integers(0, 10**6, n), num_lidar_pts=rng.integers(0, 5000, n))
        if tracked
        else {}
    )
    return Detections(
        boxes, rng.integers(0, len(CLASS_NAMES), n), rng.uniform(0, 1, n).astype(np.float32), attrs, **extra
    )


# sizes 1..5 run through every alignment phase of the variable-length strings; 250 = a busy scene
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 250])
@pytest.mark.parametrize("tracked", [False, True])
def test_detections_cdr_equals_message_objects(n, tracked):
    from qd_perception.msg import Detection3DArray
    from rclpy.serialization import deserialize_message

    dets = random_detections(n, seed=n, tracked=tracked)
    for frame in ("base_link", "map_"):  # frame_id length shifts the alignment of all that follows
        got = deserialize_message(detections_to_cdr(dets, STAMP_NS + n, frame), Detection3DArray)
        assert got == wire(reference_detections(dets, STAMP_NS + n, frame))
        assert len(got.detections) == n


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 250])
@pytest.mark.parametrize("lifetime_s", [0.0, 0.35])
def test_markers_cdr_equals_message_objects(n, lifetime_s):
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    dets = random_detections(n, seed=100 + n, tracked=False)
    for frame, ns in (("base_link", "qd"), ("lidar", "lidar_detector")):
        data = detections_to_markers_cdr(dets, STAMP_NS, frame, lifetime_s, ns)
        got = deserialize_message(data, MarkerArray)
        want = wire(reference_markers(dets, STAMP_NS, frame, lifetime_s, ns))
        assert len(got.markers) == 1 + 2 * n
        for a, b in zip(got.markers, want.markers):
            assert a == b
