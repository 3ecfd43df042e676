"""PTQ vs QAT cost on a trained CenterPoint: wall time of each PTQ method, and the QAT wall time at
which fake-quant QAT first reaches the same nuScenes mAP (issue 5: "PTQ >= 30x cheaper than QAT").

Parts (``--parts``; results accumulate in one JSON file, rewritten atomically after every eval, so
a run can be split and resumed part by part):

* ``ptq``: FP32, then for each ``--bits``: min-max and LiDAR-PTQ (``--ptq-config``) on
  ``--calib-frames`` keyframes of the train split -> PTQ wall s, devkit mAP / NDS on the val split.
* ``qat``: for each ``--bits``: :func:`qd_perception.train.qat_lidar.qat_centerpoint` from the same
  FP32 checkpoint (min-max init on the same calibration frames, then fine-tuning on the labelled
  train split), evaluated ``--evals-per-epoch`` times per epoch. Evaluation time is *not* counted
  as QAT cost; the min-max initialisation is. Step 0 (the min-max initialised model) is the PTQ
  min-max model of the ``ptq`` part (same function, same frames: deterministic), so it is not
  evaluated again when that row exists.
* ``report``: the markdown tables (PTQ rows; per PTQ result the QAT seconds to reach its mAP and
  the ratio) and the PNG (mAP vs wall seconds: QAT curves, PTQ points, FP32 line).

    nice -n 10 .venv/bin/python benchmarks/quant_ptq_vs_qat.py --ckpt weights/centerpoint_pillar_cpu.pt \
        --data .cache/bench/cp_val --split val --train .cache/bench/cp_data --train-split train \
        --results .cache/bench/qat/ptq_vs_qat.json --png docs/images/quant_ptq_vs_qat.png --threads 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.eval.lidar import predict
from qd_perception.eval.nuscenes_eval import evaluate
from qd_perception.fileio import atomic_output, atomic_write_json
from qd_perception.runtime.centerpoint import TorchCenterPointDetector, load_checkpoint
from qd_perception.train.quantize_lidar import calibration_frames, load_ptq_config, quantize_centerpoint

ROOT = Path(__file__).resolve().parents[1]
PTQ_METHODS = ("minmax", "lidar_ptq")


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"ptq": [], "qat": {}}


def save_results(path: Path, res: dict) -> None:
    atomic_write_json(path, res)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def code_state() -> dict:
    """Commit and uncommitted files of the shared tree when a part starts (others edit it)."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "head": git("rev-parse", "--short", "HEAD"),
        "dirty": git("status", "--porcelain", "--untracked-files=no", "qd_perception").splitlines(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=Path("weights/centerpoint_pillar_cpu.pt"))
    ap.add_argument("--data", type=Path, default=Path(".cache/bench/cp_val"), help="evaluation dataroot")
    ap.add_argument("--split", default="val")
    ap.add_argument("--train", type=Path, default=Path(".cache/bench/cp_data"), help="labelled train data")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--calib-frames", type=int, default=32)
    ap.add_argument("--bits", default="w4a8,w8a8")
    ap.add_argument("--ptq-methods", default=",".join(PTQ_METHODS))
    ap.add_argument("--ptq-config", type=Path, default=Path("config/quant/lidar_ptq_fast.yaml"))
    ap.add_argument("--qat-epochs", default="w4a8:1,w8a8:0.5", help="bits:epochs, comma separated")
    ap.add_argument("--evals-per-epoch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--learn-scale", action="store_true", help="LSQ step sizes during QAT")
    ap.add_argument("--parts", default="ptq,qat,report")
    ap.add_argument("--results", type=Path, default=Path(".cache/bench/qat/ptq_vs_qat.json"))
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    bits_list = [b for b in args.bits.split(",") if b]
    res = load_results(args.results)

    if parts & {"ptq", "qat", "fp32step"}:
        cfg, model, ckpt = load_checkpoint(args.ckpt)
        res["checkpoint"] = {
            "path": str(args.ckpt),
            "name": cfg.name,
            "epochs": ckpt.get("epochs"),
            "train_seconds": ckpt.get("train_seconds"),
            "train_data": ckpt.get("data"),
        }
        res.setdefault("runs", []).append({"parts": sorted(parts - {"report"}), **code_state()})
        reader = NuScenesReader(args.data, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False)
        frames = calibration_frames(
            args.train, cfg.nsweeps, args.calib_frames, args.version, args.train_split
        )
        work = Path(tempfile.mkdtemp(prefix="ptq_vs_qat_"))

        def score(name: str, m: torch.nn.Module) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            preds, _ = predict(TorchCenterPointDetector(m), reader)
            met = evaluate(args.data, args.version, args.split, preds, work / name.replace(" ", "_"))
            secs = time.perf_counter() - t0
            print(f"{name}: mAP {met.map:.4f} NDS {met.nds:.4f} (eval {secs:.0f} s)", flush=True)
            return met.map, met.nds, secs

    if "ptq" in parts:
        la0 = loadavg()
        if "fp32" not in res:
            m, n, _ = score("FP32", model)
            res["fp32"] = {"map": m, "nds": n}
            save_results(args.results, res)
        ptq_cfg = load_ptq_config(args.ptq_config)
        for bits in bits_list:
            for method in [x for x in args.ptq_methods.split(",") if x]:
                conf = str(args.ptq_config) if method == "lidar_ptq" else None
                done = next(
                    (r for r in res["ptq"] if (r["bits"], r["method"], r["config"]) == (bits, method, conf)),
                    None,
                )
                if done is not None and "cpu_seconds" in done:
                    continue
                la = loadavg()
                c0 = time.process_time()
                r = quantize_centerpoint(model, frames, method, bits, "ort", ptq_cfg)
                cpu = time.process_time() - c0
                if done is not None:  # scored by an older run that kept no CPU time: time it again
                    done.update(
                        seconds=r.seconds, cpu_seconds=cpu, loadavg_before=la, loadavg_after=loadavg()
                    )
                    save_results(args.results, res)
                    continue
                m, n, _ = score(f"{bits} {method}", r.model)
                res["ptq"].append(
                    {
                        "bits": bits,
                        "method": method,
                        "config": conf,
                        "seconds": r.seconds,
                        "cpu_seconds": cpu,
                        "stage_seconds": r.report.stage_seconds if r.report else None,
                        "map": m,
                        "nds": n,
                        "loadavg_before": la,
                        "loadavg_after": loadavg(),
                    }
                )
                save_results(args.results, res)
        res["ptq_conditions"] = {"calib_frames": len(frames), "loadavg_start": la0, "threads": args.threads}
        save_results(args.results, res)

    if "qat" in parts:
        from qd_perception.train.qat_lidar import QATConfig, QATProgress, qat_centerpoint

        train_reader = NuScenesReader(
            args.train, args.version, args.train_split, nsweeps=cfg.nsweeps, load_images=False
        )
        epochs = {k: float(v) for k, v in (kv.split(":") for kv in args.qat_epochs.split(",") if kv)}
        for bits in bits_list:
            if bits not in epochs or bits in res["qat"]:
                continue
            steps_per_epoch = -(-len(train_reader) // args.batch_size)
            qcfg = QATConfig(
                epochs=epochs[bits],
                lr=args.lr,
                batch_size=args.batch_size,
                learn_scale=args.learn_scale,
                calib_frames=len(frames),
            )
            every = max(1, round(steps_per_epoch / args.evals_per_epoch))
            entry: dict = {
                "config": dataclasses.asdict(qcfg),
                "steps_per_epoch": steps_per_epoch,
                "points": [],
            }
            res["qat"][bits] = entry
            minmax = next((r for r in res["ptq"] if r["bits"] == bits and r["method"] == "minmax"), None)

            def on_eval(
                p: QATProgress, qm: torch.nn.Module, bits: str = bits, entry: dict = entry, minmax=minmax
            ) -> None:
                la = loadavg()
                if p.step == 0 and minmax is not None:
                    m, n = minmax["map"], minmax["nds"]
                    print(f"{bits} QAT step 0 = PTQ min-max: mAP {m:.4f} NDS {n:.4f}", flush=True)
                else:
                    m, n, _ = score(f"{bits} QAT step {p.step}", qm)
                entry["points"].append(
                    {
                        "step": p.step,
                        "epoch": p.epoch,
                        "seconds": p.seconds,
                        "train_seconds": p.train_seconds,
                        "cpu_seconds": p.cpu_seconds,
                        "loss": p.loss,
                        "map": m,
                        "nds": n,
                        "loadavg": la,
                    }
                )
                save_results(args.results, res)

            r = qat_centerpoint(model, train_reader, frames, bits, "ort", qcfg, on_eval, every)
            entry["calib_seconds"] = r.calib_seconds
            entry["seconds"] = r.seconds
            entry["cpu_seconds"] = r.cpu_seconds
            entry["calib_cpu_seconds"] = r.calib_cpu_seconds
            entry["step_cpu_seconds_mean"] = r.train_cpu_seconds / max(r.steps, 1)
            entry["step_seconds_mean"] = r.train_seconds / max(r.steps, 1)
            save_results(args.results, res)

    if "fp32step" in parts:
        # FP32 training cost on the same CPU measure: the checkpoint only kept its wall time
        from qd_perception.train.lidar import train_step
        from qd_perception.train.lidar_data import AugmentConfig, LidarDataset, collate

        train_reader = NuScenesReader(
            args.train, args.version, args.train_split, nsweeps=cfg.nsweeps, load_images=False
        )
        ds = LidarDataset(train_reader, cfg, AugmentConfig())
        fp = copy.deepcopy(model)
        opt = torch.optim.AdamW(fp.parameters(), lr=1e-6)
        cpu = []
        for i in range(7):
            batch = collate([ds[2 * i], ds[2 * i + 1]])
            c0 = time.process_time()
            train_step(fp, batch, opt)
            cpu.append(time.process_time() - c0)
        res["fp32_step_cpu_seconds"] = sum(cpu[1:]) / len(cpu[1:])  # first step warms up
        res["fp32_train_steps"] = ckpt.get("step")
        print(f"FP32 training step: {res['fp32_step_cpu_seconds']:.2f} CPU s (batch 2)")
        save_results(args.results, res)

    if "report" in parts:
        report(res, bits_list, args.png)


def first_reach(points: list[dict], target: float) -> dict | None:
    """First QAT evaluation whose mAP is at least ``target``."""
    return next((p for p in sorted(points, key=lambda p: p["step"]) if p["map"] >= target), None)


def label(r: dict) -> str:
    """PTQ row name: the method, and the LiDAR-PTQ config it ran with."""
    return r["method"] if not r.get("config") else f"{r['method']} ({Path(r['config']).stem})"


def _secs(d: dict) -> str:
    """CPU s (wall s) of a PTQ row or QAT point."""
    cpu = d.get("cpu_seconds")
    return f"{d['seconds']:.0f}" if cpu is None else f"{cpu:.0f} ({d['seconds']:.0f})"


def report(res: dict, bits_list: list[str], png: Path | None) -> None:
    fp = res.get("fp32")
    ck = res.get("checkpoint", {})
    if fp:
        print(
            f"\nFP32 {ck.get('name')}: mAP {fp['map']:.4f} NDS {fp['nds']:.4f}; FP32 training "
            f"{ck.get('train_seconds', 0):.0f} s wall ({ck.get('epochs')} epochs on {ck.get('train_data')})"
        )
    if res.get("fp32_step_cpu_seconds"):
        n = res.get("fp32_train_steps") or 0
        print(
            f"FP32 training step {res['fp32_step_cpu_seconds']:.2f} CPU s -> {n} steps "
            f"~{n * res['fp32_step_cpu_seconds']:.0f} CPU s\n"
        )
    print(
        "| bits | PTQ method | PTQ CPU s (wall s) | mAP | NDS | QAT CPU s (wall s) to reach this mAP "
        "| QAT / PTQ (CPU) | whole QAT run CPU s (wall s), final mAP | whole run / PTQ (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for bits in bits_list:
        q = res["qat"].get(bits)
        pts = sorted(q["points"], key=lambda p: p["step"]) if q else []
        last = pts[-1] if pts else None
        for r in [r for r in res["ptq"] if r["bits"] == bits]:
            base = r.get("cpu_seconds") or r["seconds"]
            hit = first_reach(pts, r["map"])
            if last is None:
                reach, ratio, whole, wratio = "not run", "", "", ""
            else:
                lc = last.get("cpu_seconds") or last["seconds"]
                whole = f"{_secs(last)}, {last['map']:.4f} ({last['epoch']:.2f} ep)"
                wratio = f"{lc / base:.1f}x"
                if hit is None:
                    reach, ratio = f"not within {_secs(last)}", f"> {lc / base:.1f}x"
                else:
                    hc = hit.get("cpu_seconds") or hit["seconds"]
                    reach = f"{_secs(hit)} at step {hit['step']}"
                    ratio = f"{hc / base:.2f}x"
            print(
                f"| {bits} | {label(r)} | {_secs(r)} | {r['map']:.4f} | {r['nds']:.4f} "
                f"| {reach} | {ratio} | {whole} | {wratio} |"
            )
    for bits in bits_list:
        q = res["qat"].get(bits)
        if not q:
            continue
        print(
            f"\nQAT {bits}: {q['steps_per_epoch']} steps/epoch (batch {q['config']['batch_size']}), "
            f"lr {q['config']['lr']} {q['config']['schedule']}, learn_scale {q['config']['learn_scale']}; "
            f"min-max init {q.get('calib_cpu_seconds', 0):.1f} CPU s, "
            f"{q.get('step_cpu_seconds_mean', 0):.2f} CPU s/step ({q.get('step_seconds_mean', 0):.2f} wall)"
        )
        print("| step | epoch | QAT CPU s (wall s) | mean loss since last | mAP | NDS | load avg |")
        print("|---|---|---|---|---|---|---|")
        for p in sorted(q["points"], key=lambda p: p["step"]):
            loss = "" if p["loss"] is None else f"{p['loss']:.3f}"
            print(
                f"| {p['step']} | {p['epoch']:.2f} | {_secs(p)} | {loss} "
                f"| {p['map']:.4f} | {p['nds']:.4f} | {p.get('loadavg', '')} |"
            )
    if png:
        plot(res, bits_list, png)


def plot(res: dict, bits_list: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cpu(d: dict) -> float:
        return d.get("cpu_seconds") or d["seconds"]

    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    markers = {"minmax": "o", "lidar_ptq (lidar_ptq_fast)": "s", "lidar_ptq (lidar_ptq)": "D"}
    for i, bits in enumerate(bits_list):
        c = f"C{i}"
        q = res["qat"].get(bits)
        if q and q["points"]:
            pts = sorted(q["points"], key=lambda p: p["step"])
            ax.plot([cpu(p) for p in pts], [p["map"] for p in pts], "-^", color=c, label=f"QAT {bits}")
        for r in [r for r in res["ptq"] if r["bits"] == bits]:
            ax.plot(
                cpu(r), r["map"], markers.get(label(r), "x"), color=c, ms=10, mfc="none", mew=2,
                label=f"PTQ {bits} {label(r)}",
            )  # fmt: skip
    if res.get("fp32"):
        ax.axhline(res["fp32"]["map"], color="k", ls="--", lw=1, label="FP32")
    ck = res.get("checkpoint", {})
    if res.get("fp32_step_cpu_seconds") and res.get("fp32_train_steps"):
        est = res["fp32_step_cpu_seconds"] * res["fp32_train_steps"]
        ax.axvline(
            est, color="gray", ls=":", lw=1, label=f"FP32 training, {res['fp32_train_steps']} steps (est.)"
        )
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds, 1 thread (QAT: min-max init + training steps, evaluations excluded)")
    ax.set_ylabel("mAP (synthetic val, nuscenes-devkit)")
    ax.set_title(f"CenterPoint {ck.get('name', '')}: PTQ vs QAT cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
