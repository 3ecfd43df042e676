"""Camera BEV detector: Hungarian matching, loss, a few training steps, runtime temporal state,
ONNX export parity (torch vs ONNX Runtime)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_models import TINY_BEV

from qd_perception.config import from_dict
from qd_perception.data.types import Detections
from qd_perception.models.bevformer import BEVFormer, BEVFormerConfig, preset
from qd_perception.models.bevformer.coder import decode_codes, encode_boxes
from qd_perception.models.bevformer.config import LossConfig
from qd_perception.models.bevformer.losses import Targets, hungarian_match, set_loss
from qd_perception.runtime.bev import OrtBEVDetector, TorchBEVDetector
from qd_perception.train.bev import TrainConfig, train_step
from qd_perception.train.bev_data import NO_AUGMENT, BEVDataset, TemporalSamples, collate_temporal
from qd_perception.train.export_bev import example_frames, export_onnx, parity


def tiny_config(**kw) -> BEVFormerConfig:
    base = {**TINY_BEV, "name": "test"}
    base.update(kw)
    return from_dict(BEVFormerConfig, base)


def test_hungarian_matching_toy_case():
    cfg = LossConfig()
    targets = Targets(
        torch.tensor([[10.0, 0, 0, 4, 2, 1.5, 0, 0, 0], [-20.0, 5, 0, 0.7, 0.7, 1.8, 0, 0, 0]]),
        torch.tensor([0, 8]),
    )
    t = encode_boxes(targets.boxes)
    codes = torch.zeros(3, 10)
    codes[0] = t[1] + 0.1  # query 0 sits on target 1
    codes[1, :2] = torch.tensor([50.0, 50.0])  # query 1 is far from both
    codes[2] = t[0] - 0.1  # query 2 sits on target 0
    logits = torch.full((3, 10), -5.0)
    logits[0, 8] = logits[2, 0] = 3.0
    qi, ti = hungarian_match(logits, codes, targets, cfg)
    assert dict(zip(qi.tolist(), ti.tolist())) == {0: 1, 2: 0}
    # swapping the class evidence alone must not override a 30 m geometric mismatch
    logits2 = logits.clone()
    logits2[0, 8], logits2[0, 0] = -5.0, 3.0
    qi, ti = hungarian_match(logits2, codes, targets, cfg)
    assert dict(zip(qi.tolist(), ti.tolist())) == {0: 1, 2: 0}
    # the matched loss is much smaller for the right assignment than for a shuffled prediction
    good = set_loss(logits[None, None], codes[None, None], [targets], cfg).total
    bad = set_loss(logits[None, None], codes[[1, 0, 2]][None, None] * 0 + 30.0, [targets], cfg).total
    assert float(good) < float(bad)
    # no ground truth: only the negative focal term
    empty = Targets(torch.zeros(0, 9), torch.zeros(0, dtype=torch.long))
    assert hungarian_match(logits, codes, empty, cfg)[0].size == 0
    assert float(set_loss(logits[None, None], codes[None, None], [empty], cfg).total) > 0


def test_box_code_round_trip():
    boxes = np.array(
        [[1.0, -2.0, 0.5, 4.2, 1.9, 1.6, 2.9, 1.0, -0.5], [30, 10, -1, 0.6, 0.6, 1.7, -1.2, 0, 0]]
    )
    back = decode_codes(encode_boxes(torch.tensor(boxes)).numpy())
    assert np.allclose(back, boxes, atol=1e-6)


def test_forward_exposes_stages_and_typed_outputs():
    cfg = tiny_config()
    m = BEVFormer(cfg)
    for stage in ("backbone", "neck", "encoder", "decoder"):
        assert isinstance(getattr(m, stage), torch.nn.Module)
    layer_types = {type(x) for x in m.modules() if not list(x.children())} - {torch.nn.ModuleList}
    allowed = {torch.nn.Conv2d, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.ReLU,
               torch.nn.MaxPool2d, torch.nn.Identity, torch.nn.Embedding}  # fmt: skip
    assert layer_types <= allowed, layer_types - allowed
    f = example_frames(cfg, 1)[0]
    x = TorchBEVDetector(m).prepare(f)
    out = m(*(torch.from_numpy(getattr(x, k)) for k in ("images", "intrinsics", "cam2ego")))
    assert out.cls_logits.shape == (2, 1, 20, 10) and out.box_codes.shape == (2, 1, 20, 10)
    assert out.bev.shape == (1, 256, 32)
    assert out.bev_mask.shape == (6, 1, 256, 4)
    assert [tuple(t.shape) for t in out.img_feats] == [(1, 6, 32, 4, 7), (1, 6, 32, 2, 4)]
    # the published tiny preset: ~33.5 M parameters (BEVFormer-Tiny FP32 is ~127 MB)
    n = sum(p.numel() for p in BEVFormer(preset("tiny")).parameters())
    assert 30e6 < n < 37e6


def _frames_with_gt(cfg, n=2):
    frames = example_frames(cfg, n, seed=1)
    gt = Detections(
        np.array([[12.0, 3.0, 0.8, 4.5, 1.9, 1.6, 0.3, 2.0, 0.0],
                  [-15.0, -6.0, 0.9, 0.7, 0.7, 1.8, 1.2, 0.0, 0.0],
                  [5.0, -20.0, 1.0, 10.5, 2.9, 3.4, -1.5, 0.0, 0.0]]),
        np.array([0, 8, 3]), np.ones(3, np.float32),
    )  # fmt: skip
    return [dataclasses.replace(f, gt=gt) for f in frames]


def test_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = BEVFormer(cfg)
    ds = BEVDataset(_frames_with_gt(cfg, 2), cfg)
    assert len(ds.history(1, 2)) == 1 and ds.history(0, 2) == []
    tcfg = TrainConfig(queue_length=2, lr=2e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
    tb = collate_temporal([TemporalSamples(ds, 2, NO_AUGMENT)[1]])
    assert len(tb.history) == 1 and float(tb.valid[0][0]) == 1.0
    losses = [float(train_step(model, opt, tb, tcfg).total) for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_runtime_temporal_state_resets_on_scene_change_and_clock_jump():
    cfg = tiny_config()
    det = TorchBEVDetector(BEVFormer(cfg))
    f0, f1, f2 = example_frames(cfg, 3)
    assert det.prepare(f0).prev_valid[0] == 0
    det.detect(f0)
    x1 = det.prepare(f1)
    assert x1.prev_valid[0] == 1
    # ego moved 2.5 m forward and turned 0.05 rad between the frames
    assert np.isclose(x1.prev_from_cur[0, 0, 3], 2.5, atol=1e-4)
    assert np.isclose(np.arctan2(x1.prev_from_cur[0, 1, 0], x1.prev_from_cur[0, 0, 0]), 0.05, atol=1e-5)
    det.detect(f1)
    assert det.prepare(dataclasses.replace(f2, scene_token="other")).prev_valid[0] == 0
    det.detect(f1)
    assert det.prepare(dataclasses.replace(f2, timestamp_us=f1.timestamp_us - 100_000)).prev_valid[0] == 0
    det.detect(f1)
    gap = f1.timestamp_us + int(1e6 * (cfg.max_time_gap_s + 0.5))
    assert det.prepare(dataclasses.replace(f2, timestamp_us=gap)).prev_valid[0] == 0
    assert det.resets == 3
    det.detect(f1)
    det.reset()
    assert det.prepare(f2).prev_valid[0] == 0
    # a missing camera is a clear error, not a crash deep in the network
    bad = dataclasses.replace(f2, cameras=f2.cameras[:5])
    with pytest.raises(ValueError, match="missing camera"):
        det.detect(bad)


TWO_STAGE = {"enabled": True, "two_stage": True, "hidden": 16}


@pytest.mark.parametrize("dense_head", [{}, TWO_STAGE], ids=["learned_queries", "two_stage"])
def test_export_parity_torch_vs_onnxruntime(tmp_path, dense_head):
    torch.manual_seed(0)
    cfg = tiny_config(score_threshold=0.0, dense_head=dense_head)
    model = BEVFormer(cfg).eval()
    path = export_onnx(model, tmp_path / "bevformer.onnx")
    diffs = parity(model, path, n_frames=2)
    assert max(diffs.values()) < 1e-4, diffs
    # end to end through both detectors, temporal state included
    tdet, odet = TorchBEVDetector(model), OrtBEVDetector(path)
    assert odet.cfg == cfg
    for f in example_frames(cfg, 2):
        a, b = tdet.detect(f), odet.detect(f)
        assert len(a) == len(b) > 0
        assert np.allclose(a.scores, b.scores, atol=1e-5)
        assert np.allclose(a.boxes, b.boxes, atol=1e-3)


def test_checkpoint_round_trip_and_errors(tmp_path):
    from qd_perception.config import ConfigError
    from qd_perception.models.bevformer.checkpoint import load_checkpoint, save_checkpoint
    from qd_perception.train.bev import lr_factor, plot_loss_curve

    cfg = tiny_config()
    m = BEVFormer(cfg)
    p = save_checkpoint(tmp_path / "m.pt", m, state={"epoch": 1})
    m2 = load_checkpoint(p)
    assert m2.cfg == cfg and not m2.training
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save({"arch": "centerpoint"}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a bevformer checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # warm-up, cosine, and the wall-clock budget pulling the decay forward
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(1e-3)
    assert lr_factor(10, 100, 10, time_fraction=1.0) == pytest.approx(1e-3)
    png = tmp_path / "loss.png"
    plot_loss_curve([[i, 10.0 / (i + 1), 1.0, 2.0] for i in range(60)], png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumed by a version that logs one more term: older rows are shorter
    rows = [[i, 5.0, 1.0, 2.0, 0.5, 0.5] for i in range(40)] + [
        [i, 5.0, 1.0, 2.0, 0.5, 0.5, 0.3] for i in range(40, 80)
    ]
    png.unlink()
    plot_loss_curve(rows, png, "resumed")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- dense head, two-stage decoder, training data pipeline ---------------------------------------


def test_dense_targets_put_the_peak_and_code_at_the_box_centre():
    from qd_perception.models.bevformer.dense_head import cell_codes_to_metric, dense_targets

    cfg = tiny_config(dense_head=TWO_STAGE)  # 16 x 16 cells of 6.4 m over +-51.2 m
    boxes = np.array([[10.0, -3.0, 0.9, 4.5, 1.9, 1.6, 0.4, 2.0, -1.0]], np.float32)
    hm, codes, mask = dense_targets(boxes, np.array([0]), cfg)
    ix, iy = int((10.0 + 51.2) // 6.4), int((-3.0 + 51.2) // 6.4)
    cell = iy * cfg.bev_w + ix
    assert hm[0, iy, ix] == 1.0 and hm[0].max() == 1.0 and hm[1:].max() == 0.0
    assert mask.sum() == 1 and mask[cell]
    metric = cell_codes_to_metric(torch.from_numpy(codes[cell]), torch.tensor(cell), cfg).numpy()
    assert np.allclose(metric, encode_boxes(torch.from_numpy(boxes))[0].numpy(), atol=1e-5)


def test_two_stage_queries_start_at_the_heatmap_peaks():
    """With zero-initialised residual branches, the decoder's output at a peak is the dense
    head's own class logits and box: the two-stage decoder starts as the dense detector."""
    from qd_perception.models.bevformer.dense_head import cell_codes_to_metric

    torch.manual_seed(0)
    cfg = tiny_config(dense_head=TWO_STAGE)
    model = BEVFormer(cfg).eval()
    f = example_frames(cfg, 1)[0]
    det = TorchBEVDetector(model)
    x = det.prepare(f)
    with torch.no_grad():
        out = model(
            torch.from_numpy(x.images).float(), torch.from_numpy(x.intrinsics), torch.from_numpy(x.cam2ego)
        )
    heat = out.dense_heatmap[0].flatten(1)  # (K, H*W)
    k, cell = divmod(int(heat.flatten().argmax()), heat.shape[1])
    # the best peak is one of the queries; its last-layer logits equal the heatmap's at that cell
    q = int(out.cls_logits[-1, 0, :, k].argmax())
    assert torch.allclose(out.cls_logits[-1, 0, q], heat[:, cell], atol=1e-5)
    metric = cell_codes_to_metric(out.dense_codes[0].flatten(1)[:, cell], torch.tensor(cell), cfg)
    assert torch.allclose(out.box_codes[-1, 0, q, 3:], metric[3:], atol=1e-5)
    assert torch.allclose(out.box_codes[-1, 0, q, :2], metric[:2], atol=1e-3)


def test_dense_head_training_lowers_its_loss():
    torch.manual_seed(0)
    cfg = tiny_config(dense_head=TWO_STAGE)
    model = BEVFormer(cfg)
    ds = BEVDataset(_frames_with_gt(cfg, 2), cfg)
    tb = collate_temporal([TemporalSamples(ds, 2, NO_AUGMENT)[1]])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = [train_step(model, opt, tb, TrainConfig(lr=2e-3)) for _ in range(20)]
    assert losses[-1].dense_heatmap > 0 and np.isfinite([float(x.total) for x in losses]).all()
    assert np.mean([x.dense_heatmap for x in losses[-4:]]) < 0.6 * np.mean(
        [x.dense_heatmap for x in losses[:4]]
    )


def _project(cam2ego: np.ndarray, K: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.linalg.inv(cam2ego.astype(np.float64)) @ np.append(p, 1.0)
    uvw = K @ q[:3]
    return uvw[:2] / uvw[2]


def test_bev_augmentation_moves_boxes_and_cameras_together():
    """A box centre seen in the augmented ego frame projects to the same pixel as before (images
    untouched), yaw and velocity turn with the frame, and the ego motion between history frames
    stays a proper rigid motion."""
    from qd_perception.train.bev_data import AugmentConfig, augment_sample, bev_transform, ego_motion

    cfg = tiny_config()
    ds = BEVDataset(_frames_with_gt(cfg, 2), cfg)
    s0, s1 = ds[0], ds[1]
    rng = np.random.default_rng(3)
    for flip in (0.0, 1.0):
        T = bev_transform(rng, AugmentConfig(rotate_deg=30.0, flip_y=flip, brightness=0.0, contrast=0.0))
        a0, a1 = augment_sample(s0, T, None), augment_sample(s1, T, None)
        assert np.array_equal(a1.images, s1.images)
        for b, ab in zip(s1.gt_boxes, a1.gt_boxes):
            assert np.allclose(ab[3:6], b[3:6])
            heading = T[:3, :3] @ [np.cos(b[6]), np.sin(b[6]), 0.0]
            assert np.isclose(np.arctan2(heading[1], heading[0]), ab[6], atol=1e-5)
            assert np.allclose((T[:3, :3] @ [b[7], b[8], 0.0])[:2], ab[7:9], atol=1e-5)
            cam = 0 if b[0] > 0 else 3  # front or back camera
            uv = _project(s1.cam2ego[cam], s1.intrinsics[cam], b[:3])
            assert np.allclose(_project(a1.cam2ego[cam], a1.intrinsics[cam], ab[:3]), uv, atol=1e-2)
        m = ego_motion(a0, a1)
        assert np.isclose(np.linalg.det(m[:3, :3]), 1.0, atol=1e-5)
        # the same physical motion, expressed in the augmented frame
        assert np.allclose(m, T @ ego_motion(s0, s1) @ np.linalg.inv(T), atol=1e-4)


def test_image_cache_round_trip_and_temporal_batches(tmp_path):
    from qd_perception.train.bev_data import CachedBEVDataset

    cfg = tiny_config()
    frames = _frames_with_gt(cfg, 3)
    mem = BEVDataset(frames, cfg)
    cached = CachedBEVDataset.build(frames, cfg, tmp_path / "cache", progress=False)
    assert len(cached) == 3 and (tmp_path / "cache" / "meta.npz").is_file()
    for i in range(3):
        a, b = mem[i], cached[i]
        assert a.token == b.token and np.array_equal(a.images, b.images)
        assert np.allclose(a.cam2ego, b.cam2ego) and np.allclose(a.gt_boxes, b.gt_boxes)
        assert np.array_equal(a.gt_labels, b.gt_labels)
    # a second build finds the complete cache and reads it (no decoding)
    again = CachedBEVDataset.build([], cfg, tmp_path / "cache", progress=False)
    assert len(again) == 3
    # history padded per sample: sample 0 has none, sample 2 has two previous frames
    ts = TemporalSamples(cached, 3, NO_AUGMENT)
    tb = collate_temporal([ts[0], ts[2]])
    assert len(tb.history) == 2
    assert tb.valid[0].tolist() == [0.0, 1.0] and tb.valid[1].tolist() == [0.0, 1.0]
    assert torch.equal(tb.motion[0][0], torch.eye(4))
    # augmentation is drawn per (seed, epoch, index): reproducible, and different per epoch
    from qd_perception.train.bev_data import AugmentConfig

    aug = TemporalSamples(cached, 2, AugmentConfig(), seed=1)
    x1, x2 = aug[1][-1], aug[1][-1]
    assert np.array_equal(x1.cam2ego, x2.cam2ego)
    aug.epoch = 1
    assert not np.array_equal(aug[1][-1].cam2ego, x1.cam2ego)


def test_perspective_targets_land_on_the_projected_centre_with_its_depth():
    from qd_perception.geometry.rig import load_rig
    from qd_perception.models.bevformer.perspective_head import perspective_targets

    cfg = tiny_config()
    rig = load_rig()
    K = np.stack([rig.intrinsics(n, cfg.image_size) for n in cfg.camera_names])
    E = np.stack([rig.cam2ego(n) for n in cfg.camera_names])
    box = np.array([[20.0, 0.5, 0.8, 4.5, 1.9, 1.6, 0.0, 0.0, 0.0]])
    grid = (cfg.image_size[0] // 8, cfg.image_size[1] // 8)
    hm, codes, mask = perspective_targets(box, np.array([0]), K, E, cfg.image_size, grid, cfg.num_classes)
    front = cfg.camera_names.index("CAM_FRONT")
    assert mask[front].sum() == 1 and hm[front, 0].max() == 1.0
    pc = np.linalg.inv(E[front]) @ np.append(box[0, :3], 1.0)
    u, v = (K[front] @ pc[:3])[:2] / pc[2]
    c = int(np.flatnonzero(mask[front])[0])
    iv, iu = divmod(c, grid[1])
    assert np.allclose([(iu + codes[front, c, 0]) * 8, (iv + codes[front, c, 1]) * 8], [u, v], atol=1e-3)
    assert np.isclose(np.exp(codes[front, c, 2]), pc[2])
    back = cfg.camera_names.index("CAM_BACK")
    assert not mask[back].any()  # behind the rear camera


def test_perspective_supervision_trains_and_stays_out_of_inference():
    torch.manual_seed(0)
    cfg = tiny_config(dense_head=TWO_STAGE, perspective_head={"enabled": True, "hidden": 16})
    model = BEVFormer(cfg)
    ds = BEVDataset(_frames_with_gt(cfg, 2), cfg)
    tb = collate_temporal([TemporalSamples(ds, 2, NO_AUGMENT)[1]])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = [train_step(model, opt, tb, TrainConfig(lr=2e-3)) for _ in range(12)]
    assert losses[0].perspective > 0
    assert losses[-1].perspective < losses[0].perspective
    model.eval()
    b = tb.current
    with torch.no_grad():
        assert model(b.images, b.intrinsics, b.cam2ego).perspective is None


DN = {"enabled": True, "groups": 2}


def test_denoising_needs_the_two_stage_decoder_and_valid_noise():
    from qd_perception.config import ConfigError

    with pytest.raises(ConfigError, match="two-stage"):
        tiny_config(denoising=DN)
    with pytest.raises(ConfigError, match="groups"):
        tiny_config(dense_head=TWO_STAGE, denoising={"enabled": True, "groups": 0})
    with pytest.raises(ConfigError, match="label_noise"):
        tiny_config(dense_head=TWO_STAGE, denoising={"enabled": True, "label_noise": 1.5})


def _dn_batch(cfg):
    ds = BEVDataset(_frames_with_gt(cfg, 2), cfg)
    tb = collate_temporal([TemporalSamples(ds, 1, NO_AUGMENT)[0], TemporalSamples(ds, 1, NO_AUGMENT)[1]])
    # the second sample has one box fewer: a padding slot per group
    t1 = tb.current.targets[1]
    tb.current.targets[1] = Targets(t1.boxes[:2], t1.labels[:2])
    return tb.current


def test_denoising_queries_never_leak_into_the_matched_queries():
    """The matched queries' outputs are the same with and without the denoising queries beside
    them (they may not look at the answers), and the mask isolates groups and padding."""
    torch.manual_seed(0)
    cfg = tiny_config(dense_head=TWO_STAGE, denoising=DN)
    model = BEVFormer(cfg).train()
    b = _dn_batch(cfg)
    with torch.no_grad():
        plain = model(b.images, b.intrinsics, b.cam2ego)
        with_dn = model(b.images, b.intrinsics, b.cam2ego, dn_targets=b.targets)
    assert plain.dn is None and with_dn.dn is not None
    assert torch.allclose(plain.cls_logits, with_dn.cls_logits, atol=1e-5)
    assert torch.allclose(plain.box_codes, with_dn.box_codes, atol=1e-5)
    q = with_dn.dn.queries
    Q, M = cfg.num_queries, 3
    assert q.valid.shape == (2, 2 * M) and int(q.valid.sum()) == 2 * (3 + 2)
    assert with_dn.dn.cls_logits.shape == (cfg.decoder_layers, 2, 2 * M, cfg.num_classes)
    m = q.attn_mask
    assert m[:, :Q, Q:].all() and not m[:, :, :Q].any()  # matched see matched only; all see them
    assert not m[0, Q : Q + M, Q : Q + M].any() and m[0, Q : Q + M, Q + M :].all()  # groups apart
    assert m[1, :, Q + 2].all() and m[1, :, Q + M + 2].all()  # the padding slots: seen by none


def test_noise_free_denoising_queries_start_on_the_ground_truth():
    """Zero noise and zero-initialised residual branches: every layer's denoising output is the
    ground-truth box it was made from (the fixed assignment points where it should)."""
    torch.manual_seed(0)
    noise_free = {**DN, "centre_noise": 0.0, "centre_noise_min_m": 0.0, "size_noise": 0.0,
                  "yaw_noise": 0.0, "velocity_noise": 0.0, "label_noise": 0.0}  # fmt: skip
    cfg = tiny_config(dense_head=TWO_STAGE, denoising=noise_free)
    model = BEVFormer(cfg).train()
    b = _dn_batch(cfg)
    with torch.no_grad():
        out = model(b.images, b.intrinsics, b.cam2ego, dn_targets=b.targets).dn
    for s, t in enumerate(b.targets):
        v = out.queries.valid[s]
        want = encode_boxes(t.boxes[out.queries.gt_index[s, v]])
        assert torch.allclose(out.box_codes[-1, s, v], want, atol=1e-4)
        assert torch.equal(out.queries.proposals.labels[s, v], t.labels[out.queries.gt_index[s, v]])


def test_denoising_trains_and_stays_out_of_inference():
    torch.manual_seed(0)
    cfg = tiny_config(dense_head=TWO_STAGE, denoising=DN)
    model = BEVFormer(cfg)
    ds = BEVDataset(_frames_with_gt(cfg, 2), cfg)
    tb = collate_temporal([TemporalSamples(ds, 2, NO_AUGMENT)[1]])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = [train_step(model, opt, tb, TrainConfig(lr=2e-3)) for _ in range(12)]
    assert losses[0].denoising > 0 and np.isfinite([float(x.total) for x in losses]).all()
    assert np.mean([x.denoising for x in losses[-3:]]) < np.mean([x.denoising for x in losses[:3]])
    model.eval()
    b = tb.current
    with torch.no_grad():
        assert model(b.images, b.intrinsics, b.cam2ego, dn_targets=b.targets).dn is None


def test_weights_of_a_run_without_denoising_initialise_one_with_it():
    """Denoising adds no weights: ``--init`` accepts a checkpoint whose config lacks the switch
    (one written before it existed included), and still refuses another architecture."""
    from qd_perception.config import to_dict
    from qd_perception.train.bev import same_weights_layout

    plain = tiny_config(dense_head=TWO_STAGE)
    old = to_dict(plain)
    del old["denoising"]  # a checkpoint config written before the switch existed
    with_dn = tiny_config(dense_head=TWO_STAGE, denoising=DN)
    assert same_weights_layout(from_dict(BEVFormerConfig, old), with_dn)
    assert not same_weights_layout(plain, tiny_config(dense_head=TWO_STAGE, num_queries=7, denoising=DN))


def test_uint8_resize_matches_the_float_reference_within_one_grey_level():
    """The fast uint8 channels-last resize (runtime and training cache alike) stays within 1 grey
    level of antialiased bilinear computed in float32, so weights trained on either serve both."""
    import torch.nn.functional as F

    from qd_perception.models.bevformer.inputs import resize_image

    img = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    img[:, 40:60] = 255  # hard edges: where rounding differences would show
    got = resize_image(img, (32, 56))
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = F.interpolate(t, size=(32, 56), mode="bilinear", align_corners=False, antialias=True)
    ref = ref[0].round().clamp(0, 255).to(torch.uint8).numpy()
    assert got.shape == (3, 32, 56) and got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(resize_image(img, (90, 160)), img.transpose(2, 0, 1))  # same size: as is
