"""``ros2 launch qd_perception calibration.launch.py``: lidar detector + calibration recorder.

The recorder keeps a diverse PTQ calibration set from the lidar inputs and the detector's output
(object mix); ``ros2 service call /calibration_recorder/run_ptq std_srvs/srv/Trigger`` runs the
configured PTQ command. Nodes, remaps and parameter files: ``qd_perception.ros.graph`` (graph
``calibration``); launch arguments ``log_level`` and ``<node>_params``.
"""

from qd_perception.ros.graph import launch_description


def generate_launch_description():
    return launch_description("calibration")
