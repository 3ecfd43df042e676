"""The LiDAR-PTQ pipeline (Zhou et al., ICLR 2024): max-min -> sparsity grid -> TGPL -> AdaRound.

Every stage is switchable (the ablation) and reported with its wall time; ``on_stage(name, model)``
is called after each stage so a benchmark can evaluate every step from one run.

* **max-min** — one pass over the calibration samples; the sparsity-grid calibrators record the
  running max (the max-min range) while collecting occupied values, so the grid stage needs no
  second pass.
* **grid** — activations: ``r * max`` with the error over occupied positions (asymmetric
  activations keep their min, e.g. 0 after a ReLU, and search the max); weights: per-channel
  ``r * max`` (dense). ``grid_weights`` / ``grid_activations`` restrict the search to one kind
  (the other keeps its max-min range).
* **tgpl** — the activation step sizes become learnable (LSQ) and are tuned end to end with TGPL
  (:mod:`.tgpl`) against the float model's outputs on the same samples. Which parameters TGPL
  trains on its own is not published; we train the activation ranges (weights are the rounding
  stage's business).
* **adaround** — learned rounding, one of two ways (``rounding``):

  - ``layerwise``: TGPL runs as its own stage first, then AdaRound layer by layer
    (:mod:`.adaround`: float output targets, quantized inputs) given those ranges — TGPL and
    rounding in sequence;
  - ``joint`` (:mod:`.joint`, the paper's "jointly with TGPL"): no separate TGPL stage; one
    optimiser over every layer's rounding variables and the activation step sizes, one forward
    of the whole fake-quant model per iteration, loss = per-layer reconstruction + TGPL +
    rounding regulariser, every ``V`` hardened at the end. Reported as the ``adaround`` stage
    (with TGPL inside it), so ``on_stage`` sees ``minmax, grid, adaround``.

Interface the model must satisfy: ``run(model, sample)`` returns a sequence of head outputs with
``heatmap`` logits (B, K, H, W) and ``box_code()`` (B, R, H, W) (CenterPoint's ``TaskOutput``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from qd_perception.quant.calib import SparsityGridCalibrator
from qd_perception.quant.config import QuantConfig
from qd_perception.quant.model import (
    fold_bn,
    learnable_activation_steps,
    quant_modules,
    quantize_model,
    quantizers,
    set_mode,
)
from qd_perception.quant.ptq.adaround import AdaRoundConfig, adaround_model
from qd_perception.quant.ptq.joint import JointReport, JointRoundingConfig, joint_rounding
from qd_perception.quant.ptq.tgpl import TGPLConfig, positive_masks, tgpl_loss
from qd_perception.quant.quantizer import CalibSpec


@dataclass(frozen=True)
class LidarPTQConfig:
    grid_search: bool = True
    tgpl: bool = True
    adaround: bool = True
    #: ``layerwise``: TGPL stage, then AdaRound layer by layer; ``joint``: one optimisation of every
    #: layer's rounding with TGPL and the activation step sizes (:mod:`.joint`)
    rounding: Literal["layerwise", "joint"] = "layerwise"
    grid_weights: bool = True  # the grid stage searches the weight clips (per channel)
    grid_activations: bool = True  # the grid stage searches the activation clips
    grid_r_min: float = 0.5
    grid_r_max: float = 1.0
    grid_steps: int = 100
    tgpl_loss: TGPLConfig = field(default_factory=TGPLConfig)
    tgpl_iterations: int = 100
    tgpl_lr: float = 1e-3
    adaround_cfg: AdaRoundConfig = field(default_factory=AdaRoundConfig)
    joint: JointRoundingConfig = field(default_factory=JointRoundingConfig)
    optim_samples: int = 16  # samples used by TGPL / AdaRound (all are used for calibration)


@dataclass
class PTQReport:
    stage_seconds: dict[str, float] = field(default_factory=dict)
    tgpl_loss: list[float] = field(default_factory=list)
    adaround: dict[str, dict[str, float]] = field(default_factory=dict)
    joint: JointReport | None = None

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


Run = Callable[[nn.Module, Any], Sequence[Any]]


def _with_grid_calibrators(cfg: QuantConfig, p: LidarPTQConfig) -> QuantConfig:
    grid = CalibSpec(
        method="sparsity_grid", grid_r_min=p.grid_r_min, grid_r_max=p.grid_r_max, grid_steps=p.grid_steps
    )
    return dataclasses.replace(
        cfg,
        act=dataclasses.replace(cfg.act, calib=grid),
        weight=dataclasses.replace(cfg.weight, symmetric=True, calib=grid),
    )


def run_lidar_ptq(
    model: nn.Module,
    samples: Sequence[Any],
    run: Run,
    quant_cfg: QuantConfig,
    cfg: LidarPTQConfig | None = None,
    on_stage: Callable[[str, nn.Module], None] | None = None,
    copy_model: bool = True,
) -> tuple[nn.Module, PTQReport]:
    """Quantize ``model`` with LiDAR-PTQ using calibration ``samples`` (model inputs).

    Returns the calibrated fake-quant model (a copy unless ``copy_model=False``) and the report.
    """
    cfg = cfg or LidarPTQConfig()
    report = PTQReport()
    if not samples:
        raise ValueError("LiDAR-PTQ needs at least one calibration sample")
    qmodel = copy.deepcopy(model) if copy_model else model
    qmodel.eval()
    t0 = time.perf_counter()
    fold_bn(qmodel)
    quantize_model(qmodel, _with_grid_calibrators(quant_cfg, cfg))
    set_mode(qmodel, "calibrate", weights=False)
    set_mode(qmodel, "disabled", activations=False)
    with torch.no_grad():
        for s in tqdm(samples, desc="LiDAR-PTQ calibrate", leave=False):
            run(qmodel, s)
    with torch.no_grad():
        for _, m in quant_modules(qmodel):
            wq = getattr(m, "weight_quantizer", None)
            if wq is not None:
                wq.calibrator.reset()
                wq.calibrator.collect(m.weight)
    grid_cals: list[tuple[str, Any, SparsityGridCalibrator]] = []
    for name, q in quantizers(qmodel):
        cal = q.calibrator
        assert isinstance(cal, SparsityGridCalibrator)
        if cal.empty:
            raise RuntimeError(f"{name}: no calibration data reached this quantizer")
        if q.symmetric:  # max-min
            q.set_range(cal.running_max())
        else:
            lo, hi = cal.running_range()
            q.set_range(hi, lo)
        q.mode = "quantize"
        grid_cals.append((name, q, cal))
    report.stage_seconds["minmax"] = time.perf_counter() - t0
    if on_stage:
        on_stage("minmax", qmodel)

    if cfg.grid_search:
        t0 = time.perf_counter()
        searched = [
            (q, cal)
            for name, q, cal in grid_cals
            if (cfg.grid_weights if name.endswith("weight_quantizer") else cfg.grid_activations)
        ]
        for q, cal in tqdm(searched, desc="sparsity grid", leave=False):
            if q.symmetric:
                q.set_range(cal.compute_amax(q.bits))
            else:
                lo, hi = cal.compute_range(q.bits)
                q.set_range(hi, lo)
        report.stage_seconds["grid"] = time.perf_counter() - t0
        if on_stage:
            on_stage("grid", qmodel)
    for _, _, cal in grid_cals:
        cal.reset()  # free the collected values

    opt_samples = list(samples)[: cfg.optim_samples]
    joint = cfg.rounding == "joint" and cfg.adaround
    if cfg.tgpl and not joint:
        t0 = time.perf_counter()
        report.tgpl_loss = tgpl_finetune(qmodel, opt_samples, run, cfg)
        report.stage_seconds["tgpl"] = time.perf_counter() - t0
        if on_stage:
            on_stage("tgpl", qmodel)

    if joint:  # TGPL (when on) runs inside the rounding stage: one stage, reported as "adaround"
        t0 = time.perf_counter()
        tg = cfg.tgpl_loss if cfg.tgpl else None
        report.joint = joint_rounding(qmodel, opt_samples, run, cfg.joint, tg)
        report.stage_seconds["adaround"] = time.perf_counter() - t0
        if on_stage:
            on_stage("adaround", qmodel)
    elif cfg.adaround:
        t0 = time.perf_counter()
        report.adaround = adaround_model(qmodel, opt_samples, run, cfg.adaround_cfg)
        report.stage_seconds["adaround"] = time.perf_counter() - t0
        if on_stage:
            on_stage("adaround", qmodel)
    return qmodel, report


def float_outputs(qmodel: nn.Module, samples: Sequence[Any], run: Run) -> list[Sequence[Any]]:
    """Outputs of the float model: the same modules with every quantizer disabled."""
    modes = {n: q.mode for n, q in quantizers(qmodel)}
    set_mode(qmodel, "disabled")
    try:
        with torch.no_grad():
            return [run(qmodel, s) for s in samples]
    finally:
        for n, q in quantizers(qmodel):
            q.mode = modes[n]


def tgpl_finetune(qmodel: nn.Module, samples: Sequence[Any], run: Run, cfg: LidarPTQConfig) -> list[float]:
    """Tune the activation step sizes with TGPL; returns the loss per iteration."""
    fp = float_outputs(qmodel, samples, run)
    masks = [positive_masks(o, cfg.tgpl_loss) for o in fp]
    params = learnable_activation_steps(qmodel, lambda: run(qmodel, samples[0]))
    for p in qmodel.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.tgpl_lr)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(0)
    try:
        for _ in tqdm(range(cfg.tgpl_iterations), desc="TGPL", leave=False, mininterval=2.0):
            i = int(torch.randint(len(samples), (1,), generator=gen))
            opt.zero_grad()
            loss, _ = tgpl_loss(run(qmodel, samples[i]), fp[i], masks[i], cfg.tgpl_loss)
            if loss.requires_grad:
                loss.backward()
                opt.step()
            losses.append(float(loss))
    finally:
        for _n, q in quantizers(qmodel):
            q.freeze_lsq()
        for p in qmodel.parameters():
            p.requires_grad_(True)
    return losses
