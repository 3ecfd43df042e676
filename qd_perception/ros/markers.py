"""Detections -> ``visualization_msgs/MarkerArray`` for RViz.

One DELETEALL marker first (so boxes of the previous frame never linger), then per detection a
LINE_LIST of the 12 box edges in its class colour and a TEXT_VIEW_FACING label
"class score | speed m/s" above the box.

The array is composed as serialized CDR (:mod:`qd_perception.ros.cdr`), which the node publishes
as is: per marker a pre-built template at its alignment phase with the id, colour, position and
the 24 line vertices (one numpy gather for all boxes) written in; ~1 ms for 250 boxes where
building ``Marker`` objects and serialising them took ~20 ms.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.types import Detections
from qd_perception.geometry.boxes import BOX_EDGES, box_corners
from qd_perception.ros.cdr import CDR_LE_HEADER, CdrWriter

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
# visualization_msgs/Marker type and action constants (the message module is imported lazily)
LINE_LIST, TEXT_VIEW_FACING, ADD, DELETEALL = 5, 9, 0, 3
LINE_WIDTH_M, TEXT_HEIGHT_M, TEXT_ABOVE_M = 0.08, 0.6, 0.6


@dataclass(frozen=True)
class _Template:
    """One marker's bytes at one alignment phase, with the positions of the fields to fill in."""

    data: bytes
    at_id: int
    at_pose: int  # pose.position (3 float64)
    at_color: int  # color (4 float32)
    at_points: int  # the first vertex (float64 x, y, z each)


def _marker_head(
    w: CdrWriter, stamp: tuple[int, int], frame_id: str, ns: str, mtype: int, action: int,
    scale: tuple[float, float, float], life: tuple[int, int], n_points: int,
) -> tuple[int, int, int, int]:  # fmt: skip
    """visualization_msgs/Marker fields up to ``uv_coordinates`` (id, pose, colour, vertices 0)."""
    w.prim("i", stamp[0])
    w.prim("I", stamp[1])
    w.string(frame_id)
    w.string(ns)
    at_id = w.prim("i", 0)
    w.prim("i", mtype)
    w.prim("i", action)
    at_pose = w.prim("d", 0.0, 0.0, 0.0)
    w.prim("d", 0.0, 0.0, 0.0, 1.0)  # orientation: upright
    w.prim("d", *scale)
    at_color = w.prim("f", 0.0, 0.0, 0.0, 0.0)
    w.prim("i", life[0])
    w.prim("I", life[1])
    w.prim("?", False)  # frame_locked
    w.seq_len(n_points)
    at_points = w.prim("d", *(0.0,) * (3 * n_points)) if n_points else len(w.buf)
    w.seq_len(0)  # colors
    w.string("")  # texture_resource
    w.prim("i", 0)  # texture (sensor_msgs/CompressedImage): header.stamp, frame_id, format, data
    w.prim("I", 0)
    w.string("")
    w.string("")
    w.seq_len(0)
    w.seq_len(0)  # uv_coordinates
    return at_id, at_pose, at_color, at_points


def _marker_tail(w: CdrWriter) -> None:
    """The fields after ``text``: mesh_resource, mesh_file {filename, data}, use_embedded_materials."""
    w.string("")
    w.string("")
    w.seq_len(0)
    w.prim("?", False)


def _template(phase: int, *head: Any, text: str | None = "") -> _Template:
    """A whole marker (``text`` given) or its head only (``text=None``) at ``phase``."""
    w = CdrWriter(phase)
    at = _marker_head(w, *head)
    if text is not None:
        w.string(text)
        _marker_tail(w)
    return _Template(bytes(w.buf), *at)


def _tail(phase: int) -> bytes:
    w = CdrWriter(phase)
    _marker_tail(w)
    return bytes(w.buf)


_TAILS = tuple(_tail(q) for q in range(4))  # after a text ending at offset q (mod 4)
_COLORS = tuple(struct.pack("<4f", r, g, b, 1.0) for r, g, b in CLASS_COLORS)


def detections_to_markers_cdr(
    dets: Detections, stamp_ns: int, frame_id: str = "base_link", lifetime_s: float = 0.0, ns: str = "qd"
) -> bytes:
    """:class:`Detections` -> serialized ``visualization_msgs/MarkerArray`` (CDR, for
    ``Publisher.publish``): DELETEALL, then per box its edges (LINE_LIST) and its label.

    Boxes are (x, y, z, l, w, h, yaw, vx, vy) in ``frame_id`` (m, rad, m/s); the label sits
    ``TEXT_ABOVE_M`` above the highest corner.
    """
    stamp = (stamp_ns // 10**9, stamp_ns % 10**9)
    life = (int(lifetime_s), int((lifetime_s % 1) * 1e9))
    n = len(dets)
    parts = [CDR_LE_HEADER, struct.pack("<I", 1 + 2 * n)]
    off = 4  # payload offset of the next byte
    w = CdrWriter(off)
    _marker_head(w, stamp, frame_id, "", 0, DELETEALL, (0.0, 0.0, 0.0), (0, 0), 0)
    w.string("")
    _marker_tail(w)
    parts.append(bytes(w.buf))
    off += len(w.buf)
    if n:
        boxes = np.asarray(dets.boxes, np.float64)
        corners = box_corners(boxes)  # (N, 8, 3)
        vertices = np.ascontiguousarray(corners[:, _EDGE_IDX])  # (N, 24, 3)
        vbytes = vertices.tobytes()
        vsize = vertices[0].nbytes
        label_pos = np.c_[boxes[:, :2], corners[:, :, 2].max(1) + TEXT_ABOVE_M].tolist()
        speeds = np.hypot(boxes[:, 7], boxes[:, 8]).tolist()
        labels = np.asarray(dets.labels).tolist()
        scores = np.asarray(dets.scores, np.float64).tolist()
        line_head = (stamp, frame_id, f"{ns}/boxes", LINE_LIST, ADD, (LINE_WIDTH_M, 0.0, 0.0), life, 24)
        text_head = (
            stamp,
            frame_id,
            f"{ns}/labels",
            TEXT_VIEW_FACING,
            ADD,
            (0.0, 0.0, TEXT_HEIGHT_M),
            life,
            0,
        )
        lines = {p: _template(p, *line_head) for p in (0, 4)}
        texts = {p: _template(p, *text_head, text=None) for p in (0, 4)}
        pack_into, pack_len = struct.pack_into, struct.Struct("<I").pack
        for k in range(n):
            cid = labels[k]
            for kind in (lines, texts):
                if pad := -off % 4:  # a marker starts with an int32
                    parts.append(b"\x00" * pad)
                    off += pad
                t = kind[off % 8]
                b = bytearray(t.data)
                pack_into("<i", b, t.at_id, k)
                b[t.at_color : t.at_color + 16] = _COLORS[cid]
                if kind is lines:
                    b[t.at_points : t.at_points + vsize] = vbytes[k * vsize : (k + 1) * vsize]
                else:
                    pack_into("<3d", b, t.at_pose, *label_pos[k])
                    text = f"{CLASS_NAMES[cid]} {scores[k]:.2f} | {speeds[k]:.1f} m/s".encode()
                    b += pack_len(len(text) + 1) + text + b"\x00"
                    b += _TAILS[(off + len(b)) % 4]
                parts.append(b)
                off += len(b)
    return b"".join(parts)


def detections_to_markers(
    dets: Detections, stamp: Any, frame_id: str = "base_link", lifetime_s: float = 0.0, ns: str = "qd"
) -> Any:
    """The same as a ``MarkerArray`` message object (``stamp``: ``builtin_interfaces/Time``)."""
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    from qd_perception.ros.convert import stamp_to_ns

    data = detections_to_markers_cdr(dets, stamp_to_ns(stamp), frame_id, lifetime_s, ns)
    return deserialize_message(data, MarkerArray)
