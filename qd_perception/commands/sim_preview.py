"""``qd-perception sim-preview DIR``: draw one sample's six images and a BEV lidar view with GT boxes.

Works on any nuScenes-format data set (synthetic or real)::

    qd-perception sim-preview data/sim --out preview.png              # first val sample
    qd-perception sim-preview data/sim --sample <token> --out s.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qd_perception.sim.nuscenes_writer import DEFAULT_VERSION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataroot", type=Path, help="data set folder (nuScenes dataroot)")
    parser.add_argument("--sample", default="", help="sample token (default: first sample of --split)")
    parser.add_argument("--out", type=Path, default=Path("sim_preview.png"), help="PNG to write")
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--split", default="val", help="split to take the default sample from (val)")
    parser.add_argument("--nsweeps", type=int, default=1, help="lidar sweeps in the BEV view (1)")
    parser.add_argument("--extent", type=float, default=50.0, help="BEV half-width in metres (50)")
    parser.add_argument(
        "--results", type=Path, default=None, help="nuScenes result JSON: draw its boxes dashed"
    )
    parser.add_argument("--score-threshold", type=float, default=0.3, help="for --results boxes (0.3)")


def run(args: argparse.Namespace) -> int:
    from qd_perception.data.nuscenes import DatasetError, NuScenesReader
    from qd_perception.eval.viz import plot_frame, save_figure

    try:
        reader = NuScenesReader(
            args.dataroot, args.version, "all" if args.sample else args.split, args.nsweeps
        )
        token = args.sample or reader.sample_tokens[0]
        frame = reader.frame(token)
    except (DatasetError, KeyError) as e:
        print(f"qd-perception sim-preview: {e}", file=sys.stderr)
        return 2
    pred = None
    if args.results is not None:
        from qd_perception.eval.nuscenes_eval import load_submission

        try:
            pred = load_submission(args.results, {token: frame.ego2global}, args.score_threshold)[token]
        except (OSError, ValueError, KeyError) as e:
            print(f"qd-perception sim-preview: {args.results}: {e}", file=sys.stderr)
            return 2
    n = len(frame.gt) if frame.gt is not None else 0
    title = f"{reader.scene_name(token)}  sample {token}  ({n} GT boxes, {len(frame.points)} points)"
    if pred is not None:
        title += f"  + {len(pred)} predictions (dashed, score >= {args.score_threshold})"
    save_figure(plot_frame(frame, pred, title=title, extent=args.extent), args.out)
    print(f"wrote {args.out}")
    return 0
