"""Configuration of the procedural driving world (``config/sim/default.yaml``).

Distances in metres, speeds in m/s, densities in objects per 100 m of road (both sides together).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qd_perception.classes import CLASS_NAMES


def _default_density() -> dict[str, float]:
    return {
        "car": 10.0,
        "truck": 1.5,
        "construction_vehicle": 0.5,
        "bus": 0.8,
        "trailer": 0.6,
        "barrier": 0.0,  # cones and barriers come with the work zones; these add loose ones
        "motorcycle": 1.2,
        "bicycle": 2.0,
        "pedestrian": 10.0,
        "traffic_cone": 0.0,
    }


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the synthetic world. Every scene is drawn from these ranges with its own seed."""

    rig: str = "nuscenes_like"
    resolution: tuple[int, int] = (450, 800)  # camera (H, W) pixels
    duration_s: float = 10.0
    # Road layout.
    lanes_per_direction: tuple[int, int] = (1, 2)  # inclusive range, drawn per scene
    lane_width: float = 3.5
    parking_width: float = 2.5
    sidewalk_width: tuple[float, float] = (3.0, 5.0)
    curvature: tuple[float, float] = (-1.0 / 150.0, 1.0 / 150.0)  # 1/m, drawn per scene
    straight_probability: float = 0.35  # otherwise the curvature is drawn from `curvature`
    p_junction: float = 0.6  # a side street (T-junction) on the ego's way
    ego_speed: tuple[float, float] = (3.0, 12.0)
    # Objects.
    density: dict[str, float] = field(default_factory=_default_density)
    parked_fraction: float = 0.5  # of cars/trucks/...: parked in the parking strips
    work_zones: int = 1  # per scene, each with cones, barriers and a construction vehicle
    guarantee_all_classes: bool = True  # place >= 1 of every class near the ego path
    annotation_range: float = 80.0  # objects farther from the ego are not annotated
    # Conditions (probabilities per scene).
    p_dusk: float = 0.2
    p_night: float = 0.2
    p_rain: float = 0.25
    # Sensors.
    visibility_scale: int = 4  # visibility is measured on images downscaled by this factor
    camera_max_range: float = 120.0
    lidar_range_noise: float = 0.01  # metres (1 sigma, clipped at 2 sigma)
    lidar_rolling_shutter: bool = False  # True: motion-distorted sweeps (see sim/lidar.py)
    image_noise: float = 2.0  # 1 sigma, uint8 levels

    def __post_init__(self) -> None:
        H, W = self.resolution
        if H < 8 or W < 8:
            raise ValueError(f"resolution {self.resolution} is too small (min 8x8)")
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        lo, hi = self.lanes_per_direction
        if not 1 <= lo <= hi <= 4:
            raise ValueError(
                f"lanes_per_direction must satisfy 1 <= lo <= hi <= 4, got {self.lanes_per_direction}"
            )
        unknown = sorted(set(self.density) - set(CLASS_NAMES))
        if unknown:
            raise ValueError(f"density: unknown class(es) {unknown}; classes: {list(CLASS_NAMES)}")
        if any(v < 0 for v in self.density.values()):
            raise ValueError("density values must be >= 0")
        for p in ("p_dusk", "p_night", "p_rain", "p_junction", "straight_probability", "parked_fraction"):
            if not 0.0 <= getattr(self, p) <= 1.0:
                raise ValueError(f"{p} must be in [0, 1], got {getattr(self, p)}")
        if self.p_dusk + self.p_night > 1.0:
            raise ValueError("p_dusk + p_night must be <= 1")
        if self.visibility_scale < 1:
            raise ValueError("visibility_scale must be >= 1")
