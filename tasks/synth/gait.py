"""Gait phantom: sagittal walking clips of 8 gait classes with planted truth.

``generate_cohort`` plans a cohort (subject -> class -> body, clothing and
kinematic parameters; pure, from the seed), then renders every clip (cv2
drawing of a shaded 3D walker seen from the side, a camera panning with
it) through ``tasks.media.VideoWriter`` and writes the truth tables:

* ``gait_clips``  - one row per clip: subject, class, planted cadence.
* ``gait_joints`` - per frame and joint: world metres (x forward, y up,
  z towards the camera) and the pixel projection (u, v).  Joint names are
  mediapipe pose landmark names (``left_knee``, ``right_foot_index`` ...).
* ``gait_events`` - heel strikes and toe-offs per side (seconds).

The kinematic model and class profiles live in ``tasks.synth.walker``.
Same seed -> identical tables and identical decoded frames; subject ids are
shuffled against classes so an id never reveals the class.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import polars as pl

from tasks.errors import ConfigError
from tasks.media import VideoWriter
from tasks.params import GaitSynthParams
from tasks.schema import write_table
from tasks.synth.walker import (
    GAIT_CLASSES,
    JOINTS,
    Body,
    J,
    Kinematics,
    Walk,
    perturb,
    sample_kinematics,
    simulate,
)

__all__ = [
    "GAIT_CLASSES",
    "JOINTS",
    "ClipPlan",
    "CohortSummary",
    "Subject",
    "cadence_from_events",
    "generate_cohort",
    "iter_clip_frames",
    "joint_angles_truth",
    "plan_cohort",
    "render_clip",
]

MIN_SIDE_PX = 64  # smaller frames leave the walker a few pixels tall
CAMERA_DISTANCE_M = 4.0  # camera to the walking line
CAMERA_HEIGHT_M = 0.95  # lens height above the floor
WALKER_FRAME_SHARE = 0.70  # a 1.75 m subject is this share of the frame height
PAN_DRIFT_SHARE = 0.18  # the walker drifts +-this share of the width while the camera pans
WALL_Z_M = -2.5  # back wall, metres behind the walking line
CLIP_KIN_SCALE = 0.3  # clip-to-clip variation, in class sd units, around the subject's own gait
SUPERSAMPLE = 2  # render at this factor and downscale: anti-aliased edges

# Clothing and skin palettes (RGB); a subject's combination identifies them.
SHIRTS = [(200, 40, 40), (40, 90, 200), (40, 150, 70), (230, 180, 30), (120, 50, 150), (240, 240, 235),
          (30, 30, 35), (230, 110, 30), (0, 150, 160), (180, 80, 120), (90, 110, 60), (150, 150, 160)]
TROUSERS = [(30, 40, 80), (40, 40, 45), (110, 90, 70), (70, 80, 90), (160, 140, 110), (20, 60, 40),
            (90, 30, 30), (120, 120, 130)]
SHOES = [(25, 25, 25), (235, 235, 235), (100, 60, 30), (180, 30, 30), (40, 40, 120)]
SKINS = [(255, 224, 196), (240, 200, 160), (210, 160, 120), (170, 120, 80), (120, 80, 55), (90, 60, 40)]
HAIRS = [(30, 20, 15), (80, 50, 30), (160, 120, 60), (200, 200, 200), (120, 40, 20)]
WALLS = [(214, 208, 196), (190, 205, 215), (220, 215, 190), (200, 200, 200), (205, 190, 185)]
FLOORS = [(120, 110, 100), (95, 95, 105), (140, 120, 90), (110, 115, 110)]


@dataclass(frozen=True)
class Subject:
    """One phantom subject: id, class, body and the clothes that identify them."""

    subject_id: str
    gait_class: str
    body: Body
    kinematics: Kinematics  # the subject's own gait; clips vary around it
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    shoes: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip (picklable, no I/O)."""

    source_name: str
    subject: Subject
    kinematics: Kinematics
    seed: int  # clip seed: stride timing, background
    width: int
    height: int
    fps: float
    duration_s: float


@dataclass(frozen=True)
class CohortSummary:
    """What ``generate_cohort`` wrote."""

    out_dir: Path
    n_subjects: int
    n_clips: int
    n_frames: int
    n_events: int
    clips_per_class: dict[str, int]
    wall_s: float

    def describe(self) -> str:
        per = ", ".join(f"{c}={n}" for c, n in self.clips_per_class.items())
        return (
            f"gait phantom: {self.n_subjects} subjects, {self.n_clips} clips, {self.n_frames} frames, "
            f"{self.n_events} gait events in {self.wall_s:.1f} s -> {self.out_dir}\n  clips per class: {per}"
        )


def validate_params(params: GaitSynthParams) -> None:
    """Raise ``ConfigError`` naming the ``synth.gait`` key of a bad value."""
    checks = [
        (params.subjects_per_class >= 1, "subjects_per_class must be >= 1"),
        (params.clips_per_subject >= 1, "clips_per_subject must be >= 1"),
        (params.width >= MIN_SIDE_PX and params.height >= MIN_SIDE_PX,
         f"width and height must be >= {MIN_SIDE_PX} px"),
        (params.width % 2 == 0 and params.height % 2 == 0, "width and height must be even (H.264 yuv420p)"),
        (params.fps > 0, "fps must be > 0"),
        (params.duration_s * params.fps >= 2, "duration_s must give at least 2 frames"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(
                f"synth.gait: {msg} (got subjects_per_class={params.subjects_per_class}, "
                f"clips_per_subject={params.clips_per_subject}, size={params.width}x{params.height}, "
                f"fps={params.fps}, duration_s={params.duration_s})"
            )


def plan_cohort(params: GaitSynthParams, *, seed: int) -> list[ClipPlan]:
    """Plan every clip of the cohort from ``seed`` (pure; no rendering).

    Subjects ``S01..`` get classes in a seed-shuffled order; each subject has
    a body, clothing and own kinematics; each clip perturbs them slightly.
    """
    validate_params(params)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6A17]))
    classes = [c for c in GAIT_CLASSES for _ in range(params.subjects_per_class)]
    order = rng.permutation(len(classes))
    plans = []
    for n, idx in enumerate(order):
        gait_class = classes[idx]
        srng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B, n]))
        body = Body(height_m=float(np.clip(srng.normal(1.72, 0.09), 1.52, 1.95)),
                    girth=float(np.clip(srng.normal(1.0, 0.12), 0.8, 1.3)))
        subject = Subject(
            subject_id=f"S{n + 1:02d}",
            gait_class=gait_class,
            body=body,
            kinematics=sample_kinematics(gait_class, srng),
            shirt=SHIRTS[srng.integers(len(SHIRTS))],
            trousers=TROUSERS[srng.integers(len(TROUSERS))],
            shoes=SHOES[srng.integers(len(SHOES))],
            skin=SKINS[srng.integers(len(SKINS))],
            hair=HAIRS[srng.integers(len(HAIRS))],
        )
        for c in range(params.clips_per_subject):
            crng = np.random.default_rng(np.random.SeedSequence([seed, 0xC1, n, c]))
            plans.append(ClipPlan(
                source_name=f"{subject.subject_id}_C{c + 1}.mp4",
                subject=subject,
                kinematics=perturb(subject.kinematics, gait_class, crng, scale=CLIP_KIN_SCALE),
                seed=int(crng.integers(2**31)),
                width=params.width,
                height=params.height,
                fps=params.fps,
                duration_s=params.duration_s,
            ))
    return plans


# ---- camera -----------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera on the +z side looking at -z, panning along x."""

    focal_px: float
    cx: float
    cy: float
    x0_m: float  # camera x at t = 0
    speed_m_s: float  # pan speed

    def project(self, pts: np.ndarray, t_s: float | np.ndarray) -> np.ndarray:
        """World points (..., 3) -> pixels (..., 2) at time(s) ``t_s``."""
        cam_x = self.x0_m + self.speed_m_s * np.asarray(t_s)
        if np.ndim(cam_x):
            cam_x = cam_x.reshape(cam_x.shape + (1,) * (pts.ndim - 1 - cam_x.ndim))
        depth = CAMERA_DISTANCE_M - pts[..., 2]
        u = self.cx + self.focal_px * (pts[..., 0] - cam_x) / depth
        v = self.cy - self.focal_px * (pts[..., 1] - CAMERA_HEIGHT_M) / depth
        return np.stack([u, v], axis=-1)


def _camera(walk: Walk, width: int, height: int, duration_s: float) -> Camera:
    focal = WALKER_FRAME_SHARE * height * CAMERA_DISTANCE_M / 1.75
    pelvis_x = 0.5 * (walk.joints[:, J["left_hip"], 0] + walk.joints[:, J["right_hip"], 0])
    v, p0 = np.polyfit(walk.t_s, pelvis_x, 1) if len(walk.t_s) > 1 else (0.0, float(pelvis_x[0]))
    drift_m = PAN_DRIFT_SHARE * width * CAMERA_DISTANCE_M / focal
    # The camera lags the walker: it enters left of centre and leaves right of it.
    speed = v - 2 * drift_m / max(duration_s, 1e-6)
    x0 = p0 + drift_m
    # A camera pointing slightly down keeps the feet well inside the frame.
    return Camera(focal_px=focal, cx=width / 2, cy=height * 0.42, x0_m=float(x0), speed_m_s=float(speed))


# ---- rendering ----------------------------------------------------------------


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(max(c * f, 0), 255)) for c in rgb)


class _Canvas:
    """cv2 drawing at SUPERSAMPLE x resolution with sub-pixel coordinates."""

    SHIFT = 4  # fractional bits for cv2 coordinates

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width * SUPERSAMPLE, height * SUPERSAMPLE
        self.img = np.zeros((self.h, self.w, 3), np.uint8)
        self.k = SUPERSAMPLE * (1 << self.SHIFT)

    def _p(self, p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * self.k)), int(round(p[1] * self.k))

    def capsule(self, a: np.ndarray, b: np.ndarray, r_px: float, rgb, *, highlight: bool = True) -> None:
        th = max(int(round(2 * r_px * SUPERSAMPLE)), 1)
        cv2.line(self.img, self._p(a), self._p(b), rgb, th, cv2.LINE_AA, self.SHIFT)
        if highlight and th > 3:
            # A lighter band on the upper-left edge reads as a rounded limb.
            d = np.asarray(b, float) - np.asarray(a, float)
            nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
            if nrm[1] > 0:
                nrm = -nrm
            off = nrm * r_px * 0.45
            cv2.line(self.img, self._p(a + off), self._p(b + off), _shade(rgb, 1.25), max(th // 3, 1),
                     cv2.LINE_AA, self.SHIFT)

    def circle(self, c: np.ndarray, r_px: float, rgb) -> None:
        cv2.circle(self.img, self._p(c), int(round(r_px * self.k)), rgb, -1, cv2.LINE_AA, self.SHIFT)

    def ellipse(self, c: np.ndarray, axes_px: tuple[float, float], angle_deg: float, rgb, arc=(0, 360)) -> None:
        cv2.ellipse(self.img, self._p(c), (int(round(axes_px[0] * self.k)), int(round(axes_px[1] * self.k))),
                    angle_deg, arc[0], arc[1], rgb, -1, cv2.LINE_AA, self.SHIFT)

    def poly(self, pts: list[np.ndarray], rgb) -> None:
        arr = np.array([self._p(p) for p in pts], np.int32)
        cv2.fillPoly(self.img, [arr], rgb, cv2.LINE_AA, self.SHIFT)

    def line(self, a, b, rgb, th_px: float) -> None:
        cv2.line(self.img, self._p(a), self._p(b), rgb, max(int(round(th_px * SUPERSAMPLE)), 1), cv2.LINE_AA,
                 self.SHIFT)

    def result(self) -> np.ndarray:
        return cv2.resize(self.img, (self.w // SUPERSAMPLE, self.h // SUPERSAMPLE), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class _Scene:
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    door_x: np.ndarray  # x of door frames/posters on the wall (m)
    tile_m: float


def _draw_background(cv: _Canvas, cam: Camera, scene: _Scene, t: float, width: int, height: int) -> None:
    wall_base = cam.project(np.array([0.0, 0.0, WALL_Z_M]), t)[1]
    cv.img[:] = scene.wall
    y0 = int(max(min(wall_base, height), 0) * SUPERSAMPLE)
    cv.img[y0:] = scene.floor
    cam_x = cam.x0_m + cam.speed_m_s * t
    half_w = width / 2 * (CAMERA_DISTANCE_M - WALL_Z_M) / cam.focal_px + 1.0
    # Floor seams every tile_m and wall features give the motion cue of a pan.
    for x in np.arange(math.floor((cam_x - half_w) / scene.tile_m) * scene.tile_m, cam_x + half_w, scene.tile_m):
        a = cam.project(np.array([x, 0.0, WALL_Z_M]), t)
        b = cam.project(np.array([x, 0.0, CAMERA_DISTANCE_M - 0.5]), t)
        cv.line(a, b, _shade(scene.floor, 0.85), 1.0)
    for x in scene.door_x:
        if abs(x - cam_x) > half_w + 1:
            continue
        tl = cam.project(np.array([x, 2.0, WALL_Z_M]), t)
        br = cam.project(np.array([x + 0.9, 0.0, WALL_Z_M]), t)
        cv.poly([tl, np.array([br[0], tl[1]]), br, np.array([tl[0], br[1]])], _shade(scene.wall, 0.8))
    cv.line(np.array([0, wall_base]), np.array([width, wall_base]), _shade(scene.wall, 0.6), 1.5)


def _draw_walker(cv: _Canvas, uv: np.ndarray, xyz: np.ndarray, subj: Subject, px_per_m: float) -> None:
    """Painter's order: far (left) limbs, torso and head, near (right) limbs."""
    b = subj.body
    g = b.girth
    P = {name: uv[J[name]] for name in JOINTS}

    def leg(side: str, f: float) -> None:
        tr, sh = _shade(subj.trousers, f), _shade(subj.shoes, f)
        cv.capsule(P[f"{side}_hip"], P[f"{side}_knee"], 0.070 * g * b.scale * px_per_m, tr)
        cv.capsule(P[f"{side}_knee"], P[f"{side}_ankle"], 0.052 * g * b.scale * px_per_m, tr)
        heel, toe, ankle = P[f"{side}_heel"], P[f"{side}_foot_index"], P[f"{side}_ankle"]
        up = ankle - 0.5 * (heel + toe)
        cv.poly([heel, toe, toe + 0.35 * up, ankle + 0.15 * up, heel + 0.6 * up], sh)
        cv.capsule(heel + 0.2 * up, toe + 0.1 * up, 0.022 * b.scale * px_per_m, sh, highlight=False)

    def arm(side: str, f: float) -> None:
        sl = _shade(subj.shirt, f)
        cv.capsule(P[f"{side}_shoulder"], P[f"{side}_elbow"], 0.045 * g * b.scale * px_per_m, sl)
        cv.capsule(P[f"{side}_elbow"], P[f"{side}_wrist"], 0.036 * g * b.scale * px_per_m, _shade(subj.skin, f))
        hand = 0.5 * (P[f"{side}_wrist"] + P[f"{side}_index"])
        cv.capsule(P[f"{side}_wrist"], hand, 0.038 * b.scale * px_per_m, _shade(subj.skin, f * 0.95))

    arm("left", 0.72)
    leg("left", 0.72)
    hip_c = 0.5 * (P["left_hip"] + P["right_hip"])
    sh_c = 0.5 * (P["left_shoulder"] + P["right_shoulder"])
    axis = sh_c - hip_c
    fwd = np.array([axis[1], -axis[0]]) / (np.hypot(*axis) + 1e-9)
    if fwd[0] < 0:
        fwd = -fwd
    depth = 0.5 * 0.24 * g * b.scale * px_per_m  # half the chest's front-to-back depth
    # Torso: trousers up to the waist, shirt above.
    waist = hip_c + 0.3 * axis
    cv.poly([hip_c - depth * fwd, hip_c + depth * fwd, waist + depth * fwd, waist - depth * fwd],
            subj.trousers)
    cv.poly([waist - 1.05 * depth * fwd, waist + 1.05 * depth * fwd, sh_c + 0.95 * depth * fwd + 0.08 * axis,
             sh_c - 1.0 * depth * fwd + 0.05 * axis], subj.shirt)
    cv.capsule(hip_c + 0.35 * axis + 0.5 * depth * fwd, sh_c - 0.1 * axis + 0.5 * depth * fwd,
               depth * 0.35, _shade(subj.shirt, 1.1), highlight=False)
    # Neck and head (profile: face towards +x).
    ear = P["right_ear"]
    nose = P["nose"]
    head_r = b.head_r * px_per_m
    cv.capsule(sh_c + 0.05 * axis, ear + 0.3 * (sh_c - ear), 0.05 * b.scale * px_per_m, _shade(subj.skin, 0.9))
    face_dir = (nose - ear) / (np.hypot(*(nose - ear)) + 1e-9)
    centre = ear + 0.35 * head_r * face_dir
    ang = math.degrees(math.atan2(face_dir[1], face_dir[0]))
    cv.ellipse(centre, (1.2 * head_r, 1.0 * head_r), ang, subj.skin)
    cv.ellipse(centre - 0.1 * head_r * face_dir + np.array([0, -0.1 * head_r]),
               (1.25 * head_r, 1.05 * head_r), ang, subj.hair, arc=(150, 350))
    cv.circle(nose, 0.22 * head_r, _shade(subj.skin, 0.95))
    cv.circle(ear, 0.25 * head_r, _shade(subj.skin, 0.8))
    eye = P["right_eye"]
    cv.circle(eye, 0.13 * head_r, (255, 255, 255))
    cv.circle(eye + 0.05 * head_r * face_dir, 0.08 * head_r, (40, 30, 30))
    cv.line(eye - 0.2 * head_r * face_dir - np.array([0, 0.18 * head_r]),
            eye + 0.15 * head_r * face_dir - np.array([0, 0.22 * head_r]), subj.hair, 0.06 * head_r)
    mouth = nose - 0.15 * head_r * face_dir + np.array([0, 0.45 * head_r])
    cv.line(mouth, mouth - 0.3 * head_r * face_dir, (150, 60, 60), 0.07 * head_r)
    leg("right", 1.0)
    arm("right", 1.0)


def _scene(rng: np.random.Generator) -> _Scene:
    return _Scene(
        wall=WALLS[rng.integers(len(WALLS))],
        floor=FLOORS[rng.integers(len(FLOORS))],
        door_x=np.sort(rng.uniform(-6.0, 16.0, size=6)),
        tile_m=float(rng.choice([0.5, 0.6, 1.0])),
    )


@dataclass(frozen=True)
class ClipResult:
    """Truth of one rendered clip (tables' rows/columns; picklable)."""

    clip_row: dict
    joints: dict[str, np.ndarray]
    events: list[dict]
    n_frames: int


def _walk(plan: ClipPlan) -> tuple[Walk, np.random.Generator]:
    rng = np.random.default_rng(plan.seed)
    walk = simulate(plan.kinematics, plan.subject.body, duration_s=plan.duration_s, fps=plan.fps, rng=rng)
    return walk, rng


def iter_clip_frames(plan: ClipPlan) -> Iterator[np.ndarray]:
    """The clip's RGB frames (height, width, 3) uint8, one at a time, before encoding."""
    walk, rng = _walk(plan)
    cam = _camera(walk, plan.width, plan.height, plan.duration_s)
    scene = _scene(rng)
    uv_all = cam.project(walk.joints, walk.t_s)
    for f in range(len(walk.t_s)):
        cv = _Canvas(plan.width, plan.height)
        _draw_background(cv, cam, scene, float(walk.t_s[f]), plan.width, plan.height)
        depth = CAMERA_DISTANCE_M - walk.joints[f, J["right_hip"], 2]
        _draw_walker(cv, uv_all[f], walk.joints[f], plan.subject, cam.focal_px / depth)
        yield cv.result()


def render_clip(plan: ClipPlan, videos_dir: Path) -> ClipResult:
    """Simulate and render one clip to ``videos_dir/<source_name>``; return its truth."""
    with VideoWriter(videos_dir / plan.source_name, width=plan.width, height=plan.height, fps=plan.fps) as w:
        for rgb in iter_clip_frames(plan):
            w.write(rgb)
    walk, _ = _walk(plan)
    cam = _camera(walk, plan.width, plan.height, plan.duration_s)
    n, nj = walk.joints.shape[:2]
    uv_all = cam.project(walk.joints, walk.t_s)
    frame_index = np.repeat(np.arange(n, dtype=np.int64), nj)
    joints = {
        "source_name": np.full(n * nj, plan.source_name, dtype=object),
        "frame_index": frame_index,
        "pts_s": walk.t_s[frame_index],
        "joint": np.tile(np.array(JOINTS, dtype=object), n),
        "x_m": walk.joints[..., 0].reshape(-1).astype(np.float32),
        "y_m": walk.joints[..., 1].reshape(-1).astype(np.float32),
        "z_m": walk.joints[..., 2].reshape(-1).astype(np.float32),
        "u": uv_all[..., 0].reshape(-1).astype(np.float32),
        "v": uv_all[..., 1].reshape(-1).astype(np.float32),
    }
    events = [{"source_name": plan.source_name, "side": s, "event": e, "t_s": t} for s, e, t in walk.events]
    clip_row = {
        "source_name": plan.source_name,
        "subject_id": plan.subject.subject_id,
        "gait_class": plan.subject.gait_class,
        "duration_s": n / plan.fps,
        "fps": float(plan.fps),
        "width": plan.width,
        "height": plan.height,
        "seed": plan.seed,
        "cadence_spm": _cadence(walk),
    }
    return ClipResult(clip_row=clip_row, joints=joints, events=events, n_frames=n)


def _cadence(walk: Walk) -> float:
    """Planted cadence: steps/min over the clip's heel strikes (what a rater counts);
    the stride timing's own cadence when the clip holds fewer than 3 strikes."""
    hs = sorted(t for _, e, t in walk.events if e == "heel_strike")
    if len(hs) < 3:
        return walk.cadence_spm
    return 60.0 * (len(hs) - 1) / (hs[-1] - hs[0])


def _render_one(args: tuple[ClipPlan, Path]) -> ClipResult:
    return render_clip(*args)


def generate_cohort(
    out_dir: Path,
    params: GaitSynthParams,
    *,
    seed: int,
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> CohortSummary:
    """Render a gait phantom cohort into ``out_dir``.

    Writes ``videos/<source_name>`` (H.264 MP4, no audio) and the truth
    tables ``gait_clips.parquet`` (source_name, subject_id, gait_class,
    duration_s, fps, width, height, seed, cadence_spm), ``gait_joints.parquet``
    (source_name, frame_index, pts_s, joint, x_m, y_m, z_m, u, v) and
    ``gait_events.parquet`` (source_name, side, event, t_s).  ``workers`` > 1
    renders clips in parallel processes; results do not depend on it.
    Raises ``ConfigError`` for bad params.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    plans = plan_cohort(params, seed=seed)
    videos = out_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    results: list[ClipResult] = []
    total = len(plans)
    if on_progress:
        on_progress(0, total)
    jobs = [(p, videos) for p in plans]
    if workers > 1:
        # spawn: forking a process that already runs torch/mediapipe threads can abort the child
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, res in enumerate(pool.map(_render_one, jobs), 1):
                results.append(res)
                if on_progress:
                    on_progress(i, total)
    else:
        for i, job in enumerate(jobs, 1):
            results.append(_render_one(job))
            if on_progress:
                on_progress(i, total)

    write_table("gait_clips", [r.clip_row for r in results], out_dir / "gait_clips.parquet")
    joint_cols = {k: np.concatenate([r.joints[k] for r in results]) for k in results[0].joints}
    write_table("gait_joints", joint_cols, out_dir / "gait_joints.parquet")
    events = [e for r in results for e in r.events]
    write_table("gait_events", events, out_dir / "gait_events.parquet")
    counts = Counter(r.clip_row["gait_class"] for r in results)
    return CohortSummary(
        out_dir=out_dir,
        n_subjects=len({p.subject.subject_id for p in plans}),
        n_clips=len(results),
        n_frames=sum(r.n_frames for r in results),
        n_events=len(events),
        clips_per_class={c: counts.get(c, 0) for c in GAIT_CLASSES},
        wall_s=time.perf_counter() - t0,
    )


# ---- truth helpers for the kinematics stage and tests ---------------------------


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed angle from 2D vectors a to b, degrees (counter-clockwise +)."""
    return np.degrees(np.arctan2(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], (a * b).sum(-1)))


def joint_angles_truth(joints: pl.DataFrame) -> pl.DataFrame:
    """Sagittal joint angles from planted 3D joints (the x-y plane).

    Input: a ``gait_joints`` table (polars).  Output: one row per
    source_name x frame_index x side with ``hip_flex_deg`` (thigh forward of
    the trunk's vertical, +), ``knee_flex_deg`` (0 = straight, + = flexed)
    and ``ankle_dorsi_deg`` (foot vs perpendicular to shank, + = toes up).
    """
    wide = joints.pivot(on="joint", index=["source_name", "frame_index", "pts_s"], values=["x_m", "y_m"])
    out = []
    for side in ("left", "right"):
        def xy(name: str) -> np.ndarray:
            return np.stack([wide[f"x_m_{side}_{name}"].to_numpy(), wide[f"y_m_{side}_{name}"].to_numpy()], -1)

        hip, knee, ankle, heel, toe = xy("hip"), xy("knee"), xy("ankle"), xy("heel"), xy("foot_index")
        thigh, shank, foot = knee - hip, ankle - knee, toe - heel
        down = np.broadcast_to(np.array([0.0, -1.0]), thigh.shape)
        out.append(pl.DataFrame({
            "source_name": wide["source_name"],
            "frame_index": wide["frame_index"],
            "pts_s": wide["pts_s"],
            "side": side,
            # Counter-clockwise in x-y (x forward, y up) swings a limb forward.
            "hip_flex_deg": _angle_deg(down, thigh),
            "knee_flex_deg": _angle_deg(shank, thigh),
            "ankle_dorsi_deg": _angle_deg(np.stack([shank[:, 1], -shank[:, 0]], -1) * -1, foot),
        }))
    return pl.concat(out).sort(["source_name", "frame_index", "side"])


def cadence_from_events(events: pl.DataFrame) -> pl.DataFrame:
    """Cadence per clip from a ``gait_events`` table: steps/min over its heel strikes.

    Output columns: source_name, n_heel_strikes, cadence_spm (null with < 2 strikes).
    """
    hs = events.filter(pl.col("event") == "heel_strike")
    return (
        hs.group_by("source_name")
        .agg(
            pl.len().alias("n_heel_strikes"),
            ((pl.len() - 1) * 60.0 / (pl.col("t_s").max() - pl.col("t_s").min())).alias("cadence_spm"),
        )
        .with_columns(pl.when(pl.col("n_heel_strikes") >= 2).then(pl.col("cadence_spm")).alias("cadence_spm"))
        .sort("source_name")
    )
