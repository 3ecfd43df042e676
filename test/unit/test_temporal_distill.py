"""TempDistiller on the tiny camera BEVFormer: config and its errors, the temporal-attention target
(which frames are queries, keys and values), the masking ratio, shapes of the per-frame features,
gradients reaching only the student and the generators, a few steps lowering the distillation
loss, the QD-BEV extra-loss hook, and ``train bev --distill temporal`` end to end (resume, then
``eval bev`` of the short-queue student)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from tiny_models import TINY_BEV

from qd_perception.cli import main
from qd_perception.config import ConfigError, from_dict
from qd_perception.distill.temporal import (
    TempDistiller,
    TemporalDistillConfig,
    TemporalDistillLoss,
    TemporalTrainee,
    last_frames,
    load_temporal_config,
    random_keep_mask,
    relation_loss,
    temporal_attention_target,
)
from qd_perception.models.bevformer import BEVFormer, BEVFormerConfig
from qd_perception.paths import config_dir
from qd_perception.train.bev_data import NO_AUGMENT, BEVDataset, TemporalSamples, collate_temporal
from qd_perception.train.export_bev import example_frames

TINY = {**TINY_BEV, "name": "tdtest", "score_threshold": 0.0}
TWO_STAGE = {**TINY, "dense_head": {"enabled": True, "two_stage": True, "hidden": 16}}


def _model(seed: int, spec: dict = TINY) -> BEVFormer:
    torch.manual_seed(seed)
    return BEVFormer(from_dict(BEVFormerConfig, spec))


@pytest.fixture
def teacher() -> BEVFormer:
    return _model(0)


@pytest.fixture
def batch(teacher):
    """A temporal batch of one sample with two history frames (three frames in all)."""
    ds = BEVDataset(example_frames(teacher.cfg, 3), teacher.cfg)
    return collate_temporal([TemporalSamples(ds, 3, NO_AUGMENT)[2]])


# ---- config -------------------------------------------------------------------------------------
def test_shipped_config_loads_with_the_papers_ratio_and_temperature():
    cfg = load_temporal_config(config_dir() / "distill" / "temporal.yaml")
    assert cfg.mask_ratio == 0.5 and cfg.temperature == 0.5
    assert cfg.active(4, 1) == {"bev": True, "pv": True, "relation": False, "decoder": False}
    assert cfg.active(2, 2) == {"bev": False, "pv": False, "relation": True, "decoder": True}
    assert cfg.active(1, 1)["relation"] is False  # one frame has no frame-to-frame relation


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"temperature": 0}, "temperature"),
        ({"bev_weight": -1}, "bev_weight"),
        ({"pv_kernel": 2}, "pv_kernel"),
        ({"masks": 0.5}, "unknown key"),
        ({"bev": False, "pv": False, "relation": False, "decoder": False}, "switched off"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, block, message):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"temporal": block}))
    with pytest.raises(ConfigError, match=message):
        load_temporal_config(p)


def test_two_stage_models_refuse_the_decoder_term():
    t, s = _model(0, TWO_STAGE), _model(1, TWO_STAGE)
    with pytest.raises(ConfigError, match="learned decoder queries"):
        TemporalTrainee(s, t, TemporalDistillConfig(), 2, 2)
    # without the decoder term the pair is fine
    TemporalTrainee(s, t, TemporalDistillConfig(decoder=False), 2, 2)


# ---- the target, the masks, the relation ---------------------------------------------------------
def test_attention_target_takes_all_teacher_frames_as_queries_and_values_and_the_first_as_keys():
    torch.manual_seed(0)
    B, T, N, C = 2, 4, 5, 8
    x = torch.randn(B, T, N, C)
    out = temporal_attention_target(x, 2)
    assert out.shape == (B, 2, N, C)
    expected = torch.empty_like(out)
    for b in range(B):
        for n in range(N):
            keys, queries, values = x[b, :2, n], x[b, :, n], x[b, :, n]
            w = torch.softmax(keys @ queries.T / math.sqrt(C), dim=-1)  # (T_s, T_t)
            expected[b, :, n] = w @ values
    torch.testing.assert_close(out, expected)
    # the output of key i depends on every teacher frame (values), not on frame i alone
    y = x.clone()
    y[:, 3] += 1.0
    assert not torch.allclose(temporal_attention_target(y, 2), out)


def test_attention_target_ignores_missing_frames():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 4, 8)
    valid = torch.tensor([[1.0, 1.0, 0.0]])
    y = x.clone()
    y[:, 2] = 100.0  # a padded frame's features are garbage
    torch.testing.assert_close(temporal_attention_target(x, 1, valid), temporal_attention_target(y, 1, valid))
    torch.testing.assert_close(temporal_attention_target(x, 1, valid), temporal_attention_target(x[:, :2], 1))


def test_mask_drops_the_configured_fraction_of_tokens():
    g = torch.Generator().manual_seed(0)
    keep = random_keep_mask((4, 100_000), 0.5, generator=g)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert abs(1.0 - keep.mean().item() - 0.5) < 0.01
    # through the distiller: about half of the student's BEV tokens reach the generator as zeros
    d = TempDistiller(TemporalDistillConfig(mask_ratio=0.5), 8, 2, 1)
    seen = {}
    d.bev_generator.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    d.regenerate_bev(torch.randn(2, 1, 4000, 8) + 5.0, torch.Generator().manual_seed(1))
    zero = (seen["x"] == 0).all(-1).float().mean().item()
    assert abs(zero - 0.5) < 0.03


def test_relation_loss_is_zero_for_equal_relations_and_positive_otherwise():
    torch.manual_seed(2)
    t = torch.randn(1, 3, 6, 8)
    assert relation_loss(t, 2.0 * t, 0.5).item() == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free
    assert relation_loss(t, torch.randn(1, 3, 6, 8), 0.5).item() > 1e-3


# ---- on the tiny model --------------------------------------------------------------------------
def test_frame_features_shapes_and_student_sees_the_newest_frames(teacher, batch):
    student = _model(1)
    tr = TemporalTrainee(student, teacher, TemporalDistillConfig(), 3, 1)
    t_feat = tr._teacher.features(batch)
    cfg = teacher.cfg
    assert t_feat.bev.shape == (1, 3, cfg.num_bev, cfg.embed_dims)
    assert t_feat.pv.shape[:4] == (1, 3, cfg.num_cams, cfg.embed_dims)
    assert t_feat.valid.tolist() == [[1.0, 1.0, 1.0]]
    short = last_frames(batch, 1)
    assert short.history == [] and short.current is batch.current
    two = last_frames(batch, 2)
    assert two.history == batch.history[-1:] and two.motion == batch.motion[-1:]


def test_gradients_reach_the_student_and_generators_only(teacher, batch):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _model(1)
    tr = TemporalTrainee(student, teacher, TemporalDistillConfig(), 3, 1)
    assert {n.split(".")[0] for n, _ in tr.named_parameters()} == {"student", "distiller"}
    out = tr(batch)
    out.total.backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for gen in (tr.distiller.bev_generator, tr.distiller.pv_generator):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert student.encoder.bev_embedding.weight.grad.abs().sum() > 0  # the BEV term reaches the encoder
    assert student.backbone.conv1.weight.grad.abs().sum() > 0  # the PV term reaches the backbone
    torch.optim.SGD(tr.parameters(), lr=0.1).step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_a_few_steps_lower_the_distillation_loss(teacher, batch):
    tr = TemporalTrainee(_model(1), teacher, TemporalDistillConfig(), 3, 1)
    opt = torch.optim.AdamW(tr.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        torch.manual_seed(7)  # the same masks every step: the loss change is the learning
        out = tr(batch)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.distill)
    assert losses[-1] < 0.9 * losses[0], losses


def test_full_frame_student_gets_relation_and_decoder_terms(teacher, batch):
    tr = TemporalTrainee(_model(1), teacher, TemporalDistillConfig(), 3, 3)
    out = tr(batch)
    assert out.distill_bev == out.distill_pv == 0.0
    assert out.distill_decoder > 0 and out.distill_relation >= 0
    assert math.isclose(out.distill, out.distill_relation + out.distill_decoder, rel_tol=1e-5)


def test_qd_bev_loop_takes_tempdistiller_as_extra_loss(teacher, tmp_path):
    from qd_perception.train.quantize_bev import method_config, run_qat

    ds = BEVDataset(example_frames(teacher.cfg, 3), teacher.cfg)
    student_fp = _model(1).eval()
    cfg = method_config("qat", "w4a6", epochs=1, queue_length=1, calib_samples=2, max_samples=2)
    extra = TemporalDistillLoss(teacher, student_fp.cfg, TemporalDistillConfig(), 3, 1)
    gen_before = [p.clone() for p in extra.parameters()]
    _, state = run_qat(student_fp, ds, cfg, tmp_path, max_steps=2, progress=False, extra_loss=extra)
    assert all(math.isfinite(row[4]) and row[4] > 0 for row in state.history)  # distill column
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, extra.parameters()))
    saved = torch.load(tmp_path / "qat_state.pt", weights_only=False)
    assert set(saved["extra_loss"]) == set(extra.state_dict())
    with pytest.raises(ConfigError, match="written with an extra loss term"):
        run_qat(student_fp, ds, cfg, tmp_path, progress=False)


# ---- CLI end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A tiny synthetic data set (one train scene of 3 keyframes), the model YAML, the common
    ``train bev`` arguments and a queue-3 teacher trained on it for one epoch."""
    from qd_perception.sim.generate import GenerateConfig, generate

    tmp = tmp_path_factory.mktemp("tempdistill_cli")
    data = generate(
        GenerateConfig(scenes=2, samples=3, seed=5, resolution=(64, 112), val_fraction=0.5, workers=1),
        tmp / "ds", show_progress=False,
    )  # fmt: skip
    model_yaml = tmp / "bevformer_tdtest.model.yaml"
    model_yaml.write_text(yaml.safe_dump({"arch": "bevformer", "model": TINY}))
    common = ["--config", str(model_yaml), "--data", str(data), "--warmup-steps", "1",
              "--cache-dir", str(tmp / "cache"), "--no-augment", "--threads", "1"]  # fmt: skip
    teacher = tmp / "teacher.pt"
    assert main(["train", "bev", *common, "--out", str(teacher), "--queue-length", "3", "--epochs", "1"]) == 0
    return data, common, teacher


def test_train_bev_distill_temporal_end_to_end(cli_setup, tmp_path):
    from qd_perception.models.bevformer.checkpoint import load_checkpoint, save_checkpoint
    from qd_perception.runtime.bev import load_bev_detector

    data, common, teacher = cli_setup
    common = ["train", "bev", *common]
    student = tmp_path / "student.pt"
    distill = [*common, "--out", str(student), "--queue-length", "1", "--distill", "temporal",
               "--teacher", str(teacher), "--init", str(teacher)]  # fmt: skip
    assert main([*distill, "--epochs", "1"]) == 0
    first = torch.load(student, weights_only=False)
    assert first["state"]["step"] == 3 and first["train_config"]["queue_length"] == 1
    assert first["distill"]["record"]["teacher_queue_length"] == 3
    assert all(math.isfinite(r[7]) and r[7] > 0 for r in first["state"]["history"])  # distill column
    assert main([*distill, "--epochs", "2"]) == 0  # resumes: generators and optimizer kept
    second = torch.load(student, weights_only=False)
    assert second["state"]["step"] == 6
    assert any(
        not torch.equal(first["distill"]["state_dict"][k], v)
        for k, v in second["distill"]["state_dict"].items()
    )
    # a resume with another distillation setup is refused, not silently mixed
    assert main([*distill[:-6], "--epochs", "3"]) == 2
    # --init needs the same model config
    other = save_checkpoint(tmp_path / "other.pt", _model(2, TWO_STAGE))
    assert main([*common, "--out", str(tmp_path / "x.pt"), "--init", str(other)]) == 2
    # the student is a plain BEVFormer checkpoint: the runtime loads it with the short queue
    # (a queue-1 model is fed no previous BEV; the queue-3 teacher is)
    frames = example_frames(load_checkpoint(student).cfg, 2)
    for path, fed in ((student, 0.0), (teacher, 1.0)):
        det = load_bev_detector(path)
        det.detect(frames[0])
        assert det.prepare(frames[1]).prev_valid.tolist() == [fed]
    # ... and so does its ONNX graph (the history use travels in the metadata)
    assert main(["export", "bev", "--model", str(student), "--out", str(tmp_path / "onnx")]) == 0
    assert load_bev_detector(tmp_path / "onnx").history is False
    out = tmp_path / "eval"
    argv = ["eval", "bev", "--model", str(student), "--data", str(data), "--out", str(out), "--pictures", "0"]
    assert main(argv) == 0
    assert json.loads((out / "latency.json").read_text())["frames"] == 3
    assert "nds" in json.loads((out / "metrics.json").read_text())


def test_train_bev_distill_temporal_under_torchrun(cli_setup, tmp_path):
    """Two gloo processes: student and generators are one DDP module, so the ranks hold the same
    student weights afterwards; rank 0's checkpoint carries the generators."""
    from test_train_distributed import BEV_WORKER, torchrun

    _, common, teacher = cli_setup
    out = tmp_path / "student.pt"
    torchrun(str(BEV_WORKER), "--ranks-out", str(tmp_path / "ranks"), *common, "--out", str(out),
             "--device", "cpu", "--queue-length", "1", "--distill", "temporal", "--teacher", str(teacher),
             "--init", str(teacher), "--epochs", "1")  # fmt: skip
    r0, r1 = (torch.load(tmp_path / "ranks" / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    stats = {k for k in r0 if k.endswith((".running_mean", ".running_var", ".num_batches_tracked"))}
    assert all(torch.equal(r0[k], r1[k]) for k in r0.keys() - stats), "the ranks diverged"
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["state"]["step"] == 2  # 3 samples on 2 ranks
    assert "bev_generator.net.0.weight" in ckpt["distill"]["state_dict"]


def test_quantize_bev_w4a6_short_queue_student_with_tempdistiller(cli_setup, tmp_path):
    """``quantize bev --temporal-teacher``: a W4A6 queue-1 student (float weights: the teacher's
    here) distilled from the FP32 queue-3 teacher; the artefact is written, the generators are in
    the QAT state, and a teacher with a shorter queue than the student is refused."""
    from qd_perception.runtime.bev import load_bev_detector

    data, _, teacher = cli_setup
    out = tmp_path / "q"
    argv = ["quantize", "bev", "--model", str(teacher), "--data", str(data), "--method", "qat",
            "--bits", "w4a6", "--epochs", "1", "--max-samples", "2", "--calib-samples", "2",
            "--queue-length", "1", "--temporal-teacher", str(teacher), "--out", str(out)]  # fmt: skip
    assert main([*argv, "--val-data", str(data)]) == 0  # validated as the runtime runs it: no history
    state = torch.load(out / "qat_state.pt", weights_only=False)
    assert "distiller.bev_generator.net.0.weight" in state["extra_loss"]
    assert all(math.isfinite(r[4]) and r[4] > 0 for r in state["state"]["history"])
    assert load_bev_detector(out).history is False  # the W4A6 artefact of a queue-1 student
    assert len(yaml.safe_load((out / "quant.yaml").read_text())["val"]) == 1
    long = [*argv[:-2], "--queue-length", "4", "--out", str(tmp_path / "q4")]
    assert main(long) == 2


def test_benchmark_table_and_figure_from_a_result(tmp_path):
    """The benchmark's table and PNG from a result as its real run writes it (a model without
    predictions has no mAVE and no bootstrap), so an hour of training does not end in a crash."""
    from benchmarks.temporal_distill import markdown, plot

    lat = {"p50": 10.0, "p95": 12.0}
    r = {
        "teacher_queue": 4, "student_queue": 1, "minutes": 1.0, "cpu": "x86_64, avx512_vnni yes",
        "train": {"student": {"steps": 10}, "distilled": {"steps": 8}},
        "eval": {"teacher": {"nds": 0.2, "map": 0.1, "mave": 0.8},
                 "student": {"nds": 0.1, "map": 0.05, "mave": 1.1}, "distilled": {"nds": 0.0, "map": 0.0}},
        "latency": {"runtime_ms": {"teacher": lat, "distilled": lat},
                    "queue_ms": {"teacher": lat, "distilled": lat}},
    }  # fmt: skip
    md = markdown(r)
    assert "| distilled | 1 | 8 | 0.0000 | 0.0000 | n/a | 10.0 | 10.0 |" in md
    r["bootstrap"] = {
        "std": {m: {"nds": 0.01, "map": 0.02} for m in ("teacher", "student", "distilled")},
        "diff_std": {"distilled-student": {"nds_std": 0.005, "map_std": 0.004}},
    }
    md = markdown(r)
    assert "| teacher | 4 | - | 0.2000 ± 0.0100 | 0.1000 ± 0.0200 | 0.800 |" in md
    assert "NDS distilled - student: -0.1000 ± 0.0050" in md
    plot(r, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
