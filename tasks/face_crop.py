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

from pathlib import Path

import cv2
import numpy as np

from tasks import layout
from tasks.contract import Stage, Table
from tasks import face_track as ft
from tasks.face_track import build_tracks, fill_and_smooth, observations, patient_track, source_size
from tasks.media import ClipPlan, probe, write_clips
from tasks.params import FaceCropParams, Params
from tasks.schema import read_table, write_table

ARM = "face_crop"
CLIP_CRF = 20  # the crops are what the model sees: a little higher quality than default


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


def face_crop_recording(recording_id: str, data_dir: Path, out_dir: Path, params: FaceCropParams) -> dict:
    """Track the patient's face in one recording and write one crop clip per window (see module doc).

    Returns a summary: recording_id, n_windows, n_no_face, n_frames,
    detected_frames, held_frames, jitter_raw_px, jitter_smoothed_px (median
    frame-to-frame centre motion of the raw patient boxes and of the crop).
    """
    rid = recording_id
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    video = layout.path(data_dir, "downsample", "videos", f"{rid}.mp4")
    frames = read_table("frames", layout.path(data_dir, "downsample", "frames", f"{rid}.parquet"))
    windows = read_table("windows", layout.path(data_dir, "window", "windows", f"{rid}.parquet")).to_pylist()
    boxes = read_table("face_boxes", layout.path(data_dir, "deidentify", "boxes", f"{rid}.parquet"))
    src_w, src_h = source_size(data_dir, rid)
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
        path = out_dir / "clips" / layout.window_name(rid, w["window_index"], ".mp4")
        if has_face:
            # Frames off the track borrow the nearest track box, so the clip keeps the window's frame count.
            use = {k: boxes_2fps[k] if on[k] else boxes_2fps[on_idx[np.argmin(np.abs(on_idx - k))]] for k in ks}
            plans.append((min(ks), max(ks), path, use))
        else:
            path.unlink(missing_ok=True)  # a stale clip from an earlier run must not outlive its status
        arms.append(dict(recording_id=rid, window_index=w["window_index"], arm=ARM,
                         path=layout.relative(path, data_dir) if has_face else None,
                         status="ok" if has_face else "no_face"))
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


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    return face_crop_recording(recording_id, data_dir, out_dir, params.face_crop)


STAGE = Stage(
    "face_crop", "recording", run, "the patient's face, tracked and cropped, one clip per window",
    after="window", inputs=ft.TRACK_INPUTS, tables=(Table("arms", "arms"),))
