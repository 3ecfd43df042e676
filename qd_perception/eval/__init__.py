"""Evaluation: nuScenes metrics through nuscenes-devkit, streaming AP, latency statistics."""
