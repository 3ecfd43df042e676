"""Config loading: dataclasses from YAML mappings, with errors naming the field."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from qd_perception.config import ConfigError, from_dict, load_yaml, to_dict
from qd_perception.geometry.rig import Rig, load_rig


@dataclass(frozen=True)
class Inner:
    k: int
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    sizes: tuple[float, ...] = (1.0,)
    path: Path | None = None


def test_round_trip_and_types():
    cfg = from_dict(Outer, {"name": "x", "inner": {"k": 3, "mode": "b"}, "sizes": [1, 2.5]})
    assert cfg.inner.k == 3 and cfg.inner.mode == "b" and cfg.sizes == (1.0, 2.5)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "inner": {"k": 1}, "oops": 1}, "unknown key(s) ['oops']"),
        ({"name": "x"}, "missing required key 'inner'"),
        ({"name": "x", "inner": {"k": "3"}}, "Outer.inner.k: expected an integer"),
        ({"name": "x", "inner": {"k": 1, "mode": "c"}}, "Outer.inner.mode: 'c' is not one of"),
        ({"name": "x", "inner": {"k": True}}, "expected an integer"),
    ],
)
def test_clear_errors(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert message in str(e.value)


def test_rig_loads_and_is_consistent(tmp_path):
    rig = load_rig("nuscenes_like")
    assert isinstance(rig, Rig) and len(rig.cameras) == 6
    K = rig.intrinsics("CAM_FRONT", (450, 800))
    assert K[0, 0] == pytest.approx(1266.4 / 2) and K[1, 2] == pytest.approx(225)
    # CAM_FRONT's optical axis (z) points along ego +x, image x (right) along ego -y.
    T = rig.cam2ego("CAM_FRONT")
    assert T[:3, 2] == pytest.approx([1, 0, 0]) and T[:3, 0] == pytest.approx([0, -1, 0])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(ConfigError, match="missing required key"):
        load_yaml(Rig, bad)


def test_key_value_overrides_reach_nested_fields_and_fail_clearly(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: x\n  inner: {k: 1}\n")
    cfg = load_yaml(Outer, p, key="model", overrides=["inner.mode=b", "sizes=[2, 3]", "inner.k=7"])
    assert cfg == Outer("x", Inner(7, "b"), (2.0, 3.0))
    assert load_yaml(Outer, p, key="model").inner == Inner(1)  # the file itself is untouched
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_yaml(Outer, p, key="model", overrides=["inner.mode"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_yaml(Outer, p, key="model", overrides=["inner.typo=1"])
    with pytest.raises(ConfigError, match="not a mapping"):
        load_yaml(Outer, p, key="model", overrides=["name.sub=1"])
