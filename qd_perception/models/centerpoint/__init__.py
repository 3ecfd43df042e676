"""CenterPoint (Yin et al., CVPR 2021), pillar and spconv voxel variants, for nuScenes-style data.

Modules: ``config`` (dataclasses), ``voxelize``, ``vfe`` (PFN, mean VFE, scatter), ``sparse``
(spconv backbone), ``backbone2d`` (SECOND + neck), ``head`` (typed outputs), ``targets``
(Gaussian heatmaps, box codes), ``loss`` (focal + L1), ``decode`` (top-k, NMS), ``nms``,
``model`` (the assembled network and its ONNX split).
"""

from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.head import TaskOutput

__all__ = ["CenterPointConfig", "TaskOutput"]
