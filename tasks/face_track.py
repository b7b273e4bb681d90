"""Face tracks over the 2 fps frames: the de-identify stage's face boxes linked into tracks, the patient's picked.

Shared by the face-crop and pose stages (the patient's face says which
person is the patient).  Boxes come from ``face_boxes`` tables in source
pixels; ``observations`` scales them to the 2 fps video's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import layout
from tasks.layout import rel
from tasks.schema import read_table

# What a per-recording stage that tracks the patient over the 2 fps windows reads (face_crop, pose).
TRACK_INPUTS = (rel("deidentify", "boxes", "{rid}.parquet"), rel("downsample", "videos", "{rid}.mp4"),
                rel("downsample", "frames", "{rid}.parquet"), rel("window", "windows", "{rid}.parquet"))
MAX_OBS_LAG_S = 0.25  # seconds; a box observed later than this after the kept frame is not its box
LINK_IOU = 0.2  # boxes of consecutive observations with this overlap belong to one track
LINK_CENTRE = 0.6  # ...or centres closer than this many box sizes
SLOT_EPS_S = 1e-6  # the tolerance downsample uses for its slot grid
FRAGMENT_DIST = 1.5  # face sizes: a non-overlapping track this close to the patient's is the patient


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def _linked(a: Box, b: Box) -> float | None:
    """Link cost (lower is better) between two boxes, or None when they are different faces."""
    iou = _iou(a, b)
    dist = float(np.hypot(a.cx - b.cx, a.cy - b.cy)) / max(a.side, b.side, 1e-6)
    if iou >= LINK_IOU or dist <= LINK_CENTRE:
        return dist - iou
    return None


def observations(boxes: pa.Table, pts: list[float], *, fps: float, scale: tuple[float, float]) -> list[list[Box]]:
    """Detected face boxes at each 2 fps frame (``pts`` on the k / fps grid), scaled to its pixels.

    ``boxes`` is a ``face_boxes`` table (source pixels); ``scale`` is
    (2 fps width / source width, 2 fps height / source height).
    """
    # fresh detections only: a "held" box repeats the last pass's on a frame where nothing moved (tasks/motion.py),
    # and the frames without a fresh one borrow the nearest track box, which is the same place
    det = boxes.filter(pc.equal(boxes.column("source"), "detected"))
    t = np.asarray(det.column("pts_s").to_pylist(), np.float64)
    fi = np.asarray(det.column("frame_index").to_pylist(), np.int64)
    xyxy = np.stack([np.asarray(det.column(c).to_pylist(), np.float64) for c in ("x0", "y0", "x1", "y1")], 1) \
        if det.num_rows else np.zeros((0, 4))
    order = np.argsort(t, kind="stable")
    t, fi, xyxy = t[order], fi[order], xyxy[order]
    sx, sy = scale
    lag = min(MAX_OBS_LAG_S, 1.0 / fps)
    out: list[list[Box]] = []
    for p in pts:
        i = int(np.searchsorted(t, p - SLOT_EPS_S, side="left"))
        if i >= len(t) or t[i] > p + lag - SLOT_EPS_S:
            out.append([])
            continue
        same = fi == fi[i]  # every box of that source frame
        out.append([Box(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in xyxy[same]])
    return out


def build_tracks(obs: list[list[Box]], *, hold: int) -> list[dict[int, Box]]:
    """Link boxes over frames into tracks (frame -> box); a track ends after ``hold`` missed frames."""
    tracks: list[dict[int, Box]] = []
    active: list[int] = []  # indices into tracks
    for k, boxes in enumerate(obs):
        active = [i for i in active if k - max(tracks[i]) <= hold + 1]
        pairs = []
        for i in active:
            last = tracks[i][max(tracks[i])]
            for j, b in enumerate(boxes):
                cost = _linked(last, b)
                if cost is not None:
                    pairs.append((cost, i, j))
        used_t, used_b = set(), set()
        for _, i, j in sorted(pairs):
            if i in used_t or j in used_b:
                continue
            tracks[i][k] = boxes[j]
            used_t.add(i), used_b.add(j)
        for j, b in enumerate(boxes):
            if j not in used_b:
                tracks.append({k: b})
                active.append(len(tracks) - 1)
    return tracks


def patient_track(tracks: list[dict[int, Box]]) -> dict[int, Box]:
    """The patient's detections (frame -> box): the longest track plus its non-overlapping fragments."""
    if not tracks:
        return {}
    order = sorted(range(len(tracks)), key=lambda i: (-len(tracks[i]), min(tracks[i])))
    main = dict(tracks[order[0]])
    ref = _median_box(main)
    for i in order[1:]:
        t = tracks[i]
        span = range(min(t), max(t) + 1)
        if any(k in main for k in span):
            continue  # coexists with the patient: someone else
        other = _median_box(t)
        if np.hypot(other.cx - ref.cx, other.cy - ref.cy) <= FRAGMENT_DIST * ref.side:
            main.update(t)
    return main


def _median_box(track: dict[int, Box]) -> Box:
    a = np.array([[b.x0, b.y0, b.x1, b.y1] for b in track.values()])
    return Box(*np.median(a, 0))


def fill_and_smooth(det: dict[int, Box], n: int, *, hold: int, smooth: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame (cx, cy, side) of the patient face, NaN off the track; plus detected and held masks.

    Misses of up to ``hold`` frames after (or before) a detection are bridged:
    linearly between two detections, else with the nearest one.  Then a
    centred moving average of ``smooth`` frames over frames on the track.
    """
    raw = np.full((n, 3), np.nan)
    for k, b in det.items():
        raw[k] = (b.cx, b.cy, b.side)
    detected = ~np.isnan(raw[:, 0])
    filled = raw.copy()
    idx = np.flatnonzero(detected)
    for k in np.flatnonzero(~detected):
        j = int(np.searchsorted(idx, k))
        p = idx[j - 1] if j > 0 else None
        q = idx[j] if j < len(idx) else None
        if p is not None and q is not None and q - p <= 2 * hold + 1:
            w = (k - p) / (q - p)
            filled[k] = (1 - w) * raw[p] + w * raw[q]
        elif p is not None and k - p <= hold:
            filled[k] = raw[p]
        elif q is not None and q - k <= hold:
            filled[k] = raw[q]
    held = ~detected & ~np.isnan(filled[:, 0])
    on = ~np.isnan(filled[:, 0])
    half = max(0, smooth // 2)
    smoothed = np.full_like(filled, np.nan)
    for k in np.flatnonzero(on):
        lo, hi = max(0, k - half), min(n, k + half + 1)
        seg = filled[lo:hi][on[lo:hi]]
        smoothed[k] = seg.mean(0)
    return smoothed, detected, held


def source_size(data_dir: Path, rid: str) -> tuple[int, int]:
    deid = layout.stage_dir(data_dir, "deidentify")
    stage = deid / "deidentified.parquet"
    table = read_table("deidentified", stage if stage.is_file() else deid / "results" / f"{rid}.parquet")
    rows = [r for r in table.to_pylist() if r["recording_id"] == rid]
    if not rows:
        raise ValueError(f"{rid}: not in the deidentify results")
    return int(rows[0]["width"]), int(rows[0]["height"])
