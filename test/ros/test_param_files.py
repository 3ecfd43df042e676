"""The shipped parameter files and the parameter and topic tables of docs/ros.md are what the
generator (``qd_perception.ros.param_files``) makes from the config dataclasses and the nodes'
ports, and every file loads into its node's config with the config loader's checks. That the
ports are what the running nodes subscribe and publish is checked on real processes
(test_detector_node.py, test_calibration_recorder.py: ``ros_harness.check_interface``)."""

from __future__ import annotations

import pytest
import yaml
from ros_harness import ROOT

from qd_perception.config import from_dict
from qd_perception.ros import param_files
from qd_perception.ros.params import nest


def test_every_shipped_param_file_has_a_generator_entry():
    shipped = sorted(p.name for p in (ROOT / "config").glob("*.param.yaml"))
    assert shipped == sorted(f"{spec.node}.param.yaml" for spec in param_files.NODES)


def test_shipped_files_and_docs_match_the_generator():
    for path, text in param_files.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python -m qd_perception.ros.param_files"
    assert param_files.main(["--check"]) == 0


def test_every_shipped_param_file_loads_into_its_config():
    for spec in param_files.NODES:
        data = yaml.safe_load((ROOT / "config" / f"{spec.node}.param.yaml").read_text())
        assert list(data) == [spec.node]
        flat = data[spec.node]["ros__parameters"]
        cls = spec.config_class()
        cfg = from_dict(cls, nest(flat, cls), where=spec.node)  # unknown keys / wrong types raise
        if not spec.values:  # the file is the node's defaults: the node runs the same without it
            assert cfg == spec.defaults, spec.node
        for name, value in spec.values.items():
            obj = cfg
            for part in name.split("."):
                obj = getattr(obj, part)
            assert obj == value, name


def test_topic_tables_list_every_port_with_the_graphs_remap():
    from qd_perception.ros import graph
    from qd_perception.topics import DETECTOR_PORTS, LIDAR_TOPIC, RECORDER_PORTS

    blocks = param_files.doc_blocks()
    for name, ports in (("detector topics", DETECTOR_PORTS), ("calibration_recorder topics", RECORDER_PORTS)):
        rows = blocks[name].splitlines()[2:]
        assert [r.split(" | ")[0] for r in rows] == [f"| `{p.name}`" for p in ports]
        assert all(f"`{p.type}` | {p.role} |" in r for p, r in zip(ports, rows))
    assert f"| `{LIDAR_TOPIC}` |" in blocks["detector topics"].splitlines()[2]
    det_in = graph.output_topic(graph.LIDAR_DETECTOR, "~/output/detections")
    assert f"`{det_in}`" in next(
        r for r in blocks["calibration_recorder topics"].splitlines() if "~/input/detections" in r
    )
    with pytest.raises(ValueError, match="lacks the markers"):
        param_files.documented("# a docs page without the generated blocks\n")
