"""BEVFormer configuration (frozen dataclasses) and the published presets.

Presets ``tiny`` / ``small`` / ``base`` follow the published BEVFormer configurations (BEV grid
50x50 / 150x150 / 200x200, embed 256, encoder layers 3 / 6 / 6, 6 decoder layers, 900 queries,
input 450x800 / 720x1280 / 900x1600, ResNet-50 / ResNet-101 / ResNet-101; the published small/base
backbones use deformable convolutions in the last stages, which we do not implement). ``nano`` is
ours: small enough to train on a 2-core CPU on the synthetic data set.
The model YAML files in ``config/models/bevformer_<name>.model.yaml`` are the source of truth;
:func:`preset` only loads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qd_perception.config import ConfigError, load_yaml
from qd_perception.geometry.rig import DEFAULT_CAMERAS
from qd_perception.paths import config_dir

PRESETS: tuple[str, ...] = ("nano", "tiny", "small", "base")

NUSCENES_CAMERAS: tuple[str, ...] = DEFAULT_CAMERAS  # the default rig's, config/rig/nuscenes_like.yaml


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet. ``block`` basic (ResNet-18/34 style) or bottleneck (50/101); ``out_indices`` are the
    stages (0..3, strides 4/8/16/32) fed to the FPN."""

    block: Literal["basic", "bottleneck"] = "bottleneck"
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    base_width: int = 64
    out_indices: tuple[int, ...] = (3,)


@dataclass(frozen=True)
class LossConfig:
    """DETR-style set loss: sigmoid focal classification + weighted L1 regression (BEVFormer's)."""

    cls_weight: float = 2.0
    bbox_weight: float = 0.25
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    #: weights of the 10 code entries [x, y, z, log l, log w, log h, sin, cos, vx, vy]
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)


@dataclass(frozen=True)
class DenseHeadConfig:
    """Dense auxiliary BEV heatmap head on the encoder output (CenterPoint-style), and the
    two-stage decoder whose queries start at its top-k peaks (BEVFormer v2 / TransFusion).
    See ``models/bevformer/dense_head.py``."""

    enabled: bool = False
    two_stage: bool = False  # decoder queries from the heatmap peaks (needs enabled)
    hidden: int = 64  # channels of the head's convolutions
    heatmap_weight: float = 1.0
    reg_weight: float = 0.25
    min_radius: int = 1  # Gaussian radius floor, BEV cells
    min_overlap: float = 0.1  # CornerNet radius overlap


@dataclass(frozen=True)
class PerspectiveHeadConfig:
    """Perspective supervision (BEVFormer v2): an auxiliary per-camera centre-heatmap + depth head
    on the first FPN level, training only. See ``models/bevformer/perspective_head.py``."""

    enabled: bool = False
    hidden: int = 64
    weight: float = 0.5


@dataclass(frozen=True)
class DenoisingConfig:
    """Denoising queries (DN-DETR) in the two-stage decoder, training only: ``groups`` noised
    copies of the ground truth that the decoder must reconstruct with a fixed assignment. See
    ``models/bevformer/denoising.py``. Noise is uniform in +-the given reach."""

    enabled: bool = False
    groups: int = 3
    centre_noise: float = 0.4  # x/y reach as a fraction of half the box's larger side (DN-DETR: 0.4)
    centre_noise_min_m: float = 1.0  # plus this (m): about a third of a nano BEV cell
    size_noise: float = 0.2  # on log l/w/h
    yaw_noise: float = 0.4  # rad
    velocity_noise: float = 1.0  # m/s
    label_noise: float = 0.2  # probability of a random class label in the query
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.groups < 1:
            raise ConfigError(f"denoising.groups must be >= 1, got {self.groups}")
        noises = (self.centre_noise, self.centre_noise_min_m, self.size_noise, self.yaw_noise,
                  self.velocity_noise, self.weight)  # fmt: skip
        if min(noises) < 0 or not 0.0 <= self.label_noise <= 1.0:
            raise ConfigError("denoising noise reaches and weight must be >= 0, label_noise in [0, 1]")


@dataclass(frozen=True)
class BEVFormerConfig:
    name: str
    image_size: tuple[int, int]  # (H, W) network input, pixels
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    embed_dims: int = 256
    ffn_dims: int = 512
    num_heads: int = 8
    num_levels: int = 1  # FPN outputs used by spatial cross-attention
    bev_h: int = 50
    bev_w: int = 50
    #: [x_min, y_min, z_min, x_max, y_max, z_max] metres, ego frame
    pc_range: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    num_points_in_pillar: int = 4  # Z reference heights per BEV cell
    sca_num_points: int = 8  # sampling points per head and level in spatial cross-attention
    tsa_num_points: int = 4  # per head and frame in temporal self-attention
    decoder_num_points: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 6
    num_queries: int = 900
    num_classes: int = 10
    camera_names: tuple[str, ...] = NUSCENES_CAMERAS
    #: images are normalised as (rgb/255 - mean) / std
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    score_threshold: float = 0.05
    max_detections: int = 300
    #: previous BEV older than this (s) or from the future is dropped (clock jump)
    max_time_gap_s: float = 2.0
    loss: LossConfig = field(default_factory=LossConfig)
    dense_head: DenseHeadConfig = field(default_factory=DenseHeadConfig)
    perspective_head: PerspectiveHeadConfig = field(default_factory=PerspectiveHeadConfig)
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)

    def __post_init__(self) -> None:
        if self.dense_head.two_stage and not self.dense_head.enabled:
            raise ConfigError("dense_head.two_stage needs dense_head.enabled: true")
        if self.denoising.enabled and not self.dense_head.two_stage:
            raise ConfigError("denoising.enabled needs the two-stage decoder (dense_head.two_stage: true)")
        if self.embed_dims % self.num_heads:
            raise ConfigError(f"embed_dims {self.embed_dims} not divisible by num_heads {self.num_heads}")
        if self.sca_num_points % self.num_points_in_pillar:
            raise ConfigError(
                f"sca_num_points ({self.sca_num_points}) must be a multiple of "
                f"num_points_in_pillar ({self.num_points_in_pillar})"
            )
        if self.num_levels < len(self.backbone.out_indices):
            raise ConfigError("num_levels must be >= len(backbone.out_indices)")
        if len(self.loss.code_weights) != 10:
            raise ConfigError("loss.code_weights needs 10 entries")
        if self.pc_range[3] <= self.pc_range[0] or self.pc_range[4] <= self.pc_range[1]:
            raise ConfigError(f"pc_range {self.pc_range} is empty")

    @property
    def num_bev(self) -> int:
        return self.bev_h * self.bev_w

    @property
    def num_cams(self) -> int:
        return len(self.camera_names)


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> BEVFormerConfig:
    """Load the ``model:`` block of a ``*.model.yaml`` file (``arch: bevformer``), with
    ``KEY=VALUE`` overrides of its keys (``denoising.enabled=true``)."""
    return load_yaml(BEVFormerConfig, path, key="model", overrides=overrides)


def preset(name: str) -> BEVFormerConfig:
    """The named preset (``nano``, ``tiny``, ``small``, ``base``) from ``config/models``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown BEVFormer preset {name!r}; choose one of {PRESETS}")
    return load_model_config(config_dir() / "models" / f"bevformer_{name}.model.yaml")
