"""Shared test set-up: DDS stays on loopback in every process a test starts."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Set before anything imports rclpy, so child processes inherit it too.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
os.environ.setdefault("ROS_DOMAIN_ID", "57")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))
os.environ.setdefault("ROS_LOG_DIR", str(ROOT / ".cache" / "ros_log"))
os.environ.setdefault("MPLBACKEND", "Agg")
