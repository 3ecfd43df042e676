"""The project's quantization core: fake-quant, quantized modules, calibrators, PTQ, QAT, export."""
