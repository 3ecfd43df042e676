"""Cost of the detector node's outputs for a busy frame: ``Detection3DArray`` + ``MarkerArray``.

The node publishes both as CDR bytes composed directly (:func:`detections_to_cdr`,
:func:`detections_to_markers_cdr`; ``Publisher.publish(bytes)`` sends them unchanged). For
comparison it also times the message-object route for the same content: rclpy serialising the
equivalent message objects (``serialize_message``), which is what publishing an object costs on
top of building it. Prints p50 / min in milliseconds::

    nice -n 10 .venv/bin/python benchmarks/output_messages.py --boxes 250 --repeat 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_line

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()

    from rclpy.serialization import serialize_message

    from qd_perception.classes import CLASS_NAMES
    from qd_perception.data.types import Detections
    from qd_perception.ros.convert import detections_to_cdr, detections_to_msg, ns_to_stamp
    from qd_perception.ros.markers import detections_to_markers, detections_to_markers_cdr

    rng = np.random.default_rng(0)
    n = args.boxes
    boxes = np.c_[
        rng.uniform(-50, 50, (n, 3)), rng.uniform(0.5, 5, (n, 3)), rng.uniform(-3, 3, (n, 1)),
        rng.normal(0, 5, (n, 2)),
    ]  # fmt: skip
    dets = Detections(
        boxes, rng.integers(0, len(CLASS_NAMES), n), rng.uniform(0, 1, n).astype(np.float32), ("",) * n
    )
    stamp_ns = 1_700_000_000_123_456_789
    msg, markers = (
        detections_to_msg(dets, stamp_ns, "base_link"),
        detections_to_markers(dets, ns_to_stamp(stamp_ns), "base_link"),
    )
    cases = {
        "detections CDR": lambda: detections_to_cdr(dets, stamp_ns, "base_link"),
        "markers CDR": lambda: detections_to_markers_cdr(dets, stamp_ns, "base_link"),
        "both CDR (what the node does)": lambda: (
            detections_to_cdr(dets, stamp_ns, "base_link"),
            detections_to_markers_cdr(dets, stamp_ns, "base_link"),
        ),
        "serialize_message(detections object)": lambda: serialize_message(msg),
        "serialize_message(markers object)": lambda: serialize_message(markers),
    }
    print(f"{n} boxes, {args.repeat} runs each; {cpu_line()}")
    for name, fn in cases.items():
        fn()
        t = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            t.append((time.perf_counter() - t0) * 1e3)
        print(f"{name:<40} p50 {np.median(t):6.2f} ms   min {np.min(t):6.2f} ms")


if __name__ == "__main__":
    main()
