"""The core imports no ROS: every ``qd_perception`` module outside ``qd_perception/ros`` and the
ROS entry points (:data:`ROS_ENTRY_POINTS`) imports no rclpy, no ``*_msgs``, no generated
``qd_perception.msg`` and no ``qd_perception.ros``, directly (AST scan, also of imports inside
functions) or through what it imports (imported in a subprocess with those packages blocked)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qd_perception"

#: Commands that start or drive ROS nodes: the ROS edge, like qd_perception/ros itself.
ROS_ENTRY_POINTS = frozenset({"commands/demo.py", "commands/launch.py", "commands/replay.py"})


def is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return (
        top in {"rclpy", "launch", "launch_ros", "rosidl_runtime_py", "rosidl_parser", "message_filters"}
        or top.endswith("_msgs")
        or module == "qd_perception.ros"
        or module.startswith(("qd_perception.ros.", "qd_perception.msg"))
    )


def core_files() -> list[Path]:
    out = []
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(PACKAGE).as_posix()
        if not rel.startswith("ros/") and rel not in ROS_ENTRY_POINTS:
            out.append(p)
    return out


def module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_is_ros_tells_ros_modules_apart():
    assert all(map(is_ros, ["rclpy.node", "sensor_msgs.msg", "qd_perception.ros.graph", "qd_perception.msg"]))
    assert not any(map(is_ros, ["qd_perception.sim.rosmsgs", "qd_perception.rosette", "rosbags.rosbag2"]))


def test_core_sources_import_no_ros():
    offending = []
    for p in core_files():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            offending += [f"{p.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if is_ros(n)]
    assert not offending, "\n".join(offending)


#: What the quantization library (``qd_perception/quant``) may import of the project: itself and
#: the config / file helpers. Drivers that know models, data or runtimes live in ``train/``.
QUANT_LIBRARY_IMPORTS = ("qd_perception.quant", "qd_perception.config", "qd_perception.fileio")


def project_imports(p: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute ``qd_perception`` import of ``p`` (also inside functions)."""
    out = []
    for node in ast.walk(ast.parse(p.read_text(), str(p))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("qd_perception")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("qd_perception")
        ):
            out.append((node.lineno, node.module))
    return out


def test_quant_library_imports_no_model_data_or_runtime():
    offending = [
        f"{p.relative_to(ROOT)}:{line} imports {m}"
        for p in sorted((PACKAGE / "quant").rglob("*.py"))
        for line, m in project_imports(p)
        if not any(m == ok or m.startswith(ok + ".") for ok in QUANT_LIBRARY_IMPORTS)
    ]
    assert not offending, "\n".join(offending)


def test_core_modules_import_with_ros_blocked():
    modules = [module_name(p) for p in core_files()]
    script = f"""
import importlib, importlib.abc, sys
sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]
from test_import_boundary import is_ros

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if is_ros(name):
            raise ImportError(f"the core imported the ROS module {{name}}")

sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module(m)
print("imported", len({modules!r}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"imported {len(modules)}" in r.stdout
