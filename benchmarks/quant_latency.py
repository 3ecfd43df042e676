"""CenterPoint latency and size: torch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 (Q/DQ).

Builds (or takes) a CenterPoint, exports it FP32 (``export lidar``) and INT8 (``quantize lidar``
artefact: ORT flavour, QLinearConv; min-max calibration — latency does not depend on the
calibrator), then times the *network* part of each detector (PFN + scatter + 2-D backbone + head;
voxelisation and decode are identical host code) on the same synthetic sweeps, round-robin so
that the three backends share the machine's load. Torch and ORT run with the same number of
intra-op threads (``--threads``). Prints markdown rows for docs/benchmarks.md.

``--variants`` adds a second table: the dense graph alone under ORT settings that could move INT8
(graph optimisation level, 1 vs 2 threads, and ``onnxruntime.quantization.quantize_static`` of the
FP32 graph as QOperator / QDQ with U8S8 / U8U8), each with its median over the same BEV canvases.

    nice -n 10 .venv/bin/python benchmarks/quant_latency.py --ckpt weights/centerpoint_pillar_cpu.pt \
        --frames 20 --threads 1 --variants --keep .cache/bench/speed/artefacts

``--op-profile`` prints ONNX Runtime's profiler summary (kernel time per op type) of the INT8 dense
graph over the same canvases.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.models.build import build_model, load_model_file
from qd_perception.models.centerpoint.model import DenseGraph
from qd_perception.quant.size import model_size
from qd_perception.runtime.centerpoint import (
    OrtCenterPointDetector,
    TorchCenterPointDetector,
    load_checkpoint,
)
from qd_perception.train.export_lidar import example_frame, export
from qd_perception.train.quantize_lidar import quantize_centerpoint, write_artefact


def ort_variants(
    fp_dir: Path, q_dir: Path, feeds: list[dict], warmup: int, threads: int, clock
) -> dict[str, list[float]]:
    """Dense-graph ms per ORT variant, round-robin over the same BEV feeds."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    level = ort.GraphOptimizationLevel

    def session(path: Path, opt=level.ORT_ENABLE_ALL, n: int = threads) -> ort.InferenceSession:
        o = ort.SessionOptions()
        o.graph_optimization_level = opt
        o.intra_op_num_threads = n
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds[:8])

        def get_next(self):
            return next(self.it, None)

    fp, q = fp_dir / "dense.onnx", q_dir / "dense.onnx"
    sessions = {
        "FP32, ORT_ENABLE_ALL": session(fp),
        "INT8 artefact (QDQ U8S8 7-bit), ORT_ENABLE_ALL": session(q),
        "INT8 artefact, ORT_ENABLE_EXTENDED": session(q, level.ORT_ENABLE_EXTENDED),
        "INT8 artefact, ORT_ENABLE_BASIC": session(q, level.ORT_ENABLE_BASIC),
    }
    for fmt, act, wt, extra in (
        (QuantFormat.QOperator, QuantType.QUInt8, QuantType.QInt8, "U8S8 reduce_range"),
        (QuantFormat.QDQ, QuantType.QUInt8, QuantType.QInt8, "U8S8 reduce_range"),
        (QuantFormat.QOperator, QuantType.QUInt8, QuantType.QUInt8, "U8U8"),
        (QuantFormat.QDQ, QuantType.QUInt8, QuantType.QUInt8, "U8U8"),
    ):
        out = q_dir.parent / f"ort_static_{fmt.name}_{extra.split()[0]}.onnx"
        quantize_static(
            str(fp), str(out), Reader(), quant_format=fmt, activation_type=act, weight_type=wt,
            per_channel=True, reduce_range="reduce_range" in extra,
        )  # fmt: skip
        sessions[f"ORT quantize_static {fmt.name} {extra}"] = session(out)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i, feed in enumerate(feeds):
        for name, s in sessions.items():
            t0 = clock()
            s.run(None, feed)
            if i >= warmup:
                times[name].append((clock() - t0) * 1e3)
    # More threads: in a loop of their own (ORT's pool threads spin after a run and would bill
    # their CPU time to the next session) and on the wall clock (latency is what they buy).
    multi = {
        f"FP32, ORT_ENABLE_ALL, {2 * threads} threads (wall clock)": session(fp, n=2 * threads),
        f"INT8 artefact, ORT_ENABLE_ALL, {2 * threads} threads (wall clock)": session(q, n=2 * threads),
        f"INT8 artefact, ORT_ENABLE_ALL, {threads} thread(s) (wall clock)": session(q),
    }
    times.update({k: [] for k in multi})
    for i, feed in enumerate(feeds):
        for name, s in multi.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def ort_op_profile(graph: Path, feeds: list[dict], threads: int) -> list[tuple[str, int, float]]:
    """ONNX Runtime's own profiler on ``graph``: (op type, nodes, share of kernel time) rows."""
    import collections
    import json

    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.enable_profiling = True
    o.profile_file_prefix = str(Path(tempfile.gettempdir()) / "qd_ort_profile")
    sess = ort.InferenceSession(str(graph), o, providers=["CPUExecutionProvider"])
    for feed in feeds:
        sess.run(None, feed)
    path = Path(sess.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    dur: collections.Counter = collections.Counter()
    nodes: dict[str, set] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            dur[op] += e["dur"]
            nodes[op].add(e["name"])
    total = sum(dur.values()) or 1
    return [(op, len(nodes[op]), d / total) for op, d in dur.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=None, help="trained checkpoint (default: random init)")
    ap.add_argument(
        "--model-config", type=Path, default=Path("config/models/centerpoint_pillar_cpu.model.yaml")
    )
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bits", default="w8a8")
    ap.add_argument("--points", type=int, default=30000, help="points per synthetic sweep")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time (shared machine)",
    )
    ap.add_argument("--variants", action="store_true", help="also time ORT settings on the dense graph")
    ap.add_argument("--keep", type=Path, default=None, help="keep the FP32 export and INT8 artefact here")
    ap.add_argument(
        "--op-profile", action="store_true", help="ORT's kernel time per op type, INT8 dense graph"
    )
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.ckpt:
        cfg, model, _ = load_checkpoint(args.ckpt)
    else:
        _, cfg = load_model_file(args.model_config)
        torch.manual_seed(0)
        model = build_model("centerpoint", cfg).eval()
    frames = [example_frame(cfg, args.points, seed=100 + i) for i in range(args.frames + args.warmup)]
    calib = [example_frame(cfg, args.points, seed=i) for i in range(8)]
    with tempfile.TemporaryDirectory() as d:
        root = args.keep or Path(d)
        fp_dir, q_dir = root / "fp32", root / "int8"
        export(model, fp_dir, frames[0])
        t0 = time.perf_counter()
        result = quantize_centerpoint(model, calib, "minmax", args.bits, "ort")
        qtime = time.perf_counter() - t0
        write_artefact(result, q_dir, frames[0])
        dets = {
            "torch FP32": TorchCenterPointDetector(model),
            "ORT FP32": OrtCenterPointDetector(fp_dir, threads=args.threads),
            f"ORT INT8 ({args.bits}, QLinearConv)": OrtCenterPointDetector(q_dir, threads=args.threads),
        }
        times: dict[str, list[float]] = {k: [] for k in dets}
        dense_times: dict[str, list[float]] = {k: [] for k in dets}
        e2e: dict[str, list[float]] = {k: [] for k in dets}
        dense_graph = DenseGraph(model).eval()
        feeds = []
        for i, f in enumerate(frames):
            vox = model.preprocess([torch.from_numpy(f.points)])
            with torch.no_grad():
                bev = model.encode(vox)
            feed = {"bev": np.ascontiguousarray(bev.numpy())}
            feeds.append(feed)
            for name, det in dets.items():
                t0 = clock()
                det.detect(f)
                t_detect = (clock() - t0) * 1e3
                vox = det.preprocess(f)
                t0 = clock()
                with torch.inference_mode():
                    det.run_network(vox)
                t_network = (clock() - t0) * 1e3
                t0 = clock()
                if isinstance(det, OrtCenterPointDetector):
                    det.dense.run(None, feed)
                else:
                    with torch.no_grad():
                        dense_graph(bev)
                dt = (clock() - t0) * 1e3
                if i >= args.warmup:
                    times[name].append(t_network)
                    dense_times[name].append(dt)
                    e2e[name].append(t_detect)
        op_rows = ort_op_profile(q_dir / "dense.onnx", feeds, args.threads) if args.op_profile else []
        variants = (
            ort_variants(fp_dir, q_dir, feeds, args.warmup, args.threads, clock) if args.variants else {}
        )
        fp_size = model_size(model)
        # sizes at the storage width: 8-bit weights (the ORT artefact's 7-bit weights are stored as int8)
        w8 = quantize_centerpoint(model, calib[:2], "minmax", "w8a8", "trt").model
        q_size = model_size(w8)
        w4 = quantize_centerpoint(model, calib[:2], "minmax", "w4a8", "trt").model
        w4_size = model_size(w4)

    load = os.getloadavg()[0]
    print(
        f"\nCenterPoint `{cfg.name}` ({cfg.variant}), {args.frames} synthetic sweeps of "
        f"{args.points} points, "
        f"{args.threads} thread(s), {args.clock} clock, load average {load:.1f} on {os.cpu_count()} cores; "
        "min-max PTQ "
        f"took {qtime:.1f} s\n"
    )
    print(
        "| backend | network ms (median, p90) | x vs torch | dense graph ms (median, p90) | x vs torch "
        "| detect() ms (median, p90) | x vs torch |"
    )
    print("|---|---|---|---|---|---|---|")
    base = float(np.median(times["torch FP32"]))
    dbase = float(np.median(dense_times["torch FP32"]))
    ebase = float(np.median(e2e["torch FP32"]))
    for name in times:
        a, b, e = np.asarray(times[name]), np.asarray(dense_times[name]), np.asarray(e2e[name])
        print(
            f"| {name} | {np.median(a):.1f} ({np.percentile(a, 90):.1f}) | {base / np.median(a):.2f}x "
            f"| {np.median(b):.1f} ({np.percentile(b, 90):.1f}) | {dbase / np.median(b):.2f}x "
            f"| {np.median(e):.1f} ({np.percentile(e, 90):.1f}) | {ebase / np.median(e):.2f}x |"
        )
    if variants:
        print(f"\nDense graph alone, ORT settings (x vs torch FP32 dense {dbase:.1f} ms):\n")
        print("| ORT variant | dense ms (median, p90) | x vs torch |")
        print("|---|---|---|")
        for name, v in variants.items():
            v = np.asarray(v)
            same_clock = args.clock == "wall" or "(wall clock)" not in name
            ratio = f"{dbase / np.median(v):.2f}x" if same_clock else "-"
            print(f"| {name} | {np.median(v):.1f} ({np.percentile(v, 90):.1f}) | {ratio} |")
    if op_rows:
        print("\nORT profiler, INT8 dense graph (share of kernel time):\n")
        print("| op type | nodes | share |")
        print("|---|---|---|")
        for op, n, share in op_rows:
            print(f"| {op} | {n} | {100 * share:.1f}% |")
    print("\n| model | size (MiB) | vs FP32 |")
    print("|---|---|---|")
    for name, s in (
        ("FP32", fp_size),
        (f"INT8 ORT ({args.bits}, 7-bit weights)", q_size),
        ("W4A8 packed", w4_size),
    ):
        print(
            f"| {name} | {s.total_bytes / 2**20:.3f} | {fp_size.total_bytes / s.total_bytes:.2f}x smaller |"
        )


if __name__ == "__main__":
    main()
