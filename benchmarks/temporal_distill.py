r"""TempDistiller: a short-history camera student fine-tuned without and with temporal distillation
from a long-history teacher (same seed, same initial weights, same wall-clock budget), scored on a
val set beside the teacher, and the per-frame latency of teacher and student side by side.

    python -m benchmarks.temporal_distill --teacher weights/bevformer_nano_q4.pt \
        --train .cache/bev/train --val .cache/bev/val --minutes 60 --queue-length 1 \
        --out .cache/bench/temporal_distill

Steps (each kept in ``--out`` and skipped when a re-run finds it done):

1. ``train bev --init TEACHER --queue-length L_s --max-minutes M`` twice: ``student`` (detection
   loss only) and ``distilled`` (``--distill temporal --teacher TEACHER``, config
   ``--distill-config``, default ``config/distill/temporal.yaml``). Both start from the teacher's
   weights; the distilled run pays for the teacher's forwards out of the same budget, so it takes
   fewer steps.
2. ``eval bev`` (the devkit path of ``qd-perception eval bev``) of teacher, student and distilled
   student on ``--val``: NDS, mAP, mAVE, with a paired block bootstrap over the val keyframes for
   the NDS / mAP error bars and the paired differences (``qd_perception.eval.bootstrap``).
3. Latency per frame on this CPU, the models interleaved frame by frame in this process:
   *runtime* -- the deployed recurrent detector (``runtime.bev``: one frame per call, the previous
   BEV carried as state; a queue-1 model is fed none), and *queue* -- the frame computed from its
   own history window as in training (``L`` encodes per output frame, what a model that keeps no
   state pays).

Writes ``temporal_distill.json``, ``temporal_distill.md`` (the table) and ``temporal_distill.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not an installed copy

from benchmarks.common import cpu_flags, cpu_line  # noqa: E402

MODELS: tuple[str, ...] = ("teacher", "student", "distilled")


def _cli_argv(args: list[str]) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return [sys.executable, "-m", "qd_perception.cli", *args], env


def _check(rc: int, args: list[str], log: Path) -> None:
    if rc:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"qd-perception {' '.join(args[:2])} failed (exit {rc}); {log}:\n{tail}")


def cli(args: list[str], log: Path) -> None:
    """``qd-perception ARGS`` of this checkout, output into ``log``; raises with its tail on failure."""
    cmd, env = _cli_argv(args)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    _check(rc, args, log)


def cli_parallel(jobs: list[tuple[list[str], Path]]) -> None:
    """Several ``qd-perception`` commands at once (one per core), each into its log; raises on the
    first that failed once all have ended."""
    cmd_env = [_cli_argv(args) for args, _ in jobs]
    logs = [open(log, "w") for _, log in jobs]  # closed below, after the waits
    try:
        procs = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=f, stderr=subprocess.STDOUT)
                 for (c, e), f in zip(cmd_env, logs, strict=True)]  # fmt: skip
        rcs = [p.wait() for p in procs]
    finally:
        for f in logs:
            f.close()
    for rc, (args, log) in zip(rcs, jobs, strict=True):
        _check(rc, args, log)


def student_argv(a: argparse.Namespace, name: str, model_yaml: Path, out: Path) -> list[str] | None:
    """The ``train bev`` arguments of one student, None when its checkpoint already has the budget
    (a shorter one is resumed)."""
    import torch

    ckpt = out / f"{name}.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state"]
        if state["elapsed_s"] >= 60 * a.minutes:
            return None
    argv = ["train", "bev", "--config", str(model_yaml), "--data", a.train, "--version", a.version,
            "--split", a.train_split, "--out", str(ckpt), "--init", a.teacher,
            "--queue-length", str(a.queue_length), "--max-minutes", str(a.minutes), "--epochs", "100000",
            "--seed", str(a.seed), "--lr", str(a.lr), "--warmup-steps", str(a.warmup_steps),
            "--batch-size", str(a.batch_size), "--threads", str(a.threads)]  # fmt: skip
    if a.cache_dir:
        argv += ["--cache-dir", a.cache_dir]
    if name == "distilled":
        argv += ["--distill", "temporal", "--teacher", a.teacher]
        if a.distill_config:
            argv += ["--distill-config", a.distill_config]
    return argv


def train_students(a: argparse.Namespace, model_yaml: Path, out: Path) -> dict[str, dict]:
    """Fine-tune ``student`` and ``distilled`` for the budget, one after the other or, with
    ``--parallel``, side by side (one process per core: the same wall clock for both)."""
    import torch

    names = ("student", "distilled")
    jobs = [(argv, out / f"{n}.train.log") for n in names if (argv := student_argv(a, n, model_yaml, out))]
    print(f"train {len(jobs)} student(s): {a.minutes} min each{' in parallel' if a.parallel else ''} ...",
          flush=True)  # fmt: skip
    if a.parallel:
        cli_parallel(jobs)
    else:
        for argv, log in jobs:
            cli(argv, log)
    result = {}
    for n in names:
        ckpt = out / f"{n}.pt"
        c = torch.load(ckpt, map_location="cpu", weights_only=False)
        state = c["state"]
        result[n] = {"checkpoint": str(ckpt), "steps": state["step"], "minutes": state["elapsed_s"] / 60,
                     "queue_length": c["train_config"]["queue_length"]}  # fmt: skip
    return result


def evaluate(a: argparse.Namespace, name: str, model: str, out: Path) -> dict:
    """``eval bev`` of ``model`` on the val set (kept in ``out/eval_<name>``; redone when the model
    is newer)."""
    d = out / f"eval_{name}"
    metrics = d / "metrics.json"
    if not metrics.is_file() or metrics.stat().st_mtime < Path(model).stat().st_mtime:
        argv = ["eval", "bev", "--model", model, "--data", a.val, "--version", a.version,
                "--split", a.val_split, "--out", str(d), "--pictures", "0",
                "--threads", str(a.threads)]  # fmt: skip
        print(f"eval {name} ...", flush=True)
        cli(argv, out / f"eval_{name}.log")
    return json.loads(metrics.read_text())


def bootstrap(a: argparse.Namespace, out: Path) -> dict:
    """NDS / mAP standard deviations over paired block-bootstrap replicates of the val keyframes,
    and of the paired differences distilled - student and distilled - teacher."""
    from qd_perception.eval.bootstrap import DevkitSplit, paired_bootstrap

    paths = {m: out / f"eval_{m}" / "results_nusc.json" for m in MODELS}
    if not all(p.is_file() for p in paths.values()):
        return {}  # a model without a single prediction has no submission to resample
    res = paired_bootstrap(DevkitSplit(a.val, a.version, a.val_split), paths, a.n_boot, a.block, a.seed,
                           progress=False)  # fmt: skip
    std = {m: dict(zip(("map", "nds"), res.std(m), strict=True)) for m in MODELS}
    diffs = {}
    for m, ref in (("distilled", "student"), ("distilled", "teacher"), ("student", "teacher")):
        d = res.diff(m, ref)
        diffs[f"{m}-{ref}"] = {"map_std": float(d[:, 0].std(ddof=1)), "nds_std": float(d[:, 1].std(ddof=1))}
    return {"n_boot": a.n_boot, "block": a.block, "blocks": res.n_blocks, "std": std, "diff_std": diffs}


def latency(a: argparse.Namespace, ckpts: dict[str, str], teacher_queue: int) -> dict:
    """Per-frame latency (ms) of the teacher and the distilled student, interleaved frame by frame
    on the same synthetic frames: the runtime detector and the stateless queue forward."""
    import torch

    from qd_perception.eval.latency import latency_stats
    from qd_perception.models.bevformer.checkpoint import load_checkpoint
    from qd_perception.runtime.bev import load_bev_detector
    from qd_perception.train.bev_data import BEVDataset
    from qd_perception.train.export_bev import example_frames
    from qd_perception.train.quantize_bev import forward_sample

    torch.set_num_threads(a.threads)
    names = ("teacher", "distilled")
    dets = {n: load_bev_detector(ckpts[n], threads=a.threads) for n in names}
    models = {n: load_checkpoint(ckpts[n]) for n in names}
    queues = {"teacher": teacher_queue, "distilled": a.queue_length}
    cfg = models["teacher"].cfg
    frames = example_frames(cfg, a.warmup + a.latency_frames)
    runtime: dict[str, list[float]] = {n: [] for n in names}
    for i, f in enumerate(frames):
        for n in names:
            dets[n].detect(f)
            if i >= a.warmup:
                runtime[n].append(dets[n].last_timing.inference_ms)
    ds = BEVDataset(frames, cfg)
    queue: dict[str, list[float]] = {n: [] for n in names}
    start = max(queues.values()) - 1  # every model has its whole window from here on
    with torch.inference_mode():
        for i in range(start, len(frames)):
            for n in names:
                t0 = time.perf_counter()
                forward_sample(models[n], ds, i, queues[n])
                if i >= start + a.warmup:
                    queue[n].append((time.perf_counter() - t0) * 1e3)
    return {
        "runtime_ms": {n: latency_stats(v).to_dict() for n, v in runtime.items()},
        "runtime_history": {n: dets[n].history for n in names},
        "queue_ms": {n: latency_stats(v).to_dict() for n, v in queue.items()},
        "queue_length": queues,
        "threads": a.threads,
    }


def markdown(r: dict) -> str:
    boot = r.get("bootstrap", {}).get("std", {})
    lat = r["latency"]
    rows = [
        f"# TempDistiller: teacher queue {r['teacher_queue']} vs student queue {r['student_queue']}, "
        f"{r['minutes']} min fine-tuning each; {r['cpu']}",
        "",
        "| model | queue | fine-tune steps | NDS | mAP | mAVE | runtime p50 ms/frame | queue p50 ms/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in MODELS:
        e = r["eval"][m]
        s = boot.get(m, {})
        nds = f"{e['nds']:.4f}" + (f" ± {s['nds']:.4f}" if s else "")
        map_ = f"{e['map']:.4f}" + (f" ± {s['map']:.4f}" if s else "")
        mave = "n/a" if e.get("mave") is None else f"{e['mave']:.3f}"
        steps = r["train"][m]["steps"] if m in r["train"] else "-"
        q = r["teacher_queue"] if m == "teacher" else r["student_queue"]
        lm = "distilled" if m != "teacher" else "teacher"  # the two students share one architecture and queue
        rt, qt = lat["runtime_ms"][lm]["p50"], lat["queue_ms"][lm]["p50"]
        rows.append(f"| {m} | {q} | {steps} | {nds} | {map_} | {mave} | {rt:.1f} | {qt:.1f} |")
    diffs = r.get("bootstrap", {}).get("diff_std", {})
    if diffs:
        rows.append("")
        for k, v in diffs.items():
            a, b = k.split("-")
            dn = r["eval"][a]["nds"] - r["eval"][b]["nds"]
            rows.append(f"* NDS {a} - {b}: {dn:+.4f} ± {v['nds_std']:.4f} (paired bootstrap, 1 std)")
    rows.append("")
    rows.append("± = 1 std over paired block-bootstrap replicates of the val keyframes; runtime = the "
                "recurrent detector (one frame per call), queue = the history window recomputed "
                "per frame.")  # fmt: skip
    return "\n".join(rows) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    boot = r.get("bootstrap", {}).get("std", {})
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = np.arange(len(MODELS))
    for k, (key, label) in enumerate((("nds", "NDS"), ("map", "mAP"))):
        vals = [r["eval"][m][key] for m in MODELS]
        err = [boot.get(m, {}).get(key, 0.0) for m in MODELS]
        axes[0].bar(x + (k - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=3, label=label)
    axes[0].set_xticks(x, MODELS)
    axes[0].set_title("val NDS / mAP (± 1 bootstrap std)")
    axes[0].legend()
    mave = [np.nan if r["eval"][m].get("mave") is None else r["eval"][m]["mave"] for m in MODELS]
    axes[1].bar(x, mave, color="tab:green")
    axes[1].set_xticks(x, MODELS)
    axes[1].set_title("mAVE (m/s, lower is better)")
    lat = r["latency"]
    names = ("teacher", "distilled")
    for k, key in enumerate(("runtime_ms", "queue_ms")):
        axes[2].bar(np.arange(2) + (k - 0.5) * 0.38, [lat[key][n]["p50"] for n in names], 0.38,
                    label=key.replace("_ms", ""))  # fmt: skip
    axes[2].set_xticks(np.arange(2), [f"teacher (q{r['teacher_queue']})", f"student (q{r['student_queue']})"])
    axes[2].set_title("p50 ms per frame")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"TempDistiller, {r['minutes']} min fine-tuning per student")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    import torch
    import yaml

    from qd_perception.fileio import atomic_write_json
    from qd_perception.models.bevformer.checkpoint import read_checkpoint, trained_queue_length

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="long-history checkpoint from `train bev`")
    p.add_argument("--train", required=True, help="training dataroot")
    p.add_argument("--val", required=True, help="val dataroot (scenes none of the models saw)")
    p.add_argument("--minutes", type=float, required=True, help="fine-tuning budget of each student")
    p.add_argument("--out", required=True, help="results directory (re-runs reuse what is done)")
    p.add_argument("--queue-length", type=int, default=1, help="the students' queue (1 = no history)")
    p.add_argument("--distill-config", default="", help="default config/distill/temporal.yaml")
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-4, help="peak fine-tuning learning rate")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads of training, eval and latency")
    p.add_argument("--parallel", action="store_true", help="train the two students side by side")
    p.add_argument("--cache-dir", default="", help="train bev image cache root")
    p.add_argument("--latency-frames", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="untimed frames before the latency frames")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates (0 = no error bars)")
    p.add_argument("--block", type=int, default=10, help="bootstrap block of consecutive keyframes")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tck = read_checkpoint(a.teacher)
    teacher_queue = trained_queue_length(tck) or 0
    if a.queue_length >= max(teacher_queue, 1):
        raise SystemExit(
            f"the student's queue {a.queue_length} must be shorter than the teacher's ({teacher_queue})"
        )
    model_yaml = out / "student.model.yaml"
    model_yaml.write_text(
        yaml.safe_dump({"arch": "bevformer", "model": tck["model_config"]}, sort_keys=False)
    )
    cpu = f"{cpu_line()}, {a.threads} thread(s)"
    print(cpu, flush=True)
    train = train_students(a, model_yaml, out)
    ckpts = {"teacher": a.teacher, **{m: train[m]["checkpoint"] for m in train}}
    keys = ("nds", "map", "mave", "mate", "maoe", "num_predictions")
    ev = {m: {k: v for k, v in evaluate(a, m, ckpts[m], out).items() if k in keys} for m in MODELS}
    r = {
        "teacher": a.teacher, "teacher_queue": teacher_queue, "student_queue": a.queue_length,
        "minutes": a.minutes, "seed": a.seed, "lr": a.lr, "train_data": a.train, "val_data": a.val,
        "cpu": cpu, "avx512_vnni": "yes" if cpu_flags()["avx512_vnni"] else "no", "train": train, "eval": ev,
    }  # fmt: skip
    if a.n_boot:
        print("bootstrap ...", flush=True)
        r["bootstrap"] = bootstrap(a, out)
    print("latency ...", flush=True)
    r["latency"] = latency(a, ckpts, teacher_queue)
    atomic_write_json(out / "temporal_distill.json", r, indent=2)
    md = markdown(r)
    (out / "temporal_distill.md").write_text(md)
    plot(r, out / "temporal_distill.png")
    print(md)
    print(f"wrote {out}/temporal_distill.{{json,md,png}}")


if __name__ == "__main__":
    main()
