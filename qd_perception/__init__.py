"""qd_perception: quantized 3-D perception (camera BEV and lidar CenterPoint) for ROS 2.

The core (geometry, sim, data, models, quant, distill, runtime, train, eval) imports no ROS;
only :mod:`qd_perception.ros` touches rclpy and message packages.
"""

import pkgutil

# The ROS build installs the generated ``qd_perception.msg`` package into site-packages under the
# same top-level name. Extending the package path merges it with this source tree, so
# ``from qd_perception.msg import Detection3DArray`` works when running from a checkout too.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
