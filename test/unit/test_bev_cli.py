"""End to end through the CLI on a tiny synthetic data set: train bev (and resume), export bev,
eval bev with both backends (real reader, real devkit evaluation)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_models import TINY_BEV

from qd_perception.cli import main
from qd_perception.sim.generate import GenerateConfig, generate

TINY_MODEL = {"arch": "bevformer", "model": {**TINY_BEV, "name": "clitest", "score_threshold": 0.0}}


def test_train_resume_export_eval(tmp_path):
    data = generate(
        GenerateConfig(scenes=2, samples=2, seed=3, resolution=(64, 112), val_fraction=0.5, workers=1),
        tmp_path / "ds", show_progress=False,
    )  # fmt: skip
    cfg = tmp_path / "bevformer_clitest.model.yaml"
    cfg.write_text(yaml.safe_dump(TINY_MODEL))
    ckpt = tmp_path / "bev.pt"
    common = [
        "train",
        "bev",
        "--config",
        str(cfg),
        "--data",
        str(data),
        "--out",
        str(ckpt),
        "--warmup-steps",
        "1",
        "--batch-size",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main([*common, "--epochs", "1"]) == 0
    first = torch.load(ckpt, weights_only=False)
    assert first["state"]["epoch"] == 1 and first["state"]["step"] == 2
    assert ckpt.with_suffix(".loss.png").is_file()
    # running again with more epochs resumes (optimizer, step counter and history kept)
    assert main([*common, "--epochs", "2"]) == 0
    second = torch.load(ckpt, weights_only=False)
    assert second["state"]["step"] == 4 and len(second["state"]["history"]) == 4
    assert second["model_config"]["name"] == "clitest"

    onnx_dir = tmp_path / "onnx"
    assert main(["export", "bev", "--model", str(ckpt), "--out", str(onnx_dir)]) == 0
    report = json.loads((onnx_dir / "export.json").read_text())
    assert max(report["parity_max_abs_diff"].values()) < 1e-4
    assert yaml.safe_load((onnx_dir / "model.yaml").read_text())["arch"] == "bevformer"

    results = {}
    for name, model in (("torch", ckpt), ("ort", onnx_dir / "bevformer.onnx")):
        out = tmp_path / f"eval_{name}"
        argv = [
            "eval",
            "bev",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            "--pictures",
            "0",
        ]
        assert main(argv) == 0
        results[name] = json.loads((out / "metrics.json").read_text())
        lat = json.loads((out / "latency.json").read_text())
        assert lat["frames"] == 2 and lat["temporal_resets"] == 0
    assert results["torch"]["num_predictions"] == results["ort"]["num_predictions"] > 0
    assert results["torch"]["nds"] == pytest.approx(results["ort"]["nds"], abs=1e-3)
