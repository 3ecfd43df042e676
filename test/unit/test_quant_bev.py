"""QD-BEV on a tiny BEVFormer: stage table, what is quantized and what stays float, presets,
progressive vs standard schedule, a resumable QAT run with VGD, the deployable ORT artefact (torch
fake-quant vs ONNX Runtime parity, integer kernels), and ``quantize bev`` end to end."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml
from tiny_models import TINY_BEV
from torch import nn

from qd_perception.cli import main
from qd_perception.config import ConfigError, from_dict
from qd_perception.models.bevformer import BEVFormer, BEVFormerConfig
from qd_perception.models.bevformer.checkpoint import save_checkpoint
from qd_perception.quant.export import onnx_op_counts, ort_optimized_op_counts
from qd_perception.quant.model import quant_modules
from qd_perception.quant.nn.modules import QuantAct, QuantModule
from qd_perception.quant.tensor_quant import affine_params, fake_quant_affine
from qd_perception.runtime.bev import OrtBEVDetector, load_bev_detector
from qd_perception.sim.generate import GenerateConfig, generate
from qd_perception.train.bev_data import BEVDataset
from qd_perception.train.export_bev import example_frames
from qd_perception.train.quantize_bev import (
    BEVQATConfig,
    calibrate_bev,
    method_config,
    quantize_bevformer,
    run_qat,
    set_stages,
    stage_layer_counts,
    stage_table,
    write_bev_artefact,
)

TINY = {**TINY_BEV, "name": "qtest", "score_threshold": 0.0}


@pytest.fixture
def fp_model() -> BEVFormer:
    torch.manual_seed(0)
    return BEVFormer(from_dict(BEVFormerConfig, TINY)).eval()


@pytest.fixture
def frames_dataset(fp_model):
    return BEVDataset(example_frames(fp_model.cfg, 3), fp_model.cfg)


def test_stage_table_covers_every_top_level_module(fp_model):
    table = stage_table(fp_model)
    assert table == {"backbone": "backbone", "neck": "neck", "encoder": "encoder", "decoder": "decoder"}
    fp_model.aux_depth_head = nn.Linear(4, 1)  # a head the model may grow: quantized with the decoder
    assert stage_table(fp_model)["aux_depth_head"] == "decoder"
    q = quantize_bevformer(fp_model, "w4a6")
    assert q.aux_depth_head.quant_stage == "decoder"


def test_every_conv_and_linear_quantized_with_the_float_parts_as_documented(fp_model):
    n_float = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in fp_model.modules()) - 1  # reference points
    q = quantize_bevformer(fp_model, "w4a6")
    assert sum(isinstance(m, QuantModule) for m in q.modules()) == n_float
    assert all(n > 0 for n in stage_layer_counts(q).values())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())  # folded into the convs
    assert any(isinstance(m, nn.BatchNorm2d) for m in fp_model.modules())  # original untouched
    # Linear -> ReLU inside a Sequential: the output quantizer moves after the ReLU (QuantAct)
    relu_q = set()
    for n, seq in q.named_modules():
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            pairs = itertools.pairwise(names)
            relu_q |= {f"{n}.{a}" for a, b in pairs if isinstance(seq._modules[b], QuantAct)}
    assert relu_q
    for name, m in quant_modules(q):
        if not isinstance(m, QuantModule):
            continue
        assert m.weight_quantizer.bits == 4 and m.weight_quantizer.axis == 0 and m.weight_quantizer.symmetric
        assert m.input_quantizer.bits == 6
        float_out = name.endswith(("sampling_offsets", "attention_weights"))
        last_of_branch = name.startswith(("decoder.cls_branches", "decoder.reg_branches")) and name.endswith(
            str(len(q.decoder.cls_branches[0]) - 1 if "cls" in name else len(q.decoder.reg_branches[0]) - 1)
        )
        assert (m.output_quantizer is None) == (float_out or last_of_branch or name in relu_q), name
    assert type(q.decoder.reference_points) is nn.Linear  # a constant of the graph: float
    for name, m in q.named_modules():  # LayerNorm and embeddings are never wrapped
        if isinstance(m, (nn.LayerNorm, nn.Embedding)):
            assert not hasattr(m, "quantizers"), name


@pytest.mark.parametrize(("bits", "w", "a"), [("w4a6", 4, 6), ("w8a8", 7, 8), ("w4a4", 4, 4)])
def test_presets(fp_model, bits, w, a):
    q = quantize_bevformer(fp_model, bits)
    m = next(m for _, m in quant_modules(q) if isinstance(m, QuantModule))
    assert (m.weight_quantizer.bits, m.input_quantizer.bits) == (w, a)  # ORT: 8-bit weights stored 7-bit
    with pytest.raises(ValueError):
        quantize_bevformer(fp_model, "w2a2")


def test_progressive_enables_one_more_stage_per_phase_and_standard_all_at_once(fp_model, frames_dataset):
    q = quantize_bevformer(fp_model, "w4a6")
    calibrate_bev(q, frames_dataset, [0, 1])
    prog = BEVQATConfig(method="progressive", epochs_per_stage=2)
    assert prog.total_epochs == 8
    assert prog.stages_at(0) == {"backbone": True, "neck": False, "encoder": False, "decoder": False}
    assert prog.stages_at(3) == {"backbone": True, "neck": True, "encoder": False, "decoder": False}
    assert all(prog.stages_at(7).values())
    assert all(BEVQATConfig(method="qat").stages_at(0).values())
    set_stages(q, prog.stages_at(2))
    modes = {m.quant_stage: {qq.mode for qq in m.quantizers()} for _, m in quant_modules(q)}
    assert modes == {
        "backbone": {"quantize"},
        "neck": {"quantize"},
        "encoder": {"disabled"},
        "decoder": {"disabled"},
    }
    assert method_config("qd_bev").distill.kind == "vgd"
    assert method_config("progressive").distill.kind == "none"
    assert not method_config("qd_bev", distill_start_epoch=2).distill_at(1)


def test_qat_with_vgd_trains_resumes_and_matches_the_ort_artefact(fp_model, frames_dataset, tmp_path):
    cfg = method_config("qd_bev", "w4a6", epochs=2, max_samples=2, calib_samples=2, lr=1e-3)
    before = {k: v.clone() for k, v in fp_model.state_dict().items()}
    _, state = run_qat(fp_model, frames_dataset, cfg, tmp_path, max_steps=3, progress=False)
    assert state.step == 3 and (state.epoch, state.position) == (1, 1)
    qmodel, state = run_qat(fp_model, frames_dataset, cfg, tmp_path, progress=False)  # resumes
    assert [row[0] for row in state.history] == [0, 1, 2, 3]
    assert all(row[4] == row[4] and row[4] >= 0 for row in state.history)  # VGD computed, not nan
    assert all(torch.equal(before[k], v) for k, v in fp_model.state_dict().items())  # teacher frozen
    assert (tmp_path / "qat_curves.png").stat().st_size > 0
    with pytest.raises(Exception, match="another config"):
        run_qat(fp_model, frames_dataset, method_config("qat", "w4a6", epochs=2), tmp_path, progress=False)

    info = write_bev_artefact(qmodel, fp_model, tmp_path, cfg, "weights/bevformer_nano.pt")
    saved = yaml.safe_load((tmp_path / "quant.yaml").read_text())
    assert saved["bits"] == "w4a6" and saved["method"] == "qd_bev"
    assert saved["fp32_model"] == "weights/bevformer_nano.pt"
    assert saved["packed_mib"] < saved["fp32_mib"] / 3  # tiny model: float LayerNorm / embeddings weigh in
    # integer kernels with the exact W4A6 numerics: parity down to float rounding
    par = info["parity_max_abs_diff"]
    assert max(par.values()) < 1e-3, par
    ops = ort_optimized_op_counts(tmp_path / "bevformer.onnx")
    assert ops["QLinearConv"] == stage_layer_counts(qmodel)["backbone"] + stage_layer_counts(qmodel)["neck"]
    assert ops["QGemm"] > 0
    det = load_bev_detector(tmp_path)  # the artefact directory, as detector.model_path
    assert isinstance(det, OrtBEVDetector)
    assert len(det.detect(example_frames(fp_model.cfg, 1)[0])) > 0  # score threshold 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not found"):
        OrtBEVDetector(tmp_path / "empty")


def test_shipped_switches_dense_head_and_perspective_head_quantize_and_deploy(tmp_path):
    """The shipped preset's switches: the dense heatmap head and two-stage queries are deployed
    (quantized with the decoder stage), the training-only perspective head stays float (eval-mode
    calibration never reaches it)."""
    torch.manual_seed(0)
    cfg = {**TINY, "dense_head": {"enabled": True, "two_stage": True, "hidden": 16},
           "perspective_head": {"enabled": True, "hidden": 16}}  # fmt: skip
    fp = BEVFormer(from_dict(BEVFormerConfig, cfg)).eval()
    q = quantize_bevformer(fp, "w4a6")
    persp = [n for n, _ in q.named_modules() if n.startswith("perspective_head") and n.endswith("quantizer")]
    assert not persp
    stages = {getattr(m, "quant_stage", None) for n, m in q.named_modules() if n.startswith("dense_head.")}
    assert stages == {None, "decoder"}
    calibrate_bev(q, BEVDataset(example_frames(fp.cfg, 2), fp.cfg), [0, 1])
    info = write_bev_artefact(q, fp, tmp_path, BEVQATConfig(method="ptq", bits="w4a6"), "fp.pt")
    assert max(info["parity_max_abs_diff"].values()) < 1e-3, info["parity_max_abs_diff"]
    assert info["parity_detections"]["matched"] == 1.0, info["parity_detections"]


def test_tensorrt_flavour_has_qdq_on_inputs_and_weights_only(fp_model, frames_dataset, tmp_path):
    q = quantize_bevformer(fp_model, "w8a8", target="trt")
    calibrate_bev(q, frames_dataset, [0])
    cfg = BEVQATConfig(method="ptq", bits="w8a8", target="trt")
    info = write_bev_artefact(q, fp_model, tmp_path, cfg, tmp_path / "elsewhere.pt")
    assert "parity_max_abs_diff" not in info  # TensorRT is not installed here: no runtime to compare
    assert info["fp32_model"] == str((tmp_path / "elsewhere.pt").resolve())  # outside the package
    m = next(m for _, m in quant_modules(q) if isinstance(m, QuantModule))
    assert m.weight_quantizer.bits == 8 and m.input_quantizer.symmetric
    ops = onnx_op_counts(tmp_path / "bevformer.onnx")
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] > 0


@pytest.mark.parametrize("bits", [4, 6])
def test_output_clamp_after_qdq_gives_the_same_values(bits):
    x = torch.linspace(-3.0, 5.0, 401, requires_grad=True)
    lo, hi = torch.tensor(-1.0), torch.tensor(2.5)
    a = fake_quant_affine(x, lo, hi, bits)
    (ga,) = torch.autograd.grad(a.sum(), x)
    b = fake_quant_affine(x, lo, hi, bits, clamp_after=True)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert torch.equal(a, b)
    assert len(torch.unique(a)) <= 2**bits
    # gradients agree except within half a step outside the grid (those inputs round onto it)
    step, zp = affine_params(lo, hi, bits)
    g_lo, g_hi = -zp * step, (2**bits - 1 - zp) * step
    near_edge = ((x < g_lo) & (x > g_lo - step / 2)) | ((x > g_hi) & (x < g_hi + step / 2))
    assert near_edge.any()
    assert torch.equal(ga[~near_edge], gb[~near_edge])


def test_quantize_bev_cli_ptq_and_qat_with_val_curve(fp_model, tmp_path, capsys):
    data = generate(
        GenerateConfig(scenes=2, samples=2, seed=3, resolution=(64, 112), val_fraction=0.5, workers=1),
        tmp_path / "ds", show_progress=False,
    )  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "fp.pt", fp_model)
    common = ["quantize", "bev", "--model", str(ckpt), "--data", str(data), "--calib-samples", "2"]
    assert main([*common, "--method", "ptq", "--bits", "w8a8", "--out", str(tmp_path / "ptq")]) == 0
    q = yaml.safe_load((tmp_path / "ptq" / "quant.yaml").read_text())
    assert (q["method"], q["bits"], q["steps"]) == ("ptq", "w8a8", 0)
    out = tmp_path / "qat"
    args = [*common, "--method", "qat", "--epochs", "1", "--max-samples", "1", "--out", str(out)]
    assert main([*args, "--val-data", str(data)]) == 0
    q = yaml.safe_load((out / "quant.yaml").read_text())
    assert q["steps"] == 1 and len(q["val"]) == 1 and 0.0 <= q["val"][0]["nds"] <= 1.0
    assert (out / "qat_curves.png").is_file() and (out / "bevformer.onnx").is_file()
    assert main([*common, "--method", "ptq", "--distill", "vgd", "--out", str(tmp_path / "x")]) == 2
    assert "ptq trains nothing" in capsys.readouterr().err
