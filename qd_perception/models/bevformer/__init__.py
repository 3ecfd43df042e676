"""BEVFormer-style camera BEV detector (own implementation, pure torch).

Named stages, each a module attribute of :class:`BEVFormer` so the quantization core can enable
quantizers stage by stage (QD-BEV's progressive QAT): ``backbone`` (ResNet), ``neck`` (FPN),
``encoder`` (temporal self-attention + spatial cross-attention), ``decoder`` (DETR-style decoder
with its per-layer classification/regression branches). Only standard ``nn`` layers
(Conv2d, Linear, LayerNorm, BatchNorm2d, ReLU, Embedding) hold weights.
"""

from qd_perception.models.bevformer.config import BEVFormerConfig, load_model_config, preset
from qd_perception.models.bevformer.model import BEVFormer, BEVFormerOutputs

__all__ = ["BEVFormer", "BEVFormerConfig", "BEVFormerOutputs", "load_model_config", "preset"]
