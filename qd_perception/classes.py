"""The 10 nuScenes detection classes, their source categories and default attributes.

The class index (position in :data:`CLASS_NAMES`) is the ``class_id`` carried by
``qd_perception/msg/Detection3D`` and used by every model head.
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
CLASS_ID: dict[str, int] = {n: i for i, n in enumerate(CLASS_NAMES)}

#: nuScenes category name written into ``category.json`` for each detection class.
CATEGORY_OF_CLASS: dict[str, str] = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}

#: nuScenes attribute names, as in the official ``attribute.json``.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)

#: Typical size (length, width, height) in metres of each class, from nuScenes statistics.
#: Used by the simulator (with jitter) and as size priors by the classical baseline.
MEAN_SIZE_LWH: dict[str, tuple[float, float, float]] = {
    "car": (4.63, 1.96, 1.74),
    "truck": (6.94, 2.52, 2.85),
    "construction_vehicle": (6.37, 2.85, 3.19),
    "bus": (11.0, 2.95, 3.47),
    "trailer": (12.3, 2.90, 3.87),
    "barrier": (0.50, 2.53, 0.98),
    "motorcycle": (2.11, 0.77, 1.47),
    "bicycle": (1.70, 0.60, 1.28),
    "pedestrian": (0.73, 0.67, 1.77),
    "traffic_cone": (0.41, 0.41, 1.07),
}


def attribute_for(class_name: str, speed: float, has_rider: bool = True) -> str:
    """The nuScenes attribute of an object of ``class_name`` moving at ``speed`` m/s.

    Barriers and cones have no attribute in nuScenes: the empty string is returned.
    """
    if class_name in ("barrier", "traffic_cone"):
        return ""
    if class_name == "pedestrian":
        return "pedestrian.moving" if speed > 0.3 else "pedestrian.standing"
    if class_name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if has_rider else "cycle.without_rider"
    return "vehicle.moving" if speed > 0.5 else "vehicle.parked"
