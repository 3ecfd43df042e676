"""Detectors: CenterPoint (pillar, voxel), BEVFormer-style camera BEV, classical lidar baseline."""
