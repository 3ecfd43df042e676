"""Post-training quantization beyond calibration: AdaRound, TGPL, joint rounding and the LiDAR-PTQ
pipeline that chains them."""
