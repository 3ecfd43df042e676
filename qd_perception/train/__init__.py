"""Model -> artefact stages: training loops (lidar, bev), export, and the quantization drivers
(``quantize_lidar``: CenterPoint PTQ, ``qat_lidar``: CenterPoint QAT, ``quantize_bev``: QD-BEV)
over the model-agnostic library ``qd_perception.quant``."""
