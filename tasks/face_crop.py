"""face_crop: a smoothed patient face track per recording, cropped per window to a fixed-size clip.

Privacy first: faces are blurred by ``deidentify`` and no face leaves it, so
this stage never runs a face detector.  It locates the patient's face from
deidentify's box log (``02_deidentify/boxes/<id>.parquet``, table
``face_boxes``: every blurred box per source frame) and crops the
*de-identified* 2 fps frame.  The face inside the crop stays blurred: the
crop magnifies head and face-region movement (head turns, jerks, gross
facial motion); fine facial detail is removed by design.

Steps for one recording (``face_crop_recording``):

1. **Observations.**  Each 2 fps frame (``03_downsample/frames/<id>.parquet``,
   pts on the k / fps grid) takes the ``detected`` boxes of the first source
   frame in its slot ``[pts, pts + 1/fps)`` that has any (at most
   ``MAX_OBS_LAG_S`` after the slot start).  ``gapfill`` boxes are not used:
   they are neighbouring frames' boxes, stacked.  Coordinates are scaled from
   the source frame size (``02_deidentify/deidentified.parquet``) to the 2 fps
   frame size.
2. **Tracks.**  Boxes are linked frame to frame (IoU >= ``LINK_IOU`` or centre
   within ``LINK_CENTRE`` box sizes); a track survives misses up to ``hold_s``.
3. **The patient.**  EMU recordings show the patient in bed for the whole
   recording while staff come and go, so the patient is the track with the
   most detections; other tracks that never coexist with it and sit within
   ``FRAGMENT_DIST`` face sizes of it (the same face after a long miss, e.g.
   a turn to profile) join it.  A staff face is never the patient unless staff
   outlast the patient in the recording.
4. **Hold and smooth.**  Misses up to ``hold_s`` are bridged (linear
   interpolation between detections, or the nearest box at the ends); the
   centre and size are smoothed with a centred moving average over
   ``smooth_s`` (only over frames that have a box, so no lag and no drift
   into gaps).  The crop box is the square of side ``max(w, h) * (1 + 2 *
   margin)`` around the smoothed centre.
5. **Clips.**  One ``size`` x ``size`` clip per window at 2 fps with the
   window's frame count (frames past the edge are black).  Frames of a window
   that have no track box borrow the nearest track box.  A window without a
   single detected patient face gets no clip and status ``no_face``.

Outputs under ``out_dir`` (``data/05_face_crop/``): ``clips/<id>_w<NNN>.mp4``,
``tracks/<id>.parquet`` (table ``face_tracks``: recording_id, frame_index,
pts_s, x0..y1 = smoothed crop box in 2 fps pixels, detected, held; only frames
on the track), ``arms/<id>.parquet`` (table ``arms``: arm ``face_crop``, path
relative to the data dir or null, status ``ok | no_face``) and, for the
stage, ``arms.parquet`` (``collect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.media import ClipPlan, probe, write_clips
from tasks.params import FaceCropParams
from tasks.schema import concat_write, read_table, write_table

ARM = "face_crop"
MAX_OBS_LAG_S = 0.25  # seconds; a box observed later than this after the kept frame is not its box
LINK_IOU = 0.2  # boxes of consecutive observations with this overlap belong to one track
LINK_CENTRE = 0.6  # ...or centres closer than this many box sizes
FRAGMENT_DIST = 1.5  # face sizes: a non-overlapping track this close to the patient's is the patient
SLOT_EPS_S = 1e-6  # the tolerance downsample uses for its slot grid
CLIP_CRF = 20  # the crops are what the model sees: a little higher quality than default


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


def crop_boxes(track: np.ndarray, margin: float) -> np.ndarray:
    """Square crop boxes (x0, y0, x1, y1) around (cx, cy, side) rows, ``margin`` of the side on every side."""
    half = track[:, 2:3] * (1 + 2 * margin) / 2
    return np.concatenate([track[:, :2] - half, track[:, :2] + half], 1)


def crop(rgb: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The region ``box`` of ``rgb`` (black outside the frame) resized to ``size`` x ``size``."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    # An affine warp handles sub-pixel boxes and the frame edge in one step.
    s = size / max(x1 - x0, 1e-6)
    m = np.array([[s, 0, -x0 * s], [0, size / max(y1 - y0, 1e-6), -y0 * size / max(y1 - y0, 1e-6)]])
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def jitter(centres: np.ndarray, mask: np.ndarray) -> float:
    """Median frame-to-frame centre displacement (pixels) over consecutive frames both in ``mask``."""
    both = mask[1:] & mask[:-1]
    if not both.any():
        return float("nan")
    d = np.hypot(*(centres[1:] - centres[:-1])[both].T)
    return float(np.median(d))


def _source_size(data_dir: Path, rid: str) -> tuple[int, int]:
    deid = data_dir / "02_deidentify"
    stage = deid / "deidentified.parquet"
    table = read_table("deidentified", stage if stage.is_file() else deid / "results" / f"{rid}.parquet")
    rows = [r for r in table.to_pylist() if r["recording_id"] == rid]
    if not rows:
        raise ValueError(f"{rid}: not in the deidentify results")
    return int(rows[0]["width"]), int(rows[0]["height"])


def rel(path: Path, data_dir: Path) -> str:
    """``path`` relative to the data dir (as the arms table stores it)."""
    try:
        return Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def clip_name(recording_id: str, window_index: int) -> str:
    return f"{recording_id}_w{window_index:03d}.mp4"


def face_crop_recording(recording_id: str, data_dir: Path, out_dir: Path, params: FaceCropParams) -> dict:
    """Track the patient's face in one recording and write one crop clip per window (see module doc).

    Returns a summary: recording_id, n_windows, n_no_face, n_frames,
    detected_frames, held_frames, jitter_raw_px, jitter_smoothed_px (median
    frame-to-frame centre motion of the raw patient boxes and of the crop).
    """
    rid = recording_id
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    video = data_dir / "03_downsample" / "videos" / f"{rid}.mp4"
    frames = read_table("frames", data_dir / "03_downsample" / "frames" / f"{rid}.parquet")
    windows = read_table("windows", data_dir / "04_window" / "windows" / f"{rid}.parquet").to_pylist()
    boxes = read_table("face_boxes", data_dir / "02_deidentify" / "boxes" / f"{rid}.parquet")
    src_w, src_h = _source_size(data_dir, rid)
    info = probe(video)
    fps = info.fps or 2.0
    pts = frames.column("pts_s").to_pylist()
    fidx = frames.column("frame_index").to_pylist()
    n = len(pts)
    hold = max(0, round(params.hold_s * fps))
    smooth = max(1, round(params.smooth_s * fps))

    obs = observations(boxes, pts, fps=fps, scale=(info.width / src_w, info.height / src_h))
    det = patient_track(build_tracks(obs, hold=hold))
    track, detected, held = fill_and_smooth(det, n, hold=hold, smooth=smooth)
    boxes_2fps = crop_boxes(track, params.margin)
    on = ~np.isnan(track[:, 0])
    raw_c = np.full((n, 2), np.nan)
    for k, b in det.items():
        raw_c[k] = (b.cx, b.cy)

    write_table("face_tracks", [
        dict(recording_id=rid, frame_index=fidx[k], pts_s=pts[k], x0=b[0], y0=b[1], x1=b[2], y1=b[3],
             detected=bool(detected[k]), held=bool(held[k]))
        for k, b in enumerate(boxes_2fps) if on[k]
    ], out_dir / "tracks" / f"{rid}.parquet")

    # Window frame ranges are frame_index values; map them to positions in the frames table.
    pos = {f: k for k, f in enumerate(fidx)}
    plans = []
    arms = []
    on_idx = np.flatnonzero(on)
    for w in windows:
        ks = [pos[f] for f in range(w["frame_start"], w["frame_end"]) if f in pos]
        has_face = bool(ks) and bool(detected[ks].any())
        path = out_dir / "clips" / clip_name(rid, w["window_index"])
        if has_face:
            # Frames off the track borrow the nearest track box, so the clip keeps the window's frame count.
            use = {k: boxes_2fps[k] if on[k] else boxes_2fps[on_idx[np.argmin(np.abs(on_idx - k))]] for k in ks}
            plans.append((min(ks), max(ks), path, use))
        else:
            path.unlink(missing_ok=True)  # a stale clip from an earlier run must not outlive its status
        arms.append(dict(recording_id=rid, window_index=w["window_index"], arm=ARM,
                         path=rel(path, data_dir) if has_face else None, status="ok" if has_face else "no_face"))
    _write_clips(video, plans, size=params.size, fps=fps)
    write_table("arms", arms, out_dir / "arms" / f"{rid}.parquet")
    return dict(recording_id=rid, n_windows=len(windows), n_no_face=sum(a["status"] == "no_face" for a in arms),
                n_frames=n, detected_frames=int(detected.sum()), held_frames=int(held.sum()),
                jitter_raw_px=jitter(raw_c, detected), jitter_smoothed_px=jitter(track[:, :2], detected))


def _write_clips(video: Path, plans: list[tuple[int, int, Path, dict]], *, size: int, fps: float) -> None:
    """One pass over the 2 fps video: each window's crop clip (frames without a box are left out)."""
    clips = [ClipPlan(k0, k1, path) for k0, k1, path, _ in plans]
    uses = [use for *_, use in plans]
    write_clips(video, clips, lambda i, k, rgb: crop(rgb, uses[i][k], size) if k in uses[i] else None,
                fps=fps, crf=CLIP_CRF)


def collect(out_dir: Path, recording_ids: list[str]) -> pa.Table:
    """Concatenate per-recording arms tables into ``arms.parquet``."""
    out_dir = Path(out_dir)
    return concat_write("arms", [out_dir / "arms" / f"{rid}.parquet" for rid in sorted(recording_ids)],
                        out_dir / "arms.parquet")