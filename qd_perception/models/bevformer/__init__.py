"""BEVFormer-style camera BEV detector (own implementation, pure torch).

Named stages, each a module attribute of :class:`BEVFormer` so the quantization core can enable
quantizers stage by stage (QD-BEV's progressive QAT): ``backbone`` (ResNet), ``neck`` (FPN),
``encoder`` (temporal self-attention + spatial cross-attention), ``decoder`` (DETR-style decoder
with its per-layer classification/regression branches). Only standard ``nn`` layers
(Conv2d, Linear, LayerNorm, BatchNorm2d, ReLU, Embedding) hold weights.

Forward outputs (:class:`BEVFormerOutputs`) expose what view-guided distillation needs: the neck
features per camera, the BEV features and ``bev_mask`` (num_cam, B, H_bev*W_bev, Z).

Where we differ from the published BEVFormer, on purpose:

* spatial cross-attention is computed densely for every (camera, BEV query) pair and masked with
  ``bev_mask``, instead of gathering each camera's visible queries: same result, static shapes for
  ONNX, more compute;
* no CAN-bus MLP: ego motion enters only through the alignment of the previous BEV
  (``grid_sample`` with ego_prev <- ego_cur, rotation included, where BEVFormer shifts and rotates);
* no deformable convolutions in the ResNet (small/base presets), no GridMask, no pretrained
  ImageNet/FCOS3D weights (none can be downloaded here);
* the decoder's self-attention uses separate q/k/v ``nn.Linear`` layers (``nn.MultiheadAttention``
  keeps its input projection as a raw parameter that quantized wrappers could not replace).
"""

from qd_perception.models.bevformer.config import BEVFormerConfig, load_model_config, preset
from qd_perception.models.bevformer.model import BEVFormer, BEVFormerOutputs

__all__ = ["BEVFormer", "BEVFormerConfig", "BEVFormerOutputs", "load_model_config", "preset"]
