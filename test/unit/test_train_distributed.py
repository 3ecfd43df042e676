"""Data-parallel training (qd_perception.train.distributed): the one-process shuffle is today's,
two gloo processes train exactly like one process on the combined batch, and checkpoints move
between world sizes (train lidar under torchrun, resumed alone, and the reverse; train bev under
torchrun, resumed alone)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ddp_tiny_centerpoint import CONFIG, train_tiny  # test/unit is on sys.path (pytest rootdir import)

from qd_perception.models.build import build_model, config_from_dict
from qd_perception.train.distributed import (
    Dist,
    Runtime,
    Stepper,
    accumulate,
    epoch_permutation,
    setup,
    shard_indices,
    steps_per_epoch,
    use_sync_bn,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "ddp_tiny_centerpoint.py"
BEV_WORKER = Path(__file__).resolve().parent / "ddp_tiny_bev.py"
QD_BEV_WORKER = Path(__file__).resolve().parent / "ddp_tiny_qd_bev.py"


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Two gloo processes on this checkout (torchrun picks a free port with --standalone)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


@pytest.mark.parametrize("n", [1, 7, 12])
def test_one_process_order_is_the_shuffled_dataloader_order(n):
    for seed, epoch in ((0, 0), (3, 5)):
        today = torch.utils.data.DataLoader(
            list(range(n)),
            batch_size=2,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        )
        assert shard_indices(n, seed, epoch) == [int(i) for b in today for i in b]


@pytest.mark.parametrize(("n", "world"), [(7, 2), (12, 3), (2, 4)])
def test_ranks_share_one_global_order(n, world):
    perm = epoch_permutation(n, 1, 2)
    shards = [shard_indices(n, 1, 2, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank takes the same number of steps"
    # step k of rank r is global position k * world + r: the ranks' batches of a step together
    # are the one-process batch of that step; the padding repeats the head of the order
    merged = [shards[r][k] for k in range(len(shards[0])) for r in range(world)]
    assert merged[:n] == perm and merged[n:] == (perm * world)[: len(merged) - n]


def test_steps_and_accumulation_groups():
    assert (
        steps_per_epoch(10, 2) == 5 and steps_per_epoch(10, 2, 2) == 3 and steps_per_epoch(10, 1, 2, 2) == 3
    )
    assert [len(g) for g in accumulate(range(5), 2)] == [2, 2, 1]


def test_single_process_setup_and_clear_errors(capsys):
    dist = setup("cpu", env={})
    assert dist == Dist() and not dist.parallel and dist.mean([1.5]) == [1.5] and dist.broadcast(3) == 3
    assert capsys.readouterr().out.strip() == "distributed: world_size=1 backend=none device=cpu"
    with pytest.raises(ValueError, match="RANK"):
        setup("cpu", env={"WORLD_SIZE": "2", "RANK": "2"}, verbose=False)
    with pytest.raises(ValueError, match="integer"):
        setup("cpu", env={"WORLD_SIZE": "two"}, verbose=False)
    with pytest.raises(ValueError, match="amp"):
        Runtime(amp="fp8")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs --device cuda"):
        Stepper(model, torch.optim.SGD(model.parameters(), lr=0.1), Dist(), amp="bf16")
    two_cpu = Dist(world_size=2, backend="gloo")
    assert not use_sync_bn("auto", two_cpu, 1) and not use_sync_bn("on", Dist(), 1)
    with pytest.raises(ValueError, match="CUDA"):
        use_sync_bn("on", two_cpu, 1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            setup("cuda", env={}, verbose=False)


def test_training_step_keeps_every_tensor_on_the_model_device():
    """The meta device stands in for a GPU: a tensor created without ``device=`` in the forward,
    the loss or the backward would be a CPU tensor and fail to mix with the meta ones."""
    from test_centerpoint_model import tiny_frame

    from qd_perception.models.centerpoint.loss import centerpoint_loss
    from qd_perception.train.lidar_data import LidarDataset, collate

    cfg = config_from_dict("centerpoint", CONFIG)
    model = build_model("centerpoint", cfg).to("meta").train()
    batch = collate([LidarDataset([tiny_frame(0)], cfg)[0]])
    meta = torch.device("meta")
    loss = centerpoint_loss(model(model.preprocess(batch.points).to(meta)), batch.targets_on(meta), cfg.loss)
    loss.total.backward()
    assert loss.total.device == meta and all(p.grad.device == meta for p in model.parameters())


def test_two_gloo_processes_equal_one_process_on_the_combined_batch(tmp_path):
    # 2 processes x batch 1 x 2 accumulated micro-batches == 1 process x batch 4, step by step
    torchrun(str(WORKER), "--out", str(tmp_path / "ddp"), "--batch-size", "1", "--grad-accum", "2")
    train_tiny(tmp_path / "one", batch_size=4, grad_accum=1)
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt")
    torch.manual_seed(0)
    init = build_model("centerpoint", config_from_dict("centerpoint", CONFIG)).state_dict()
    assert r0.keys() == one.keys() == init.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the ranks' parameters diverged"
    moved = max(float((one[k].float() - init[k].float()).abs().max()) for k in one)
    assert moved > 1e-2, "training did not move the weights"
    for k in one:
        torch.testing.assert_close(r0[k], one[k], rtol=1e-5, atol=1e-5, msg=k)


def test_checkpoints_move_between_world_sizes_and_qat_runs_under_torchrun(tmp_path):
    from qd_perception.cli import main
    from qd_perception.sim.generate import GenerateConfig, generate

    data = generate(
        GenerateConfig(scenes=2, samples=3, seed=4, resolution=(16, 32), val_fraction=0.5, workers=1),
        tmp_path / "ds",
        show_progress=False,
    )
    model = copy.deepcopy(CONFIG)
    model["nsweeps"] = 1
    cfg = tmp_path / "tiny.model.yaml"
    cfg.write_text(yaml.safe_dump({"arch": "centerpoint", "model": model}))
    out = tmp_path / "cp.pt"
    common = ["train", "lidar", "--config", str(cfg), "--data", str(data), "--out", str(out)]
    common += ["--epochs", "3", "--batch-size", "1", "--device", "cpu", "--threads", "1"]

    assert main([*common, "--stop-after", "1"]) == 0
    one = torch.load(out, weights_only=True)
    r = torchrun("-m", "qd_perception.cli", *common, "--stop-after", "2")
    starts = [ln for ln in r.stdout.splitlines() if ln.startswith("distributed:")]
    assert starts == ["distributed: world_size=2 backend=gloo device=cpu"]
    assert "resuming" in r.stdout
    two = torch.load(out, weights_only=True)
    assert main(common) == 0
    three = torch.load(out, weights_only=True)

    assert one.keys() == two.keys() == three.keys()
    assert [c["world_size"] for c in (one, two, three)] == [1, 2, 1]
    assert [c["epoch"] for c in (one, two, three)] == [1, 2, 3]
    shapes = [{k: v.shape for k, v in c["model"].items()} for c in (one, two, three)]
    assert shapes[0] == shapes[1] == shapes[2]
    samples = one["step"]  # one process, batch 1: one step per train sample
    assert samples >= 3 and len(one["history"]) == samples
    assert two["step"] == samples + steps_per_epoch(samples, 1, 2)
    assert three["step"] == two["step"] + samples == len(three["history"])
    # the one-cycle schedule ended where it ends, though one epoch ran on two processes
    assert three["scheduler"]["last_epoch"] == three["scheduler"]["total_steps"]
    assert not torch.equal(two["model"]["head.shared.0.weight"], three["model"]["head.shared.0.weight"])

    # QAT of that checkpoint on two processes: rank 0 alone writes the artefact
    qat = tmp_path / "qat"
    r = torchrun(
        "-m", "qd_perception.cli", "quantize", "lidar", "--method", "qat", "--model", str(out),
        "--data", str(data), "--qat-steps", "2", "--max-frames", "2", "--batch-size", "1",
        "--device", "cpu", "--out", str(qat),
    )  # fmt: skip
    assert r.stdout.count("distributed: world_size=2 backend=gloo device=cpu") == 1
    info = yaml.safe_load((qat / "quant.yaml").read_text())
    assert info["method"] == "qat" and info["qat"]["world_size"] == 2 and info["qat"]["steps"] == 2


@pytest.mark.parametrize(("n", "position", "world"), [(7, 0, 1), (7, 3, 2), (5, 1, 3), (2, 1, 4)])
def test_bev_epoch_order_deals_the_rest_of_the_one_process_order(n, position, world):
    import numpy as np

    from qd_perception.train.bev import epoch_order

    today = np.random.default_rng(5 + 2).permutation(n)[position:].tolist()
    shards = [epoch_order(n, 5, 2, position, Dist(rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank takes the same number of steps"
    merged = [shards[r][k] for k in range(len(shards[0])) for r in range(world)]
    assert merged[: len(today)] == today and set(merged[len(today) :]) <= set(today)
    # QD-BEV's epochs of --max-samples: the head of the same permutation
    head = np.random.default_rng(5 + 2).permutation(n)[:2][position:].tolist()
    assert epoch_order(n, 5, 2, position, Dist(), limit=2) == head


def test_train_bev_on_two_gloo_processes_and_resume_in_one(tmp_path):
    """Two gloo processes of ``train bev`` (batch 1 each) hold identical weights afterwards, and
    their checkpoint resumes in one process with gradient accumulation. Unlike CenterPoint, the
    result is not compared with one process on the combined batch: the DETR-style set loss is
    normalised by each process's own ground-truth count and matches queries per sample, so the
    mean of two half-batch losses is not the combined batch's loss unless both halves hold as
    many objects (they do not here), and AdamW's first steps move each weight by about
    ``lr * sign(grad)``, so rounding-level gradient differences are not kept at rounding size.
    (One process with 2 accumulated micro-batches of 1 is not compared either: the history
    frames are encoded in eval mode with BatchNorm's running statistics, which one process
    updates after each micro-batch and DDP takes from rank 0; QD-BEV, with BatchNorm folded, is
    compared that way by the QD-BEV test below)."""
    from test_bev_cli import TINY_MODEL

    from qd_perception.cli import main
    from qd_perception.sim.generate import GenerateConfig, generate

    data = generate(
        GenerateConfig(scenes=2, samples=3, seed=3, resolution=(64, 112), val_fraction=0.5, workers=1),
        tmp_path / "ds",
        show_progress=False,
    )
    cfg = tmp_path / "bevformer_ddptest.model.yaml"
    cfg.write_text(yaml.safe_dump(TINY_MODEL))
    out = tmp_path / "bev.pt"
    common = ["--config", str(cfg), "--data", str(data), "--out", str(out), "--warmup-steps", "1"]
    common += ["--batch-size", "1", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    common += ["--threads", "1", "--checkpoint-minutes", "100"]

    ranks = tmp_path / "ranks"
    r = torchrun(str(BEV_WORKER), "--ranks-out", str(ranks), *common, "--epochs", "1")
    starts = [ln for ln in r.stdout.splitlines() if ln.startswith("distributed:")]
    assert starts == ["distributed: world_size=2 backend=gloo device=cpu"]
    r0, r1 = (torch.load(ranks / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    # BatchNorm's running statistics are each rank's own (DDP hands rank 0's to all at the next
    # forward; SyncBatchNorm is for CUDA): everything else, the parameters, is bitwise the same
    stats = {k for k in r0 if k.endswith((".running_mean", ".running_var"))}
    assert stats and all(torch.equal(r0[k], r1[k]) for k in r0.keys() - stats), "the ranks diverged"
    from qd_perception.models.bevformer.config import load_model_config
    from qd_perception.models.bevformer.model import BEVFormer

    torch.manual_seed(0)
    init = BEVFormer(load_model_config(cfg)).state_dict()
    assert any(not torch.equal(init[k], r0[k]) for k in r0.keys() - stats), "training did not move"
    two = torch.load(out, weights_only=True)
    assert all(torch.equal(two["state_dict"][k], r0[k]) for k in r0), "the checkpoint is rank 0's model"
    n = two["data"]["samples"]
    assert n == 3 and two["world_size"] == 2
    # 3 samples on 2 processes: 2 steps (the second pads rank 1 with the epoch's first sample)
    assert two["state"]["epoch"] == 1 and two["state"]["step"] == 2 and two["state"]["samples"] == n
    assert len(two["state"]["history"]) == 2

    # resumed in one process with 2 accumulated micro-batches a step: 3 samples, 2 steps
    assert main(["train", "bev", *common, "--epochs", "2", "--grad-accum", "2"]) == 0
    one = torch.load(out, weights_only=True)
    assert one.keys() == two.keys() and (one["world_size"], one["grad_accum"]) == (1, 2)
    assert {k: v.shape for k, v in one["state_dict"].items()} == {k: v.shape for k, v in r0.items()}
    assert one["optimizer"].keys() == two["optimizer"].keys()
    assert one["state"]["epoch"] == 2 and one["state"]["step"] == 2 + 2
    assert one["state"]["samples"] == 2 * n and len(one["state"]["history"]) == 2 + 2
    assert any(not torch.equal(one["state_dict"][k], r0[k]) for k in r0), "the resumed run did not train"
    # mixed precision needs CUDA: one clear line, exit 2, the checkpoint untouched
    if not torch.cuda.is_available():
        assert main(["train", "bev", *common, "--epochs", "3", "--amp", "bf16"]) == 2
        assert torch.load(out, weights_only=True)["state"]["step"] == 2 + 2


def test_qd_bev_on_two_gloo_processes_equals_one_process_and_resumes_in_one(tmp_path):
    """QD-BEV (progressive QAT + VGD) of a tiny BEVFormer: 2 processes x batch 1 == 1 process x 2
    accumulated micro-batches of 1 (each micro-batch's set loss is normalised by its own objects
    in both, so the averaged gradients are the same). The two processes stop after 3 of the 4
    steps (past the epoch where the neck stage switches on) and one process finishes the run from
    their checkpoint: both ranks then hold the same parameters and quantizer ranges, bitwise, and
    the result is the one-process run's within float rounding."""
    from ddp_tiny_qd_bev import fp_model, qd_bev_tiny

    from qd_perception.train.quantize_bev import quantize_bevformer

    qd_bev_tiny(tmp_path / "one", grad_accum=2)
    ref = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    assert ref["step"] == 4

    r = torchrun(str(QD_BEV_WORKER), "--out", str(tmp_path / "ddp"), "--max-steps", "3")
    assert r.stdout.count("distributed: world_size=2 backend=gloo device=cpu") == 1
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    assert r0["step"] == r1["step"] == 3 and r0["history"] == r1["history"]
    ranges = {k for k in r0["state_dict"] if k.endswith((".amax", ".amin"))}
    assert len(ranges) > 100, "the quantizer ranges are part of the state"
    for k in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), f"the ranks diverged at {k}"
    saved = torch.load(tmp_path / "ddp" / "qat" / "qat_state.pt", weights_only=False)
    assert saved["world_size"] == 2 and saved["state"]["step"] == 3 and saved["state"]["epoch"] == 1
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in r0["state_dict"].items())

    qd_bev_tiny(tmp_path / "ddp", grad_accum=2)  # the same run, resumed in one process
    done = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    assert done["step"] == 4 and [h[:2] for h in done["history"]] == [h[:2] for h in ref["history"]]
    torch.testing.assert_close(torch.tensor(done["history"]), torch.tensor(ref["history"]), rtol=1e-4, atol=0)
    # one calibration on rank 0, sent to all: the ranges are the one-process ranges, bitwise
    assert all(torch.equal(done["state_dict"][k], ref["state_dict"][k]) for k in ranges)
    init = quantize_bevformer(fp_model()).state_dict()
    weights = [k for k in ref["state_dict"] if k not in ranges and ref["state_dict"][k].is_floating_point()]
    moved = max(float((ref["state_dict"][k] - init[k]).abs().max()) for k in weights)
    assert moved > 1e-3, "training did not move the weights"
    for k in weights:
        torch.testing.assert_close(done["state_dict"][k], ref["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_quantize_bev_cli_under_torchrun_writes_one_artefact(tmp_path):
    """``quantize bev`` unchanged under torchrun: one start line, rank 0's artefact and QAT state."""
    from test_bev_cli import TINY_MODEL

    from qd_perception.cli import main
    from qd_perception.config import from_dict
    from qd_perception.models.bevformer import BEVFormer, BEVFormerConfig
    from qd_perception.models.bevformer.checkpoint import save_checkpoint
    from qd_perception.sim.generate import GenerateConfig, generate

    data = generate(
        GenerateConfig(scenes=2, samples=3, seed=3, resolution=(64, 112), val_fraction=0.5, workers=1),
        tmp_path / "ds",
        show_progress=False,
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "fp.pt", BEVFormer(from_dict(BEVFormerConfig, TINY_MODEL["model"])))
    out = tmp_path / "qat"
    if not torch.cuda.is_available():  # mixed precision needs CUDA: one clear line before any work
        assert main(["quantize", "bev", "--model", str(ckpt), "--data", str(data), "--amp", "bf16",
                     "--device", "cpu", "--out", str(out)]) == 2  # fmt: skip
        assert not out.exists()
    r = torchrun(
        "-m", "qd_perception.cli", "quantize", "bev", "--method", "qd_bev", "--model", str(ckpt),
        "--data", str(data), "--calib-samples", "2", "--epochs", "1", "--batch-size", "1",
        "--device", "cpu", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    assert r.stdout.count("distributed: world_size=2 backend=gloo device=cpu") == 1
    assert r.stdout.count("artefact in") == 1, "rank 0 alone writes the artefact"
    info = yaml.safe_load((out / "quant.yaml").read_text())
    # 3 samples on 2 processes: 2 steps (the second pads rank 1 with the epoch's first sample)
    assert (info["method"], info["world_size"], info["steps"]) == ("qd_bev", 2, 2)
    assert (out / "bevformer.onnx").is_file() and (out / "qat_curves.png").is_file()
    assert torch.load(out / "qat_state.pt", weights_only=False)["state"]["epoch"] == 1
