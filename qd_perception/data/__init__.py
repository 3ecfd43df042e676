"""Data: nuScenes-format reader (real or synthetic), calibration-set store, batching."""
