"""QAT of CenterPoint: a few fake-quant steps lower the training loss, LSQ step sizes train and
fold back into the ranges, and ``quantize lidar --method qat`` writes an artefact ONNX Runtime runs
(and refuses an unlabelled calibration set with a clear error)."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
import yaml
from tiny_models import TINY, tiny_frame

from qd_perception.classes import CLASS_NAMES
from qd_perception.models.build import build_model, config_from_dict
from qd_perception.models.centerpoint.loss import centerpoint_loss
from qd_perception.quant.model import quantizers
from qd_perception.train.lidar import freeze_batchnorm, recalibrate_batchnorm, train_step
from qd_perception.train.lidar_data import LidarDataset, collate
from qd_perception.train.qat_lidar import (
    QATConfig,
    QATProgress,
    check_labelled,
    qat_centerpoint,
)
from qd_perception.train.quantize_lidar import quantize_centerpoint

# one task group: 6 head branches instead of 36 (ONNX export time dominates the CLI test)
TINY1 = {**TINY, "head": {**TINY["head"], "tasks": [list(CLASS_NAMES)]}, "decode": {"circle_radius_m": [1.0]}}


@pytest.fixture(scope="module")
def trained():
    """A tiny pillar model briefly trained in float on two labelled scenes."""
    torch.manual_seed(0)
    cfg = config_from_dict("centerpoint", TINY1)
    model = build_model("centerpoint", cfg)
    frames = [tiny_frame(0), tiny_frame(1)]
    batch = collate([LidarDataset(frames, cfg)[i] for i in range(2)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(10):
        train_step(model, batch, opt)
    recalibrate_batchnorm(model, [batch])
    return model.eval(), frames, batch


def _loss(model, batch) -> float:
    """Training loss of the (fake-quant) model on ``batch``, BatchNorm frozen as in QAT."""
    model.train()
    freeze_batchnorm(model)
    with torch.no_grad():
        out = centerpoint_loss(model(model.preprocess(batch.points)), batch.targets, model.cfg.loss)
    model.eval()
    return float(out.total)


def test_qat_steps_lower_the_fake_quant_loss(trained):
    model, frames, batch = trained
    before_fp = copy.deepcopy(model.state_dict())
    seen: list[QATProgress] = []
    start: list[float] = []

    def cb(p: QATProgress, qm: torch.nn.Module) -> None:
        assert not qm.training  # the callback evaluates
        if p.step == 0:
            start.append(_loss(qm, batch))
        seen.append(p)

    cfg = QATConfig(steps=8, lr=2e-3, batch_size=2, augment=False, schedule="constant")
    r = qat_centerpoint(model, frames, frames, "w4a8", "ort", cfg, cb, every=3)
    after = _loss(r.model, batch)
    # W4 min-max init costs loss; fine-tuning through the fake-quant graph wins it back
    assert after < 0.9 * start[0], (start[0], after, [h["total"] for h in r.history])
    assert [p.step for p in seen] == [0, 3, 6, 8]
    assert seen[0].loss is None and all(p.loss is not None and np.isfinite(p.loss) for p in seen[1:])
    assert seen[-1].seconds == pytest.approx(r.seconds) and r.seconds > r.calib_seconds > 0
    assert all(b.seconds >= a.seconds for a, b in itertools.pairwise(seen))
    assert r.steps == 8 and len(r.history) == 8
    qs = list(quantizers(r.model))
    assert qs and all(q.mode == "quantize" and q.calibrated for _, q in qs)
    # weights of the 4-bit layers are on their grid: at most 16 distinct values per output channel
    w = next(
        m for n, m in r.model.named_modules() if n.startswith("backbone") and hasattr(m, "weight_quantizer")
    )
    wq = w.weight_quantizer(w.weight).detach()
    assert max(len(torch.unique(c)) for c in wq.reshape(wq.shape[0], -1)) <= 16
    # the float model was not touched
    assert all(torch.equal(before_fp[k], v) for k, v in model.state_dict().items())


def test_lsq_learns_step_sizes_and_folds_them_into_the_ranges(trained):
    model, frames, _ = trained
    init = quantize_centerpoint(model, frames, "minmax", "w8a8", "ort")  # what QAT starts from
    cfg = QATConfig(steps=4, lr=1e-3, learn_scale=True, scale_lr_ratio=1.0, augment=False)
    r = qat_centerpoint(model, frames, frames, "w8a8", "ort", cfg)
    a0 = {n: q.amax.clone() for n, q in quantizers(init.model)}
    moved = [n for n, q in quantizers(r.model) if not torch.allclose(q.amax, a0[n])]
    assert len(moved) > len(a0) // 2
    assert all(q.scale is None and not q.lsq_active for _, q in quantizers(r.model))


def test_qat_refuses_unlabelled_frames(trained):
    _, frames, _ = trained
    bare = [dataclasses.replace(f, gt=None) for f in frames]
    with pytest.raises(ValueError, match="labelled"):
        check_labelled(bare)
    with pytest.raises(ValueError):
        QATConfig(steps=0, epochs=0)


def test_quantize_lidar_qat_cli_writes_an_ort_artefact(tmp_path, trained, capsys):
    from qd_perception.cli import main
    from qd_perception.runtime.centerpoint import OrtCenterPointDetector
    from qd_perception.sim.generate import GenerateConfig, generate

    model, _, _ = trained
    d = copy.deepcopy(TINY1)
    d["nsweeps"] = 1
    ckpt = tmp_path / "cp.pt"
    torch.save({"arch": "centerpoint", "config": d, "model": model.state_dict()}, ckpt)
    data = generate(
        GenerateConfig(scenes=2, samples=2, seed=3, resolution=(16, 32), val_fraction=0.5, workers=1),
        tmp_path / "ds",
        show_progress=False,
    )
    out = tmp_path / "qat"
    common = [
        "quantize",
        "lidar",
        "--model",
        str(ckpt),
        "--method",
        "qat",
        "--bits",
        "w8a8",
        "--out",
        str(out),
    ]
    # a calibration set alone has no labels: clear error, nothing written
    assert main([*common, "--calib", str(tmp_path / "nowhere")]) == 2
    assert "--data" in capsys.readouterr().err and not out.exists()
    rc = main([*common, "--data", str(data), "--split", "train", "--qat-steps", "2", "--max-frames", "2"])
    assert rc == 0
    info = yaml.safe_load((out / "quant.yaml").read_text())
    assert info["method"] == "qat" and info["qat"]["steps"] == 2 and info["quantize_seconds"] > 0
    det = OrtCenterPointDetector(out)
    frame = tiny_frame(5)
    outs = det.outputs(frame)
    assert np.isfinite(
        outs[0].heatmap.numpy() if hasattr(outs[0].heatmap, "numpy") else outs[0].heatmap
    ).all()
    assert info["parity_max_abs_diff"] is not None
