"""The shipped parameter files and the parameter table of docs/ros.md are what the generator
(``qd_perception.ros.param_files``) makes from the config dataclasses, and every file loads into
its node's config with the config loader's checks."""

from __future__ import annotations

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
