"""A 3D kinematic walker: gait-class profiles -> per-frame joints and events.

Pure numpy, no rendering.  ``sample_kinematics`` draws one subject's (or
clip's) walking parameters from the class profile; ``simulate`` turns them
into joint trajectories in world metres plus heel-strike / toe-off times.

World frame: x forward (walking direction), y up (floor at y = 0), z lateral
towards the camera.  Facing +x with +y up puts the subject's right side at
+z, so a camera on the +z side sees the right side (left limbs are far).

How the walk is built (why it stays physically plausible):

* Joint angles (hip, knee, ankle; sagittal) follow normative curves over
  the gait cycle (Perry & Burnfield; Winter), reshaped per class.  Stance
  ends at ``toe_off_frac`` of the cycle.
* The pelvis is carried forward by the stance foot: its forward motion is
  minus the motion of the stance foot's contact point relative to the
  pelvis, so a planted foot does not slide and stride length follows from
  the hip range and leg length (the profile's stride picks the hip range).
* The pelvis height puts the lowest foot point on the floor, so the heel
  touches the floor at heel strike and the toe at toe-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

GAIT_CLASSES: tuple[str, ...] = (
    "abnormal",
    "normal",
    "style",
    "exercise",
    "parkinsons",
    "cerebral_palsy",
    "myopathic",
    "dcm",
)

# Mediapipe pose landmark names (a subset; same spelling as
# mediapipe.solutions.pose.PoseLandmark, lower case).
JOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_index",
    "right_index",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
J = {name: i for i, name in enumerate(JOINTS)}
SIDES: tuple[str, ...] = ("left", "right")
SIDE_SIGN = {"left": -1.0, "right": +1.0}  # z of the right side is +

TEMPLATE_TOE_OFF = 0.62  # fraction of the cycle where normative curves put toe-off
REFERENCE_HEIGHT_M = 1.75
CONTACT_M = 0.01  # a foot point this close to the floor touches it
HS_SEARCH_FRAC = 0.3  # of a stride: how far contact may lag the nominal event
CALIBRATION_ROUNDS = 4  # corrections of hip range (stride) and trailing knee (contact)


@dataclass(frozen=True)
class Kinematics:
    """One walk's parameters (angles in degrees, lengths in metres)."""

    cadence_spm: float  # steps per minute
    stride_m: float  # target stride length (picks the hip range)
    toe_off_frac: float  # stance share of the cycle
    hip_offset_deg: float  # mean hip flexion (+ = thigh forward)
    knee_stance_deg: float  # knee flexion at heel strike / mid-stance (crouch)
    knee_loading_deg: float  # extra loading-response flexion
    knee_swing_deg: float  # peak swing flexion
    ankle_push_deg: float  # plantarflexion at push-off
    ankle_offset_deg: float  # mean dorsiflexion (+ = toes up)
    arm_swing_deg: float  # shoulder flexion amplitude
    elbow_deg: float  # mean elbow flexion
    trunk_flex_deg: float  # forward stoop
    head_flex_deg: float  # neck flexion on top of the trunk
    pelvic_drop_deg: float  # obliquity amplitude (swing side drops)
    trunk_lean_deg: float  # lateral trunk lean over the stance leg (waddle)
    step_width_m: float  # lateral distance between the feet
    sway_m: float  # lateral pelvis excursion amplitude
    scissor_m: float  # swing foot moved towards/over the midline
    asymmetry: float  # 0 = symmetric; >0 shortens/weakens the left step
    variability: float  # coefficient of variation of stride time


@dataclass(frozen=True)
class Body:
    """Body size of one subject (metres)."""

    height_m: float
    girth: float  # 1 = average build; scales limb/torso thickness

    @property
    def scale(self) -> float:
        return self.height_m / REFERENCE_HEIGHT_M

    # Segment lengths as fractions of height (Winter, Biomechanics, 4th ed., Fig 4.1).
    @property
    def thigh(self) -> float:
        return 0.245 * self.height_m

    @property
    def shank(self) -> float:
        return 0.246 * self.height_m

    @property
    def ankle_h(self) -> float:
        return 0.039 * self.height_m

    @property
    def foot(self) -> float:
        return 0.152 * self.height_m

    @property
    def trunk(self) -> float:  # hip centre to shoulder centre
        return 0.288 * self.height_m

    @property
    def upper_arm(self) -> float:
        return 0.186 * self.height_m

    @property
    def forearm(self) -> float:
        return 0.146 * self.height_m

    @property
    def hand(self) -> float:
        return 0.108 * self.height_m

    @property
    def hip_half_width(self) -> float:
        return 0.095 * self.height_m * (0.9 + 0.1 * self.girth)

    @property
    def shoulder_half_width(self) -> float:
        return 0.129 * self.height_m * (0.9 + 0.1 * self.girth)

    @property
    def neck(self) -> float:  # shoulder centre to ear level
        return 0.09 * self.height_m

    @property
    def head_r(self) -> float:
        return 0.062 * self.height_m


# Per class: (mean, sd) per Kinematics field.  Sources for the clinical
# shapes: Perry & Burnfield "Gait Analysis" (2010); Morris et al. 1994
# (Parkinsonian stride/cadence); Gage 1991 (crouch/scissoring in CP);
# DCM: Nishimura 2015, Kuhtz-Buschbeck 1999 (wide base, shorter stride,
# higher cadence); myopathic Trendelenburg/waddling gait.
_NORMAL: dict[str, tuple[float, float]] = {
    "cadence_spm": (110.0, 5.0),
    "stride_m": (1.38, 0.08),
    "toe_off_frac": (0.61, 0.01),
    "hip_offset_deg": (8.0, 2.0),
    "knee_stance_deg": (5.0, 1.5),
    "knee_loading_deg": (12.0, 2.0),
    "knee_swing_deg": (60.0, 3.0),
    "ankle_push_deg": (15.0, 2.0),
    "ankle_offset_deg": (0.0, 1.5),
    "arm_swing_deg": (22.0, 4.0),
    "elbow_deg": (18.0, 4.0),
    "trunk_flex_deg": (3.0, 1.5),
    "head_flex_deg": (0.0, 2.0),
    "pelvic_drop_deg": (4.0, 0.8),
    "trunk_lean_deg": (1.5, 0.5),
    "step_width_m": (0.10, 0.015),
    "sway_m": (0.022, 0.004),
    "scissor_m": (0.0, 0.0),
    "asymmetry": (0.0, 0.0),
    "variability": (0.015, 0.003),
}


def _profile(**changes: tuple[float, float]) -> dict[str, tuple[float, float]]:
    unknown = set(changes) - set(_NORMAL)
    if unknown:
        raise KeyError(f"unknown kinematic fields {sorted(unknown)}")
    return {**_NORMAL, **changes}


PROFILES: dict[str, dict[str, tuple[float, float]]] = {
    "normal": _NORMAL,
    # generic antalgic / limping gait: one short, quick step, less knee motion
    "abnormal": _profile(
        cadence_spm=(100.0, 6.0), stride_m=(1.10, 0.08), asymmetry=(0.35, 0.06),
        knee_swing_deg=(50.0, 4.0), arm_swing_deg=(16.0, 4.0), trunk_lean_deg=(4.0, 1.0),
        pelvic_drop_deg=(5.0, 1.0), variability=(0.035, 0.008), trunk_flex_deg=(6.0, 2.0),
    ),
    # stylised "catwalk" walk: exaggerated arm swing and hip motion, narrow steps
    "style": _profile(
        cadence_spm=(104.0, 5.0), stride_m=(1.45, 0.08), arm_swing_deg=(38.0, 5.0),
        pelvic_drop_deg=(7.5, 1.0), step_width_m=(0.03, 0.01), sway_m=(0.04, 0.006),
        trunk_flex_deg=(-3.0, 1.5), knee_swing_deg=(58.0, 3.0),
        elbow_deg=(10.0, 3.0),
    ),
    # brisk exercise walk with high knees and pumping arms
    "exercise": _profile(
        cadence_spm=(128.0, 5.0), stride_m=(1.60, 0.08), knee_swing_deg=(78.0, 4.0),
        hip_offset_deg=(14.0, 2.0), arm_swing_deg=(40.0, 5.0), elbow_deg=(80.0, 6.0),
        trunk_flex_deg=(7.0, 2.0), toe_off_frac=(0.58, 0.01),
        ankle_push_deg=(20.0, 2.0),
    ),
    # short shuffling steps, reduced arm swing, stooped posture, flexed knees
    "parkinsons": _profile(
        cadence_spm=(118.0, 6.0), stride_m=(0.78, 0.08), knee_swing_deg=(42.0, 4.0),
        knee_stance_deg=(14.0, 3.0), knee_loading_deg=(5.0, 1.5), arm_swing_deg=(5.0, 1.5),
        elbow_deg=(40.0, 6.0), trunk_flex_deg=(22.0, 3.0), head_flex_deg=(12.0, 3.0),
        hip_offset_deg=(16.0, 2.0), ankle_push_deg=(5.0, 1.5), toe_off_frac=(0.66, 0.015),
        step_width_m=(0.09, 0.015), variability=(0.04, 0.008),
        ankle_offset_deg=(-3.0, 1.5),
    ),
    # crouch gait with scissoring: flexed knees through stance, knees inward
    "cerebral_palsy": _profile(
        cadence_spm=(104.0, 6.0), stride_m=(0.92, 0.08), knee_stance_deg=(38.0, 4.0),
        knee_loading_deg=(4.0, 1.5), knee_swing_deg=(58.0, 4.0), hip_offset_deg=(24.0, 3.0),
        ankle_offset_deg=(8.0, 2.0), ankle_push_deg=(6.0, 2.0), trunk_flex_deg=(14.0, 3.0),
        step_width_m=(0.05, 0.01), scissor_m=(0.07, 0.01), arm_swing_deg=(14.0, 4.0),
        elbow_deg=(45.0, 8.0), variability=(0.045, 0.01), toe_off_frac=(0.65, 0.015),
    ),
    # waddling: Trendelenburg pelvic drop, lateral trunk lean, lumbar lordosis
    "myopathic": _profile(
        cadence_spm=(98.0, 5.0), stride_m=(1.08, 0.07), pelvic_drop_deg=(13.0, 1.5),
        trunk_lean_deg=(9.0, 1.5), sway_m=(0.06, 0.008), step_width_m=(0.15, 0.015),
        trunk_flex_deg=(-6.0, 1.5), knee_swing_deg=(52.0, 3.0), arm_swing_deg=(18.0, 4.0),
        variability=(0.03, 0.006), ankle_offset_deg=(-4.0, 1.5),
    ),
    # degenerative cervical myelopathy: wide-based, stiff-kneed, quick short steps
    "dcm": _profile(
        cadence_spm=(128.0, 5.0), stride_m=(0.95, 0.07), step_width_m=(0.22, 0.02),
        knee_swing_deg=(40.0, 4.0), knee_loading_deg=(4.0, 1.5), ankle_push_deg=(7.0, 2.0),
        arm_swing_deg=(18.0, 4.0), elbow_deg=(30.0, 6.0), sway_m=(0.04, 0.006),
        trunk_flex_deg=(6.0, 2.0), variability=(0.05, 0.01), toe_off_frac=(0.65, 0.015),
        trunk_lean_deg=(3.0, 1.0),
    ),
}

# Hard limits after sampling, so a tail draw never breaks the kinematics.
_LIMITS: dict[str, tuple[float, float]] = {
    "cadence_spm": (60.0, 160.0),
    "stride_m": (0.4, 1.9),
    "toe_off_frac": (0.55, 0.72),
    "knee_swing_deg": (25.0, 90.0),
    "variability": (0.0, 0.1),
    "asymmetry": (0.0, 0.6),
    "step_width_m": (0.0, 0.3),
    "scissor_m": (0.0, 0.12),
}


def sample_kinematics(gait_class: str, rng: np.random.Generator, *, scale: float = 1.0) -> Kinematics:
    """Draw one walk's ``Kinematics`` from the class profile (normal per field).

    ``scale`` multiplies the sd (e.g. 0.3 for clip-to-clip variation around a
    subject's own parameters).  Unknown class -> ``KeyError``.
    """
    prof = PROFILES[gait_class]
    vals = {}
    for f in fields(Kinematics):
        mean, sd = prof[f.name]
        v = float(mean + sd * scale * rng.standard_normal())
        lo, hi = _LIMITS.get(f.name, (-math.inf, math.inf))
        vals[f.name] = min(max(v, lo), hi)
    return Kinematics(**vals)


def perturb(kin: Kinematics, gait_class: str, rng: np.random.Generator, *, scale: float) -> Kinematics:
    """``kin`` with each field moved by ``scale`` x the class sd (clip-to-clip variation)."""
    prof = PROFILES[gait_class]
    vals = {}
    for f in fields(Kinematics):
        v = getattr(kin, f.name) + prof[f.name][1] * scale * float(rng.standard_normal())
        lo, hi = _LIMITS.get(f.name, (-math.inf, math.inf))
        vals[f.name] = min(max(v, lo), hi)
    return Kinematics(**vals)


@dataclass(frozen=True)
class Walk:
    """Simulated walk: per-frame joints and the planted events.

    ``joints``: (T, len(JOINTS), 3) float64 world metres (x fwd, y up, z lateral).
    ``knee_flexion_deg``: (T, 2) planted knee flexion, columns (left, right).
    ``events``: list of (side, event, t_s), event in heel_strike | toe_off.
    """

    t_s: np.ndarray
    joints: np.ndarray
    knee_flexion_deg: np.ndarray
    events: list[tuple[str, str, float]]
    cadence_spm: float  # planted: two steps per stride over the strides in the clip


def _ease(q: np.ndarray, keys: list[tuple[float, float]]) -> np.ndarray:
    """Periodic cosine-eased interpolation through (phase, value) keys on [0, 1)."""
    kq = np.array([k[0] for k in keys] + [keys[0][0] + 1.0])
    kv = np.array([k[1] for k in keys] + [keys[0][1]])
    q = np.mod(q, 1.0)
    idx = np.clip(np.searchsorted(kq, q, side="right") - 1, 0, len(keys) - 1)
    q0, q1 = kq[idx], kq[idx + 1]
    s = (q - q0) / (q1 - q0)
    w = 0.5 - 0.5 * np.cos(np.pi * s)
    return kv[idx] * (1 - w) + kv[idx + 1] * w


def _template_phase(p: np.ndarray, toe_off: float) -> np.ndarray:
    """Warp a leg's phase so its toe-off lands on the template's toe-off."""
    p = np.mod(p, 1.0)
    return np.where(
        p < toe_off,
        p * TEMPLATE_TOE_OFF / toe_off,
        TEMPLATE_TOE_OFF + (p - toe_off) * (1 - TEMPLATE_TOE_OFF) / (1 - toe_off),
    )


def _leg_angles(
    q: np.ndarray, k: Kinematics, hip_range: float, weak: float, pre_swing: float,
) -> tuple[np.ndarray, ...]:
    """Hip flexion, knee flexion, ankle dorsiflexion (deg) at template phase ``q``.

    ``pre_swing`` (deg) is extra knee flexion of the trailing leg around the
    other foot's heel strike, so both feet can touch the floor then.
    """
    hi = k.hip_offset_deg + hip_range / 2
    lo = k.hip_offset_deg - hip_range / 2
    hip = _ease(q, [(0.0, hi - 2.0), (0.52, lo), (0.87, hi)])
    swing = k.knee_swing_deg * weak
    knee = _ease(q, [
        (0.0, k.knee_stance_deg),
        (0.15, k.knee_stance_deg + k.knee_loading_deg),
        (0.40, k.knee_stance_deg + 0.3 * k.knee_loading_deg),
        (0.62, k.knee_stance_deg + 0.62 * (swing - k.knee_stance_deg)),
        (0.73, swing),
        (0.93, k.knee_stance_deg + 2.0),
    ]) + pre_swing * _ease(q, [(0.0, 0.0), (0.36, 0.0), (0.5, 1.0), (0.66, 0.0)])
    ankle = k.ankle_offset_deg + _ease(q, [
        (0.0, 0.0), (0.08, -5.0), (0.45, 10.0), (0.62, -k.ankle_push_deg), (0.78, 2.0),
    ])
    return hip, knee, ankle


def _rot(v: np.ndarray, deg: np.ndarray) -> np.ndarray:
    """Rotate 2D vectors (…, 2) counter-clockwise by ``deg``."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.stack([v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c], axis=-1)


def _stride_starts(k: Kinematics, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Right heel-strike times covering the clip (first one before t = 0)."""
    mean_T = 120.0 / k.cadence_spm  # stride time, s (two steps)
    n = int(duration_s / mean_T) + 4
    durs = mean_T * (1 + k.variability * rng.standard_normal(n))
    durs = np.clip(durs, 0.5 * mean_T, 1.5 * mean_T)
    start = -mean_T * rng.uniform(0.0, 1.0)
    return start + np.concatenate([[0.0], np.cumsum(durs)])


def _contact_events(
    starts: np.ndarray, left_offset: float, stance_frac: float, joints: np.ndarray, t: np.ndarray, duration_s: float,
) -> list[tuple[str, str, float]]:
    """Heel strikes and toe-offs: the cycle's nominal times moved to foot contact.

    The joint curves do not close the kinematic chain exactly, so at the
    nominal heel strike the heel may still hover a few cm; the event is the
    first moment near it that the heel is on the floor (toe-off: the last
    moment the toe is).  Every cycle shifts alike, so cadence is unchanged.
    """
    events: list[tuple[str, str, float]] = []
    dt = t[1] - t[0]
    for j0 in range(len(starts) - 2):
        for side, off in (("right", 0.0), ("left", left_offset)):
            for ev, at in (("heel_strike", off), ("toe_off", off + stance_frac)):
                # Leg phase ``at`` (in right-cycle units) may fall in the next stride.
                j = j0 + int(at // 1.0)
                T = starts[j + 1] - starts[j]
                te = starts[j] + (at % 1.0) * T
                if ev == "heel_strike":
                    h = joints[:, J[f"{side}_heel"], 1]
                    lo, hi = te - 0.05 * T, te + HS_SEARCH_FRAC * T
                else:
                    h = joints[:, J[f"{side}_foot_index"], 1]
                    lo, hi = te - HS_SEARCH_FRAC * T, te + 0.05 * T
                win = np.flatnonzero((t >= lo) & (t <= hi))
                if len(win):
                    on = win[h[win] <= CONTACT_M]
                    if len(on):
                        te = float(t[on[0]] if ev == "heel_strike" else t[on[-1]])
                    else:
                        te = float(t[win[np.argmin(h[win])]])
                if dt <= te < duration_s:
                    events.append((side, ev, float(te)))
    return events


def simulate(k: Kinematics, body: Body, *, duration_s: float, fps: float, rng: np.random.Generator) -> Walk:
    """Simulate ``duration_s`` of walking sampled at ``fps``; see ``Walk``.

    Deterministic given ``rng``'s state.  The walker starts near x = 0 and
    walks towards +x; events are those with 0 <= t_s < duration_s.
    """
    n = max(int(round(duration_s * fps)), 1)
    # Integrate the pelvis on a finer grid than the frames so fast feet do not alias.
    sub = 4
    t = np.arange(n * sub) / (fps * sub)
    starts = _stride_starts(k, duration_s, rng)
    i = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(starts) - 2)
    T = starts[i + 1] - starts[i]
    phase_r = (t - starts[i]) / T  # right-leg phase, 0 at right heel strike
    # A limp: the left heel strikes late (short right step, long left one).
    left_offset = 0.5 + 0.2 * k.asymmetry
    phase = {"right": phase_r, "left": np.mod(phase_r - left_offset, 1.0)}

    leg_len = body.thigh + body.shank
    stance_frac = k.toe_off_frac
    # Pelvic obliquity: the swing side's hip drops; s > 0 during right stance.
    s = np.sin(2 * np.pi * phase_r)
    oblq = k.pelvic_drop_deg * s
    hip_dy = {sd: SIDE_SIGN[sd] * body.hip_half_width * np.sin(np.radians(oblq)) for sd in SIDES}

    def legs(hip_range: float, pre_swing: float):
        rel: dict[str, dict[str, np.ndarray]] = {}
        knee_flex = {}
        for side in SIDES:
            # The weak (left) side in an asymmetric gait has less swing flexion.
            weak = 1.0 - (0.8 * k.asymmetry if side == "left" else 0.0)
            q = _template_phase(phase[side], stance_frac)
            hip, knee, ankle = _leg_angles(q, k, hip_range, weak, pre_swing)
            thigh_a = hip
            shank_a = hip - knee
            down = np.array([0.0, -1.0])
            d_thigh = _rot(np.broadcast_to(down, (len(t), 2)), thigh_a)
            d_shank = _rot(np.broadcast_to(down, (len(t), 2)), shank_a)
            knee_p = body.thigh * d_thigh
            ankle_p = knee_p + body.shank * d_shank
            foot_dir = _rot(d_shank, 90.0 + ankle)
            foot_down = np.stack([foot_dir[:, 1], -foot_dir[:, 0]], axis=-1)
            heel_p = ankle_p - 0.25 * body.foot * foot_dir + body.ankle_h * foot_down
            toe_p = ankle_p + 0.75 * body.foot * foot_dir + body.ankle_h * foot_down
            rel[side] = {"knee": knee_p, "ankle": ankle_p, "heel": heel_p, "foot_index": toe_p}
            knee_flex[side] = knee

        # Pelvis height: lowest foot point on the floor.
        lows = []
        for side in SIDES:
            lows.append(np.minimum(rel[side]["heel"][:, 1], rel[side]["foot_index"][:, 1]) + hip_dy[side])
        pelvis_y = -np.minimum(lows[0], lows[1])

        # Pelvis forward motion: the stance feet's contact points stay put.
        dx = np.zeros(len(t))
        w_sum = np.zeros(len(t))
        for side in SIDES:
            in_stance = phase[side] < stance_frac
            contact = np.where(
                rel[side]["heel"][:, 1] <= rel[side]["foot_index"][:, 1],
                rel[side]["heel"][:, 0], rel[side]["foot_index"][:, 0],
            )
            d = np.diff(contact, prepend=contact[0])
            # A contact point jumping heel->toe is a roll-over, not a slide.
            d = np.where(np.abs(d) > 0.05 * body.foot, np.diff(rel[side]["ankle"][:, 0], prepend=rel[side]["ankle"][0, 0]), d)
            dx += np.where(in_stance, -d, 0.0)
            w_sum += in_stance
        dx = np.where(w_sum > 0, dx / np.maximum(w_sum, 1), np.median(dx[w_sum > 0]) if (w_sum > 0).any() else 0.0)
        pelvis_x = np.cumsum(dx)
        return rel, knee_flex, pelvis_x, pelvis_y

    # Stride follows from the hip range, and heel contact at heel strike from
    # the trailing knee: start from the small-angle estimate and no extra
    # flexion, then correct both a few times from the simulated walk.
    ratio = min(k.stride_m * stance_frac / (2 * leg_len), 0.95)
    hip_range = 2 * math.degrees(math.asin(ratio))
    pre_swing = 0.0
    stride_T = float(np.mean(np.diff(starts)))
    strikes = {sd: np.flatnonzero(np.diff(phase[sd]) < 0) + 1 for sd in SIDES}
    for _ in range(CALIBRATION_ROUNDS):
        rel, knee_flex, pelvis_x, pelvis_y = legs(hip_range, pre_swing)
        speed = (pelvis_x[-1] - pelvis_x[0]) / (t[-1] - t[0])
        hip_range = float(np.clip(hip_range * k.stride_m / max(speed * stride_T, 1e-3), 2.0, 90.0))
        hover = np.concatenate([
            rel[sd]["heel"][strikes[sd], 1] + hip_dy[sd][strikes[sd]] + pelvis_y[strikes[sd]] for sd in SIDES
        ])
        if len(hover):
            pre_swing = float(np.clip(pre_swing + np.degrees(np.median(hover) / (0.5 * body.shank)), 0.0, 40.0))
    rel, knee_flex, pelvis_x, pelvis_y = legs(hip_range, pre_swing)
    pelvis_z = k.sway_m * s

    # Trunk: stoop, small forward lean oscillation, lateral lean over stance leg.
    trunk_a = k.trunk_flex_deg + 1.5 * np.sin(4 * np.pi * phase_r)
    lean = np.radians(k.trunk_lean_deg * s)
    tr = np.radians(trunk_a)
    sh_c = np.stack([
        pelvis_x + body.trunk * np.sin(tr),
        pelvis_y + body.trunk * np.cos(tr) * np.cos(lean),
        pelvis_z + body.trunk * np.sin(lean),
    ], axis=-1)
    head_a = np.radians(trunk_a + k.head_flex_deg)
    ear_c = sh_c + np.stack([body.neck * np.sin(head_a), body.neck * np.cos(head_a), np.zeros_like(t)], axis=-1)

    out = np.zeros((len(t), len(JOINTS), 3))
    fwd_h = np.stack([np.cos(head_a), -np.sin(head_a)], axis=-1)  # face direction in x-y
    for side in SIDES:
        sg = SIDE_SIGN[side]
        out[:, J[f"{side}_ear"]] = ear_c + np.stack([np.zeros_like(t), np.zeros_like(t), np.full_like(t, sg * 0.07 * body.scale)], axis=-1)
        eye = ear_c[:, :2] + body.head_r * 1.25 * fwd_h + np.stack([np.sin(head_a), np.cos(head_a)], axis=-1) * 0.01
        out[:, J[f"{side}_eye"]] = np.concatenate([eye, (ear_c[:, 2] + sg * 0.03 * body.scale)[:, None]], axis=-1)
    nose = ear_c[:, :2] + body.head_r * 1.55 * fwd_h - np.stack([np.sin(head_a), np.cos(head_a)], axis=-1) * 0.03 * body.scale
    out[:, J["nose"]] = np.concatenate([nose, ear_c[:, 2:3]], axis=-1)

    for side in SIDES:
        sg = SIDE_SIGN[side]
        hip = np.stack([pelvis_x, pelvis_y + hip_dy[side], pelvis_z + sg * body.hip_half_width], axis=-1)
        out[:, J[f"{side}_hip"]] = hip
        # Feet sit on their own lines (step width); scissoring pulls the swing foot in.
        swing_bump = np.where(phase[side] >= stance_frac, np.sin(np.pi * (phase[side] - stance_frac) / (1 - stance_frac)), 0.0)
        foot_z = sg * (k.step_width_m / 2 - k.scissor_m * swing_bump)
        for name in ("knee", "ankle", "heel", "foot_index"):
            r = rel[side][name]
            frac = 0.5 if name == "knee" else 1.0
            z = hip[:, 2] + frac * (foot_z - hip[:, 2])
            if name == "knee":
                z = z - sg * 0.6 * k.scissor_m  # knees inward (adduction) in scissoring
            out[:, J[f"{side}_{name}"]] = np.stack([hip[:, 0] + r[:, 0], hip[:, 1] + r[:, 1], z], axis=-1)

        # Arms swing with the opposite leg: right arm forward when the left hip flexes.
        other = "left" if side == "right" else "right"
        q_o = _template_phase(phase[other], stance_frac)
        hip_o = _ease(q_o, [(0.0, 1.0), (0.52, -1.0), (0.87, 1.0)])
        sh_flex = k.arm_swing_deg * hip_o
        elbow = k.elbow_deg + 0.4 * k.arm_swing_deg * np.clip(hip_o, 0, None)
        shoulder = sh_c + np.stack([np.zeros_like(t), np.zeros_like(t), np.full_like(t, sg * body.shoulder_half_width)], axis=-1)
        out[:, J[f"{side}_shoulder"]] = shoulder
        down = np.broadcast_to(np.array([0.0, -1.0]), (len(t), 2))
        d_up = _rot(down, trunk_a * 0.5 + sh_flex)
        d_fore = _rot(down, trunk_a * 0.5 + sh_flex + elbow)
        el = shoulder[:, :2] + body.upper_arm * d_up
        wr = el + body.forearm * d_fore
        ix = wr + body.hand * d_fore
        zarm = shoulder[:, 2] + sg * 0.02
        for name, p in (("elbow", el), ("wrist", wr), ("index", ix)):
            out[:, J[f"{side}_{name}"]] = np.concatenate([p, zarm[:, None]], axis=-1)

    # Start the walk near x = 0.
    out[..., 0] -= out[0, J["left_hip"], 0]
    events = _contact_events(starts, left_offset, stance_frac, out, t, duration_s)
    frames = slice(0, len(t), sub)
    out = out[frames]
    events.sort(key=lambda e: (e[2], e[0], e[1]))
    kf = np.stack([knee_flex["left"][frames], knee_flex["right"][frames]], axis=-1)
    in_clip = (starts[1:] > 0) & (starts[:-1] < duration_s)
    cadence = 120.0 / float(np.mean(np.diff(starts)[in_clip]))
    return Walk(t_s=t[frames], joints=out, knee_flexion_deg=kf, events=events, cadence_spm=cadence)
