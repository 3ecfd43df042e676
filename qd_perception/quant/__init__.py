"""The project's quantization core: fake-quant, quantized modules, calibrators, PTQ, QAT, export.

Map (each module's docstring has the details):

* ``tensor_quant`` — STE fake quant on ``torch.fake_quantize_*`` (2-8 bit, sym/asym, per channel;
  sub-8-bit exports as clamp + int8 Q/DQ), LSQ learned step.
* ``quantizer`` — ``TensorQuantizer`` (disabled / calibrate / quantize), ``QuantSpec``, ``CalibSpec``.
* ``calib`` — ``collect / reset / compute_amax``: max, percentile, MSE, entropy (KL), UH,
  sparsity-aware grid.
* ``nn`` + ``model`` — quantized Conv/ConvTranspose/Linear/spconv wrappers swapped in by type
  (``quantize_model``), ``set_quant_state`` per named stage, ``calibrate``, ``fold_bn``.
* ``qat`` — progressive (stage by stage) QAT schedule for QD-BEV.
* ``ptq`` — ``adaround`` (module / loss / optimiser), ``tgpl``, ``lidar_ptq`` pipeline.
* ``export`` — Q/DQ ONNX, ORT flavour (QLinearConv) and TensorRT flavour.
* ``size`` — model size with weights packed at their bit width.

The library knows no model, data set or runtime (it imports only ``qd_perception.quant``,
``config`` and ``fileio``; ``test/unit/test_import_boundary.py`` checks it). The drivers that
apply it to the project's models live with the other model-to-artefact stages in
``qd_perception/train/``: ``quantize_lidar`` (CenterPoint: calibration frames -> PTQ -> deployable
artefact, ``qd-perception quantize lidar``), ``qat_lidar`` (CenterPoint QAT) and ``quantize_bev``
(QD-BEV for the camera BEV model, ``qd-perception quantize bev``).
"""
