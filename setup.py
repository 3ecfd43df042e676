"""pip distribution of the qd_perception core and CLI, for machines without ROS 2.

In a ROS 2 workspace the package is built by CMake/colcon (CMakeLists.txt), which also generates
the messages; do not pip-install this into the same environment (it would replace that install).
"""

from setuptools import find_packages, setup

setup(
    name="qd-perception-core",
    version="0.1.0",
    description="Quantized camera-BEV and lidar CenterPoint detectors (core and CLI, no ROS)",
    packages=find_packages(include=["qd_perception", "qd_perception.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "scipy>=1.11",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pillow>=10",
        "rosbags>=0.11",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "torch>=2.3",
    ],
    extras_require={"voxel": ["spconv>=2.3"], "eval": ["nuscenes-devkit==1.2.0"]},
    entry_points={"console_scripts": ["qd-perception=qd_perception.cli:main"]},
    package_data={"qd_perception": ["py.typed"]},
)
