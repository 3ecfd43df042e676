"""``ros2 launch qd_perception replay.launch.py bag:=BAG [graph:=lidar|bev] [rate:=1.0] [loop:=false]``.

Starts a detector graph (``qd_perception.ros.graph``) and plays a rosbag2 into it with its
original timing (``qd_perception.ros.bag_player``: raw CDR, no ``/clock`` needed because the nodes
work on header stamps). The launch shuts down when the bag ends (unless ``loop:=true``).
For scored replays (metrics.json, streaming AP, latency) use ``qd-perception replay``.
"""

import sys

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from qd_perception.ros.graph import launch_description
from qd_perception.topics import LIDAR_TOPIC


def _graph_and_player(context):
    graph = LaunchConfiguration("graph").perform(context)
    bag = LaunchConfiguration("bag").perform(context)
    rate = LaunchConfiguration("rate").perform(context)
    loop = LaunchConfiguration("loop").perform(context).lower() in ("1", "true", "yes")
    cmd = [sys.executable, "-m", "qd_perception.ros.bag_player", bag, "--rate", rate]
    # Start playing once the lidar detector listens (its start-up imports take seconds).
    cmd += ["--wait-subscribers", f"{LIDAR_TOPIC}:1", "--wait-timeout", "120", "--start-delay", "1.0"]
    if loop:
        cmd.append("--loop")
    player = ExecuteProcess(cmd=cmd, name="bag_player", output="screen")
    entities = [*launch_description(graph).entities, player]
    if not loop:
        entities.append(
            RegisterEventHandler(
                OnProcessExit(target_action=player, on_exit=[EmitEvent(event=Shutdown(reason="bag ended"))])
            )
        )
    return entities


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument("bag", description="rosbag2 directory (MCAP or sqlite3)"),
            DeclareLaunchArgument("graph", default_value="lidar", description="lidar | bev"),
            DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
            DeclareLaunchArgument("loop", default_value="false", description="restart at the end"),
            OpaqueFunction(function=_graph_and_player),
        ]
    )
