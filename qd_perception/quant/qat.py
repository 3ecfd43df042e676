"""Progressive QAT schedule (QD-BEV, Zhang et al., ICCV 2023): quantize one more stage at a time.

The model is quantized once with ``QuantConfig.stages`` mapping module prefixes to stage names
and calibrated (every quantizer gets a range); training then calls :func:`apply_progressive`
at the start of each epoch. Stage ``k`` (0-based) is enabled from epoch
``k * epochs_per_stage`` on and stays enabled; with ``learn_scale`` the step sizes train with
the weights (LSQ), else the ranges stay at their calibrated values and the STE passes gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from qd_perception.quant.model import set_quant_state


@dataclass(frozen=True)
class ProgressiveQAT:
    stages: tuple[str, ...] = ("backbone", "neck", "encoder", "decoder")
    epochs_per_stage: int = 1

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("progressive QAT needs at least one stage")
        if self.epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage must be >= 1, got {self.epochs_per_stage}")

    def enabled(self, epoch: int) -> dict[str, bool]:
        """Stage -> quantized at ``epoch``."""
        k = epoch // self.epochs_per_stage
        return {s: i <= k for i, s in enumerate(self.stages)}

    def stage_starts(self, epoch: int) -> str | None:
        """The stage switched on at exactly ``epoch`` (accuracy dips there and recovers)."""
        if epoch % self.epochs_per_stage == 0 and epoch // self.epochs_per_stage < len(self.stages):
            return self.stages[epoch // self.epochs_per_stage]
        return None


def apply_progressive(model: nn.Module, schedule: ProgressiveQAT, epoch: int) -> dict[str, int]:
    """Set every staged layer's quantizers for ``epoch``; returns layers per stage (0 = a stage
    name that matches no layer: a config typo)."""
    return set_quant_state(model, schedule.enabled(epoch))
