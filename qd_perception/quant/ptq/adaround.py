"""AdaRound (Nagel et al., 2020): learn whether each weight rounds up or down.

Three parts:

* **module** — :class:`SoftRounding`, attached to a weight quantizer: the quantized weight is
  ``s * clamp(floor(W / s) + h(V), qmin, qmax)`` with the rectified sigmoid
  ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``;
  ``V`` starts where ``h(V)`` equals the fractional part of ``W / s`` (so the start is the float
  weight inside the clip). ``hard=True`` uses ``h = [V >= 0]``.
* **loss** — :class:`AdaRoundLoss`: reconstruction MSE + ``lam * sum(1 - |2 h(V) - 1|^beta)``
  with ``beta`` annealed from ``beta_start`` to ``beta_end`` after a warm-up with no regulariser.
* **optimiser** — :func:`reconstruct`: Adam on ``V`` over cached (input, target) pairs, for one
  layer or a block of layers. :func:`adaround_model` runs it layer by layer through a model: the
  input of layer L comes from the *quantized* model (earlier layers already rounded), the target
  from the *float* model (LiDAR-PTQ's step 3).

After optimisation :meth:`SoftRounding.finalize` writes the hard-rounded weights into the layer
(``W <- s * q``), so nearest rounding reproduces the learned integers and export needs nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from qd_perception.quant.nn.modules import QuantModule
from qd_perception.quant.tensor_quant import qrange, symmetric_scale

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 200  # per layer; the paper's 10-20k are far too many on this CPU
    lr: float = 1e-3
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2  # fraction of iterations without the rounding regulariser
    batch_size: int = 4  # cached samples per step
    max_cached: int = 16  # samples cached per layer


class SoftRounding(nn.Module):
    """Learned rounding of one (symmetric) weight quantizer's weight. See module docstring."""

    def __init__(self, weight: torch.Tensor, amax: torch.Tensor, bits: int, axis: int | None) -> None:
        super().__init__()
        self.bits, self.axis = bits, axis
        scale = symmetric_scale(amax.detach().float(), bits)
        if axis is not None:
            shape = [1] * weight.dim()
            shape[axis] = -1
            scale = scale.reshape(shape)
        self.register_buffer("scale", scale)
        w = weight.detach() / scale
        self.register_buffer("w_floor", torch.floor(w))
        rest = (w - self.w_floor).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("frac", rest)  # fractional part of W / s: nearest rounding is frac >= 0.5
        self.V = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.hard = False

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.V) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, _w: torch.Tensor | None = None) -> torch.Tensor:
        qmin, qmax = qrange(self.bits)
        r = (self.V >= 0).float() if self.hard else self.h()
        return torch.clamp(self.w_floor + r, qmin, qmax) * self.scale

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def finalize(self, module: nn.Module) -> None:
        """Write the hard-rounded weight into ``module.weight`` and detach from its quantizer."""
        self.hard = True
        module.weight.copy_(self())
        module.weight_quantizer.rounding = None


@contextmanager
def nearest_rounding(roundings: Sequence[SoftRounding]) -> Iterator[None]:
    """Inside: every ``V`` set so that hard rounding is nearest rounding (``h >= 0.5`` exactly where
    the fractional part is); the learned ``V`` are restored on exit."""
    with torch.no_grad():
        saved = [r.V.detach().clone() for r in roundings]
        for r in roundings:
            r.V.copy_(torch.where(r.frac >= 0.5, 1.0, -1.0))
    try:
        yield
    finally:
        with torch.no_grad():
            for r, v in zip(roundings, saved):
                r.V.copy_(v)


def attach(module: QuantModule) -> SoftRounding:
    """Attach a :class:`SoftRounding` to ``module``'s weight quantizer (calibrated, symmetric)."""
    wq = module.weight_quantizer
    if not wq.calibrated or not wq.symmetric:
        raise RuntimeError("AdaRound needs a calibrated symmetric weight quantizer")
    r = SoftRounding(module.weight, wq.effective_amax(), wq.bits, wq.axis)
    wq.rounding = r
    wq.set_mode("quantize")
    return r


class AdaRoundLoss:
    """Reconstruction MSE + annealed rounding regulariser (see module docstring).

    ``per_layer_mean``: each rounding's regulariser is averaged over its weights instead of summed
    (the joint optimiser of :mod:`.joint` adds up layers of very different sizes; averaged, each
    layer's term lies in [0, 1] like its relative reconstruction error).
    """

    def __init__(
        self, roundings: Sequence[SoftRounding], cfg: AdaRoundConfig, per_layer_mean: bool = False
    ) -> None:
        self.roundings, self.cfg, self.per_layer_mean = list(roundings), cfg, per_layer_mean

    def beta(self, it: int) -> float:
        c = self.cfg
        start = int(c.warmup * c.iterations)
        if it < start:
            return c.beta_start
        t = (it - start) / max(c.iterations - start, 1)
        return c.beta_end + (c.beta_start - c.beta_end) * max(0.0, 1 - t)

    def regularization(self, it: int) -> torch.Tensor | None:
        """``reg_weight * sum(1 - |2 h(V) - 1|^beta)`` at iteration ``it``; ``None`` in the warm-up."""
        if it < int(self.cfg.warmup * self.cfg.iterations):
            return None
        b = self.beta(it)
        terms = [r.regularizer(b) / (r.V.numel() if self.per_layer_mean else 1) for r in self.roundings]
        return self.cfg.reg_weight * torch.stack(terms).sum()

    def __call__(self, out: torch.Tensor, target: torch.Tensor, it: int) -> tuple[torch.Tensor, float]:
        rec = (out - target).pow(2).sum(1).mean() if out.dim() > 1 else (out - target).pow(2).mean()
        reg = self.regularization(it)
        return (rec if reg is None else rec + reg), float(rec)


def _features(x: Any) -> torch.Tensor:
    """Dense tensor of a layer output (spconv SparseConvTensor -> its (N, C) features)."""
    return x.features if hasattr(x, "features") else x


def reconstruct(
    forward: Callable[[Any], Any],
    roundings: Sequence[SoftRounding],
    inputs: Sequence[Any],
    targets: Sequence[torch.Tensor],
    cfg: AdaRoundConfig,
    desc: str = "adaround",
) -> dict[str, float]:
    """Optimise the ``V`` of ``roundings`` so ``forward(input)`` matches ``target`` on the cache.

    ``forward`` runs the layer (or block) whose weights use the roundings. Returns the
    reconstruction MSE before (nearest rounding) and after (hard learned rounding).
    """

    def rec_error(hard: bool) -> float:
        for r in roundings:
            r.hard = hard
        with torch.no_grad():
            e = sum(float((_features(forward(x)) - t).pow(2).mean()) for x, t in zip(inputs, targets))
        for r in roundings:
            r.hard = False
        return e / len(inputs)

    with nearest_rounding(roundings):
        before = rec_error(hard=True)

    loss_fn = AdaRoundLoss(roundings, cfg)
    opt = torch.optim.Adam([r.V for r in roundings], lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    n = len(inputs)
    dense = all(isinstance(x, torch.Tensor) and x.shape == inputs[0].shape for x in inputs)
    for it in tqdm(range(cfg.iterations), desc=desc, leave=False, mininterval=2.0):
        idx = torch.randperm(n, generator=gen)[: cfg.batch_size].tolist()
        opt.zero_grad()
        if dense:  # one batched forward when the cached inputs are plain tensors of equal shape
            x = torch.cat([inputs[i] for i in idx])
            loss, _ = loss_fn(forward(x), torch.cat([targets[i] for i in idx]), it)
            loss.backward()
        else:
            for i in idx:
                loss, _ = loss_fn(_features(forward(inputs[i])), targets[i], it)
                (loss / len(idx)).backward()
        opt.step()
    after = rec_error(hard=True)
    return {"mse_nearest": before, "mse_adaround": after}


class _Stop(Exception):
    pass


def _capture_many(layers: Sequence[nn.Module], run: Callable[[], Any], what: str) -> list[Any]:
    """Run ``run()`` until the last of ``layers`` executes; return each layer's input or output."""
    got: dict[int, Any] = {}
    last = layers[-1]

    def make(i: int, layer: nn.Module):
        def hook(_m, args, out):
            got.setdefault(i, args[0] if what == "input" else out)
            if layer is last:
                raise _Stop

        return hook

    hooks = [layer.register_forward_hook(make(i, layer)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            run()
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    if len(got) != len(layers):
        raise RuntimeError("a layer was not executed by the calibration forward")
    return [got[i] for i in range(len(layers))]


def _nbytes(x: Any) -> int:
    t = _features(x)
    return t.numel() * t.element_size()


def adaround_model(
    qmodel: nn.Module,
    samples: Sequence[Any],
    run: Callable[[nn.Module, Any], Any],
    cfg: AdaRoundConfig,
    layers: Sequence[tuple[str, nn.Module]] | None = None,
    cache_bytes: int = 1 << 30,
) -> dict[str, dict[str, float]]:
    """Layer-by-layer AdaRound over ``qmodel``'s quantized layers, in execution order.

    ``run(model, sample)`` is one forward pass over one calibration sample. The float target of
    each layer is its output in the *same* model with every quantizer disabled (no second copy
    of the weights); its input comes from the model with all quantizers on. Forward passes stop
    at the last layer needed (hooks), and consecutive layers are served in chunks that fit in
    ``cache_bytes`` (one float and one quantized pass per sample per chunk): within a chunk a
    layer's quantized input is taken before the earlier layers of the chunk were rounded, a small
    departure from strictly sequential AdaRound that makes it affordable on CPU.
    Returns the per-layer reconstruction errors.
    """
    from qd_perception.quant.model import quantizers

    samples = list(samples)[: cfg.max_cached]
    if layers is None:
        layers = quant_layers_in_order(qmodel, samples[0], run)
    layers = [(n, m) for n, m in layers if m.weight_quantizer.mode == "quantize"]
    if not layers:
        return {}
    # size of every layer's input + output on one sample, to plan the chunks
    sizes = [
        _nbytes(i) + _nbytes(o)
        for i, o in zip(
            _capture_many([m for _, m in layers], lambda: run(qmodel, samples[0]), "input"),
            _capture_many([m for _, m in layers], lambda: run(qmodel, samples[0]), "output"),
        )
    ]
    chunks: list[list[int]] = [[]]
    used = 0
    for i, b in enumerate(sizes):
        if chunks[-1] and used + b * len(samples) > cache_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += b * len(samples)

    report: dict[str, dict[str, float]] = {}
    bar = tqdm(total=len(layers), desc="AdaRound layers")
    for chunk in chunks:
        mods = [layers[i][1] for i in chunk]
        modes = {n: q.mode for n, q in quantizers(qmodel)}
        for _, q in quantizers(qmodel):
            q.mode = "disabled"
        fp_out = [_capture_many(mods, lambda s=s: run(qmodel, s), "output") for s in samples]
        for n, q in quantizers(qmodel):
            q.mode = modes[n]
        q_in = [_capture_many(mods, lambda s=s: run(qmodel, s), "input") for s in samples]
        for k, i in enumerate(chunk):
            name, layer = layers[i]
            inputs = [q_in[j][k] for j in range(len(samples))]
            targets = [_features(fp_out[j][k]) for j in range(len(samples))]
            r = attach(layer)
            oq = layer.output_quantizer
            layer.output_quantizer = None  # reconstruct the layer's own output, before requantization
            try:
                report[name] = reconstruct(layer, [r], inputs, targets, cfg, desc=name)
            finally:
                layer.output_quantizer = oq
                r.finalize(layer)
            bar.update(1)
        del fp_out, q_in
    bar.close()
    return report


def quant_layers_in_order(
    model: nn.Module, sample: Any, run: Callable[[nn.Module, Any], Any]
) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every :class:`QuantModule` in the order ``run(model, sample)`` executes
    them (layers it never reaches come last)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantModule)]
    order = _execution_order(model, sample, run)
    return sorted(found, key=lambda nm: order.get(nm[0], math.inf))


def _execution_order(model: nn.Module, sample: Any, run: Callable[[nn.Module, Any], Any]) -> dict[str, int]:
    order: dict[str, int] = {}
    hooks = []

    def pre_hook(name: str):
        def hook(_m, _a) -> None:  # must return None: a pre-hook's return value replaces the input
            order.setdefault(name, len(order))

        return hook

    for n, m in model.named_modules():
        if isinstance(m, QuantModule):
            hooks.append(m.register_forward_pre_hook(pre_hook(n)))
    try:
        with torch.no_grad():
            run(model, sample)
    finally:
        for h in hooks:
            h.remove()
    return order
