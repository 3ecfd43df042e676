"""The closed PTQ loop on the vehicle, through the real node processes, scored on fresh scenes.

::

    nice -n 10 .venv/bin/python benchmarks/ptq_closed_loop.py --out .cache/bench/loop/run

What a user does on a car, step by step, with the simulator standing in for the sensors:

1. **Drive** (bags A): ``qd-perception sim --bag`` writes fresh scenes (seeds no training used).
   ``qd-perception launch calibration`` starts ``lidar_detector`` (FP32 torch CenterPoint, the
   shipped parameter file) and ``calibration_recorder`` (this run's parameter file: its
   ``out_dir``, capacity, the fast LiDAR-PTQ config) as processes; the bags are played into them
   (raw CDR, :class:`~qd_perception.ros.bag_player.BagPlayer`) at ``--rate-a``. The recorder keeps
   a diverse set of 5-sweep frames, with the detector's detections as the object mix.
2. **Trigger**: ``/calibration_recorder/run_ptq`` (``std_srvs/Trigger``) while the graph still runs;
   the recorder runs ``quantize lidar --method lidar_ptq --bits w8a8`` on its own set and this script
   follows ``/calibration_recorder/status`` until the PTQ state is ``succeeded`` (the artefact is
   ``<out>/calib/lidar_int8``). Then the graph is stopped (SIGINT, as Ctrl-C).
3. **Deploy and compare** (bags B, other scenes): ``qd-perception replay --launch lidar`` twice at
   ``--rate-b`` (slow enough that no frame drops on this CPU): the FP32 parameter file, then the
   INT8 one, which differs only in ``detector.backend: onnxruntime`` and
   ``detector.model_path: <out>/calib/lidar_int8``. Each replay starts a fresh ``lidar_detector``.

Writes ``<out>/summary.json`` (atomically), ``<out>/rows.md`` (the docs/benchmarks.md rows) and
``<out>/ptq_loop.png``; every process's log is under ``<out>/logs`` and the replays' own outputs
under ``<out>/replay_fp32`` and ``<out>/replay_int8``. Steps already done (scenes, calibration set +
artefact) are reused when the script is run again on the same ``--out`` (``--fresh`` redoes them).

DDS stays on loopback (``ROS_LOCALHOST_ONLY``, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on its
own ``ROS_DOMAIN_ID`` (``--domain-id``), so concurrent replays on the machine do not cross-talk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qd_perception.fileio import atomic_write_json  # noqa: E402

RECORDER = "calibration_recorder"
DETECTOR = "lidar_detector"
STATUS_TOPIC = f"/{RECORDER}/status"
TRIGGER = f"/{RECORDER}/run_ptq"


def _ptq_command(extra: list[str]) -> list[str]:
    """The calibration recorder's default ``ptq_command`` with ``extra`` arguments before ``--out``."""
    from qd_perception.ros.calibration import CalibrationRecorderConfig

    cmd = list(CalibrationRecorderConfig().ptq_command)
    at = cmd.index("--out")
    return cmd[:at] + extra + cmd[at:]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ steps


def simulate(out: Path, seed: int, scenes: int, samples: int, fresh: bool, env: dict[str, str]) -> list[Path]:
    """Fresh synthetic scenes with one rosbag2 each (lidar + odometry + ground truth, no images)."""
    bags = sorted((out / "bags").glob("scene-*")) if out.exists() else []
    if len(bags) == scenes and not fresh:
        say(f"sim: reusing {len(bags)} bags in {out / 'bags'}")
        return bags
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "qd_perception.cli", "sim", "--out", str(out), "--scenes", str(scenes),
        "--samples", str(samples), "--seed", str(seed), "--bag", "--bag-cameras", "none",
        "--resolution", "32x56", "--val-fraction", "0.5",
    ]  # fmt: skip
    say(f"sim: {scenes} scenes x {samples} keyframes, seed {seed} -> {out}")
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return sorted((out / "bags").glob("scene-*"))


def node_params(node: str, updates: dict[str, Any], path: Path) -> Path:
    """The shipped ``config/<node>.param.yaml`` with ``updates`` applied, written to ``path``."""
    from qd_perception.paths import config_dir

    data = yaml.safe_load((config_dir() / f"{node}.param.yaml").read_text())
    data[node]["ros__parameters"].update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class Params:
    recorder: Path
    fp32: Path
    int8: Path
    calib_dir: Path
    artefact: Path


def write_params(out: Path, args: argparse.Namespace) -> Params:
    calib_dir = out / "calib"
    artefact = calib_dir / "lidar_int8"
    rec = {
        "out_dir": str(calib_dir),
        "store.capacity": args.capacity,
        "store.sample_every": args.sample_every,
        "min_frames": args.min_frames,
        # FP32 CenterPoint takes ~0.3 s per sweep here: wait for its detections (object mix).
        "detections_wait_s": 3.0,
        # the node's default command, with this run's LiDAR-PTQ config, threads and all frames
        "ptq_command": _ptq_command(
            ["--config", str(args.ptq_config.resolve()), "--threads", str(args.threads), "--max-frames", "0"]
        ),
    }
    if args.model:
        rec["ptq_model"] = str(args.model.resolve())
    p = out / "params"
    return Params(
        recorder=node_params(RECORDER, rec, p / f"{RECORDER}.param.yaml"),
        fp32=node_params(DETECTOR, {}, p / f"{DETECTOR}.fp32.param.yaml"),
        int8=node_params(
            DETECTOR,
            {"detector.backend": "onnxruntime", "detector.model_path": str(artefact)},
            p / f"{DETECTOR}.int8.param.yaml",
        ),
        calib_dir=calib_dir,
        artefact=artefact,
    )


def _ptq_progress(log: Path) -> str:
    """The last progress line of the PTQ log (tqdm writes carriage returns)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in re.split(r"[\r\n]+", text) if x.strip()]
    return lines[-1][:160] if lines else ""


def drive_and_calibrate(
    bags: list[Path], params: Params, args: argparse.Namespace, logs: Path, env: dict[str, str]
) -> dict[str, Any]:
    """Step 1 + 2: the calibration graph as processes, bags A played into it, PTQ triggered."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from qd_perception.ros.bag_player import BagPlayer, PlaybackConfig
    from qd_perception.topics import LIDAR_TOPIC, ODOM_TOPIC

    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / "vehicle_launch.log", "wb")
    cmd = [
        sys.executable, "-m", "qd_perception.cli", "launch", "calibration",
        "--params", f"{DETECTOR}={params.fp32}", "--params", f"{RECORDER}={params.recorder}",
    ]  # fmt: skip
    say(f"vehicle: {' '.join(cmd[1:])}  (log {logs / 'vehicle_launch.log'})")
    launcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    from rclpy.signals import SignalHandlerOptions

    # Ctrl-C must reach this thread as KeyboardInterrupt so that the graph is stopped below.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("ptq_closed_loop")
    status: list[dict[str, Any]] = []
    node.create_subscription(String, STATUS_TOPIC, lambda m: status.append(json.loads(m.data)), 10)
    client = node.create_client(Trigger, TRIGGER)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = threading.Event()
    spinning.set()

    def spin() -> None:
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.1)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    def wait(pred, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if launcher.poll() is not None:
                tail = (logs / "vehicle_launch.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the calibration graph exited ({launcher.returncode}) {what}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.2)

    def last() -> dict[str, Any]:
        return status[-1] if status else {}

    result: dict[str, Any] = {}
    try:
        t_start = time.monotonic()
        # Both nodes subscribe to the cloud (the detector only after its warm-up) and the recorder
        # to the detections: then every played sweep reaches both.
        wait(
            lambda: (
                node.count_subscribers(LIDAR_TOPIC) >= 2
                and node.count_subscribers(f"/{DETECTOR}/output/detections") >= 1
                and client.service_is_ready()
                and bool(status)
            ),
            args.startup_timeout,
            "the detector and the recorder to start",
        )
        up = time.monotonic() - t_start
        say(f"vehicle: graph up in {up:.1f} s; recorder: {last().get('stored')} frames stored")
        played = 0
        for i, bag in enumerate(bags):
            say(f"drive: [{i + 1}/{len(bags)}] playing {bag.name} at rate {args.rate_a}")
            cfg = PlaybackConfig(
                rate=args.rate_a,
                topics=(LIDAR_TOPIC, ODOM_TOPIC),
                wait_for_subscribers={LIDAR_TOPIC: 2},
                wait_timeout_s=args.startup_timeout,
                start_delay_s=1.0,
            )
            stats = BagPlayer(node, bag, cfg).play()
            played += stats.published.get(LIDAR_TOPIC, 0)
            s = last()
            say(
                f"drive: {stats.published.get(LIDAR_TOPIC, 0)} sweeps in {stats.wall_s:.1f} s; recorder "
                f"stored {s.get('stored')}/{s.get('capacity')}, considered {s.get('store.considered')}, "
                f"with detections {s.get('with_detections', 0)}"
            )
        # The last frames wait for their detections (detections_wait_s) and the disk writer.
        time.sleep(1.0)
        wait(lambda: last().get("pending_detections", 1) == 0, 30.0, "the recorder's pending frames")
        time.sleep(2.0)
        before = dict(last())
        result["sweeps_played"] = played
        result["recorder_before_ptq"] = before
        say(f"trigger: {TRIGGER} with {before.get('stored')} frames stored")
        fut = client.call_async(Trigger.Request())
        wait(fut.done, 30.0, "the trigger's answer")
        resp = fut.result()
        if not resp.success:
            raise RuntimeError(f"{TRIGGER} refused: {resp.message}")
        say(f"trigger: {resp.message}")
        t_trig = time.monotonic()
        runs0 = before.get("ptq", {}).get("runs", 0)
        ptq_log = params.calib_dir / "ptq.log"
        next_note = 0.0
        while True:
            p = last().get("ptq", {})
            if p.get("runs", 0) > runs0 and p.get("state") in ("succeeded", "failed"):
                break
            if time.monotonic() - t_trig > args.ptq_timeout:
                raise TimeoutError(f"PTQ did not finish within {args.ptq_timeout:.0f} s; see {ptq_log}")
            if launcher.poll() is not None:
                raise RuntimeError(
                    f"the calibration graph exited during PTQ; see {logs / 'vehicle_launch.log'}"
                )
            if time.monotonic() >= next_note:
                say(f"ptq: running {time.monotonic() - t_trig:.0f} s  | {_ptq_progress(ptq_log)}")
                next_note = time.monotonic() + 20.0
            time.sleep(0.5)
        ptq_wall = time.monotonic() - t_trig
        p = last()["ptq"]
        result["ptq"] = {**p, "wall_s_seen_by_status": ptq_wall}
        text = ptq_log.read_text(errors="replace")
        m = re.findall(r"quantized \((.+?)\) in ([0-9.]+) s; total ([0-9.]+) s", text)
        if m:
            result["ptq"]["quantize_s"], result["ptq"]["command_total_s"] = float(m[-1][1]), float(m[-1][2])
        if p["state"] != "succeeded":
            raise RuntimeError(f"PTQ failed (exit code {p['returncode']}):\n{text[-3000:]}")
        say(f"ptq: succeeded in {ptq_wall:.0f} s (status); artefact {params.artefact}")
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait(10)
        log.close()
        spinning.clear()
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    result["launcher_exit_code"] = launcher.returncode
    result["recorder_final"] = _shutdown_status(logs / "vehicle_launch.log")
    say(f"vehicle: graph stopped (exit code {launcher.returncode})")
    return result


def _shutdown_status(log: Path) -> dict[str, Any] | None:
    """The recorder's own shutdown summary line (JSON) from the launcher's log."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if f"[{RECORDER}]" in line and "shutting down: " in line:
            try:
                return json.loads(line.split("shutting down: ", 1)[1])
            except ValueError:
                return None
    return None


def replay(bags: list[Path], params: Path, out: Path, rate: float, env: dict[str, str], log: Path) -> dict:
    """Step 3: ``qd-perception replay --launch lidar`` with one lidar_detector parameter file."""
    cmd = [
        sys.executable, "-m", "qd_perception.cli", "replay", "--bag", *map(str, bags), "--launch", "lidar",
        "--rate", str(rate), "--params", f"{DETECTOR}={params}", "--out", str(out), "--drain", "4",
    ]  # fmt: skip
    say(f"replay: {' '.join(cmd[3:])}  (log {log})")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            fh.write(line)
            text = line.decode(errors="replace").rstrip()
            if text.startswith(("replay: [", "replay: played", f"{DETECTOR}:")):
                say(f"  {text}")
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"replay failed (exit code {rc}); see {log}")
    return json.loads((out / "metrics.json").read_text())


def stage_profile(calib_dir: Path, params: Params, repeats: int, threads: int) -> dict[str, Any]:
    """Both detectors the node runs, built from the same parameter files' detector settings, timed
    per stage on the car's calibration frames (5-sweep clouds), interleaved frame by frame so that
    they share the machine's load. ``threads``: torch and ONNX Runtime intra-op threads (0: their
    defaults, as in the node)."""
    import numpy as np
    import torch

    from qd_perception.config import from_dict
    from qd_perception.data.calib_store import CalibrationSet
    from qd_perception.ros.node_config import DetectorNodeConfig
    from qd_perception.ros.params import nest
    from qd_perception.runtime.factory import build_detector

    if threads:
        torch.set_num_threads(threads)
    dets = {}
    for key, path in (("fp32", params.fp32), ("int8", params.int8)):
        flat = yaml.safe_load(path.read_text())[DETECTOR]["ros__parameters"]
        node_cfg = from_dict(DetectorNodeConfig, nest(flat, DetectorNodeConfig))
        det = build_detector(node_cfg.detector)
        if threads and hasattr(det, "dense"):  # ONNX Runtime sessions: rebuilt with the thread count
            det = type(det)(params.artefact, node_cfg.detector.score_threshold, threads=threads)
        dets[key] = det
    cs = CalibrationSet(calib_dir)
    frames = [cs[i] for i in range(len(cs))]
    times: dict[str, dict[str, list[float]]] = {
        k: {"pre": [], "net": [], "post": [], "total": []} for k in dets
    }
    for d in dets.values():
        d.detect(frames[0])  # first call: lazy initialisation
    for _ in range(repeats):
        for f in frames:
            for k, d in dets.items():
                t = time.perf_counter()
                d.detect(f)
                total = (time.perf_counter() - t) * 1e3
                tm = d.last_timing
                for name, v in (
                    ("pre", tm.preprocess_ms),
                    ("net", tm.inference_ms),
                    ("post", tm.postprocess_ms),
                ):
                    times[k][name].append(v)
                times[k]["total"].append(total)
    return {
        "threads": threads,
        "frames": len(frames) * repeats,
        "points_median": float(np.median([len(f.points) for f in frames])),
        "median_ms": {k: {n: float(np.median(v)) for n, v in t.items()} for k, t in times.items()},
        "load_avg": os.getloadavg(),
    }


# ------------------------------------------------------------------------------ report


def detector_row(m: dict[str, Any]) -> dict[str, Any]:
    d = m["detectors"][DETECTOR]
    diag = d.get("node_diagnostics") or {}
    diags = diag if isinstance(diag, list) else [diag]
    return {
        "nds": d["nds"],
        "map": d["map"],
        "streaming_nds": d["streaming_nds"],
        "per_class_ap": d["per_class_ap"],
        "latency_wall_ms": d["latency_wall_ms"],
        "frames_in": d["frames_in"],
        "frames_out": d["frames_out"],
        "dropped": d["dropped"],
        "node_processing_ms_p50": [x.get("processing_ms.p50") for x in diags],
        "node_processing_ms_p95": [x.get("processing_ms.p95") for x in diags],
        "node_dropped_busy": [x.get("dropped_busy") for x in diags],
    }


def markdown_rows(summary: dict[str, Any]) -> str:
    rows = [
        "| model in `lidar_detector` | NDS | mAP | streaming NDS | latency p50 / p95 (wall ms) | "
        "node processing p50 (ms, per scene) | frames in / out / dropped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("FP32 torch (shipped pillar)", "fp32"),
        ("INT8 ORT (LiDAR-PTQ W8A8 from the car's set)", "int8"),
    ):
        r = summary["replays"][key]
        lat = r["latency_wall_ms"]
        proc = " / ".join(str(x) for x in r["node_processing_ms_p50"])
        rows.append(
            f"| {name} | {r['nds']:.4f} | {r['map']:.4f} | {r['streaming_nds']:.4f} | "
            f"{lat['p50']:.0f} / {lat['p95']:.0f} | {proc} | "
            f"{r['frames_in']} / {r['frames_out']} / {r['dropped']} |"
        )
    f, q = summary["replays"]["fp32"], summary["replays"]["int8"]
    rows.append(f"| INT8 - FP32 | {q['nds'] - f['nds']:+.4f} | {q['map'] - f['map']:+.4f} | "
                f"{q['streaming_nds'] - f['streaming_nds']:+.4f} | | | |")  # fmt: skip
    for prof in summary.get("stage_profile", []):
        m = prof["median_ms"]
        rows += [
            "",
            f"Per stage, median ms over {prof['frames']} calibration frames "
            f"(~{prof['points_median']:.0f} points), "
            f"threads {prof['threads'] or 'default'}, load {prof['load_avg'][0]:.1f}:",
            "",
            "| backend | voxelize + pillar inputs | network | decode + NMS | total |",
            "|---|---|---|---|---|",
        ]
        for k, lab in (("fp32", "FP32 torch"), ("int8", "INT8 ORT")):
            r = m[k]
            rows.append(f"| {lab} | {r['pre']:.0f} | {r['net']:.0f} | {r['post']:.0f} | {r['total']:.0f} |")
    c = summary["calibration"]
    b = c["recorder_before_ptq"]
    rows += [
        "",
        "| calibration on the car | value |",
        "|---|---|",
        f"| sweeps played into the graph (bags A) | {c['sweeps_played']} |",
        f"| synchronised frames / with fewer than 5 sweeps (not offered) | {b.get('frames_synced')} / "
        f"{b.get('incomplete_sweeps', 0)} |",
        f"| frames considered / stored by the recorder | {b.get('store.considered')} / {b.get('stored')} |",
        f"| synchronised frames matched with the detector's detections | {b.get('with_detections', 0)} "
        f"(without: {b.get('without_detections', 0)}) |",
        f"| PTQ wall time, trigger -> `succeeded` in status (s) | {c['ptq']['wall_s_seen_by_status']:.0f} |",
        f"| of which `quantize lidar` quantization (s) | {c['ptq'].get('quantize_s', float('nan')):.0f} |",
    ]
    return "\n".join(rows) + "\n"


def picture(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from qd_perception.classes import CLASS_NAMES
    from qd_perception.eval.viz import save_figure

    f, q = summary["replays"]["fp32"], summary["replays"]["int8"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(len(CLASS_NAMES))
    for k, (r, lab) in enumerate(((f, "FP32 torch"), (q, "INT8 ORT (PTQ on the car)"))):
        ap = [r["per_class_ap"].get(c) or 0.0 for c in CLASS_NAMES]
        a1.bar(x + (k - 0.5) * 0.38, ap, 0.38, label=f"{lab}: mAP {r['map']:.3f}, NDS {r['nds']:.3f}")
    a1.set_xticks(x, CLASS_NAMES, rotation=30, ha="right", fontsize=8)
    a1.set_ylabel("AP")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    a1.set_title("per-class AP through lidar_detector (bags B)", fontsize=10)
    pct = ["p50", "p95", "p99"]
    for k, (r, lab) in enumerate(((f, "FP32 torch"), (q, "INT8 ORT"))):
        a2.bar(np.arange(3) + (k - 0.5) * 0.38, [r["latency_wall_ms"][p] for p in pct], 0.38, label=lab)
    a2.set_xticks(np.arange(3), pct)
    a2.set_ylabel("ms (wall)")
    a2.legend(fontsize=8)
    a2.set_title(f"latency, sweep played -> detections received (rate {summary['rate_b']})", fontsize=10)
    c = summary["calibration"]
    fig.suptitle(
        f"closed PTQ loop: {c['recorder_before_ptq'].get('stored')} frames recorded by calibration_recorder"
        " -> "
        f"LiDAR-PTQ W8A8 ({c['ptq']['wall_s_seen_by_status']:.0f} s) -> INT8 artefact in lidar_detector",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


# ------------------------------------------------------------------------------ CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="work directory (scenes, set, artefact, logs)")
    p.add_argument("--seed-a", type=int, default=5101, help="scenes driven for calibration")
    p.add_argument("--seed-b", type=int, default=5102, help="scenes the FP32 and INT8 nodes are scored on")
    p.add_argument("--scenes-a", type=int, default=3)
    p.add_argument("--samples-a", type=int, default=8, help="keyframes per scene A (2 Hz; 20 Hz sweeps)")
    p.add_argument("--scenes-b", type=int, default=2)
    p.add_argument("--samples-b", type=int, default=12)
    p.add_argument("--rate-a", type=float, default=0.2, help="playback rate while calibrating")
    p.add_argument("--rate-b", type=float, default=0.1, help="playback rate of the FP32/INT8 replays")
    p.add_argument("--capacity", type=int, default=24, help="recorder store.capacity")
    p.add_argument("--sample-every", type=int, default=5, help="recorder store.sample_every")
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument(
        "--model", type=Path, default=None, help="FP32 checkpoint (default: the recorder's ptq_model)"
    )
    p.add_argument("--ptq-config", type=Path, default=ROOT / "config" / "quant" / "lidar_ptq_fast.yaml")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the PTQ process")
    p.add_argument("--ptq-timeout", type=float, default=1500.0)
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: 20 + pid % 80)")
    p.add_argument("--fresh", action="store_true", help="redo the scenes and the calibration")
    p.add_argument(
        "--profile-threads",
        type=int,
        nargs="*",
        default=[0, 1],
        help="after the replays, time both detectors per stage on the calibration frames with these "
        "thread counts (0 = defaults, as in the node); none: skip",
    )
    p.add_argument(
        "--profile-only", action="store_true", help="only redo the stage profile of a finished run"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    domain = args.domain_id if args.domain_id is not None else 20 + os.getpid() % 80
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))
    os.environ.setdefault("ROS_LOG_DIR", str(out / "logs" / "ros"))
    from qd_perception.ros.processes import ros_env

    env = ros_env()
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    if args.profile_only:
        summary = json.loads((out / "summary.json").read_text())
        params = Params(**{k: Path(v) for k, v in summary["params"].items()})
        summary["stage_profile"] = profiles(params, args)
        return report(summary, out)
    say(f"ptq closed loop -> {out} (ROS_DOMAIN_ID {domain}, loopback only)")
    bags_a = simulate(out / "sim_a", args.seed_a, args.scenes_a, args.samples_a, args.fresh, env)
    bags_b = simulate(out / "sim_b", args.seed_b, args.scenes_b, args.samples_b, args.fresh, env)
    params = write_params(out, args)
    done = out / "calibration.json"
    if done.exists() and (params.artefact / "model.yaml").exists() and not args.fresh:
        say(f"calibration: reusing {params.artefact} ({done})")
        calib = json.loads(done.read_text())
    else:
        shutil.rmtree(params.calib_dir, ignore_errors=True)
        calib = drive_and_calibrate(bags_a, params, args, out / "logs", env)
        atomic_write_json(done, calib)
    t_cal = time.monotonic() - t0
    fp32 = replay(
        bags_b, params.fp32, out / "replay_fp32", args.rate_b, env, out / "logs" / "replay_fp32.log"
    )
    int8 = replay(
        bags_b, params.int8, out / "replay_int8", args.rate_b, env, out / "logs" / "replay_int8.log"
    )
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "bags_a": [str(b) for b in bags_a],
        "bags_b": [str(b) for b in bags_b],
        "rate_a": args.rate_a,
        "rate_b": args.rate_b,
        "params": {k: str(v) for k, v in vars(params).items()},
        "calibration": calib,
        "replays": {"fp32": detector_row(fp32), "int8": detector_row(int8)},
        "artefact_export": _read_json(params.artefact / "export.json"),
        "wall_s": {"until_artefact": t_cal, "total": time.monotonic() - t0},
        "load_avg": os.getloadavg(),
    }
    atomic_write_json(out / "summary.json", summary)
    summary["stage_profile"] = profiles(params, args)
    return report(summary, out)


def profiles(params: Params, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for th in args.profile_threads:
        say(f"profile: FP32 torch vs INT8 ORT per stage, threads {th or 'default'}")
        out.append(stage_profile(params.calib_dir, params, repeats=1, threads=th))
    return out


def report(summary: dict[str, Any], out: Path) -> int:
    atomic_write_json(out / "summary.json", summary)
    rows = markdown_rows(summary)
    (out / "rows.md").write_text(rows)
    picture(summary, out / "ptq_loop.png")
    print(rows)
    say(f"done in {summary['wall_s']['total']:.0f} s: summary.json, rows.md, ptq_loop.png in {out}")
    return 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
