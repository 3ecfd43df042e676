"""Drawing helpers (matplotlib): BEV lidar + boxes, boxes projected into camera images.

All boxes are ``(N, 9)`` in the ego frame (see :mod:`qd_perception.geometry.boxes`); cameras
carry ``cam2ego`` (ego <- optical) and ``K``, as :class:`~qd_perception.data.types.CameraInput`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.types import CameraInput, Detections, Frame
from qd_perception.fileio import atomic_output
from qd_perception.geometry.boxes import BOX_EDGES, box_corners
from qd_perception.geometry.transforms import invert

#: one colour per detection class (index = class id), readable on dark and light images.
CLASS_COLORS: tuple[str, ...] = (
    "#1f77b4",  # car
    "#ff7f0e",  # truck
    "#8c564b",  # construction_vehicle
    "#d62728",  # bus
    "#9467bd",  # trailer
    "#7f7f7f",  # barrier
    "#e377c2",  # motorcycle
    "#bcbd22",  # bicycle
    "#2ca02c",  # pedestrian
    "#ffbf00",  # traffic_cone
)
#: camera layout of the preview: front row left->right, back row left->right (as seen from above).
CAMERA_GRID: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)


def project_boxes(boxes: np.ndarray, K: np.ndarray, cam2ego: np.ndarray, min_depth: float = 0.5):
    """Project the 8 corners of ego-frame boxes into an image.

    Returns ``(uv (N, 8, 2) pixels, in_front (N,) bool)``; ``in_front`` is True when every
    corner lies at least ``min_depth`` m in front of the camera (others cannot be drawn as
    straight lines through a pinhole).
    """
    corners = box_corners(boxes)  # (N, 8, 3) ego
    E = invert(cam2ego)
    cam = corners @ E[:3, :3].T + E[:3, 3]
    z = cam[..., 2]
    uv = (cam @ np.asarray(K).T)[..., :2] / np.maximum(z, 1e-6)[..., None]
    return uv, (z > min_depth).all(axis=1)


def draw_boxes_on_image(
    ax, camera: CameraInput, dets: Detections, linestyle: str = "-", lw: float = 1.0, alpha: float = 1.0
) -> int:
    """Draw ``dets`` (ego frame) on ``camera``'s image in ``ax``; returns the number drawn."""
    H, W = camera.image.shape[:2]
    if len(dets) == 0:
        return 0
    uv, ok = project_boxes(dets.boxes, camera.intrinsics, camera.cam2ego)
    n = 0
    for i in np.flatnonzero(ok):
        u, v = uv[i, :, 0], uv[i, :, 1]
        if u.max() < 0 or u.min() >= W or v.max() < 0 or v.min() >= H:
            continue
        color = CLASS_COLORS[int(dets.labels[i])]
        for a, b in BOX_EDGES:
            ax.plot([u[a], u[b]], [v[a], v[b]], color=color, lw=lw, ls=linestyle, alpha=alpha)
        n += 1
    return n


def draw_bev(
    ax,
    points: np.ndarray | None,
    gt: Detections | None = None,
    pred: Detections | None = None,
    extent: float = 50.0,
) -> None:
    """Bird's-eye view (ego frame, x forward = up): points coloured by height, GT solid, pred dashed."""
    if points is not None and len(points):
        p = points[(np.abs(points[:, 0]) < extent) & (np.abs(points[:, 1]) < extent)]
        ax.scatter(-p[:, 1], p[:, 0], s=0.2, c=np.clip(p[:, 2], -2.0, 3.0), cmap="viridis", linewidths=0)
    for dets, ls in ((gt, "-"), (pred, "--")):
        if dets is None or len(dets) == 0:
            continue
        corners = box_corners(dets.boxes)[:, :4, :2]  # bottom face
        # GT boxes without a lidar point (the devkit does not score them) are drawn faintly.
        faint = (dets.num_lidar_pts == 0) if dets.num_lidar_pts is not None else np.zeros(len(dets), bool)
        for i in range(len(dets)):
            c = corners[i]
            style = {
                "color": CLASS_COLORS[int(dets.labels[i])],
                "lw": 1.0,
                "ls": ls,
                "alpha": 0.3 if faint[i] else 1,
            }
            ring = np.vstack([c, c[:1]])
            ax.plot(-ring[:, 1], ring[:, 0], **style)
            front = c[:2].mean(0)  # heading tick: centre -> front face
            ctr = dets.boxes[i, :2]
            ax.plot([-ctr[1], -front[1]], [ctr[0], front[0]], **style)
    ax.plot([0], [0], marker="^", color="red", ms=6)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m, right)")
    ax.set_ylabel("x (m, forward)")


def _with_points(gt: Detections) -> Detections:
    """GT boxes hit by at least one lidar point (fully hidden objects would clutter the images)."""
    if gt.num_lidar_pts is None:
        return gt
    k = np.asarray(gt.num_lidar_pts) > 0
    return Detections(gt.boxes[k], gt.labels[k], gt.scores[k])


def plot_frame(frame: Frame, pred: Detections | None = None, title: str = "", extent: float = 50.0):
    """The six camera images with boxes and a BEV lidar view (right). Returns the figure.

    Ground truth is solid (in the images only boxes with lidar points), predictions dashed.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cams = {c.name: c for c in frame.cameras}
    fig = plt.figure(figsize=(17, 5.2), dpi=100)
    gs = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1.15], wspace=0.05, hspace=0.08)
    for r, row in enumerate(CAMERA_GRID):
        for c, name in enumerate(row):
            ax = fig.add_subplot(gs[r, c])
            ax.set_axis_off()
            cam = cams.get(name)
            if cam is None:
                ax.set_title(f"{name} (missing)", fontsize=8)
                continue
            ax.imshow(cam.image)
            if frame.gt is not None:
                draw_boxes_on_image(ax, cam, _with_points(frame.gt))
            if pred is not None:
                draw_boxes_on_image(ax, cam, pred, linestyle="--")
            H, W = cam.image.shape[:2]
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_title(name, fontsize=8)
    ax = fig.add_subplot(gs[:, 3])
    draw_bev(ax, frame.points, frame.gt, pred, extent)
    ax.tick_params(labelsize=7)
    ax.yaxis.tick_right()  # keep the BEV's labels off the camera images
    ax.yaxis.set_label_position("right")
    ax.xaxis.label.set_size(7)
    ax.yaxis.label.set_size(7)
    present = sorted({int(i) for d in (frame.gt, pred) if d is not None for i in d.labels})
    handles = [Line2D([], [], color=CLASS_COLORS[i], label=CLASS_NAMES[i]) for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save atomically (tmp + replace) and close the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
