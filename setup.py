"""pip distribution of the qd_perception core and CLI, for machines without ROS 2.

In a ROS 2 workspace the package is built by CMake/colcon (CMakeLists.txt), which also generates
the messages; do not pip-install this into the same environment (it would replace that install).
"""

from pathlib import Path

from setuptools import find_packages, setup


def _share_files() -> list[tuple[str, list[str]]]:
    """config/, msg/, launch/, weights/ -> <prefix>/share/qd_perception/... (see qd_perception.paths)."""
    out: dict[str, list[str]] = {}
    for top in ("config", "msg", "launch", "weights"):
        for f in sorted(Path(top).rglob("*")) if Path(top).is_dir() else []:
            if f.is_file() and "__pycache__" not in f.parts:
                out.setdefault(f"share/qd_perception/{f.parent.as_posix()}", []).append(f.as_posix())
    return sorted(out.items())


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
    data_files=[*_share_files(), ("share/qd_perception", ["package.xml"])],
)
