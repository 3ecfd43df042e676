"""AdaRound, TGPL and the LiDAR-PTQ pipeline on small models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from qd_perception.models.centerpoint.head import TaskOutput
from qd_perception.quant.config import preset
from qd_perception.quant.model import calibrate, quantize_model, quantizers
from qd_perception.quant.ptq.adaround import AdaRoundConfig, SoftRounding, adaround_model
from qd_perception.quant.ptq.joint import JointRoundingConfig, joint_rounding
from qd_perception.quant.ptq.lidar_ptq import LidarPTQConfig, run_lidar_ptq
from qd_perception.quant.ptq.tgpl import TGPLConfig, positive_masks, tgpl_loss


def test_soft_rounding_starts_at_the_float_weight_and_hardens_to_integers():
    torch.manual_seed(0)
    w = torch.randn(4, 6)
    amax = w.abs().amax(1)
    r = SoftRounding(w, amax, bits=4, axis=0)
    torch.testing.assert_close(r(), w, atol=1e-3, rtol=0)  # h(V) = frac(W / s) at the start
    r.hard = True
    codes = r() / r.scale
    torch.testing.assert_close(codes, codes.round(), atol=1e-5, rtol=0)
    assert float(r.regularizer(2.0)) > 0


def test_adaround_reduces_layer_reconstruction_error_vs_nearest():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    xs = [torch.randn(2, 8, 12, 12) for _ in range(6)]
    q = quantize_model(m, preset("minmax", "w4a8", target="trt"))
    calibrate(q, lambda: [q(x) for x in xs])
    cfg = AdaRoundConfig(iterations=150, lr=1e-2, batch_size=3)
    rep = adaround_model(q, xs, lambda mod, s: mod(s), cfg)
    assert set(rep) == {"0", "2"}
    for name, r in rep.items():
        assert r["mse_adaround"] < r["mse_nearest"], name
    # finalized: weights sit on the integer grid, nearest rounding reproduces them, nothing attached
    wq = q[0].weight_quantizer
    assert wq.rounding is None
    with torch.no_grad():
        torch.testing.assert_close(wq(q[0].weight), q[0].weight, atol=1e-6, rtol=0)


def _task(hm: torch.Tensor, box: torch.Tensor) -> TaskOutput:
    return TaskOutput(hm, box[:, :2], box[:, 2:3], box[:, 3:6], box[:, 6:8], box[:, 8:10])


def test_tgpl_positives_are_confident_peaks_over_the_whole_scene():
    hm = torch.full((1, 2, 16, 16), -8.0)
    hm[0, 0, 2, 3] = 3.0  # a confident peak
    hm[0, 0, 2, 4] = 2.0  # its neighbour: not a peak
    hm[0, 1, 12, 14] = 1.0  # a second, far away object (other class)
    hm[0, 1, 8, 8] = -2.0  # below the threshold
    masks = positive_masks([_task(hm, torch.zeros(1, 10, 16, 16))], TGPLConfig(score_threshold=0.3))
    assert masks[0].sum() == 2 and masks[0][0, 2, 3] and masks[0][0, 12, 14]
    top1 = positive_masks([_task(hm, torch.zeros(1, 10, 16, 16))], TGPLConfig(score_threshold=0.3, top_k=1))
    assert top1[0].sum() == 1 and top1[0][0, 2, 3]


def test_tgpl_loss_is_zero_at_agreement_and_only_sees_positives():
    torch.manual_seed(0)
    hm = torch.randn(1, 3, 8, 8)
    hm[0, 1, 4, 4] = 5.0
    box = torch.randn(1, 10, 8, 8)
    fp = [_task(hm, box)]
    masks = positive_masks(fp, TGPLConfig(score_threshold=0.9))
    same, parts = tgpl_loss([_task(hm.clone(), box.clone())], fp, masks, TGPLConfig())
    box2 = box.clone().requires_grad_(True)
    off = box2 + torch.where(masks[0][:, None], 1.0, 0.0)  # wrong only at the positives
    far = box.clone()
    far[:, :, 0, 0] += 100.0  # wrong far from any positive: ignored
    loss_far, _ = tgpl_loss([_task(hm, far)], fp, masks, TGPLConfig())
    loss_off, p_off = tgpl_loss([_task(hm, off)], fp, masks, TGPLConfig(heatmap_weight=0.0, box_weight=1.0))
    assert parts["positives"] >= 1
    assert float(loss_far) == pytest.approx(float(same))
    assert p_off["box"] == pytest.approx(1.0)
    loss_off.backward()
    assert box2.grad is not None and float(box2.grad.abs().sum()) > 0


class TinyCenterNet(nn.Module):
    """A CenterPoint-shaped toy: sparse BEV input -> conv backbone -> heatmap + box heads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
        )
        self.hm = nn.Conv2d(16, 2, 1)
        self.box = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        f = torch.relu(self.backbone(x))
        return [_task(self.hm(f), self.box(f))]


def test_lidar_ptq_pipeline_runs_stage_by_stage():
    torch.manual_seed(0)
    model = TinyCenterNet().eval()
    model.backbone[1].running_var.fill_(0.5)
    samples = []
    for _ in range(4):
        x = torch.randn(1, 4, 16, 16) * (torch.rand(1, 1, 16, 16) < 0.15)  # ~85 % empty cells
        samples.append(x)
    seen: list[str] = []

    def on_stage(name, q):
        with torch.no_grad():
            q(samples[0])
        seen.append(name)

    cfg = LidarPTQConfig(
        grid_steps=11,
        tgpl_iterations=5,
        tgpl_loss=TGPLConfig(score_threshold=0.05),
        adaround_cfg=AdaRoundConfig(iterations=5),
    )
    q, rep = run_lidar_ptq(model, samples, lambda m, s: m(s), preset("lidar_ptq", "w8a8"), cfg, on_stage)
    assert seen == ["minmax", "grid", "tgpl", "adaround"]
    assert set(rep.stage_seconds) == set(seen) and len(rep.tgpl_loss) == 5
    assert all(qq.mode == "quantize" and qq.scale is None for _, qq in quantizers(q))
    assert type(model.hm) is nn.Conv2d  # the float model is untouched
    with torch.no_grad():
        out = q(samples[1])[0].heatmap
        ref = model(samples[1])[0].heatmap
    assert float((out - ref).abs().max()) < 0.2 * float(ref.abs().max())
    # the ablation switches: max-min only
    seen.clear()
    off = dataclasses.replace(cfg, grid_search=False, tgpl=False, adaround=False)
    run_lidar_ptq(model, samples, lambda m, s: m(s), preset("lidar_ptq", "w8a8"), off, on_stage)
    assert seen == ["minmax"]


def _sparse_samples(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, 4, 16, 16, generator=g) * (torch.rand(1, 1, 16, 16, generator=g) < 0.15)
        for _ in range(n)
    ]


def _calibrated_w4(model: nn.Module, samples) -> nn.Module:
    off = LidarPTQConfig(grid_search=False, tgpl=False, adaround=False)
    q, _ = run_lidar_ptq(model, samples, lambda m, s: m(s), preset("lidar_ptq", "w4a8"), off)
    return q


def _independent_objective(q: nn.Module, ref: nn.Module, samples, tcfg: TGPLConfig) -> tuple[float, float]:
    """Mean relative layer error vs ``ref`` run in float and TGPL vs ``ref``'s float heads.

    Computed here without the joint module's machinery. (TGPL's soft-target BCE includes the targets'
    entropy, a constant floor, so the reconstruction part shows the change best.)"""
    from qd_perception.quant.model import set_mode
    from qd_perception.quant.nn.modules import QuantModule

    names = [n for n, m in ref.named_modules() if isinstance(m, QuantModule)]
    rec_sum = tgpl_sum = 0.0
    for x in samples:
        got: dict[str, dict[str, torch.Tensor]] = {"q": {}, "f": {}}
        hooks = []
        for key, mod in (("q", q), ("f", ref)):
            mods = dict(mod.named_modules())
            for n in names:
                store = got[key]
                hook = mods[n].register_forward_hook(lambda _m, _a, y, d=store, n=n: d.setdefault(n, y))
                hooks.append(hook)
        modes = {n: qq.mode for n, qq in quantizers(ref)}
        set_mode(ref, "disabled")
        with torch.no_grad():
            fo = ref(x)
            qo = q(x)
        for n, qq in quantizers(ref):
            qq.mode = modes[n]
        for h in hooks:
            h.remove()
        rec = sum(float((got["q"][n] - got["f"][n]).pow(2).sum() / got["f"][n].pow(2).sum()) for n in names)
        tg, _ = tgpl_loss(qo, fo, positive_masks(fo, tcfg), tcfg)
        rec_sum += rec / len(names)
        tgpl_sum += float(tg)
    return rec_sum / len(samples), tgpl_sum / len(samples)


def test_joint_rounding_beats_nearest_and_hardens_every_weight():
    import copy

    torch.manual_seed(0)
    model = TinyCenterNet().eval()
    samples = _sparse_samples(4)
    q0 = _calibrated_w4(model, samples)  # max-min ranges, nearest rounding
    qj = copy.deepcopy(q0)
    tcfg = TGPLConfig(score_threshold=0.05)
    cfg = JointRoundingConfig(schedule=AdaRoundConfig(iterations=120, lr=5e-2, reg_weight=1.0))
    rep = joint_rounding(qj, samples, lambda m, s: m(s), cfg, tcfg)
    assert rep.layers == 4 and len(rep.loss) == 120
    assert rep.final["total"] < rep.nearest["total"]
    ref = copy.deepcopy(q0)  # float reference: q0's modules with quantizers disabled
    before = _independent_objective(q0, ref, samples, tcfg)
    after = _independent_objective(qj, ref, samples, tcfg)
    assert sum(after) < sum(before) and after[0] < 0.95 * before[0], (before, after)
    assert sum(after) == pytest.approx(rep.final["total"], rel=1e-4)
    for _, qq in quantizers(qj):
        assert qq.rounding is None and qq.scale is None and qq.mode == "quantize"
    with torch.no_grad():  # hardened: every weight is an integer multiple of its channel's step
        for m in (qj.backbone[0], qj.backbone[3], qj.hm, qj.box):
            s = m.weight_quantizer.amax.reshape(-1, 1, 1, 1) / 7
            codes = m.weight / s
            torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
            assert float(codes.abs().max()) <= 8


def test_joint_rounding_keeps_nearest_when_the_learned_rounding_is_worse():
    import copy

    torch.manual_seed(0)
    samples = _sparse_samples(3, seed=2)
    q0 = _calibrated_w4(TinyCenterNet().eval(), samples)
    # a wild step size flips roundings at random: the hardened result scores worse than nearest
    wild = JointRoundingConfig(schedule=AdaRoundConfig(iterations=3, lr=5.0, warmup=0.0))
    q1 = copy.deepcopy(q0)
    rep = joint_rounding(q1, samples, lambda m, s: m(s), wild, None)
    assert rep.kept == "nearest" and rep.final["total"] <= rep.nearest["total"] + 1e-6
    with torch.no_grad():  # the weights are exactly the nearest-rounded ones
        for a, b in ((q0.backbone[0], q1.backbone[0]), (q0.hm, q1.hm)):
            torch.testing.assert_close(a.weight_quantizer(a.weight), b.weight, atol=1e-6, rtol=0)
    q2 = copy.deepcopy(q0)
    off = dataclasses.replace(wild, keep_better=False)
    assert joint_rounding(q2, samples, lambda m, s: m(s), off, None).kept == "learned"


def test_lidar_ptq_joint_mode_and_grid_switches():
    torch.manual_seed(0)
    model = TinyCenterNet().eval()
    samples = _sparse_samples(3, seed=1)
    snap: dict[str, dict[str, torch.Tensor]] = {}

    def on_stage(name, q):
        snap[name] = {n: qq.amax.clone() for n, qq in quantizers(q)}

    cfg = LidarPTQConfig(
        rounding="joint",
        grid_steps=11,
        grid_weights=False,
        tgpl_loss=TGPLConfig(score_threshold=0.05),
        joint=JointRoundingConfig(schedule=AdaRoundConfig(iterations=4)),
    )
    # 4-bit activations: the grid moves their clips (at 8 bits it may keep max-min on this toy)
    q, rep = run_lidar_ptq(model, samples, lambda m, s: m(s), preset("lidar_ptq", "w4a4"), cfg, on_stage)
    assert list(snap) == ["minmax", "grid", "adaround"]  # TGPL runs inside the joint stage
    assert rep.joint is not None and len(rep.joint.loss) == 4 and not rep.tgpl_loss
    changed = {n for n in snap["grid"] if not torch.equal(snap["grid"][n], snap["minmax"][n])}
    assert changed and not any(n.endswith("weight_quantizer") for n in changed)
    assert all(qq.rounding is None and qq.scale is None for _, qq in quantizers(q))
    # weights only: the activation ranges stay max-min
    snap.clear()
    w_only = dataclasses.replace(cfg, grid_weights=True, grid_activations=False, adaround=False, tgpl=False)
    run_lidar_ptq(model, samples, lambda m, s: m(s), preset("lidar_ptq", "w4a4"), w_only, on_stage)
    changed = {n for n in snap["grid"] if not torch.equal(snap["grid"][n], snap["minmax"][n])}
    assert changed and all(n.endswith("weight_quantizer") for n in changed)


@pytest.mark.parametrize("name", ["lidar_ptq.yaml", "lidar_ptq_layerwise.yaml", "lidar_ptq_fast.yaml"])
def test_shipped_ptq_configs_load(name):
    from pathlib import Path

    from qd_perception.config import ConfigError
    from qd_perception.train.quantize_lidar import load_ptq_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_ptq_config(root / "config" / "quant" / name)
    assert cfg.grid_steps > 1 and cfg.adaround_cfg.iterations > 0
    with pytest.raises(ConfigError, match="unknown key"):
        from qd_perception.config import from_dict

        from_dict(LidarPTQConfig, {"grid_stpes": 3})


def test_learned_steps_are_shared_where_one_tensor_meets_two_quantizers():
    """ORT preset: a ReLU's output quantizer feeds the next conv's input quantizer directly; if
    TGPL learned two steps there the deployed graph would round that tensor twice."""
    from qd_perception.quant.model import chained_quantizers, learnable_activation_steps

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)
    ).eval()
    q = quantize_model(net, preset("minmax", "w8a8", "ort"))
    xs = [torch.randn(1, 4, 12, 12) for _ in range(3)]
    calibrate(q, lambda: [q(x) for x in xs])
    links = chained_quantizers(q, lambda: q(xs[0]))
    assert len(links) == 2  # relu-1 output -> conv-2 input, relu-2 output -> conv-3 input
    acts = [m for n, m in quantizers(q) if not n.endswith("weight_quantizer") and m.mode == "quantize"]
    params = learnable_activation_steps(q, lambda: q(xs[0]))
    assert len(params) == len(acts) - 2 and len({id(p) for p in params}) == len(params)
    with torch.no_grad():
        for p in params:
            p.mul_(1.3)  # what an optimiser step would do
    for m in acts:
        m.freeze_lsq()
    by_id = {id(m): m for m in acts}
    for consumer_id, producer in links.items():
        assert torch.equal(by_id[consumer_id].amax, producer.amax)
        assert torch.equal(by_id[consumer_id].amin, producer.amin)
