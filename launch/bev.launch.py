"""``ros2 launch qd_perception bev.launch.py [log_level:=info] [<node>_params:=FILE]``.

Nodes, parameter files and topic remaps come from :mod:`qd_perception.ros.graph` (graph
``bev``), the description ``qd-perception launch bev`` also starts (pip installs, no ros2 CLI).
"""

from qd_perception.ros.graph import launch_description


def generate_launch_description():
    return launch_description("bev")
