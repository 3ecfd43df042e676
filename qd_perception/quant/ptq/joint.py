"""Joint rounding: every layer's AdaRound variables (and the activation step sizes) with TGPL.

LiDAR-PTQ (Zhou et al., ICLR 2024) learns the adaptive rounding *jointly with TGPL*. This module
does that in one optimisation over the whole fake-quant model instead of layer after layer:

* **variables** — the ``V`` of a :class:`~.adaround.SoftRounding` on every quantized layer's
  weight, plus, when TGPL is on, the activation step sizes (LSQ, as in the TGPL stage);
* **one forward per iteration** of the whole model on one calibration sample; forward hooks
  collect every quantized layer's output;
* **loss** = ``rec_weight * mean_l ||y_l - y_l^fp||^2 / ||y_l^fp||^2`` (each layer's output in
  the quantized model vs the same layer's output in the float model on the same sample) ``+
  tgpl_weight * TGPL(head outputs)`` (:mod:`.tgpl`) ``+`` AdaRound's annealed rounding regulariser
  (:class:`~.adaround.AdaRoundLoss`, averaged per layer). The reconstruction terms are relative so
  that a head conv with outputs ~0.3 counts as much as a backbone conv with outputs ~10, and
  averaged over layers so that TGPL (~0.5 nats at the positives) is not drowned by 84 terms;
* at the end every ``V`` is hardened to 0/1 and written into its layer
  (:meth:`~.adaround.SoftRounding.finalize`), as in the layer-wise path, and the learned step sizes
  are frozen back into the ranges. With ``keep_better`` the hardened learned rounding is kept
  only if it beats nearest rounding on the objective over the calibration samples: with a CPU
  budget of a few hundred iterations a third of the ``h(V)`` are still soft at the end, and on
  the W4A8 pillar model one run's hardened rounding scored a *higher* objective than nearest
  (0.5753 vs 0.5636) and lost 0.015 mAP, while another's scored lower and gained 0.0095.

The float targets come from the same modules with every quantizer disabled (no second copy of
the weights). They are cached per sample while they fit in ``cache_bytes``; beyond that the float
pass is recomputed each iteration (about a third of an iteration's cost).

Cost: ``iterations`` x (float forward + quantized forward and backward) of the whole model,
against layer-wise AdaRound's ``layers x iterations`` layer steps plus its caching passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from qd_perception.quant.ptq.adaround import (
    AdaRoundConfig,
    AdaRoundLoss,
    SoftRounding,
    attach,
    nearest_rounding,
    quant_layers_in_order,
)
from qd_perception.quant.ptq.tgpl import TGPLConfig, positive_masks, tgpl_loss

Run = Callable[[nn.Module, Any], Sequence[Any]]


@dataclass(frozen=True)
class JointRoundingConfig:
    """Knobs of the joint optimisation (see module docstring).

    ``schedule`` supplies the iterations, the Adam learning rate of ``V``, the regulariser weight
    and its beta annealing / warm-up (AdaRound's; its ``batch_size`` / ``max_cached`` are unused:
    one sample per iteration). Few iterations need a larger ``lr`` than AdaRound's usual 1e-3:
    Adam moves ``V`` by about ``lr`` per step, and ``V`` must be able to cross 0. The regulariser
    is a per-layer *mean* here, so its weight is ~1 rather than the layer-wise path's 0.01 on a
    sum; on the unit-test toy (W4, 120 iterations) 1.0 left 17 % of ``h`` soft before hardening
    vs 49 % at 0.01, and the hardened objective was lower.
    """

    schedule: AdaRoundConfig = field(
        default_factory=lambda: AdaRoundConfig(iterations=200, lr=2e-2, reg_weight=1.0)
    )
    #: activation step sizes (when TGPL is on), *relative*: each quantizer's Adam learning rate is
    #: ``act_lr`` x its initial step size. An absolute rate would move a 0.004 step by 25 % per
    #: iteration at 1e-3 and a 0.5 step by 0.2 %.
    act_lr: float = 1e-2
    rec_weight: float = 1.0
    tgpl_weight: float = 1.0
    cache_bytes: int = 1 << 30  # float layer outputs kept per sample while they fit
    #: after hardening, keep nearest rounding where it scores a lower objective on the
    #: calibration samples than the learned one (with the learned step sizes either way)
    keep_better: bool = True


@dataclass
class JointReport:
    loss: list[float] = field(default_factory=list)  # total loss per iteration
    nearest: dict[str, float] = field(default_factory=dict)  # objective with nearest rounding
    final: dict[str, float] = field(default_factory=dict)  # objective with the hardened rounding
    soft_fraction: float = 0.0  # fraction of h(V) strictly inside (0.01, 0.99) before hardening
    layers: int = 0
    kept: str = "learned"  # "learned", or "nearest" when keep_better found nearest rounding better


def _features(x: Any) -> torch.Tensor:
    return x.features if hasattr(x, "features") else x


@contextmanager
def _tap(layers: Sequence[nn.Module], out: list[Any]) -> Iterator[None]:
    """Inside: the output of each of ``layers`` (its first call) lands in ``out[i]``."""
    out[:] = [None] * len(layers)

    def make(i: int):
        def hook(_m, _args, y):
            if out[i] is None:
                out[i] = _features(y)

        return hook

    hooks = [m.register_forward_hook(make(i)) for i, m in enumerate(layers)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def _float_mode(qmodel: nn.Module) -> Iterator[None]:
    from qd_perception.quant.model import quantizers

    modes = {n: q.mode for n, q in quantizers(qmodel)}
    for _, q in quantizers(qmodel):
        q.mode = "disabled"
    try:
        yield
    finally:
        for n, q in quantizers(qmodel):
            q.mode = modes[n]


class JointObjective:
    """Reconstruction + TGPL of the whole model on one sample (no regulariser), with the float
    targets (head outputs, positives, layer outputs) computed once and cached where they fit."""

    def __init__(
        self,
        qmodel: nn.Module,
        samples: Sequence[Any],
        run: Run,
        layers: Sequence[nn.Module],
        cfg: JointRoundingConfig,
        tgpl_cfg: TGPLConfig | None,
    ) -> None:
        self.qmodel, self.samples, self.run, self.layers = qmodel, list(samples), run, list(layers)
        self.cfg, self.tgpl_cfg = cfg, tgpl_cfg
        self.fp_heads: list[Sequence[Any]] = []
        self.masks: list[list[torch.Tensor]] = []
        self._fp_layers: dict[int, list[torch.Tensor]] = {}
        used = 0
        for i in range(len(self.samples)):
            heads, outs = self._float_pass(i)
            self.fp_heads.append(heads)
            self.masks.append(positive_masks(heads, tgpl_cfg) if tgpl_cfg is not None else [])
            nbytes = sum(t.numel() * t.element_size() for t in outs)
            if used + nbytes <= cfg.cache_bytes:
                self._fp_layers[i] = outs
                used += nbytes

    @torch.no_grad()
    def _float_pass(self, i: int) -> tuple[Sequence[Any], list[torch.Tensor]]:
        outs: list[Any] = []
        with _float_mode(self.qmodel), _tap(self.layers, outs):
            heads = self.run(self.qmodel, self.samples[i])
        if any(o is None for o in outs):
            raise RuntimeError("a quantized layer was not executed by the calibration forward")
        return heads, [o.detach() for o in outs]

    def fp_layers(self, i: int) -> list[torch.Tensor]:
        if i in self._fp_layers:
            return self._fp_layers[i]
        return self._float_pass(i)[1]

    def __call__(self, i: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, parts)`` of the quantized model on sample ``i`` (differentiable)."""
        target = self.fp_layers(i)
        outs: list[Any] = []
        with _tap(self.layers, outs):
            heads = self.run(self.qmodel, self.samples[i])
        rec = torch.stack(
            [(o - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12) for o, t in zip(outs, target)]
        ).mean()
        loss = self.cfg.rec_weight * rec
        parts = {"rec": float(rec.detach())}
        if self.tgpl_cfg is not None:
            tg, _ = tgpl_loss(heads, self.fp_heads[i], self.masks[i], self.tgpl_cfg)
            loss = loss + self.cfg.tgpl_weight * tg
            parts["tgpl"] = float(tg.detach())
        parts["total"] = float(loss.detach())
        return loss, parts

    @torch.no_grad()
    def mean(self) -> dict[str, float]:
        """The objective's parts averaged over every sample."""
        acc: dict[str, float] = {}
        for i in range(len(self.samples)):
            for k, v in self(i)[1].items():
                acc[k] = acc.get(k, 0.0) + v / len(self.samples)
        return acc


def joint_rounding(
    qmodel: nn.Module,
    samples: Sequence[Any],
    run: Run,
    cfg: JointRoundingConfig,
    tgpl_cfg: TGPLConfig | None = None,
) -> JointReport:
    """Learn the rounding of every quantized layer (and, with ``tgpl_cfg``, the activation step
    sizes under TGPL) in one optimisation; see the module docstring. In place on a calibrated
    fake-quant ``qmodel``: on return the weights sit on their grid (hardened rounding) and the
    learned step sizes are the activation ranges. ``samples`` are model inputs; one is drawn per
    iteration. Returns the objective with nearest vs learned rounding (both hard) and the losses.
    """
    from qd_perception.quant.model import learnable_activation_steps, quantizers

    samples = list(samples)
    if not samples:
        raise ValueError("joint rounding needs at least one sample")
    named = [
        (n, m)
        for n, m in quant_layers_in_order(qmodel, samples[0], run)
        if m.weight_quantizer.mode == "quantize"
    ]
    report = JointReport(layers=len(named))
    if not named:
        return report
    layers = [m for _, m in named]
    act_params: list[nn.Parameter] = []
    if tgpl_cfg is not None:
        act_params = learnable_activation_steps(qmodel, lambda: run(qmodel, samples[0]))
    roundings: list[SoftRounding] = []
    for p in qmodel.parameters():
        p.requires_grad_(False)
    try:
        roundings = [attach(m) for m in layers]
        objective = JointObjective(qmodel, samples, run, layers, cfg, tgpl_cfg)
        for r in roundings:
            r.hard = True
        with nearest_rounding(roundings):
            report.nearest = objective.mean()
        for r in roundings:
            r.hard = False

        sched = cfg.schedule
        reg = AdaRoundLoss(roundings, sched, per_layer_mean=True)
        groups: list[dict[str, Any]] = [{"params": [r.V for r in roundings], "lr": sched.lr}]
        for p in act_params:
            p.requires_grad_(True)
            lr = cfg.act_lr * float(p.detach().abs().mean().clamp_min(1e-8))
            groups.append({"params": [p], "lr": lr})
        opt = torch.optim.Adam(groups)
        gen = torch.Generator().manual_seed(0)
        bar = tqdm(range(sched.iterations), desc="joint rounding", leave=False, mininterval=2.0)
        for it in bar:
            i = int(torch.randint(len(samples), (1,), generator=gen))
            opt.zero_grad()
            loss, _ = objective(i)
            r_term = reg.regularization(it)
            if r_term is not None:
                loss = loss + r_term
            loss.backward()
            opt.step()
            report.loss.append(float(loss.detach()))
            if it % 10 == 0:
                bar.set_postfix(loss=f"{report.loss[-1]:.4f}", refresh=False)
        with torch.no_grad():
            h = torch.cat([r.h().reshape(-1) for r in roundings])
            report.soft_fraction = float(((h > 0.01) & (h < 0.99)).float().mean())
        for r in roundings:
            r.hard = True
        report.final = objective.mean()
        learned = report.final["total"]
        if cfg.keep_better:
            with nearest_rounding(roundings):
                nearest_now = objective.mean()
            if nearest_now["total"] < learned:
                with torch.no_grad():
                    for r in roundings:
                        r.V.copy_(torch.where(r.frac >= 0.5, 1.0, -1.0))
                report.final, report.kept = nearest_now, "nearest"
        tqdm.write(
            f"joint rounding: objective nearest {report.nearest['total']:.4f} -> learned "
            f"{learned:.4f} (hard), {report.soft_fraction:.1%} of h soft before hardening; "
            f"kept {report.kept} rounding (objective {report.final['total']:.4f})"
        )
    finally:
        for m, r in zip(layers, roundings):
            r.finalize(m)
        for _, q in quantizers(qmodel):
            q.freeze_lsq()
        for p in qmodel.parameters():
            p.requires_grad_(True)
    return report
