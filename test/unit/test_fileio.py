"""Atomic writes: the target is the old file or the complete new one, and no temporary is left."""

from __future__ import annotations

import json

import pytest

from qd_perception.fileio import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_replace_the_target_and_leave_nothing_else(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"b": 1, "a": [1, 2]}
    assert list(target.read_text().splitlines())[1] == ' "b": 1,'  # indent 1, insertion order
    atomic_write_text(target, "new")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01", fsync=True)
    assert target.read_text() == "new" and (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json", "b.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        assert tmp.suffix == ".onnx" and tmp.parent == tmp_path and tmp != target
        tmp.write_text("half")
        raise RuntimeError("export failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_temporary_names_are_unique_in_a_process(tmp_path):
    with atomic_output(tmp_path / "x.npz") as a, atomic_output(tmp_path / "x.npz") as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert (tmp_path / "x.npz").read_bytes() == b"a"  # the outer block finishes last
