"""kinematics: de-identified gait clips -> mediapipe pose, head blur, joint angles, gait events, spatiotemporal parameters.

A per-recording stage over the gait cohort: gait clips come in through
``ingest.gait_inbox`` and go through ``deidentify`` like every recording, so
nothing here reads raw pixels.  Per clip (``kinematics_clip``), in this order:

1. **De-identified first** (the ``deidentify`` stage: face detectors,
   Gaussian blur, independent audit; a clip that fails it is quarantined
   there and never reaches this stage).  Its gap fill for this cohort is
   ``deidentify.gait_gap_fill_s`` (0.2 s), not the seizure track's 0.5 s: a
   face seen at t is blurred from t - gap to t + gap, and for a walker those
   boxes smear into a blob a few heads wide that hides where the head is, and
   BlazePose, which anchors on the head, then loses the pose or straightens
   the legs (figures: README "The gait track").  The pose-driven head blur
   (3.) still covers the output.
2. **Pose.**  mediapipe pose (BlazePose, ``model_complexity`` 1) tracks the
   walker on every frame of the de-identified clip: 33 landmarks in image
   coordinates and in world metres (hip-centred).
3. **Head blur.**  The head region of every pose (face landmarks 0-10, a box
   of ``HEAD_BOX_TORSO`` torso lengths) is blurred as well, on top of the
   face detectors' boxes: small profile faces in a side view are the ones
   face detectors miss.  Frames without a pose take the nearest pose's box
   within ``kinematics.head_hold_s``.  This is the clip every later stage
   reads (``videos/<id>.mp4``).
4. **Gait events** (heel strike, toe-off) and **legs.**  In a side view a
   monocular pose model cannot tell the near leg from the far one: on the
   phantom mediapipe swaps them on a quarter of the frames, in bursts that recur at
   the same phase of the cycle, and its depth (z) follows its own labels.  So
   events are found side-agnostically: a heel strike is a peak of the
   distance between the two heels along the walk, a toe-off a trough of the
   most backward toe relative to the hip centre (Zeni et al. 2008).  Heel
   strikes alternate between two leg tracks; a toe-off belongs to the leg
   opposite the last heel strike.  Each frame's leg landmarks are then
   re-assigned to the tracks by fitting one periodic template (foot, ankle and
   knee position, knee flexion) against each track's own gait phase
   (``assign_legs``; it puts far more frames on the planted legs than
   mediapipe's labels do, see README "The gait track"; the arms keep
   mediapipe's labels, see ``LEG_PAIRS``).  A track is
   called ``left``/``right`` by mediapipe's majority label over the clip, so
   left/right could be mirrored for a whole clip (it was right on all phantom
   clips), but never flips frame to frame.
5. **Joint angles** per frame (degrees), sagittal ones in the plane of the
   walk, frontal ones from world landmarks (see ``ANGLES``).
6. **Spatiotemporal parameters** per clip from the events (``spatiotemporal``):
   cadence, step and stride time per side, swing %, double support %.

Sagittal angles come from the image landmarks by default
(``kinematics.sagittal_source: image``): the protocol films the walk from the
side, so the image plane is the sagittal plane, and on the phantom these
angles are closer to the planted joints than the same angles from
mediapipe's world landmarks (its metric depth is weak in profile; figures in
README "The gait track").  ``world`` computes them from the world landmarks projected
on the walk's plane.  Frontal angles (pelvic list, trunk lean) always use the
world landmarks (the image has no depth).

Identifiers: clips carry the pipeline's pseudonymous ids (ingest); nothing
here reads the private id map.  Subject ids and classes come in at the
``gait`` stage (``gait.labels``).

Inputs (``data_dir``, per clip): ``02_deidentify/videos/<id>.mp4`` and
``02_deidentify/results/<id>.parquet`` (its frame rate).

Outputs (``out_dir`` = ``data/14_kinematics``):

* ``videos/<id>.mp4``: the clip with every head blurred as well;
* ``landmarks/<id>.parquet`` (``pose_landmarks``, mediapipe's own labels);
* ``angles/<id>.parquet`` (``gait_angles``: one row per frame with a pose);
* ``events/<id>.parquet`` (``gait_detected_events``);
* ``results/<id>.parquet`` (``gait_kinematics``: status ok | no_pose + spatiotemporal row);
* stage tables ``kinematics.parquet`` (``gait_kinematics``) and ``events.parquet``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import face_blur, layout
from tasks.atomic import atomic_path
from tasks.contract import Stage, Table
from tasks.detectors import FaceBox, import_mediapipe, landmark_names
from tasks.errors import SemioflowError
from tasks.media import MediaError, VideoWriter, iter_frames, probe
from tasks.params import KinematicsParams, Params, PoseParams
from tasks.schema import GAIT, GAIT_ANGLES, GAIT_SPATIOTEMPORAL, read_table, write_table


N_LANDMARKS = 33
FACE = tuple(range(0, 11))  # nose .. mouth
LM = {  # mediapipe PoseLandmark indices
    "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14, "left_wrist": 15,
    "right_wrist": 16, "left_hip": 23, "right_hip": 24, "left_knee": 25, "right_knee": 26, "left_ankle": 27,
    "right_ankle": 28, "left_heel": 29, "right_heel": 30, "left_foot_index": 31, "right_foot_index": 32,
}
SIDES = ("left", "right")
LEG_PARTS = ("hip", "knee", "ankle", "heel", "foot_index")
# Only the legs are re-assigned.  mediapipe mixes up legs and arms independently in profile; its arm
# labels were right on 80 % of the phantom's frames, swapping the arms with the legs gave 59 % and an
# arm template fit (as assign_legs) 78 %, so the arms keep mediapipe's labels.
LEG_PAIRS = tuple((LM[f"left_{p}"], LM[f"right_{p}"]) for p in LEG_PARTS)

# Angle columns of ``gait_angles`` (degrees).  Sagittal: x forward, y up, counter-clockwise + (a limb
# swinging forward).  Pelvis tilt is the trunk axis' inclination about its clip median: mediapipe has
# no pelvic landmarks (ASIS/PSIS), so the absolute sagittal pelvis angle is not observable.
ANGLES = GAIT_ANGLES

HEAD_BOX_TORSO = 0.7  # head box side in torso lengths (head ~0.45 torso; margin for the hair and chin)
SMOOTH_WINDOW_S = 0.2  # Savitzky-Golay window for the event signals
SMOOTH_ORDER = 2
MIN_PROMINENCE_LEG = 0.05  # leg lengths: a heel/toe excursion smaller than this is no event
MIN_STEP_S = 0.25  # two heel strikes (either side) are at least this far apart (cadence < 240 steps/min)
PROMINENCE_SHARE = 0.3  # of the signal's p10-p90 range
STEP_GAP = 1.6  # an interval this many median steps long hides a missed heel strike
MAX_STEP_S = 1.0  # longest step the period search considers (cadence > 60 steps/min)
STEP_SPACING = 0.6  # heel strikes are at least this share of the clip's step period apart
PERIOD_PEAK_SHARE = 0.3  # the step period is the first autocorrelation peak this close to the highest
EVENTS = ("heel_strike", "toe_off")
TEMPLATE_HARMONICS = 3  # Fourier harmonics of a leg's trajectory over its gait cycle
ASSIGN_ROUNDS = 4  # template fit <-> leg assignment rounds
LEAD_PHASE = 0.05  # a leg's heel is furthest ahead just after its heel strike (phase 0)
KNEE_FEATURE_DEG = 30.0  # knee flexion enters the leg assignment in these units


# ---- pose --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseSeries:
    """Per-frame mediapipe output of one clip.

    ``image``: (n, 33, 3) pixel x, pixel y (down), visibility; ``world``: (n, 33, 3)
    metres (x right, y down, z away from the camera, hip-centred); rows of frames
    without a pose are NaN.  ``pts_s``: (n,) seconds.
    """

    pts_s: np.ndarray
    image: np.ndarray
    world: np.ndarray
    width: int
    height: int

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.image[:, 0, 0])

    def swapped(self, swap: np.ndarray, pairs: tuple[tuple[int, int], ...] = LEG_PAIRS) -> PoseSeries:
        """The series with the left/right landmark ``pairs`` exchanged on the frames where ``swap`` is True."""
        image, world = self.image.copy(), self.world.copy()
        for a, b in pairs:
            for arr in (image, world):
                arr[swap, a], arr[swap, b] = arr[swap, b], arr[swap, a].copy()
        return PoseSeries(self.pts_s, image, world, self.width, self.height)


def track_pose(video: Path, params: KinematicsParams) -> PoseSeries:
    """mediapipe pose on every frame of ``video`` (tracking mode, landmark smoothing on)."""
    mp = import_mediapipe()
    pp = PoseParams(min_detection_confidence=params.min_detection_confidence,
                    min_tracking_confidence=params.min_tracking_confidence)
    pts, img, wld = [], [], []
    width = height = 0
    with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=pp.model_complexity,
                                smooth_landmarks=True, enable_segmentation=False,
                                min_detection_confidence=pp.min_detection_confidence,
                                min_tracking_confidence=pp.min_tracking_confidence) as pose:
        for f in iter_frames(video):
            height, width = f.rgb.shape[:2]
            res = pose.process(f.rgb)
            a = np.full((N_LANDMARKS, 3), np.nan)
            w = np.full((N_LANDMARKS, 3), np.nan)
            if res.pose_landmarks is not None and res.pose_world_landmarks is not None:
                a = np.array([(p.x * width, p.y * height, p.visibility) for p in res.pose_landmarks.landmark])
                w = np.array([(p.x, p.y, p.z) for p in res.pose_world_landmarks.landmark])
            pts.append(f.pts_s)
            img.append(a)
            wld.append(w)
    if not pts:
        raise MediaError("the de-identified clip has no frames")
    return PoseSeries(np.array(pts), np.array(img), np.array(wld), width, height)


def pose_from_landmarks(landmarks, *, n_frames: int, fps: float, width: int, height: int) -> PoseSeries:
    """Rebuild a ``PoseSeries`` from a ``pose_landmarks`` table (as written here), without mediapipe."""
    cols = {c: landmarks.column(c).to_numpy() for c in ("frame_index", "landmark", "x", "y", "visibility",
                                                         "wx", "wy", "wz")}
    image = np.full((n_frames, N_LANDMARKS, 3), np.nan)
    world = np.full((n_frames, N_LANDMARKS, 3), np.nan)
    f, k = cols["frame_index"].astype(int), cols["landmark"].astype(int)
    image[f, k] = np.stack([cols["x"] * width, cols["y"] * height, cols["visibility"]], axis=-1)
    world[f, k] = np.stack([cols["wx"], cols["wy"], cols["wz"]], axis=-1)
    return PoseSeries(np.arange(n_frames) / fps, image, world, width, height)


def head_boxes(pose: PoseSeries, *, hold_frames: int) -> list[FaceBox | None]:
    """A box over the head of every pose (face landmarks' centre, ``HEAD_BOX_TORSO`` torso lengths a side).

    Frames without a pose take the nearest pose's box within ``hold_frames``.
    """
    n = len(pose.pts_s)
    own: list[FaceBox | None] = [None] * n
    for k in np.flatnonzero(pose.found):
        p = pose.image[k]
        c = p[list(FACE), :2].mean(0)
        sh = (p[LM["left_shoulder"], :2] + p[LM["right_shoulder"], :2]) / 2
        hip = (p[LM["left_hip"], :2] + p[LM["right_hip"], :2]) / 2
        half = HEAD_BOX_TORSO * float(np.linalg.norm(sh - hip)) / 2
        own[k] = FaceBox(max(c[0] - half, 0), max(c[1] - half, 0), min(c[0] + half, pose.width),
                         min(c[1] + half, pose.height), 1.0)
    out = list(own)
    have = np.flatnonzero([b is not None for b in own])
    for k in range(n):
        if out[k] is None and len(have):
            j = have[np.argmin(np.abs(have - k))]
            if abs(j - k) <= hold_frames:
                out[k] = own[j]
    return out


def blur_heads(src: Path, dst: Path, boxes: list[FaceBox | None], *, fps: float) -> int:
    """Re-encode ``src`` to ``dst`` with every head box blurred (Gaussian, as deidentify); returns frames."""
    info = probe(src)
    n = 0
    with VideoWriter(dst, width=info.width, height=info.height, fps=fps) as w:
        for f in iter_frames(src):
            rgb = np.ascontiguousarray(f.rgb)
            box = boxes[f.index] if f.index < len(boxes) else None
            if box is not None:
                face_blur.pixelate(rgb, box, mode="gaussian")
            w.write(rgb)
            n += 1
    return n


# ---- geometry ------------------------------------------------------------------------------


def signed_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed angle (degrees) from 2D vectors ``a`` to ``b`` (..., 2), counter-clockwise +."""
    return np.degrees(np.arctan2(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], (a * b).sum(-1)))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Frame3:
    """The walk's axes in mediapipe world coordinates: forward, up, subject's right (unit vectors)."""

    forward: np.ndarray
    up: np.ndarray
    right: np.ndarray


def walk_axes(pose: PoseSeries) -> tuple[Frame3, float]:
    """World axes of the walk and the image direction of walking (+1: towards the image's right).

    Forward is where the toes point (heel -> foot index), made horizontal;
    right = forward x up (mediapipe's world frame is right-handed).
    """
    up = np.array([0.0, -1.0, 0.0])  # mediapipe y points down
    feet = np.concatenate([pose.world[:, LM[f"{s}_foot_index"]] - pose.world[:, LM[f"{s}_heel"]] for s in SIDES])
    feet = feet[~np.isnan(feet[:, 0])]
    if not len(feet):
        raise SemioflowError("no pose in the clip")
    fwd = np.median(feet, axis=0)
    fwd = _unit(fwd - (fwd @ up) * up)
    img_feet = np.concatenate([pose.image[:, LM[f"{s}_foot_index"], 0] - pose.image[:, LM[f"{s}_heel"], 0]
                               for s in SIDES])
    direction = 1.0 if np.nanmedian(img_feet) >= 0 else -1.0
    return Frame3(fwd, up, np.cross(fwd, up)), direction


def sagittal_points(pose: PoseSeries, source: str) -> np.ndarray:
    """(n, 33, 2) landmarks in the walk's plane: x forward, y up (pixels for image, metres for world)."""
    axes, direction = walk_axes(pose)
    if source == "image":
        return np.stack([direction * pose.image[..., 0], -pose.image[..., 1]], axis=-1)
    return np.stack([pose.world @ axes.forward, pose.world @ axes.up], axis=-1)


def joint_angles(pose: PoseSeries, source: str) -> dict[str, np.ndarray]:
    """Per-frame joint angles (``ANGLES``, degrees; NaN without a pose).

    Sagittal (from ``source`` landmarks): hip flexion = thigh vs the vertical;
    knee flexion = thigh vs shank (0 straight); ankle dorsiflexion = foot
    (heel -> toe) vs the perpendicular to the shank; shoulder flexion = upper
    arm vs the trunk's downward axis; elbow flexion = forearm vs upper arm;
    trunk flexion = hip centre -> shoulder centre vs the vertical (+ forward);
    pelvis tilt = that inclination minus its clip median.  Frontal (world):
    pelvis list = hip line vs horizontal (+ right hip higher); trunk lean =
    trunk axis vs vertical (+ towards the right).
    """
    p = sagittal_points(pose, source)

    def pt(name: str) -> np.ndarray:
        return p[:, LM[name]]

    down = np.broadcast_to(np.array([0.0, -1.0]), p[:, 0].shape)
    hip_c = (pt("left_hip") + pt("right_hip")) / 2
    sh_c = (pt("left_shoulder") + pt("right_shoulder")) / 2
    trunk = sh_c - hip_c
    out: dict[str, np.ndarray] = {}
    trunk_flex = signed_angle(trunk, np.broadcast_to(np.array([0.0, 1.0]), trunk.shape))
    out["trunk_flex_deg"] = trunk_flex
    out["pelvis_tilt_deg"] = trunk_flex - (np.nanmedian(trunk_flex) if np.isfinite(trunk_flex).any() else 0.0)
    for s in SIDES:
        thigh = pt(f"{s}_knee") - pt(f"{s}_hip")
        shank = pt(f"{s}_ankle") - pt(f"{s}_knee")
        foot = pt(f"{s}_foot_index") - pt(f"{s}_heel")
        upper = pt(f"{s}_elbow") - pt(f"{s}_shoulder")
        fore = pt(f"{s}_wrist") - pt(f"{s}_elbow")
        out[f"{s}_hip_flex_deg"] = signed_angle(down, thigh)
        out[f"{s}_knee_flex_deg"] = signed_angle(shank, thigh)
        out[f"{s}_ankle_dorsi_deg"] = signed_angle(np.stack([-shank[:, 1], shank[:, 0]], -1), foot)
        out[f"{s}_shoulder_flex_deg"] = signed_angle(-trunk, upper)
        out[f"{s}_elbow_flex_deg"] = signed_angle(upper, fore)
    axes, _ = walk_axes(pose)
    w = pose.world
    hip_line = w[:, LM["right_hip"]] - w[:, LM["left_hip"]]
    out["pelvis_list_deg"] = np.degrees(np.arctan2(hip_line @ axes.up, np.abs(hip_line @ axes.right)))
    w_trunk = (w[:, LM["left_shoulder"]] + w[:, LM["right_shoulder"]]) / 2 - (w[:, LM["left_hip"]]
                                                                             + w[:, LM["right_hip"]]) / 2
    out["trunk_lean_deg"] = np.degrees(np.arctan2(w_trunk @ axes.right, w_trunk @ axes.up))
    return {k: out[k] for k in ANGLES}


# ---- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaitEvent:
    """One detected event: ``track`` 0/1 (a leg, before naming), ``event`` heel_strike | toe_off, time."""

    track: int
    event: str
    t_s: float


def _smooth(x: np.ndarray, fps: float) -> np.ndarray:
    from scipy.signal import savgol_filter

    ok = np.isfinite(x)
    if ok.sum() < 2:
        return x
    x = np.interp(np.arange(len(x)), np.flatnonzero(ok), x[ok])  # bridge frames without a pose
    win = max(SMOOTH_ORDER + 2, int(round(SMOOTH_WINDOW_S * fps)) | 1)
    return savgol_filter(x, win, SMOOTH_ORDER) if len(x) > win else x


def _leg_length(p: np.ndarray) -> float:
    seg = [np.linalg.norm(p[:, LM[f"{s}_knee"]] - p[:, LM[f"{s}_hip"]], axis=-1)
           + np.linalg.norm(p[:, LM[f"{s}_ankle"]] - p[:, LM[f"{s}_knee"]], axis=-1) for s in SIDES]
    return float(np.nanmedian(np.concatenate(seg)))


def _min_prominence(x: np.ndarray) -> float:
    """Peaks smaller than ``PROMINENCE_SHARE`` of the signal's p10-p90 range (and than
    ``MIN_PROMINENCE_LEG``) are noise, not steps."""
    lo, hi = np.nanpercentile(x, [10, 90])
    return max(MIN_PROMINENCE_LEG, PROMINENCE_SHARE * float(hi - lo))


def _envelope(x: np.ndarray, pick) -> np.ndarray:
    """``pick`` (max/min) over the two feet per frame; NaN where neither foot is known."""
    fill = -np.inf if pick is np.max else np.inf
    out = pick(np.where(np.isnan(x), fill, x), axis=1)
    return np.where(np.isfinite(out), out, np.nan)


def _refine(x: np.ndarray, peaks: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Peak times refined between frames by a parabola through each peak and its neighbours: at 25 fps a
    whole-frame peak puts +-4 % on a 0.5 s step, more than the cadence error we aim for."""
    out = []
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    for k in peaks:
        off = 0.0
        if 0 < k < len(x) - 1:
            den = x[k - 1] - 2 * x[k] + x[k + 1]
            off = float(np.clip(0.5 * (x[k - 1] - x[k + 1]) / den, -0.5, 0.5)) if den < 0 else 0.0
        out.append(t[k] + off * dt)
    return np.array(out)


def step_period(x: np.ndarray, fps: float) -> float | None:
    """The step period (s) of a per-step signal: the first autocorrelation peak in [``MIN_STEP_S``,
    ``MAX_STEP_S``] at least ``PERIOD_PEAK_SHARE`` of the highest, or None when no lag correlates
    positively or the clip is too short.

    Heel strikes closer than a share of it are one step seen twice: a pose
    that loses the far leg for a few frames makes a second, smaller peak
    mid-step (on the phantom a myopathic clip read 151 steps/min for 98).
    """
    x = x[np.isfinite(x)]
    lo, hi = max(1, int(round(MIN_STEP_S * fps))), int(round(MAX_STEP_S * fps))
    if len(x) < 2 * lo + 1:
        return None
    x = x - x.mean()
    if float(np.abs(x).max()) < 1e-9:  # flat: no rhythm to find
        return None
    lags = np.arange(lo, min(hi, len(x) - lo) + 1)
    ac = np.array([np.dot(x[:-k], x[k:]) / (len(x) - k) for k in lags])  # per pair: fewer overlap at long lags
    if ac.max() <= 0:
        return None
    # the first strong local maximum: a limp makes the stride (two steps) correlate best, not the step
    peaks = [i for i in range(len(ac)) if (i == 0 or ac[i] >= ac[i - 1]) and (i == len(ac) - 1 or ac[i] >= ac[i + 1])
             and ac[i] >= PERIOD_PEAK_SHARE * ac.max()]
    return float(lags[peaks[0]] / fps)


def detect_events(pose: PoseSeries, fps: float) -> list[GaitEvent]:
    """Heel strikes and toe-offs, side-agnostic (see module doc), with alternating leg tracks.

    Heel strike: a peak of the distance between the two heels along the walk
    (the feet are furthest apart when the leading heel lands; a limp's short
    step still makes a clear peak, unlike the leading heel's own excursion);
    toe-off: a trough of the most backward toe relative to the hip centre
    (Zeni et al. 2008).  Heel strikes alternate between tracks 0 and 1 (an
    interval of ~2 median steps counts a missed strike); a toe-off belongs to
    the leg opposite the last heel strike.  Which leg a track is gets settled
    by ``assign_legs``.
    """
    from scipy.signal import find_peaks

    p = sagittal_points(pose, "image")
    leg = _leg_length(p)
    if not np.isfinite(leg) or leg <= 0:
        return []
    hip_x = (p[:, LM["left_hip"], 0] + p[:, LM["right_hip"], 0]) / 2
    heel = np.stack([p[:, LM[f"{s}_heel"], 0] for s in SIDES], -1) - hip_x[:, None]
    toe = np.stack([p[:, LM[f"{s}_foot_index"], 0] for s in SIDES], -1) - hip_x[:, None]
    if not np.isfinite(heel).any() or not np.isfinite(toe).any():
        return []
    apart = _smooth(np.abs(heel[:, 0] - heel[:, 1]) / leg, fps)
    back = _smooth(_envelope(toe, np.min) / leg, fps)
    dist = max(1, int(round(MIN_STEP_S * fps)))
    period = step_period(apart, fps)
    hs_dist = max(dist, int(STEP_SPACING * period * fps)) if period else dist
    hs, _ = find_peaks(apart, distance=hs_dist, prominence=_min_prominence(apart))
    to, to_info = find_peaks(-back, distance=dist, prominence=_min_prominence(back))
    t_hs, t_to = _refine(apart, hs, pose.pts_s), _refine(-back, to, pose.pts_s)
    events: list[GaitEvent] = []
    track = 0
    if len(hs) > 1:
        step = float(np.median(np.diff(t_hs)))
    for i, th in enumerate(t_hs):
        if i:
            gap = (th - t_hs[i - 1]) / step
            track = (track + (int(round(gap)) if gap >= STEP_GAP else 1)) % 2
        events.append(GaitEvent(track, "heel_strike", float(th)))
    hs_t = np.array([e.t_s for e in events])
    hs_track = np.array([e.track for e in events])
    # One toe-off per interval between heel strikes (the most prominent), on the leg opposite the last strike.
    best: dict[int, tuple[float, float]] = {}
    for tt, prom in zip(t_to, to_info["prominences"]):
        slot = int(np.searchsorted(hs_t, tt, side="right")) - 1  # -1 = before the first heel strike
        if slot not in best or prom > best[slot][0]:
            best[slot] = (float(prom), float(tt))
    for slot, (_, tt) in best.items():
        if not len(hs_t):
            continue
        last = hs_track[slot] if slot >= 0 else 1 - hs_track[0]
        events.append(GaitEvent(int(1 - last), "toe_off", tt))
    return sorted(events, key=lambda e: (e.t_s, e.event))


def leg_phase(t: np.ndarray, strikes: np.ndarray, stride_s: float) -> np.ndarray:
    """Gait phase in [0, 1) of one leg at times ``t`` from its heel strikes (0 at each strike).

    Linear between strikes; before the first and after the last the cycle
    continues at ``stride_s``.
    """
    before = int(np.ceil((strikes[0] - t.min()) / stride_s)) + 1
    after = int(np.ceil((t.max() - strikes[-1]) / stride_s)) + 1
    ref = np.concatenate([strikes[0] - stride_s * np.arange(before, 0, -1), strikes,
                          strikes[-1] + stride_s * np.arange(1, after + 1)])
    i = np.clip(np.searchsorted(ref, t, side="right") - 1, 0, len(ref) - 2)
    return np.mod((t - ref[i]) / (ref[i + 1] - ref[i]), 1.0)


def _leg_features(pose: PoseSeries) -> np.ndarray:
    """(n, 2, F) per mediapipe leg (left, right): heel, toe, ankle and knee forward of the hip
    centre and ankle height (leg lengths), and knee flexion (in ``KNEE_FEATURE_DEG`` units)."""
    p = sagittal_points(pose, "image")
    leg = _leg_length(p)
    hip = (p[:, LM["left_hip"]] + p[:, LM["right_hip"]]) / 2
    out = []
    for s in SIDES:
        rel = (p - hip[:, None]) / leg
        knee = signed_angle(p[:, LM[f"{s}_ankle"]] - p[:, LM[f"{s}_knee"]],
                            p[:, LM[f"{s}_knee"]] - p[:, LM[f"{s}_hip"]]) / KNEE_FEATURE_DEG
        out.append(np.stack([rel[:, LM[f"{s}_heel"], 0], rel[:, LM[f"{s}_foot_index"], 0],
                             rel[:, LM[f"{s}_ankle"], 0], rel[:, LM[f"{s}_knee"], 0], rel[:, LM[f"{s}_ankle"], 1],
                             knee], axis=-1))
    return np.stack(out, axis=1)


def _fourier(phase: np.ndarray) -> np.ndarray:
    cols = [np.ones_like(phase)]
    for h in range(1, TEMPLATE_HARMONICS + 1):
        cols += [np.cos(2 * np.pi * h * phase), np.sin(2 * np.pi * h * phase)]
    return np.stack(cols, axis=-1)


def _fit_assignment(f: np.ndarray, basis: np.ndarray, sw: np.ndarray) -> tuple[np.ndarray, float]:
    """Alternate template fit and per-frame assignment from ``sw``; (assignment, residual cost)."""
    cost = np.inf
    for _ in range(ASSIGN_ROUNDS):
        by_track = np.where(sw[:, None, None], f[:, ::-1], f)  # (m, track, F)
        coef, *_ = np.linalg.lstsq(basis.reshape(-1, basis.shape[-1]), by_track.reshape(-1, f.shape[-1]), rcond=None)
        pred = basis @ coef  # (m, track, F)
        keep = ((f - pred) ** 2).sum(axis=(1, 2))
        cross = ((f[:, ::-1] - pred) ** 2).sum(axis=(1, 2))
        sw = cross < keep
        cost = float(np.minimum(keep, cross).sum())
    return sw, cost


def assign_legs(pose: PoseSeries, events: list[GaitEvent], fps: float) -> tuple[np.ndarray, dict[int, str]]:
    """Which frames to swap so that mediapipe's ``left`` leg is track 0 throughout, and the tracks' names.

    Each leg moves as a fixed function of its own gait phase (0 at its heel
    strike).  Starting from mediapipe's labels, a shared periodic template
    (``TEMPLATE_HARMONICS`` Fourier harmonics) of foot, ankle and knee
    position and knee flexion is fitted against each track's phase, every
    frame takes the leg assignment that fits the templates better, and the
    two steps repeat ``ASSIGN_ROUNDS`` times, from two starts (mediapipe's
    labels; front heel = the leg nearest its heel strike); the better fit wins.  Returns ``swap`` (n,) bool and
    ``{track: "left" | "right"}``: each track is named by mediapipe's
    majority label over the clip.
    """
    n = len(pose.pts_s)
    swap = np.zeros(n, bool)
    strikes = {k: np.array([e.t_s for e in events if e.event == "heel_strike" and e.track == k]) for k in (0, 1)}
    if not len(strikes[0]) or not len(strikes[1]):
        return swap, {0: "left", 1: "right"}
    all_hs = np.sort(np.concatenate([strikes[0], strikes[1]]))
    stride = 2.0 * float(np.median(np.diff(all_hs))) if len(all_hs) > 1 else 1.0
    t = pose.pts_s
    phase = np.stack([leg_phase(t, strikes[k], stride) for k in (0, 1)], axis=1)  # (n, track)
    feats = _leg_features(pose)  # (n, mediapipe leg, F)
    ok = pose.found & np.isfinite(feats).all(axis=(1, 2))
    if ok.sum() < 2 * _fourier(np.zeros(1)).shape[1]:
        return swap, {0: "left", 1: "right"}
    basis = _fourier(phase[ok])  # (m, track, B)
    f = feats[ok]
    scale = f.reshape(-1, f.shape[-1]).std(axis=0) + 1e-9
    f = f / scale
    # Two starts: mediapipe's labels, and "the leg nearest its heel strike has the front heel" (mediapipe's
    # mislabels can be systematic over part of the cycle, which a template started from them absorbs).
    ph = phase[ok]
    near = np.abs(((ph - LEAD_PHASE) + 0.5) % 1.0 - 0.5)  # circular distance to the phase of the front heel
    front_is_left = f[:, 0, 0] >= f[:, 1, 0]
    starts = [np.zeros(len(f), bool), front_is_left != (near[:, 0] <= near[:, 1])]
    sw, _ = min((_fit_assignment(f, basis, s0) for s0 in starts), key=lambda r: r[1])
    swap[np.flatnonzero(ok)] = sw
    # track 0 is mediapipe's "left" wherever nothing was swapped: name the tracks by that majority
    if sw.mean() > 0.5:
        swap[np.flatnonzero(ok)] = ~sw
        return swap, {0: "right", 1: "left"}
    return swap, {0: "left", 1: "right"}


# ---- spatiotemporal ------------------------------------------------------------------------------

SPATIOTEMPORAL = GAIT_SPATIOTEMPORAL


def spatiotemporal(events: list[tuple[str, str, float]]) -> dict[str, float | None]:
    """Spatiotemporal gait parameters from (side, event, t_s) events (detected or planted).

    * cadence_spm: 120 / the median stride time (both sides' strides pooled;
      60 / the median step when no side has two heel strikes).  Strides, not
      steps: a limp alternates short and long steps, so the median of a clip's
      ~5 steps is one or the other, while its strides repeat (on the phantom
      the worst clip's error fell from 18 % to 2 %);
    * stride_time_<side>_s: median heel strike -> next heel strike of the same side;
    * step_time_<side>_s: median heel strike of the other side -> this side's;
    * swing_<side>_pct: median (heel strike - preceding toe-off) / stride x 100;
    * double_support_pct: median over complete strides of the time both feet
      are on the ground (heel strike -> opposite toe-off, opposite heel strike
      -> own toe-off) / stride x 100.

    Missing quantities are None.
    """
    hs = {s: np.sort([t for sd, e, t in events if sd == s and e == "heel_strike"]) for s in SIDES}
    to = {s: np.sort([t for sd, e, t in events if sd == s and e == "toe_off"]) for s in SIDES}
    out: dict[str, float | None] = dict.fromkeys(SPATIOTEMPORAL)
    all_hs = np.sort(np.concatenate([hs[s] for s in SIDES]))
    strides = np.concatenate([np.diff(hs[s]) for s in SIDES])
    if len(strides):
        out["cadence_spm"] = 120.0 / float(np.median(strides))
    elif len(all_hs) >= 2:
        out["cadence_spm"] = 60.0 / float(np.median(np.diff(all_hs)))
    for s in SIDES:
        other = "right" if s == "left" else "left"
        if len(hs[s]) >= 2:
            out[f"stride_time_{s}_s"] = float(np.median(np.diff(hs[s])))
        steps = [t - hs[other][hs[other] < t].max() for t in hs[s] if (hs[other] < t).any()]
        if steps:
            out[f"step_time_{s}_s"] = float(np.median(steps))
        swings = []
        for a, b in zip(hs[s][:-1], hs[s][1:]):
            o = to[s][(to[s] > a) & (to[s] < b)]
            if len(o) == 1:
                swings.append(100.0 * (b - o[0]) / (b - a))
        if swings:
            out[f"swing_{s}_pct"] = float(np.median(swings))
    out["double_support_pct"] = _double_support(hs, to)
    return out


def _double_support(hs: dict[str, np.ndarray], to: dict[str, np.ndarray]) -> float | None:
    """Median over complete strides (either side) of (initial + terminal double support) / stride x 100.

    Initial: own heel strike -> the other foot's toe-off; terminal: the other
    foot's heel strike -> own toe-off.  A stride missing any of them is skipped.
    """
    shares = []
    for s in SIDES:
        o = "right" if s == "left" else "left"
        for a, b in zip(hs[s][:-1], hs[s][1:]):
            off_o = to[o][(to[o] > a) & (to[o] < b)]
            off_s = to[s][(to[s] > a) & (to[s] < b)]
            if not len(off_o) or len(off_s) != 1:
                continue
            land_o = hs[o][(hs[o] > off_o[0]) & (hs[o] < off_s[0])]
            if len(land_o) != 1:
                continue
            shares.append(100.0 * ((off_o[0] - a) + (off_s[0] - land_o[0])) / (b - a))
    return float(np.median(shares)) if shares else None


# ---- one clip -------------------------------------------------------------------------------------


def _status_row(rid: str, status: str, reason: str | None, *, fps: float = 0.0, n_frames: int = 0,
                pose_frames: int = 0, n_events: int = 0, st: dict | None = None) -> dict:
    return dict(recording_id=rid, status=status, reason=reason, fps=fps, n_frames=n_frames, pose_frames=pose_frames,
                n_events=n_events, **(st or dict.fromkeys(SPATIOTEMPORAL)))


def kinematics_clip(rid: str, deidentified: Path, fps: float, out_dir: Path, kp: KinematicsParams) -> dict:
    """Pose, head blur, angles, events and spatiotemporal parameters of one de-identified clip.

    ``deidentified``: the clip as de-identification wrote it (read only);
    ``fps``: its frame rate.  Writes the per-clip files listed in the module
    doc and returns the clip's ``gait_kinematics`` row (status ok | no_pose).
    """
    out_dir = Path(out_dir)
    fps = fps or probe(deidentified).fps
    pose = track_pose(deidentified, kp)
    final = out_dir / "videos" / f"{rid}.mp4"
    final.parent.mkdir(parents=True, exist_ok=True)
    if kp.head_blur:
        blur_heads(deidentified, final, head_boxes(pose, hold_frames=max(1, round(kp.head_hold_s * fps))), fps=fps)
    else:
        with atomic_path(final) as tmp:
            shutil.copyfile(deidentified, tmp)
    _write_landmarks(rid, pose, out_dir / "landmarks" / f"{rid}.parquet")
    found = pose.found
    if found.sum() < 2:
        result = _status_row(rid, "no_pose", "no pose on enough frames", fps=fps, n_frames=len(found),
                             pose_frames=int(found.sum()))
        write_table("gait_angles", [], out_dir / "angles" / f"{rid}.parquet")
        write_table("gait_detected_events", [], out_dir / "events" / f"{rid}.parquet")
        write_table("gait_kinematics", [result], out_dir / "results" / f"{rid}.parquet")
        return result
    events = detect_events(pose, fps)
    swap, names = assign_legs(pose, events, fps)
    legs = pose.swapped(swap)
    angles = joint_angles(legs, kp.sagittal_source)
    frames = np.flatnonzero(found)
    write_table("gait_angles", {
        "recording_id": [rid] * len(frames), "frame_index": frames, "pts_s": pose.pts_s[frames],
        **{k: [_num(v) for v in angles[k][frames]] for k in ANGLES}}, out_dir / "angles" / f"{rid}.parquet")
    named = [(names[e.track], e.event, e.t_s) for e in events]
    write_table("gait_detected_events", [dict(recording_id=rid, side=s, event=e, t_s=t) for s, e, t in named],
                out_dir / "events" / f"{rid}.parquet")
    result = _status_row(rid, "ok", None, fps=fps, n_frames=len(found), pose_frames=int(found.sum()),
                         n_events=len(named), st=spatiotemporal(named))
    write_table("gait_kinematics", [result], out_dir / "results" / f"{rid}.parquet")
    return result


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _write_landmarks(rid: str, pose: PoseSeries, path: Path) -> None:
    names = landmark_names()
    frames = np.flatnonzero(pose.found)
    n = len(frames)
    write_table("pose_landmarks", {
        "recording_id": [rid] * (n * N_LANDMARKS),
        "frame_index": np.repeat(frames, N_LANDMARKS).astype(np.int32),
        "pts_s": np.repeat(pose.pts_s[frames], N_LANDMARKS),
        "landmark": np.tile(np.arange(N_LANDMARKS, dtype=np.int8), n),
        "name": names * n,
        "x": (pose.image[frames, :, 0] / pose.width).reshape(-1).astype(np.float32),
        "y": (pose.image[frames, :, 1] / pose.height).reshape(-1).astype(np.float32),
        "z": np.zeros(n * N_LANDMARKS, np.float32),  # mediapipe's image z is not kept (world z is)
        "visibility": pose.image[frames, :, 2].reshape(-1).astype(np.float32),
        "wx": pose.world[frames, :, 0].reshape(-1).astype(np.float32),
        "wy": pose.world[frames, :, 1].reshape(-1).astype(np.float32),
        "wz": pose.world[frames, :, 2].reshape(-1).astype(np.float32),
    }, path)


# ---- the stage ------------------------------------------------------------------------------------


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    """The kinematics of one de-identified gait clip (see module doc); returns its ``gait_kinematics`` row."""
    deid = layout.stage_dir(data_dir, "deidentify")
    row = read_table("deidentified", deid / "results" / f"{recording_id}.parquet").to_pylist()[0]
    return kinematics_clip(recording_id, deid / "videos" / f"{recording_id}.mp4", float(row["fps"] or 0.0), out_dir,
                           params.kinematics)


STAGE = Stage(
    "kinematics", "recording", run, "de-identified gait clips pose-tracked, heads blurred; joint angles, gait events, "
    "cadence", after="deidentify", cohort=GAIT,
    inputs=(layout.rel("deidentify", "videos", "{rid}.mp4"), layout.rel("deidentify", "results", "{rid}.parquet")),
    tables=(Table("gait_kinematics", "results", "kinematics.parquet"),
            Table("gait_detected_events", "events", "events.parquet")))
