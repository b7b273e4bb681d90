"""pose: mediapipe pose landmarks of the patient per 2 fps frame, and a skeleton overlay clip per window.

Model: ``mediapipe.solutions.pose`` (BlazePose, mediapipe 0.10.14,
``model_complexity`` 1, the model the wheel ships), in tracking mode over the
de-identified 2 fps frames (``03_downsample/videos/<id>.mp4``).

Three things shape this stage:

* **Blurred faces.**  BlazePose's person detector keys on the face, which
  deidentify has blurred, so it often fails to (re)acquire a person while
  the landmark tracker, once started, follows the body fine.  Frames missed
  before an acquisition are therefore **backfilled**: a fresh tracker runs
  backwards from the acquired frame over the missed frames (kept in a
  buffer of at most ``MAX_BACKFILL_S``).
* **One person per model.**  mediapipe pose returns a single person.  The
  patient is told apart from staff by the patient face track, which
  ``tasks.face_crop`` builds from deidentify's box log (no face detection on
  frames here either): a pose is the patient's when its head (mean of the
  face landmarks 0-10) lies within ``HEAD_GATE`` face sizes of the patient
  face.  A pose whose head is nearer another face (staff) resets the tracker
  and the frame is retried on a body-sized crop below the patient's face; a
  pose near no face is a poor fit of the patient (common on the frame of
  acquisition): that frame is dropped but the tracker keeps running.
  Frames with no patient face on record accept the pose as is.
* **Confidence.**  ``min_tracking_confidence`` trades coverage for accuracy:
  on the phantom 0.5 gives ~80 % of frames with a pose, 0.3 gives ~99 % but
  keeps frames where the knees drift (median knee error 5 % -> 10 % of body
  height).  Landmarks are not smoothed over time (frames are 0.5 s apart).

Outputs under ``out_dir`` (``data/06_pose/``): ``landmarks/<id>.parquet``
(table ``pose_landmarks``: recording_id, frame_index, pts_s, landmark 0..32,
name, x/y/z normalised to the 2 fps frame, visibility, wx/wy/wz world metres
hip-centred; 33 rows per frame with a patient pose -- these feed the gait
track's joint angles), ``overlays/<id>_w<NNN>.mp4`` (the window's 2 fps
de-identified frames with the limb skeleton drawn; the window's frame
count; none for a window without any patient pose), ``arms/<id>.parquet``
(arm ``pose_overlay``, status ``ok | no_pose``) and, for the stage,
``arms.parquet`` (``collect``).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import cv2
import numpy as np

from tasks import face_track as ft
from tasks import layout
from tasks.contract import Stage, Table
from tasks.detectors import import_mediapipe, landmark_names
from tasks.media import ClipPlan, iter_frames, probe, write_clips
from tasks.params import PoseParams, Params
from tasks.schema import read_table, write_table

ARM = "pose_overlay"
N_LANDMARKS = 33  # BlazePose topology
FACE_LANDMARKS = range(0, 11)  # nose .. mouth: drawn never (the face stays de-identified), used for the head point
LIMB_LANDMARKS = range(11, 33)  # shoulders .. feet
HEAD_GATE = 1.2  # face sizes: the pose's head must lie this close to the patient face centre
BODY_DROP = 2.0  # face sizes from the face centre down to the retry crop's centre
BODY_HALF = 3.5  # face sizes: half the side of the retry crop
MAX_BACKFILL_S = 30.0  # seconds of missed frames kept for backwards tracking
FACE_HOLD_S = 2.0  # patient face anchor: misses bridged this long (as face_crop's default hold_s)
FACE_SMOOTH_S = 0.0  # the anchor is not smoothed: the gate is wide enough
OVERLAY_CRF = 20
PATIENT, OTHER, POOR = "patient", "other", "poor"
LIMB_RGB = (0, 255, 255)
JOINT_RGB = (255, 64, 64)


def _pose_model(params: PoseParams, *, static: bool):
    mp = import_mediapipe()
    return mp.solutions.pose.Pose(static_image_mode=static, model_complexity=params.model_complexity,
                                  smooth_landmarks=False, enable_segmentation=False,
                                  min_detection_confidence=params.min_detection_confidence,
                                  min_tracking_confidence=params.min_tracking_confidence)


def limb_connections() -> list[tuple[int, int]]:
    """BlazePose connections between limb/torso landmarks (no face points)."""
    mp = import_mediapipe()

    return sorted((a, b) for a, b in mp.solutions.pose.POSE_CONNECTIONS if a in LIMB_LANDMARKS and b in LIMB_LANDMARKS)


def _as_array(result, *, roi: tuple[float, float, float, float] | None, size: tuple[int, int]) -> np.ndarray | None:
    """(33, 7) x, y, z, visibility, wx, wy, wz with x/y normalised to the full frame, or None."""
    if not result.pose_landmarks:
        return None
    lm = result.pose_landmarks.landmark
    wl = result.pose_world_landmarks.landmark if result.pose_world_landmarks else None
    a = np.zeros((N_LANDMARKS, 7), np.float32)
    for i in range(N_LANDMARKS):
        a[i, :4] = (lm[i].x, lm[i].y, lm[i].z, lm[i].visibility)
        if wl is not None:
            a[i, 4:] = (wl[i].x, wl[i].y, wl[i].z)
    if roi is not None:  # crop coordinates -> full-frame coordinates
        w, h = size
        x0, y0, x1, y1 = roi
        a[:, 0] = (x0 + a[:, 0] * (x1 - x0)) / w
        a[:, 1] = (y0 + a[:, 1] * (y1 - y0)) / h
        a[:, 2] *= (x1 - x0) / w
    return a


class _PatientPose:
    """Runs the tracker frame by frame and keeps only poses that belong to the patient."""

    def __init__(self, params: PoseParams, face: np.ndarray, others: list[list[ft.Box]]) -> None:
        self.params, self.face = params, face  # face: (n, 3) cx, cy, side in 2 fps pixels, NaN off track
        self.others = others  # per frame: face boxes that are not the patient's
        self.tracker = _pose_model(params, static=False)
        self.static = _pose_model(params, static=True)
        self.rejected = 0

    def close(self) -> None:
        self.tracker.close()
        self.static.close()

    def reset(self) -> None:
        self.tracker.close()
        self.tracker = _pose_model(self.params, static=False)

    def whose(self, k: int, a: np.ndarray, size: tuple[int, int]) -> str:
        """``patient``, ``other`` (the head sits nearer another face: staff) or ``poor`` (a bad fit)."""
        cx, cy, side = self.face[k]
        if np.isnan(cx):
            return PATIENT  # no patient face on record here: nothing to tell staff apart with
        head = a[list(FACE_LANDMARKS), :2].mean(0) * size
        d = float(np.hypot(head[0] - cx, head[1] - cy))
        if d <= HEAD_GATE * side:
            return PATIENT
        if any(np.hypot(head[0] - b.cx, head[1] - b.cy) < d for b in self.others[k]):
            return OTHER
        return POOR

    def track(self, k: int, rgb: np.ndarray) -> np.ndarray | None:
        size = (rgb.shape[1], rgb.shape[0])
        a = _as_array(self.tracker.process(rgb), roi=None, size=size)
        if a is None:
            return None
        who = self.whose(k, a, size)
        if who == PATIENT:
            return a
        self.rejected += 1
        if who == POOR:
            return None  # the tracker usually settles on the next frame; keep it running
        self.reset()  # the tracker latched onto someone else: let it re-acquire
        return self.retry(k, rgb)

    def retry(self, k: int, rgb: np.ndarray) -> np.ndarray | None:
        """One static detection on a body-sized crop below the patient's face."""
        cx, cy, side = self.face[k]
        if np.isnan(cx):
            return None
        h, w = rgb.shape[:2]
        half = BODY_HALF * side
        x0, y0 = int(max(0, cx - half)), int(max(0, cy + BODY_DROP * side - half))
        x1, y1 = int(min(w, cx + half)), int(min(h, cy + BODY_DROP * side + half))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        a = _as_array(self.static.process(np.ascontiguousarray(rgb[y0:y1, x0:x1])), roi=(x0, y0, x1, y1),
                      size=(w, h))
        return a if a is not None and self.whose(k, a, (w, h)) == PATIENT else None

    def backfill(self, frames: list[tuple[int, np.ndarray]]) -> dict[int, np.ndarray]:
        """Track backwards from an acquired frame over the missed frames before it (newest first)."""
        out: dict[int, np.ndarray] = {}
        back = _pose_model(self.params, static=False)
        try:
            for k, rgb in frames:
                a = _as_array(back.process(rgb), roi=None, size=(rgb.shape[1], rgb.shape[0]))
                if a is not None and self.whose(k, a, (rgb.shape[1], rgb.shape[0])) == PATIENT:
                    out[k] = a
        finally:
            back.close()
        return out


def patient_face(data_dir: Path, rid: str, pts: list[float], *, fps: float, size: tuple[int, int],
                 hold_s: float, smooth_s: float) -> tuple[np.ndarray, list[list[ft.Box]]]:
    """Patient face (n, 3: centre and size, NaN off the track) and the other faces per 2 fps frame.

    Both come from deidentify's box log through face_crop's tracker.
    """
    boxes = read_table("face_boxes", layout.path(data_dir, "deidentify", "boxes", f"{rid}.parquet"))
    src_w, src_h = ft.source_size(data_dir, rid)
    obs = ft.observations(boxes, pts, fps=fps, scale=(size[0] / src_w, size[1] / src_h))
    hold = max(0, round(hold_s * fps))
    det = ft.patient_track(ft.build_tracks(obs, hold=hold))
    track, _, _ = ft.fill_and_smooth(det, len(pts), hold=hold, smooth=max(1, round(smooth_s * fps)))
    others = [[b for b in boxes if det.get(k) is not b] for k, boxes in enumerate(obs)]
    return track, others


def detect_patient(video: Path, face: np.ndarray, others: list[list[ft.Box]], params: PoseParams, *, fps: float
                   ) -> tuple[dict[int, np.ndarray], dict]:
    """Patient landmarks per frame position (33 x 7 arrays) and counts (rejected, backfilled)."""
    runner = _PatientPose(params, face, others)
    found: dict[int, np.ndarray] = {}
    missed: deque = deque(maxlen=max(1, round(MAX_BACKFILL_S * fps)))
    backfilled = 0
    try:
        for f in iter_frames(video):
            a = runner.track(f.index, f.rgb)
            if a is None:
                missed.append((f.index, f.rgb))
                continue
            found[f.index] = a
            if missed and missed[-1][0] == f.index - 1:
                run = []
                for k, rgb in reversed(missed):  # only the run of misses right before this frame
                    if run and run[-1][0] != k + 1:
                        break
                    run.append((k, rgb))
                got = runner.backfill([(f.index, f.rgb)] + run)
                got.pop(f.index, None)
                found.update(got)
                backfilled += len(got)
            missed.clear()
    finally:
        runner.close()
    return found, dict(rejected=runner.rejected, backfilled=backfilled)


def draw_skeleton(rgb: np.ndarray, a: np.ndarray, connections: list[tuple[int, int]]) -> np.ndarray:
    """The frame with limb connections and joints drawn (face landmarks never drawn)."""
    img = rgb.copy()
    h, w = img.shape[:2]
    th = max(1, round(min(h, w) / 150))
    pts = [(int(round(x * w)), int(round(y * h))) for x, y in a[:, :2]]
    for i, j in connections:
        cv2.line(img, pts[i], pts[j], LIMB_RGB, th, cv2.LINE_AA)
    for i in LIMB_LANDMARKS:
        cv2.circle(img, pts[i], th + 1, JOINT_RGB, -1, cv2.LINE_AA)
    return img


def pose_recording(recording_id: str, data_dir: Path, out_dir: Path, params: PoseParams) -> dict:
    """Patient pose landmarks and per-window overlay clips for one recording (see module doc).

    Returns a summary: recording_id, n_windows, n_no_pose, n_frames,
    pose_frames (frames with a patient pose), rejected (poses that were not
    the patient), backfilled (frames recovered by backwards tracking).
    """
    rid = recording_id
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    video = layout.path(data_dir, "downsample", "videos", f"{rid}.mp4")
    frames = read_table("frames", layout.path(data_dir, "downsample", "frames", f"{rid}.parquet"))
    windows = read_table("windows", layout.path(data_dir, "window", "windows", f"{rid}.parquet")).to_pylist()
    info = probe(video)
    fps = info.fps or 2.0
    pts = frames.column("pts_s").to_pylist()
    fidx = frames.column("frame_index").to_pylist()
    face, others = patient_face(data_dir, rid, pts, fps=fps, size=(info.width, info.height), hold_s=FACE_HOLD_S,
                        smooth_s=FACE_SMOOTH_S)
    found, counts = detect_patient(video, face, others, params, fps=fps)

    names = landmark_names()
    rows = []
    for k in sorted(found):
        a = found[k]
        for i in range(N_LANDMARKS):
            rows.append(dict(recording_id=rid, frame_index=fidx[k], pts_s=pts[k], landmark=i, name=names[i],
                             x=a[i, 0], y=a[i, 1], z=a[i, 2], visibility=a[i, 3], wx=a[i, 4], wy=a[i, 5],
                             wz=a[i, 6]))
    write_table("pose_landmarks", rows, out_dir / "landmarks" / f"{rid}.parquet")

    pos = {f: k for k, f in enumerate(fidx)}
    plans, arms = [], []
    for w in windows:
        ks = [pos[f] for f in range(w["frame_start"], w["frame_end"]) if f in pos]
        ok = any(k in found for k in ks)
        path = out_dir / "overlays" / layout.window_name(rid, w["window_index"], ".mp4")
        if ok:
            plans.append((min(ks), max(ks), path))
        else:
            path.unlink(missing_ok=True)
        arms.append(dict(recording_id=rid, window_index=w["window_index"], arm=ARM,
                         path=layout.relative(path, data_dir) if ok else None, status="ok" if ok else "no_pose"))
    _write_overlays(video, plans, found, fps=fps)
    write_table("arms", arms, out_dir / "arms" / f"{rid}.parquet")
    return dict(recording_id=rid, n_windows=len(windows), n_no_pose=sum(a["status"] == "no_pose" for a in arms),
                n_frames=len(pts), pose_frames=len(found), **counts)


def _write_overlays(video: Path, plans: list[tuple[int, int, Path]], found: dict[int, np.ndarray], *,
                    fps: float) -> None:
    """One pass over the 2 fps video: each window's frames with the patient's skeleton drawn."""
    conns = limb_connections()
    write_clips(video, [ClipPlan(k0, k1, path) for k0, k1, path in plans],
                lambda i, k, rgb: draw_skeleton(rgb, found[k], conns) if k in found else rgb,
                fps=fps, crf=OVERLAY_CRF)


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    return pose_recording(recording_id, data_dir, out_dir, params.pose)


STAGE = Stage(
    "pose", "recording", run, "the patient's pose (BlazePose) and a skeleton overlay clip per window",
    after="window", inputs=ft.TRACK_INPUTS, tables=(Table("arms", "arms"),))
