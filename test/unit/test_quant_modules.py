"""Module swapping, stage control, BN folding, spconv wrappers, size accounting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qd_perception.quant.config import QuantConfig, preset
from qd_perception.quant.model import calibrate, fold_bn, quantize_model, set_mode, set_quant_state
from qd_perception.quant.nn import QuantAct, QuantConv2d, QuantConvTranspose2d, QuantLinear
from qd_perception.quant.quantizer import QuantSpec
from qd_perception.quant.size import model_size
from qd_perception.quant.tensor_quant import fake_quant_symmetric


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        up = nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
        self.neck = nn.Sequential(up, nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)).mean((2, 3)))


def _toy() -> Toy:
    torch.manual_seed(0)
    m = Toy().eval()
    for bn in (m.backbone[1], m.neck[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m


def test_fold_bn_preserves_the_function():
    m = _toy()
    x = torch.randn(2, 3, 8, 8)
    ref = m(x)
    fold_bn(m)
    assert isinstance(m.backbone[1], nn.Identity) and isinstance(m.neck[1], nn.Identity)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_quantize_model_swaps_by_type_and_skips_by_name():
    m = fold_bn(_toy())
    q = quantize_model(m, QuantConfig(skip=("head",)))
    assert type(q.backbone[0]) is QuantConv2d
    assert type(q.neck[0]) is QuantConvTranspose2d
    assert type(q.head) is nn.Linear
    assert q.neck[0].weight_quantizer.axis == 1  # ConvTranspose2d output channels
    x = torch.randn(2, 3, 8, 8)
    ref = _toy()
    fold_bn(ref)
    torch.testing.assert_close(q(x), ref(x))  # quantizers start disabled: float behaviour
    assert "backbone.0.weight" in q.state_dict()  # float checkpoints still load


def test_stage_control_for_progressive_qat():
    m = fold_bn(_toy())
    cfg = QuantConfig(stages={"backbone": "backbone", "neck": "neck", "head": "head"})
    q = quantize_model(m, cfg)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    calibrate(q, lambda: [q(x) for x in xs])
    set_mode(q, "disabled")
    counts = set_quant_state(q, {"backbone": True, "nekc": True})
    assert counts == {"backbone": 1, "nekc": 0}  # a typo shows up as 0 layers
    assert q.backbone[0].input_quantizer.mode == "quantize"
    assert q.neck[0].input_quantizer.mode == "disabled"
    set_quant_state(q, {"neck": True})
    assert q.backbone[0].weight_quantizer.mode == "quantize"  # earlier stages stay quantized
    assert q.head.weight_quantizer.mode == "disabled"
    fresh = quantize_model(fold_bn(_toy()), cfg)
    with pytest.raises(RuntimeError, match="uncalibrated"):
        set_quant_state(fresh, {"head": True})


def test_quantized_forward_equals_manual_fake_quant():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    m = nn.Sequential(lin)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    q = quantize_model(m, preset("minmax", "w4a8", target="trt"))
    x = torch.randn(10, 6)
    calibrate(q, lambda: q(x))
    assert type(q[0]) is QuantLinear
    xq = fake_quant_symmetric(x, x.abs().max(), 8)
    wq = fake_quant_symmetric(w0, w0.abs().amax(1), 4, axis=0)
    torch.testing.assert_close(q(x), xq @ wq.T + b0)


def test_output_quantizer_moves_after_relu_for_ort():
    m = fold_bn(_toy())
    q = quantize_model(m, QuantConfig(act=QuantSpec(symmetric=False), quantize_outputs=True))
    assert isinstance(q.backbone[2], QuantAct) and q.backbone[0].output_quantizer is None
    assert q.head.output_quantizer is not None  # no ReLU after the head: quantize its output


def test_spconv_wrappers_quantize_features_and_weights():
    spconv = pytest.importorskip("spconv.pytorch")
    from qd_perception.models.centerpoint.sparse import import_spconv

    import_spconv()  # CPU backward fix
    torch.manual_seed(0)
    conv = spconv.SubMConv3d(4, 8, 3, padding=1, bias=False, indice_key="k")
    net = spconv.SparseSequential(conv, nn.BatchNorm1d(8), nn.ReLU())
    net.eval()
    net[1].running_mean.uniform_(-0.2, 0.2)
    coords = torch.unique(torch.randint(0, 8, (200, 3)), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
    feats = torch.randn(len(coords), 4)

    def st():
        return spconv.SparseConvTensor(feats, coords, [8, 8, 8], 1)

    ref = net(st()).features
    fold_bn(net)
    assert isinstance(net[1], nn.BatchNorm1d)  # float spconv convs are not folded by default
    q = quantize_model(net, preset("minmax", "w8a8", target="trt"))
    fold_bn(q, include_sparse=True)  # the wrapper adds the folded bias itself (CPU kernels cannot)
    set_mode(q, "disabled")
    torch.testing.assert_close(q(st()).features, ref, atol=1e-5, rtol=1e-5)
    w_folded = q[0].weight.detach().clone()
    assert type(q[0]).__name__ == "QuantSubMConv3d" and q[0].output_quantizer is None
    calibrate(q, lambda: q(st()))
    got = q(st()).features
    # manual: fake-quant features and per-output-channel weights, then the float spconv conv
    ref_conv = spconv.SubMConv3d(4, 8, 3, padding=1, bias=False, indice_key="k")
    ref_conv.weight.data = fake_quant_symmetric(w_folded, w_folded.abs().amax((1, 2, 3, 4)), 8, axis=0)
    xq = spconv.SparseConvTensor(fake_quant_symmetric(feats, feats.abs().max(), 8), coords, [8, 8, 8], 1)
    want = torch.relu(ref_conv(xq).features + q[0].bias.detach())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got.sum().backward()  # STE gradients flow through the sparse conv on CPU
    assert q[0].weight.grad is not None


def test_size_accounting_on_a_toy_net():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 10, 1, bias=False), nn.BatchNorm2d(10))
    fp = model_size(m)
    n_params = 3 * 16 * 9 + 16 + 160 + 20
    assert fp.fp32_bytes == (n_params + 20) * 4  # BN running mean / var are part of the model
    assert fp.total_bytes == fp.fp32_bytes
    q = quantize_model(m, preset("minmax", "w4a8", target="trt"))
    x = torch.randn(1, 3, 8, 8)
    calibrate(q, lambda: q(x))
    r = model_size(q)
    assert r.packed_weight_bytes == math.ceil(432 * 4 / 8) + math.ceil(160 * 4 / 8)  # int4: 2 per byte
    assert r.scale_bytes == (16 + 10) * 4 + 2 * 4  # per-channel fp32 scales + 2 activation scales
    assert r.float_bytes == (16 + 20) * 4 + 20 * 4  # conv bias, BN affine + running stats
    assert r.total_bytes == r.packed_weight_bytes + r.scale_bytes + r.float_bytes
    q6 = quantize_model(
        nn.Sequential(nn.Linear(8, 8, bias=False)), QuantConfig(weight=QuantSpec(bits=6, per_channel=True))
    )
    calibrate(q6, lambda: q6(torch.randn(2, 8)))
    assert model_size(q6).packed_weight_bytes == 48  # 64 weights x 6 bits = 48 bytes


def test_progressive_qat_enables_one_more_stage_per_period():
    from qd_perception.quant.qat import ProgressiveQAT, apply_progressive

    m = fold_bn(_toy())
    q = quantize_model(m, QuantConfig(stages={"backbone": "backbone", "neck": "neck", "head": "head"}))
    x = torch.randn(2, 3, 8, 8)
    calibrate(q, lambda: q(x))
    set_mode(q, "disabled")
    sched = ProgressiveQAT(stages=("backbone", "neck", "head"), epochs_per_stage=2)
    assert apply_progressive(q, sched, 0) == {"backbone": 1, "neck": 1, "head": 1}
    assert q.backbone[0].weight_quantizer.mode == "quantize" and q.neck[0].weight_quantizer.mode == "disabled"
    apply_progressive(q, sched, 3)
    assert q.neck[0].input_quantizer.mode == "quantize" and q.head.input_quantizer.mode == "disabled"
    assert sched.stage_starts(4) == "head" and sched.stage_starts(5) is None
    apply_progressive(q, sched, 10)
    assert all(qq.mode == "quantize" for _, mod in [("h", q.head)] for qq in mod.quantizers())
    q.train()
    q(x).sum().backward()  # STE: gradients reach the float weights through every quantizer
    assert q.backbone[0].weight.grad is not None and float(q.backbone[0].weight.grad.abs().sum()) > 0
