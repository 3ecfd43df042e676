"""The pillar inference host path (point layout, no padding) computes what the padded path does:
voxel layouts agree, point-wise features and PFN equal the padded ones (one and two PFN layers),
the scatter equals a brute-force canvas, and ONNX Runtime's point-wise cut of ``pfn.onnx``
matches the padded graph (and is refused for a two-layer PFN, which then runs padded)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import TINY, tiny_frame

from qd_perception.models.build import build_model, config_from_dict
from qd_perception.models.centerpoint.vfe import (
    BevCanvas,
    augment_pillar_features,
    pillar_point_features,
    scatter_to_bev,
)
from qd_perception.runtime.centerpoint import (
    OrtCenterPointDetector,
    TorchCenterPointDetector,
    pointwise_pfn_graph,
)
from qd_perception.train.export_lidar import export


def crowded_points(seed: int = 0) -> torch.Tensor:
    """The tiny test scene plus one over-full pillar (more points than its capacity)."""
    pts = tiny_frame(seed).points.copy()
    pts[:40, :2] = np.random.default_rng(seed).uniform(1.0, 1.15, (40, 2))
    return torch.from_numpy(pts)


def model_with_stats(channels: list[int], seed: int = 0):
    """A tiny pillar model in eval mode with non-trivial BatchNorm statistics in its PFN (so that
    a padded zero row does not map to zero and the padding's effect on the max is tested)."""
    torch.manual_seed(seed)
    model = build_model("centerpoint", config_from_dict("centerpoint", {**TINY, "pillar_channels": channels}))
    for layer in model.pfn.layers:
        n = layer.norm.num_features
        layer.norm.running_mean.uniform_(-1.0, 1.0)
        layer.norm.running_var.uniform_(0.5, 2.0)
        layer.norm.weight.data.uniform_(0.5, 1.5)
        layer.norm.bias.data.uniform_(-0.5, 0.5)
        assert n == layer.linear.out_features
    return model.eval()


def padded_encode(model, vox) -> torch.Tensor:
    """The reference: PFN on the padded (V, M, F) tensor, then the scatter."""
    return model.scatter(model.pfn(model.pillar_inputs(vox)), vox)


def test_voxel_layouts_hold_the_same_points():
    model = model_with_stats([16])
    vox = model.preprocess([crowded_points(0), crowded_points(1)[:500]])
    m = vox.max_points
    assert vox.num_points.max() == m and (vox.num_points < m).any()
    assert len(vox.points) == int(vox.num_points.sum()) == len(vox.point_voxel)
    assert torch.equal(vox.voxels[vox.point_voxel, vox.point_rank], vox.points)
    valid = torch.arange(m)[None, :] < vox.num_points[:, None]
    assert int(valid.sum()) == len(vox.points) and not vox.voxels[~valid].any()
    # grouped by voxel, in voxel order: what segment_max relies on
    assert bool((vox.point_voxel[1:] >= vox.point_voxel[:-1]).all())
    assert vox.coords[vox.point_voxel[-1], 0] == 1  # second sample after the first


def test_point_features_equal_the_valid_rows_of_the_padded_ones():
    model = model_with_stats([16])
    vox = model.preprocess([crowded_points()])
    cfg = model.cfg.voxelization
    padded = augment_pillar_features(vox.voxels, vox.num_points, vox.coords, cfg)
    points = pillar_point_features(vox.points, vox.point_voxel, vox.num_points, vox.coords, cfg)
    torch.testing.assert_close(points, padded[vox.point_voxel, vox.point_rank], atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [[16], [8, 16]])
def test_point_pfn_and_scatter_equal_the_padded_path(channels):
    model = model_with_stats(channels)
    vox = model.preprocess([crowded_points(), crowded_points(3)[:700]])
    assert model.pfn.supports_points()
    with torch.no_grad():
        ref = padded_encode(model, vox)
        got = model.encode(vox)  # eval mode: the point path
    assert got.shape == ref.shape and ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_training_mode_and_quantizer_wrappers_keep_the_padded_path():
    model = model_with_stats([16])
    assert not model.train().pfn.supports_points()  # padded zeros enter BatchNorm batch statistics
    model.eval()

    class WrappedLinear(torch.nn.Linear):  # what a quantizer's module swap looks like
        pass

    lin = model.pfn.layers[0].linear
    wrapped = WrappedLinear(lin.in_features, lin.out_features, bias=False)
    wrapped.load_state_dict(lin.state_dict())
    model.pfn.layers[0].linear = wrapped
    assert not model.pfn.supports_points()


def test_scatter_matches_a_brute_force_canvas_and_passes_gradients():
    torch.manual_seed(0)
    coords = torch.tensor([[0, 0, 1, 2], [0, 0, 3, 0], [1, 0, 1, 2], [1, 0, 0, 3]], dtype=torch.int32)
    feats = torch.randn(4, 3, requires_grad=True)
    bev = scatter_to_bev(feats, coords, batch_size=2, ny=4, nx=5)
    ref = torch.zeros(2, 3, 4, 5)
    for f, (b, _, y, x) in zip(feats.detach(), coords.tolist()):
        ref[b, :, y, x] = f
    assert torch.equal(bev.detach(), ref)
    (bev * torch.arange(bev.numel()).view_as(bev)).sum().backward()
    assert torch.equal(
        feats.grad,
        torch.stack(
            [torch.arange(120).view(2, 3, 4, 5)[b, :, y, x] for b, _, y, x in coords.tolist()]
        ).float(),
    )


@pytest.mark.parametrize("channels", [[16], [8, 16]])
def test_ort_point_wise_pfn_matches_the_padded_graph(channels, tmp_path):
    model = model_with_stats(channels)
    frame = tiny_frame(2)
    report = export(copy.deepcopy(model), tmp_path, parity_frame=frame)
    det = OrtCenterPointDetector(tmp_path, threads=1)
    one_layer = len(channels) == 1
    # a two-layer PFN feeds the max back into the points: no point-wise cut, the padded graph runs
    assert (pointwise_pfn_graph(tmp_path / "pfn.onnx") is not None) == one_layer
    assert (det.pfn_points is not None) == one_layer == report["pfn_point_wise"]
    vox = det.preprocess(frame)
    outs = det.outputs(frame)
    ref = TorchCenterPointDetector(model).outputs(frame)
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a.heatmap, b.heatmap, atol=1e-4, rtol=1e-4)
    if one_layer:
        feats = np.ascontiguousarray(det.model.pillar_inputs(vox).numpy())
        (padded,) = det.pfn.run(None, {"pillar_points": feats})
        got = det._pfn_pillars(det.model.pillar_point_inputs(vox).numpy(), vox)
        np.testing.assert_allclose(got.numpy(), padded, atol=1e-5, rtol=1e-5)


def test_preprocess_drops_bad_points_scales_intensity_and_leaves_the_input_alone():
    model = model_with_stats([16])
    pts = crowded_points()
    bad = torch.tensor(
        [[np.nan, 0, 0, 1, 0], [1, 1, 0, np.inf, 0], [1, 1, 0, 1, np.nan], [1, 1, -np.inf, 1, 0]]
    )
    edge = torch.tensor([[12.8, 0, 0, 1, 0], [0, 1e30, 0, 1, 0], [-12.8001, 0, 0, 1, 0]])
    dirty = torch.cat([bad, edge, pts]).float()
    before = dirty.clone()
    vox, ref = model.preprocess([dirty]), model.preprocess([pts])
    assert torch.equal(dirty.nan_to_num(), before.nan_to_num())  # the caller's points are not scaled
    assert torch.equal(vox.points, ref.points) and torch.equal(vox.coords, ref.coords)
    assert torch.equal(vox.num_points, ref.num_points) and torch.equal(vox.voxels, ref.voxels)
    assert 0 < float(vox.points[:, 3].max()) <= 1.0  # intensity 0..255 -> 0..1


def test_reused_canvas_equals_a_fresh_scatter_sweep_after_sweep():
    canvas, rng = BevCanvas(6, 7), np.random.default_rng(0)
    for batch, n in ((1, 20), (1, 5), (2, 12), (2, 0), (1, 30)):
        cells = rng.choice(6 * 7 * batch, n, replace=False)
        b, yx = cells // 42, cells % 42
        coords = torch.from_numpy(np.stack([b, 0 * b, yx // 7, yx % 7], 1).astype(np.int32))
        feats = torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))
        got = canvas.scatter(feats, coords, batch)
        assert torch.equal(got, scatter_to_bev(feats, coords, batch, 6, 7))  # old cells cleared
