"""Phantom EMU seizure cohort: MP4 recordings with planted semiology and truth tables.

``semioflow synth seizure`` calls ``generate_cohort``.  Two steps, kept apart:

1. **Plan** (``plan_cohort``, cheap, no pixels): patients, recordings, and for
   every recording which of the 20 catalog features are planted and when.
   Each feature is planted in a stratified 30-70 % of recordings (a fixed
   count, not luck), so every feature ends up in 20-80 % of recordings.
   Events are drawn the way clinicians describe them (``EVENT_S`` gives
   durations; ``CLONIC_HZ`` etc. the rhythms).  A ``RecordingSpec`` holds
   everything a recording needs, including its own seed.
2. **Render** (``render_recording``, a pure function of the spec): an
   articulated patient sitting on a bed whose head carries a real face
   photograph (``faces.py``), staff visits with another real face, lighting
   changes, head turns to profile, and a soundtrack with groans, staff
   prompts, replies, background speech and alarms (``sound.py``).  Frames
   and audio stream into ``tasks.media.VideoWriter``; the per-frame truth
   (face boxes, patient joints) comes back as arrays.

Outputs under ``out_dir``: ``videos/<source_name>`` (e.g. ``P03_R2.mp4``) and
the truth tables ``patients``, ``recordings``, ``labels``, ``events``,
``faces`` and ``joints`` (contracts in ``tasks/schema.py``).  Same seed, same
bytes of truth and the same decoded frames.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from tasks.catalog import load_catalog
from tasks.errors import ConfigError
from tasks.media import VideoWriter
from tasks.params import SeizureSynthParams
from tasks.schema import write_table
from tasks.synth import body as bodymod
from tasks.synth import faces as facemod
from tasks.synth import identifiers as idmod
from tasks.synth import overlay as overlaymod
from tasks.synth import sound as soundmod

# ---- feature groups by what they move ------------------------------------
BODY_FEATURES = (
    "tonic", "clonic", "figure4_arms", "arm_flexion", "arm_straightening", "limb_automatisms",
    "asynchronous_movement", "arms_move_simultaneously", "full_body_shaking", "pelvic_thrusting",
)
FACE_FEATURES = (
    "blank_stare", "closed_eyes", "eye_blinking", "face_pulling", "face_twitching", "oral_automatisms",
    "head_turning",
)
SLEEP_FEATURE = "occur_during_sleep"
VOCAL_FEATURE = "ictal_vocalization"
OVERLAY_STREAM = 99  # the overlay plan's random stream, apart from every other draw of a recording
SPOKEN_STREAM = 98  # the spoken identifiers' random stream, likewise
SPOKEN_TRIES = 32  # candidate start times for the spoken identifiers; the least overlapped with other sound wins
VERBAL_FEATURE = "verbal_responsiveness"

EVENT_S = {  # planted event duration range, seconds (shrunk to fit short recordings)
    "tonic": (5.0, 10.0), "clonic": (6.0, 14.0), "figure4_arms": (4.0, 8.0), "arm_flexion": (4.0, 9.0),
    "arm_straightening": (4.0, 9.0), "limb_automatisms": (6.0, 14.0), "asynchronous_movement": (5.0, 11.0),
    "arms_move_simultaneously": (5.0, 11.0), "full_body_shaking": (4.0, 9.0), "pelvic_thrusting": (5.0, 10.0),
    "blank_stare": (6.0, 14.0), "closed_eyes": (5.0, 12.0), "eye_blinking": (4.0, 8.0),
    "face_pulling": (4.0, 9.0), "face_twitching": (4.0, 9.0), "oral_automatisms": (6.0, 14.0),
    "head_turning": (4.0, 9.0), "ictal_vocalization": (5.0, 12.0),
}
MIN_EVENT_S = 3.0  # s; shortest planted event after shrinking
EVENT_GAP_S = 1.0  # s; minimum gap between events on the same channel
SLEEP_S = (8.0, 14.0)  # s of quiet sleep at the start
ONSET_S = (3.0, 7.0)  # s before the first event when not asleep
POSTICTAL_S = 4.0  # s; minimum quiet tail
RAMP_S = 0.35  # s; posture blend in/out of an event

CLONIC_HZ = (2.2, 3.8)  # Hz, rhythmic jerks (clinical 2-4 Hz)
SHAKE_HZ = 5.0  # Hz, full-body shaking (capped below Nyquist)
AUTOMATISM_HZ = (0.4, 1.3)  # Hz, fumbling / picking
ASYNC_HZ = ((0.55, 0.85), (1.2, 1.6))  # Hz, left and right arm, out of step
SIMULT_HZ = (0.8, 1.5)  # Hz, both arms in phase
PELVIC_HZ = (0.9, 1.5)  # Hz
ORAL_HZ = (1.0, 1.6)  # Hz, chewing / lip smacking
BLINK_HZ = 3.0  # Hz, rapid blinking
BREATH_HZ = 0.25  # Hz
NORMAL_BLINK_EVERY_S = (3.0, 6.0)  # s
BLINK_S = 0.15  # s
HEAD_TURN_RAD = (1.1, 1.35)  # rad, sustained head version (profile)
GLANCE_S = (1.2, 2.5)  # s, brief distractor turns to profile
GLANCE_EVERY_S = 35.0  # s, one glance per this much recording on average
SLEEP_LIGHT = 0.45  # brightness factor while asleep in a dimmed room
LIGHT_LEVELS = (0.75, 1.15)  # brightness factor range of lighting changes
STAFF_WALK_S = 1.5  # s to enter / leave the frame
ANNOTATOR_FLIP_P = 0.04  # chance that one annotator flips one planted label
PREVALENCE = (0.3, 0.7)  # planted share of recordings per feature (target band 20-80 %)
MIN_SIZE = (128, 96)  # pixels
VOCAL_F0_HZ = (95.0, 170.0)  # Hz, patient voice pitch
STAFF_F0_HZ = (170.0, 230.0)  # Hz

LATERAL = {"clonic", "arm_flexion", "arm_straightening", "limb_automatisms"}  # left/right/both
ONE_SIDED = {"figure4_arms", "head_turning", "face_pulling", "face_twitching"}  # left/right

GOWNS = ((120, 160, 200), (150, 190, 160), (200, 170, 120), (170, 140, 190), (110, 130, 170))
TROUSERS = ((50, 60, 90), (70, 70, 70), (40, 70, 60), (90, 60, 50))
SCRUBS = ((40, 120, 140), (60, 90, 150), (70, 130, 90))
WALLS = ((170, 180, 175), (190, 185, 170), (160, 175, 190), (185, 175, 180))


@dataclass(frozen=True)
class Event:
    """One planted event: feature, interval (s), side (left/right/both or None), rhythm (Hz or 0)."""

    feature_id: str
    t_start_s: float
    t_end_s: float
    side: str | None = None
    rate_hz: float = 0.0


@dataclass(frozen=True)
class Visit:
    """A staff member in the frame from ``t_in_s`` to ``t_out_s``."""

    t_in_s: float
    t_out_s: float


@dataclass(frozen=True)
class RecordingSpec:
    """Everything needed to render one recording (a pure function of this)."""

    source_name: str
    patient_id: str
    width: int
    height: int
    fps: float
    sample_rate: int
    duration_s: float
    seed: int
    patient: facemod.Identity
    staff: facemod.Identity
    look: bodymod.Look
    wall: tuple[int, int, int]
    scrubs: tuple[int, int, int]
    events: tuple[Event, ...] = ()
    visits: tuple[Visit, ...] = ()
    clips: tuple[soundmod.Clip, ...] = ()
    glances: tuple[Event, ...] = ()  # brief distractor head turns (not a feature)
    lights: tuple[tuple[float, float], ...] = ()  # (time s, brightness factor) steps
    overlays: tuple[overlaymod.Overlay, ...] = ()  # burned-in text (tasks/synth/overlay.py)
    spoken: idmod.SpokenIdentity | None = None  # identifiers the patient says (tasks/synth/identifiers.py)
    spoken_t_s: float = 0.0  # when they start saying them

    @property
    def n_frames(self) -> int:
        return int(round(self.duration_s * self.fps))

    @property
    def features(self) -> frozenset[str]:
        return frozenset(e.feature_id for e in self.events)


@dataclass(frozen=True)
class RecordingTruth:
    """Per-frame truth of one rendered recording (arrays, cheap to pickle)."""

    source_name: str
    n_frames: int
    fps: float
    face_frame: np.ndarray  # (m,) int64
    face_person: tuple[str, ...]
    face_view: tuple[str, ...]
    face_box: np.ndarray  # (m, 4) float32 x0 y0 x1 y1
    joints: np.ndarray  # (n_frames, len(JOINTS), 2) float32 pixels


@dataclass(frozen=True)
class CohortSummary:
    """What ``generate_cohort`` wrote: counts, wall time and planted prevalence per feature."""

    out_dir: Path
    n_patients: int
    n_recordings: int
    n_frames: int
    total_duration_s: float
    wall_s: float
    prevalence: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One-paragraph human summary."""
        lo = min(self.prevalence.values()) if self.prevalence else 0.0
        hi = max(self.prevalence.values()) if self.prevalence else 0.0
        return (
            f"Seizure phantom cohort: {self.n_patients} patients, {self.n_recordings} recordings "
            f"({self.total_duration_s / 60:.1f} min, {self.n_frames} frames) written to {self.out_dir} "
            f"in {self.wall_s:.1f} s; each of {len(self.prevalence)} features planted in "
            f"{lo:.0%}-{hi:.0%} of recordings; truth tables: patients, recordings, labels, events, faces, joints."
        )


# ---- validation ----------------------------------------------------------
def validate_params(params: SeizureSynthParams) -> None:
    """Raise ``ConfigError`` naming the ``synth.seizure`` key of a bad value."""
    p = params
    if p.patients < 1:
        raise ConfigError(f"synth.seizure.patients must be >= 1, got {p.patients}")
    if p.recordings_per_patient < 1:
        raise ConfigError(f"synth.seizure.recordings_per_patient must be >= 1, got {p.recordings_per_patient}")
    if p.width % 2 or p.height % 2 or p.width < MIN_SIZE[0] or p.height < MIN_SIZE[1]:
        raise ConfigError(
            f"synth.seizure.width/height must be even and at least {MIN_SIZE[0]}x{MIN_SIZE[1]}, "
            f"got {p.width}x{p.height}"
        )
    if not 1.0 <= p.fps <= 120.0:
        raise ConfigError(f"synth.seizure.fps must be in [1, 120], got {p.fps}")
    if p.min_duration_s < 20.0:
        raise ConfigError(f"synth.seizure.min_duration_s must be >= 20 s (room for events), got {p.min_duration_s}")
    if p.max_duration_s < p.min_duration_s:
        raise ConfigError(
            f"synth.seizure.max_duration_s ({p.max_duration_s}) must be >= min_duration_s ({p.min_duration_s})"
        )
    if not 8000 <= p.sample_rate <= 48000:
        raise ConfigError(f"synth.seizure.sample_rate must be in [8000, 48000] Hz, got {p.sample_rate}")


# ---- planning ------------------------------------------------------------
def feature_ids() -> tuple[str, ...]:
    """The 20 catalog feature ids, in catalog order."""
    ids = load_catalog().ids
    planted = set(BODY_FEATURES) | set(FACE_FEATURES) | {SLEEP_FEATURE, VOCAL_FEATURE, VERBAL_FEATURE}
    if set(ids) != planted:
        raise ConfigError(f"catalog features and planted features differ: {sorted(set(ids) ^ planted)}")
    return ids


def _sub_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ES vs NES (S³ Task 7).  The phantom's diagnosis follows the signs clinicians weigh: eyes closed,
# asynchronous movement, pelvic thrusting and kept responsiveness point to a non-epileptic seizure; tonic
# and clonic phases, an ictal cry, a figure-of-4, automatisms and a blank stare to an epileptic one.
NES_SIGNS = ("closed_eyes", "asynchronous_movement", "pelvic_thrusting", "verbal_responsiveness")
ES_SIGNS = ("tonic", "clonic", "ictal_vocalization", "figure4_arms", "oral_automatisms", "blank_stare")
SIGN_PREFERENCE = 1.0  # added to the load of a recording of the other diagnosis: far above any load difference
NES_EVERY = 3  # every third patient (P03, P06, ...) has non-epileptic seizures, about the share an EMU sees


def is_nes(patient_index: int) -> bool:
    """Whether patient ``patient_index`` (0-based) of the phantom has non-epileptic seizures."""
    return patient_index % NES_EVERY == NES_EVERY - 1


def assign_features(durations: list[float], rng: np.random.Generator, nes: list[bool] | None = None) -> list[set[str]]:
    """Which features each recording carries: per feature a stratified count in ``PREVALENCE``.

    Recordings with fewer seconds per already-assigned feature are preferred,
    so short recordings are not crowded.  With ``nes`` (per recording: a
    non-epileptic seizure), the diagnosis' own signs (``NES_SIGNS`` /
    ``ES_SIGNS``) go to recordings of that diagnosis first: the classes get
    different prevalences of them (S³ Task 7's truth) while every feature
    keeps its count.
    """
    n = len(durations)
    lo = max(1, math.ceil(PREVALENCE[0] * n)) if n > 1 else 0
    hi = max(lo, min(n - 1, math.floor(PREVALENCE[1] * n))) if n > 1 else 1
    out: list[set[str]] = [set() for _ in range(n)]
    ids = list(feature_ids())
    rng.shuffle(ids)
    for fid in ids:
        k = int(rng.integers(lo, hi + 1))
        load = np.array([len(s) / d for s, d in zip(out, durations)]) + rng.random(n) * 0.02
        if nes is not None and (fid in NES_SIGNS or fid in ES_SIGNS):
            load += np.array([float(x != (fid in NES_SIGNS)) for x in nes]) * SIGN_PREFERENCE
        for i in np.argsort(load, kind="stable")[:k]:
            out[int(i)].add(fid)
    return out


def _side(fid: str, rng: np.random.Generator) -> str | None:
    if fid in LATERAL:
        return ("left", "right", "both")[int(rng.integers(3))]
    if fid in ONE_SIDED:
        return ("left", "right")[int(rng.integers(2))]
    if fid in ("tonic", "full_body_shaking", "asynchronous_movement", "arms_move_simultaneously"):
        return "both"
    return None


def _rate(fid: str, rng: np.random.Generator, fps: float) -> float:
    if fid == "clonic":
        return float(rng.uniform(*CLONIC_HZ))
    if fid == "full_body_shaking":
        return min(SHAKE_HZ, 0.42 * fps)
    if fid == "limb_automatisms":
        return float(rng.uniform(*AUTOMATISM_HZ))
    if fid == "arms_move_simultaneously":
        return float(rng.uniform(*SIMULT_HZ))
    if fid == "pelvic_thrusting":
        return float(rng.uniform(*PELVIC_HZ))
    if fid == "oral_automatisms":
        return float(rng.uniform(*ORAL_HZ))
    if fid == "eye_blinking":
        return min(BLINK_HZ, 0.3 * fps)
    return 0.0


def _place(fids: list[str], t0: float, t1: float, rng: np.random.Generator, fps: float) -> list[Event]:
    """Place events of one channel one after another in [t0, t1], shrinking them to fit."""
    if not fids:
        return []
    rng.shuffle(fids)
    durs = np.array([rng.uniform(*EVENT_S[f]) for f in fids])
    room = (t1 - t0) - EVENT_GAP_S * (len(fids) - 1)
    if durs.sum() > room:
        durs = np.maximum(MIN_EVENT_S, durs * room / durs.sum())
    slack = max(0.0, (t1 - t0) - durs.sum() - EVENT_GAP_S * (len(fids) - 1))
    gaps = rng.dirichlet(np.ones(len(fids) + 1)) * slack
    out, t = [], t0
    for f, d, g in zip(fids, durs, gaps):
        t += g
        end = min(t + d, t1)
        out.append(Event(f, round(float(t), 3), round(float(end), 3), _side(f, rng), _rate(f, rng, fps)))
        t = end + EVENT_GAP_S
    return out


def make_spec(*, source_name: str, duration_s: float, width: int, height: int, fps: float, seed: int,
              sample_rate: int = 16_000, features: frozenset[str] | set[str] | None = None,
              patient_id: str = "P00", patient: facemod.Identity | None = None,
              body_scale: float | None = None) -> RecordingSpec:
    """Plan one recording of ``duration_s`` (any length, e.g. 60 min at 1920x1080 30 fps for benchmarks).

    ``features`` are the planted feature ids (default: a typical focal-to-
    bilateral seizure: sleep onset, head turning, oral automatisms, clonic,
    tonic, figure-4, ictal vocalization).  The timeline is: optional sleep,
    ictal period with body, face and audio channels, a quiet tail.
    Distractors (staff visits, glances to profile, lighting, alarms,
    background speech) scale with the duration.
    """
    if features is None:
        features = {SLEEP_FEATURE, "head_turning", "oral_automatisms", "clonic", "tonic", "figure4_arms",
                    VOCAL_FEATURE}
    unknown = set(features) - set(feature_ids())
    if unknown:
        raise ValueError(f"unknown feature ids: {', '.join(sorted(unknown))}")
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even (H.264 4:2:0), got {width}x{height}")
    if duration_s < 20.0:
        raise ValueError(f"duration_s must be >= 20 s, got {duration_s}")
    rng = np.random.default_rng(seed)
    patient = patient or facemod.patient_identities(1, rng)[0]
    staff = facemod.staff_identity(patient, rng)
    scale = float(body_scale if body_scale is not None else rng.uniform(0.92, 1.04))
    look = bodymod.Look(
        gown=GOWNS[int(rng.integers(len(GOWNS)))], trousers=TROUSERS[int(rng.integers(len(TROUSERS)))],
        skin=(0, 0, 0), scale=scale,  # skin is taken from the face photo at render time
    )
    d = float(duration_s)
    events: list[Event] = []
    if SLEEP_FEATURE in features:
        onset = float(min(rng.uniform(*SLEEP_S), 0.2 * d))
        events.append(Event(SLEEP_FEATURE, 0.0, round(onset, 3)))
    else:
        onset = float(rng.uniform(*ONSET_S))
    end = d - max(POSTICTAL_S, 0.08 * d)
    # Keep the ictal period of long recordings seizure-sized; the rest is interictal.
    end = min(end, onset + 150.0)
    events += _place([f for f in BODY_FEATURES if f in features], onset, end, rng, fps)
    events += _place([f for f in FACE_FEATURES if f in features], onset, end, rng, fps)
    clips: list[soundmod.Clip] = []
    patient_f0 = float(rng.uniform(*VOCAL_F0_HZ))
    if VOCAL_FEATURE in features:
        dur = float(min(rng.uniform(*EVENT_S[VOCAL_FEATURE]), 0.4 * (end - onset)))
        t = float(rng.uniform(onset, end - dur))
        events.append(Event(VOCAL_FEATURE, round(t, 3), round(t + dur, 3)))
        clips.append(soundmod.Clip("groan", round(t, 3), round(dur, 3), patient_f0, _sub_seed(seed, 1)))
    visits: list[Visit] = []
    responsive = VERBAL_FEATURE in features
    if responsive or rng.random() < 0.5:
        # Staff walk in, ask a question; the patient answers (responsive) or stays silent.
        prompt_s = float(rng.uniform(1.5, 2.5))
        reply_s = float(rng.uniform(1.8, 3.0))
        stay = STAFF_WALK_S + 0.5 + prompt_s + 0.4 + reply_s + 1.0 + STAFF_WALK_S
        t_in = float(rng.uniform(onset, max(onset + 0.1, d - stay - 0.5)))
        visits.append(Visit(round(t_in, 3), round(min(d, t_in + stay), 3)))
        tp = t_in + STAFF_WALK_S + 0.5
        clips.append(soundmod.Clip("staff_speech", round(tp, 3), round(prompt_s, 3),
                                   float(rng.uniform(*STAFF_F0_HZ)), _sub_seed(seed, 2)))
        if responsive:
            tr = tp + prompt_s + 0.4
            events.append(Event(VERBAL_FEATURE, round(tr, 3), round(tr + reply_s, 3)))
            clips.append(soundmod.Clip("reply", round(tr, 3), round(reply_s, 3), patient_f0 * 1.2,
                                       _sub_seed(seed, 3)))
    for k in range(int(rng.poisson(max(0.5, d / 90.0)))):  # alarms and hallway speech
        kind = "alarm" if rng.random() < 0.5 else "background_speech"
        dur = float(rng.uniform(3.0, 8.0))
        t = float(rng.uniform(0.0, d - dur))
        clips.append(soundmod.Clip(kind, round(t, 3), round(dur, 3), float(rng.uniform(110, 220)),
                                   _sub_seed(seed, 10 + k)))
    busy_face = [(e.t_start_s - 1.0, e.t_end_s + 1.0) for e in events if e.feature_id in FACE_FEATURES]
    busy_face.append((0.0, onset + 1.0))
    glances = []
    for _ in range(int(rng.poisson(max(1.0, d / GLANCE_EVERY_S)))):
        dur = float(rng.uniform(*GLANCE_S))
        t = float(rng.uniform(0.0, d - dur))
        if all(t + dur < a or t > b for a, b in busy_face):
            glances.append(Event("glance", round(t, 3), round(t + dur, 3), ("left", "right")[int(rng.integers(2))]))
    lights = []
    for _ in range(int(rng.poisson(max(0.6, d / 120.0)))):
        lights.append((round(float(rng.uniform(onset, d)), 3), round(float(rng.uniform(*LIGHT_LEVELS)), 3)))
    # streams of their own: planting identifiers changed no other draw of existing phantoms
    srng = np.random.default_rng([seed, SPOKEN_STREAM])
    spoken = idmod.plan(srng) if soundmod.espeak_available() else None
    spoken_t = 0.0
    if spoken is not None and spoken.duration_s < d - 1.0:
        # said when nothing else sounds (a patient answering a nurse's orientation questions), or as near as can be
        starts = srng.uniform(0.5, d - spoken.duration_s - 0.5, size=SPOKEN_TRIES)
        overlap = [sum(max(0.0, min(t + spoken.duration_s, c.t_end_s) - max(t, c.t_start_s)) for c in clips)
                   for t in starts]
        spoken_t = round(float(starts[int(np.argmin(overlap))]), 3)
        clips.append(soundmod.Clip("spoken_phi", spoken_t, spoken.duration_s, 0.0, _sub_seed(seed, 4), spoken.text))
    else:
        spoken = None
    return RecordingSpec(
        source_name=source_name, patient_id=patient_id, width=width, height=height, fps=float(fps),
        sample_rate=sample_rate, duration_s=round(d, 3), seed=seed, patient=patient, staff=staff, look=look,
        wall=WALLS[int(rng.integers(len(WALLS)))], scrubs=SCRUBS[int(rng.integers(len(SCRUBS)))],
        events=tuple(sorted(events, key=lambda e: (e.t_start_s, e.feature_id))), visits=tuple(visits),
        clips=tuple(clips), glances=tuple(glances), lights=tuple(sorted(lights)),
        # an rng of its own: adding overlays changed no other draw of existing phantoms
        overlays=overlaymod.plan(np.random.default_rng([seed, OVERLAY_STREAM]), width, height),
        spoken=spoken, spoken_t_s=spoken_t,
    )


def plan_cohort(params: SeizureSynthParams, *, seed: int) -> list[RecordingSpec]:
    """Plan every recording of the cohort (no rendering; milliseconds).

    Patients ``P01..``, recordings ``Pxx_R1..`` (``source_name`` is the MP4
    file name).  Each patient keeps one face identity and body size.
    """
    validate_params(params)
    rng = np.random.default_rng([seed, 0])
    idents = facemod.patient_identities(params.patients, rng)
    scales = rng.uniform(0.92, 1.04, size=params.patients)
    slots = [(p, r) for p in range(params.patients) for r in range(params.recordings_per_patient)]
    durations = [float(rng.uniform(params.min_duration_s, params.max_duration_s)) for _ in slots]
    assigned = assign_features(durations, rng, [is_nes(p) for p, _ in slots])
    specs = []
    for i, ((p, r), dur, feats) in enumerate(zip(slots, durations, assigned)):
        specs.append(make_spec(
            source_name=f"P{p + 1:02d}_R{r + 1}.mp4", duration_s=round(dur, 1), width=params.width,
            height=params.height, fps=params.fps, seed=_sub_seed(seed, 1000 + i), sample_rate=params.sample_rate,
            features=feats, patient_id=f"P{p + 1:02d}", patient=idents[p], body_scale=float(scales[p]),
        ))
    return specs


# ---- motion --------------------------------------------------------------
def _window(t: np.ndarray, t0: float, t1: float, ramp: float = RAMP_S) -> np.ndarray:
    """Smooth 0..1 weight that is 1 inside [t0, t1] with ``ramp`` s cosine edges."""
    up = np.clip((t - t0) / ramp + 1.0, 0.0, 1.0) if ramp > 0 else (t >= t0).astype(float)
    down = np.clip((t1 - t) / ramp + 1.0, 0.0, 1.0) if ramp > 0 else (t <= t1).astype(float)
    w = np.minimum(up, down)
    return 0.5 - 0.5 * np.cos(np.pi * w)


def _inside(t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return (t >= t0) & (t < t1)


def _sides(side: str | None) -> tuple[str, ...]:
    return ("left", "right") if side in (None, "both") else (side,)


def motion(spec: RecordingSpec) -> dict[str, np.ndarray]:
    """Per-frame degrees of freedom of the patient, staff and room (vectorised over frames).

    Keys: the ``body.skeleton`` pose keys, plus yaw, roll, eyes_open,
    mouth_open, pull (face), brightness, staff_x (head x in frame widths,
    NaN when no staff member is in view).
    """
    n = spec.n_frames
    t = np.arange(n) / spec.fps
    rng = np.random.default_rng([spec.seed, 1])

    def slow(amp: float, fmax: float = 0.12) -> np.ndarray:
        out = np.zeros(n)
        for _ in range(3):
            out += amp / 3 * np.sin(2 * np.pi * rng.uniform(0.02, fmax) * t + rng.uniform(0, 2 * np.pi))
        return out

    # Fidgeting is damped where the patient is still (sleep, tonic, blank stare).
    still = np.ones(n)
    for ev in spec.events:
        if ev.feature_id == SLEEP_FEATURE:
            still = np.minimum(still, 1 - _window(t, -1.0, ev.t_end_s, 0.8))
        elif ev.feature_id in ("tonic", "blank_stare"):
            still = np.minimum(still, 1 - _window(t, ev.t_start_s, ev.t_end_s))
    still = np.maximum(still, 0.05)
    m = {
        "trunk_dx": slow(0.012) * still, "trunk_dy": 0.004 * np.sin(2 * np.pi * BREATH_HZ * t),
        "lean": slow(0.03) * still, "pelvis_dy": np.zeros(n), "knee_spread": np.zeros(n),
        "abd_left": 0.25 + slow(0.06) * still, "abd_right": 0.25 + slow(0.06) * still,
        "flex_left": 0.95 + slow(0.12) * still, "flex_right": 0.95 + slow(0.12) * still,
        "yaw": slow(0.18, 0.08) * still, "roll": slow(0.05) * still, "eyes_open": np.ones(n),
        "mouth_open": np.zeros(n),
        "pull": np.zeros(n), "brightness": np.ones(n), "staff_x": np.full(n, np.nan),
    }
    blinks = np.zeros(n, bool)
    tb = rng.uniform(*NORMAL_BLINK_EVERY_S)
    while tb < spec.duration_s:
        blinks |= _inside(t, tb, tb + BLINK_S)
        tb += rng.uniform(*NORMAL_BLINK_EVERY_S)

    def hold(keys: tuple[str, ...], target: float, w: np.ndarray) -> None:
        for k in keys:
            m[k] = m[k] * (1 - w) + target * w

    for g in spec.glances:
        w = _window(t, g.t_start_s, g.t_end_s, 0.25)
        hold(("yaw",), (1.0 if g.side == "left" else -1.0) * 1.2, w)

    for ev in spec.events:
        f, w, sides = ev.feature_id, _window(t, ev.t_start_s, ev.t_end_s), _sides(ev.side)
        ph = 2 * np.pi * ev.rate_hz * (t - ev.t_start_s)
        if f == SLEEP_FEATURE:
            w = _window(t, -1.0, ev.t_end_s, 0.8)
            hold(("eyes_open",), 0.0, (w > 0.5).astype(float))
            hold(("roll",), 0.22, w)
            hold(("lean",), 0.04, w)
            hold(("abd_left", "abd_right"), 0.2, w)
            m["brightness"] = m["brightness"] * (1 - w) + SLEEP_LIGHT * w
            blinks &= w < 0.5
        elif f == "tonic":
            hold(("abd_left", "abd_right"), 1.05, w)
            hold(("flex_left", "flex_right"), 0.04, w)
            hold(("trunk_dy",), -0.012, w)
            hold(("knee_spread",), 0.025, w)
        elif f == "clonic":
            # Fast flexion jerk, slower relaxation: a beat at the planted rate.
            jerk = np.exp(-5.0 * (((t - ev.t_start_s) * ev.rate_hz) % 1.0)) - 0.2
            for s in sides:
                hold((f"abd_{s}",), 0.5, w)
                hold((f"flex_{s}",), 1.25, w)
                m[f"flex_{s}"] += w * 0.55 * jerk
                m[f"abd_{s}"] += w * 0.2 * jerk
        elif f == "figure4_arms":
            ext, flx = (ev.side, "right" if ev.side == "left" else "left")
            hold((f"abd_{ext}",), 1.2, w)
            hold((f"flex_{ext}",), 0.05, w)
            hold((f"abd_{flx}",), 0.35, w)
            hold((f"flex_{flx}",), 2.1, w)
        elif f == "arm_flexion":
            for s in sides:
                hold((f"abd_{s}",), 0.35, w)
                hold((f"flex_{s}",), 2.15, w)
        elif f == "arm_straightening":
            for s in sides:
                hold((f"abd_{s}",), 1.25, w)
                hold((f"flex_{s}",), 0.03, w)
        elif f == "limb_automatisms":
            for s in sides:
                wig = sum(np.sin(2 * np.pi * ev.rate_hz * rng.uniform(0.7, 1.3) * t + rng.uniform(0, 6.3))
                          for _ in range(3)) / 3
                hold((f"abd_{s}",), 0.3, w)
                hold((f"flex_{s}",), 1.15, w)
                m[f"flex_{s}"] += w * 0.35 * wig
                m[f"abd_{s}"] += w * 0.1 * wig
        elif f == "asynchronous_movement":
            for s, band in zip(("left", "right"), ASYNC_HZ):
                osc = np.sin(2 * np.pi * rng.uniform(*band) * t + rng.uniform(0, 6.3))
                hold((f"abd_{s}",), 0.6, w)
                hold((f"flex_{s}",), 1.0, w)
                m[f"abd_{s}"] += w * 0.35 * osc
                m[f"flex_{s}"] += w * 0.4 * osc
        elif f == "arms_move_simultaneously":
            osc = np.sin(ph)
            for s in ("left", "right"):
                hold((f"abd_{s}",), 0.6, w)
                hold((f"flex_{s}",), 1.0, w)
                m[f"abd_{s}"] += w * 0.35 * osc
                m[f"flex_{s}"] += w * 0.4 * osc
        elif f == "full_body_shaking":
            osc = np.sin(ph)
            m["trunk_dx"] += w * 0.01 * osc
            m["trunk_dy"] += w * 0.006 * np.sin(ph + 1.0)
            m["knee_spread"] += w * 0.012 * osc
            for s in ("left", "right"):
                m[f"flex_{s}"] += w * 0.18 * osc
                m[f"abd_{s}"] += w * 0.08 * osc
        elif f == "pelvic_thrusting":
            osc = np.sin(ph)
            m["pelvis_dy"] += w * 0.03 * osc
            m["knee_spread"] += w * 0.02 * osc
            m["trunk_dy"] += w * 0.01 * osc
        elif f == "blank_stare":
            hold(("yaw", "roll", "mouth_open"), 0.0, w)
            blinks &= w < 0.5
        elif f == "closed_eyes":
            hold(("eyes_open",), 0.0, (w > 0.5).astype(float))
            blinks &= w < 0.5
        elif f == "eye_blinking":
            closed = (((t - ev.t_start_s) * ev.rate_hz) % 1.0) < 0.4
            hold(("eyes_open",), 0.0, (closed & (w > 0.5)).astype(float))
        elif f == "face_pulling":
            hold(("pull",), 1.0 if ev.side == "left" else -1.0, w)
        elif f == "face_twitching":
            tt = ev.t_start_s + rng.uniform(0.1, 0.3)
            sign = 1.0 if ev.side == "left" else -1.0
            while tt < ev.t_end_s:
                tw = _inside(t, tt, tt + 0.12).astype(float)
                hold(("pull",), 0.55 * sign, tw)
                hold(("eyes_open",), 0.5, tw)
                tt += rng.uniform(0.25, 0.7)
        elif f == "oral_automatisms":
            hold(("mouth_open",), 0.0, w)
            m["mouth_open"] += w * 0.6 * (0.5 - 0.5 * np.cos(ph))
        elif f == "head_turning":
            hold(("yaw",), (1.0 if ev.side == "left" else -1.0) * _turn_angle(spec, ev), _window(
                t, ev.t_start_s, ev.t_end_s, 0.6))

    m["eyes_open"] = np.where(blinks, 0.0, m["eyes_open"])
    room_light = np.ones(n)
    for t_l, level in spec.lights:  # sorted steps: each sets the room level until the next
        room_light[t >= t_l] = level
    m["brightness"] = m["brightness"] * room_light
    for v in spec.visits:
        enter = np.clip((t - v.t_in_s) / STAFF_WALK_S, 0, 1)
        leave = np.clip((v.t_out_s - t) / STAFF_WALK_S, 0, 1)
        pos = np.minimum(enter, leave)
        x = 1.12 - (1.12 - 0.86) * pos
        m["staff_x"] = np.where(_inside(t, v.t_in_s, v.t_out_s), x, m["staff_x"])
    return m


def _turn_angle(spec: RecordingSpec, ev: Event) -> float:
    """Head version angle (rad) of a head-turning event, fixed per event."""
    r = np.random.default_rng([spec.seed, 2, int(ev.t_start_s * 1000)])
    return float(r.uniform(*HEAD_TURN_RAD))


# ---- rendering -----------------------------------------------------------
def background(spec: RecordingSpec) -> np.ndarray:
    """The empty room: wall, window, monitor, bed behind the patient, floor (RGB uint8)."""
    w, h = spec.width, spec.height
    img = np.empty((h, w, 3), np.uint8)
    shade = np.linspace(1.05, 0.85, h)[:, None, None]
    img[:] = np.clip(np.array(spec.wall, np.float32)[None, None] * shade, 0, 255).astype(np.uint8)
    floor_y = int(0.82 * h)
    img[floor_y:] = (120, 112, 105)
    cv2.rectangle(img, (int(0.04 * w), int(0.08 * h)), (int(0.22 * w), int(0.36 * h)), (205, 225, 240), -1)
    cv2.rectangle(img, (int(0.04 * w), int(0.08 * h)), (int(0.22 * w), int(0.36 * h)), (240, 240, 240),
                  max(1, h // 100))
    cv2.rectangle(img, (int(0.8 * w), int(0.1 * h)), (int(0.95 * w), int(0.24 * h)), (35, 35, 40), -1)
    cv2.rectangle(img, (int(0.81 * w), int(0.115 * h)), (int(0.94 * w), int(0.225 * h)), (20, 60, 40), -1)
    cv2.rectangle(img, (int(0.1 * w), int(0.5 * h)), (int(0.9 * w), int(0.66 * h)), (232, 232, 236), -1)
    cv2.rectangle(img, (int(0.1 * w), int(0.66 * h)), (int(0.9 * w), int(0.74 * h)), (150, 155, 165), -1)
    cv2.rectangle(img, (int(0.12 * w), int(0.74 * h)), (int(0.14 * w), floor_y), (90, 90, 95), -1)
    cv2.rectangle(img, (int(0.86 * w), int(0.74 * h)), (int(0.88 * w), floor_y), (90, 90, 95), -1)
    return img


def _frame_pose(m: dict[str, np.ndarray], i: int) -> dict[str, float]:
    return {k: float(m[k][i]) for k in ("trunk_dx", "trunk_dy", "lean", "pelvis_dy", "knee_spread",
                                         "abd_left", "abd_right", "flex_left", "flex_right")}


def render_recording(spec: RecordingSpec, path: str | Path) -> RecordingTruth:
    """Render ``spec`` to an MP4 at ``path`` (atomic; nothing there on failure) and return its truth.

    At 1920x1080 the H.264 encode, not the drawing, dominates (~25 ms/frame
    on 2 cores), so a 60-min 30 fps benchmark file takes tens of minutes.

    Streams: one frame and about one second of audio at a time.  The face
    truth lists the patient's face on every frame and the staff face while
    its centre is in the frame; joints are the patient's ``body.JOINTS``.
    """
    w, h = spec.width, spec.height
    base = background(spec)
    m = motion(spec)
    sprite = facemod.make_sprite(spec.patient, bodymod.HEAD_HEIGHT * h * spec.look.scale)
    # Bare forearms and hands take the skin colour of the face photo.
    look = dataclasses.replace(spec.look, skin=sprite.skin)
    staff_sprite = facemod.make_sprite(spec.staff, bodymod.HEAD_HEIGHT * h * 1.05)
    n = spec.n_frames
    joints = np.zeros((n, len(bodymod.JOINTS), 2), np.float32)
    f_frame: list[int] = []
    f_person: list[str] = []
    f_view: list[str] = []
    f_box: list[tuple[float, float, float, float]] = []
    sr = spec.sample_rate
    audio_done = 0
    total_audio = int(round(n / spec.fps * sr))
    with VideoWriter(path, width=w, height=h, fps=spec.fps, audio_rate=sr) as writer:
        for i in range(n):
            # Audio runs ahead of video by up to a second, in whole-second slices.
            while audio_done < min(total_audio, int((i + 1) / spec.fps * sr) + sr):
                k = min(sr, total_audio - audio_done)
                writer.write_audio(soundmod.mix(spec.clips, audio_done, k, sr, spec.seed))
                audio_done += k
            frame = base.copy()
            j = bodymod.skeleton(_frame_pose(m, i), w, h, spec.look.scale)
            bodymod.draw_body(frame, j, look, h)
            state = facemod.FaceState(yaw=float(m["yaw"][i]), roll=float(m["roll"][i]),
                                      eyes_open=float(m["eyes_open"][i]), mouth_open=float(m["mouth_open"][i]),
                                      pull=float(m["pull"][i]))
            box, view, kps = facemod.draw_face(frame, sprite, j["head"], state)
            f_frame.append(i), f_person.append("patient"), f_view.append(view), f_box.append(box)
            sx = m["staff_x"][i]
            if not np.isnan(sx):
                head = (float(sx) * w, 0.2 * h)
                bodymod.draw_staff(frame, head, h, spec.scrubs)
                sbox, sview, _ = facemod.draw_face(frame, staff_sprite, head, facemod.FaceState())
                if 0 <= (sbox[0] + sbox[2]) / 2 < w:
                    f_frame.append(i), f_person.append("staff"), f_view.append(sview)
                    f_box.append((max(0.0, sbox[0]), sbox[1], min(float(w), sbox[2]), sbox[3]))
            b = float(m["brightness"][i])
            if abs(b - 1.0) > 1e-3:
                frame = cv2.convertScaleAbs(frame, alpha=b, beta=0.0)
            overlaymod.draw(frame, spec.overlays, i / spec.fps)  # stamped by the recorder: room light does not dim it
            writer.write(frame)
            for k, name in enumerate(bodymod.JOINTS):
                joints[i, k] = kps[name] if name in kps else j[name]
        while audio_done < total_audio:
            k = min(sr, total_audio - audio_done)
            writer.write_audio(soundmod.mix(spec.clips, audio_done, k, sr, spec.seed))
            audio_done += k
    return RecordingTruth(
        source_name=spec.source_name, n_frames=n, fps=spec.fps, face_frame=np.asarray(f_frame, np.int64),
        face_person=tuple(f_person), face_view=tuple(f_view), face_box=np.asarray(f_box, np.float32).reshape(-1, 4),
        joints=joints,
    )


# ---- truth tables ----------------------------------------------------------
def annotate(specs: list[RecordingSpec], *, seed: int) -> list[dict]:
    """Label rows: three annotators each flip a planted label with ``ANNOTATOR_FLIP_P``; label = majority.

    A planted feature labelled present gets its onset and offset (first event start, last event end), as
    annotators mark them (S³ Task 4's truth); a feature labelled present that was not planted has none.
    """
    rows = []
    ids = feature_ids()
    for i, spec in enumerate(specs):
        rng = np.random.default_rng([seed, 7, i])
        for fid in ids:
            planted = fid in spec.features
            votes = [planted != bool(rng.random() < ANNOTATOR_FLIP_P) for _ in range(3)]
            label = sum(votes) >= 2
            times = [(e.t_start_s, e.t_end_s) for e in spec.events if e.feature_id == fid]
            rows.append({"source_name": spec.source_name, "feature_id": fid, "label": label,
                         "annotator_1": votes[0], "annotator_2": votes[1], "annotator_3": votes[2],
                         "onset_s": min(t for t, _ in times) if label and times else None,
                         "offset_s": max(t for _, t in times) if label and times else None,
                         "justification": None})
    return rows


def diagnose(specs: list[RecordingSpec]) -> list[dict]:
    """One ``diagnoses`` row per recording: its patient's ES / NES (``is_nes``; the signs were planted to match)."""
    return [{"source_name": s.source_name, "diagnosis": "NES" if is_nes(int(s.patient_id[1:]) - 1) else "ES"}
            for s in specs]


def _tables(specs: list[RecordingSpec], truths: list[RecordingTruth], seed: int) -> dict[str, object]:
    patients: dict[str, dict] = {}
    for s in specs:
        patients.setdefault(s.patient_id, {"patient_id": s.patient_id, "face_source": s.patient.describe(),
                                           "body_scale": s.look.scale})
    recordings = [{"source_name": s.source_name, "patient_id": s.patient_id, "duration_s": s.n_frames / s.fps,
                   "fps": s.fps, "width": s.width, "height": s.height, "seed": s.seed} for s in specs]
    events = [{"source_name": s.source_name, "feature_id": e.feature_id, "t_start_s": e.t_start_s,
               "t_end_s": e.t_end_s, "side": e.side} for s in specs for e in s.events]
    fc: dict[str, list] = {k: [] for k in ("source_name", "frame_index", "pts_s", "person", "view",
                                           "x0", "y0", "x1", "y1")}
    jc: dict[str, list] = {k: [] for k in ("source_name", "frame_index", "pts_s", "joint", "x", "y")}
    names = np.array(bodymod.JOINTS, dtype=object)
    for tr in truths:
        m = len(tr.face_frame)
        fc["source_name"].append(np.full(m, tr.source_name, dtype=object))
        fc["frame_index"].append(tr.face_frame)
        fc["pts_s"].append(tr.face_frame / tr.fps)
        fc["person"].append(np.array(tr.face_person, dtype=object))
        fc["view"].append(np.array(tr.face_view, dtype=object))
        for c, col in enumerate(("x0", "y0", "x1", "y1")):
            fc[col].append(tr.face_box[:, c])
        nj = len(names)
        frames = np.repeat(np.arange(tr.n_frames, dtype=np.int64), nj)
        jc["source_name"].append(np.full(tr.n_frames * nj, tr.source_name, dtype=object))
        jc["frame_index"].append(frames)
        jc["pts_s"].append(frames / tr.fps)
        jc["joint"].append(np.tile(names, tr.n_frames))
        jc["x"].append(tr.joints[:, :, 0].reshape(-1))
        jc["y"].append(tr.joints[:, :, 1].reshape(-1))
    def cat(cols: dict[str, list]) -> dict[str, pa.Array]:
        return {k: pa.array(np.concatenate(v)) if v else pa.array([]) for k, v in cols.items()}

    overlays = [{"source_name": s.source_name, "kind": o.kind, "text": o.text, "style": o.style,
                 **dict(zip(("x0", "y0", "x1", "y1"), o.box))} for s in specs for o in s.overlays]
    spoken = [{"source_name": s.source_name, "t_start_s": s.spoken_t_s, "t_end_s": s.spoken_t_s + s.spoken.duration_s,
               "text": s.spoken.text, "kind": kind, "identifier": value}
              for s in specs if s.spoken is not None for kind, value in s.spoken.identifiers().items()]
    return {"patients": list(patients.values()), "recordings": recordings, "labels": annotate(specs, seed=seed),
            "events": events, "faces": cat(fc), "joints": cat(jc), "overlays": overlays, "spoken": spoken,
            "diagnoses": diagnose(specs)}


def _render_job(args: tuple[RecordingSpec, Path]) -> RecordingTruth:
    spec, path = args
    return render_recording(spec, path)


def generate_cohort(out_dir: Path, params: SeizureSynthParams, *, seed: int, workers: int = 1,
                    on_progress: Callable[[int, int], None] | None = None) -> CohortSummary:
    """Plan and render the cohort; write videos and truth tables under ``out_dir``.

    Writes ``videos/<source_name>`` MP4s (H.264 + AAC) and ``patients``,
    ``recordings``, ``labels``, ``events``, ``faces``, ``joints``, ``diagnoses`` Parquet
    tables (schemas in ``tasks/schema.py``).  Recordings render in
    ``workers`` processes; ``on_progress(done, total)`` after each.  Raises
    ``ConfigError`` for bad ``params``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    specs = plan_cohort(params, seed=seed)
    jobs = [(s, out_dir / "videos" / s.source_name) for s in specs]
    truths: list[RecordingTruth] = []
    if on_progress:
        on_progress(0, len(jobs))
    if workers > 1 and len(jobs) > 1:
        # Longest first keeps both processes busy to the end.
        order = sorted(range(len(jobs)), key=lambda i: -specs[i].duration_s)
        by_index: dict[int, RecordingTruth] = {}
        # spawn: forking a process that already runs torch/mediapipe threads can abort the child
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_render_job, jobs[i]): i for i in order}
            for fut in as_completed(futures):
                by_index[futures[fut]] = fut.result()
                if on_progress:
                    on_progress(len(by_index), len(jobs))
        truths = [by_index[i] for i in range(len(jobs))]
    else:
        for k, job in enumerate(jobs):
            truths.append(_render_job(job))
            if on_progress:
                on_progress(k + 1, len(jobs))
    for name, data in _tables(specs, truths, seed).items():
        write_table(name, data, out_dir / f"{name}.parquet")
    n = len(specs)
    prevalence = {f: sum(f in s.features for s in specs) / n for f in feature_ids()}
    return CohortSummary(
        out_dir=out_dir, n_patients=params.patients, n_recordings=n, n_frames=sum(s.n_frames for s in specs),
        total_duration_s=sum(s.n_frames / s.fps for s in specs), wall_s=time.perf_counter() - t0,
        prevalence=prevalence,
    )
