"""Model files from an untrusted source: nothing in them runs, corrupt ones end in one clear line."""

from __future__ import annotations

import os

import pytest
import torch

from qd_perception.cli import main
from qd_perception.config import ConfigError
from qd_perception.model_files import load_torch_file, ort_session
from qd_perception.models.bevformer.checkpoint import load_checkpoint, read_checkpoint
from qd_perception.runtime.centerpoint import OrtCenterPointDetector
from qd_perception.runtime.centerpoint import load_checkpoint as load_centerpoint


class _Payload:
    """Unpickling this object calls ``os.system``: the marker file proves that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_pt(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"arch": "bevformer", "model_config": {}, "state_dict": {}, "x": _Payload(str(marker))}, path)
    return path, marker


def test_malicious_pickle_refused_by_bev_checkpoint_reader(evil_pt):
    path, marker = evil_pt
    for load in (read_checkpoint, load_checkpoint, load_centerpoint):
        with pytest.raises(ConfigError, match=r"refused.*posix\.system|refused.*os\.system") as e:
            load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_malicious_pickle_refused_by_eval_bev(evil_pt, tmp_path, capsys):
    path, marker = evil_pt
    rc = main(["eval", "bev", "--model", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and str(path) in err and "refused" in err


def test_shipped_checkpoint_loads_with_weights_only():
    model = load_checkpoint("weights/bevformer_nano.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, os.urandom(4096)], ids=["empty", "zeros", "random"])
def test_corrupt_torch_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a readable torch file") as e:
        load_torch_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_checkpoint_is_a_config_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"truncated\.pt is not a readable torch file"):
        read_checkpoint(bad)


def test_invalid_onnx_and_missing_graph_are_config_errors(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf" * 10)
    with pytest.raises(ConfigError, match=r"model\.onnx is not a valid ONNX model") as e:
        ort_session(bad)
    assert "\n" not in str(e.value)
    # an export directory without its pfn.onnx / dense.onnx
    (tmp_path / "model.yaml").write_text(_export_yaml())
    with pytest.raises(ConfigError, match=r"ONNX model not found: .*(dense|pfn)\.onnx"):
        OrtCenterPointDetector(tmp_path)


def test_corrupt_model_exits_2_in_eval(tmp_path, capsys):
    bad = tmp_path / "bevformer.onnx"
    bad.write_bytes(os.urandom(256))
    rc = main(["eval", "bev", "--model", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "bevformer.onnx" in err


def _export_yaml() -> str:
    """The model.yaml of the shipped pillar CenterPoint (as ``export lidar`` writes it)."""
    import yaml

    from qd_perception.config import to_dict

    cfg, _, _ = load_centerpoint("weights/centerpoint_pillar_cpu.pt")
    return yaml.safe_dump({"arch": "centerpoint", "model": to_dict(cfg)})
