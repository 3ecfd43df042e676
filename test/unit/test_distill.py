"""Distillation losses (QD-BEV's view-guided distillation and the CWD baselines) on tensors whose
values can be checked by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from qd_perception.distill.cwd import (
    bev_kl_map,
    cwd_bev_loss,
    cwd_image_loss,
    image_kl_per_camera,
    softmax_kl,
)
from qd_perception.distill.vgd import DistillConfig, distill_loss, vgd_loss, view_loss, view_mask


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(x: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in x]
    return [v / sum(e) for v in e]


def test_softmax_kl_matches_direct_computation():
    t, s, T = [1.0, 2.0, 0.5], [0.0, 1.0, 3.0], 2.0
    want = _kl(_softmax(t, T), _softmax(s, T)) * T**2
    got = softmax_kl(torch.tensor(t), torch.tensor(s), T, dim=-1)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_identical_teacher_and_student_give_zero():
    g = torch.Generator().manual_seed(0)
    img = [torch.randn(2, 3, 4, 5, 6, generator=g)]
    bev = torch.randn(2, 16, 4, generator=g)
    mask = torch.rand(3, 2, 16, 4, generator=g) > 0.5
    assert torch.allclose(image_kl_per_camera(img, img, 1.0), torch.zeros(3), atol=1e-6)
    assert float(vgd_loss(img, img, bev, bev, mask, 1.0, "sum")) == pytest.approx(0.0, abs=1e-6)
    assert float(vgd_loss(img, img, bev, bev, mask, 1.0, "product")) == pytest.approx(0.0, abs=1e-6)


def test_image_kl_is_per_camera_over_positions_averaged_over_batch_and_channels():
    # camera 0 identical, camera 1: channel 0 of batch 0 differs on a 2-position map
    t = torch.zeros(1, 2, 2, 1, 2)
    s = torch.zeros(1, 2, 2, 1, 2)
    t[0, 1, 0, 0] = torch.tensor([1.0, 0.0])
    got = image_kl_per_camera([t], [s], 1.0)
    want = _kl(_softmax([1.0, 0.0], 1.0), [0.5, 0.5]) / 2  # one of B*C = 2 channels differs
    assert float(got[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(got[1]) == pytest.approx(want, rel=1e-6)
    # two levels, the second identical: the mean over levels halves it
    assert float(image_kl_per_camera([t, s], [s, s], 1.0)[1]) == pytest.approx(want / 2, rel=1e-6)
    assert float(cwd_image_loss([t], [s], 1.0)) == pytest.approx(want / 2, rel=1e-6)


def test_bev_kl_map_is_per_cell_over_channels():
    t = torch.zeros(1, 3, 2)
    s = torch.zeros(1, 3, 2)
    t[0, 2] = torch.tensor([2.0, 0.0])
    got = bev_kl_map(t, s, 1.0)
    want = _kl(_softmax([2.0, 0.0], 1.0), [0.5, 0.5])
    assert got.shape == (1, 3)
    assert got[0, :2].abs().max() < 1e-7
    assert float(got[0, 2]) == pytest.approx(want, rel=1e-6)
    assert float(cwd_bev_loss(t, s, 1.0)) == pytest.approx(want / 3, rel=1e-6)


def test_temperature_scaling_is_t_squared_times_softened_kl():
    t, s = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.0])
    want = _kl(_softmax([3.0, 0.0], 4.0), [0.5, 0.5]) * 16.0
    assert float(softmax_kl(t, s, 4.0, -1)) == pytest.approx(want, rel=1e-6)


def test_view_mask_averages_heights_and_selects_cameras():
    mask = torch.zeros(2, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 0] = True  # camera 0 sees cell 0 at all 4 heights
    mask[1, 0, 1, :2] = True  # camera 1 sees cell 1 at 2 of 4 heights
    m = view_mask(mask)
    assert m.tolist() == [[[1.0, 0.0, 0.0]], [[0.0, 0.5, 0.0]]]
    lv = view_loss(torch.tensor([3.0, 10.0]), m)
    assert lv.tolist() == [[3.0, 5.0, 0.0]]  # each camera's loss lands only on the cells it sees


def test_vgd_combinations_by_hand():
    # one camera seeing cell 0 only; image loss a, BEV loss b0 on cell 0, b1 on cell 1
    t_img = torch.zeros(1, 1, 1, 1, 2)
    t_img[..., 0] = 1.0
    s_img = torch.zeros(1, 1, 1, 1, 2)
    a = _kl(_softmax([1.0, 0.0], 1.0), [0.5, 0.5])
    t_bev = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    s_bev = torch.zeros(1, 2, 2)
    b0 = _kl(_softmax([2.0, 0.0], 1.0), [0.5, 0.5])
    b1 = _kl(_softmax([0.0, 1.0], 1.0), [0.5, 0.5])
    mask = torch.tensor([[[[True], [False]]]])  # (N=1, B=1, HW=2, Z=1)
    prod = vgd_loss([t_img], [s_img], t_bev, s_bev, mask, 1.0, "product")
    total = vgd_loss([t_img], [s_img], t_bev, s_bev, mask, 1.0, "sum")
    assert float(prod) == pytest.approx(a * b0 / 2, rel=1e-6)
    assert float(total) == pytest.approx((a + b0 + b1) / 2, rel=1e-6)


def test_gradient_reaches_the_student_only():
    t = torch.randn(1, 4, 3, requires_grad=True)
    s = torch.randn(1, 4, 3, requires_grad=True)
    cwd_bev_loss(t, s, 2.0).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_distill_loss_table_and_config_errors():
    g = torch.Generator().manual_seed(1)
    out = lambda: SimpleNamespace(  # noqa: E731
        img_feats=[torch.randn(1, 2, 3, 2, 2, generator=g)],
        bev=torch.randn(1, 4, 3, generator=g),
        bev_mask=torch.ones(2, 1, 4, 2, dtype=torch.bool),
    )
    t, s = out(), out()
    assert distill_loss(t, s, DistillConfig(kind="none")) is None
    assert float(distill_loss(t, s, DistillConfig(kind="cwd_img"))) == pytest.approx(
        float(cwd_image_loss(t.img_feats, s.img_feats, 1.0))
    )
    assert float(distill_loss(t, s, DistillConfig(kind="cwd_bev", temperature=2.0))) == pytest.approx(
        float(cwd_bev_loss(t.bev, s.bev, 2.0))
    )
    assert float(distill_loss(t, s, DistillConfig(kind="vgd", combine="sum"))) > 0
    with pytest.raises(ValueError):
        DistillConfig(kind="kd")
    with pytest.raises(ValueError):
        DistillConfig(combine="max")
    with pytest.raises(ValueError):
        vgd_loss(t.img_feats, s.img_feats, t.bev, s.bev, torch.ones(3, 1, 4, 2), 1.0)  # 3 cameras vs 2
