"""Seizure phantom cohort: planted truth is deterministic, detectable and measurable.

One small cohort (2 patients x 2 recordings, 40-50 s, 384x288 at 12 fps) is
rendered once per module; real detectors (mediapipe face detection and
pose) and signal measurements are checked against its truth tables.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from tasks.errors import ConfigError
from tasks.media import iter_frames, read_audio
from tasks.params import SeizureSynthParams
from tasks.schema import read_table
from tasks.synth import seizure as sz

SEED = 20240917
SMALL = SeizureSynthParams(patients=2, recordings_per_patient=2, min_duration_s=40.0, max_duration_s=50.0)
TABLES = ("patients", "recordings", "labels", "events", "faces", "joints", "diagnoses")
VOCAL_BAND_HZ = (100.0, 1000.0)  # Hz
FACE_RECALL_MIN = 0.95
POSE_FOUND_MIN = 0.80
POSE_ERR_MAX = 0.10  # fraction of body height
POSE_STRIDE = 3  # frames; pose is run on every 3rd frame to keep the test fast
MP_POSE = {"nose": 0, "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14,
           "left_wrist": 15, "right_wrist": 16}


MAX_DECODE_NOISE = 1.0  # mean absolute grey-level difference allowed between same-seed encodes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seizure") / "a"
    sz.generate_cohort(out, SMALL, seed=SEED, workers=2)
    return out


@pytest.fixture(scope="module")
def cohort_again(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seizure") / "b"
    sz.generate_cohort(out, SMALL, seed=SEED, workers=1)
    return out


def _joints(out: Path, source: str) -> dict[str, np.ndarray]:
    """Planted joints of one recording: name -> (n_frames, 2)."""
    t = read_table("joints", out / "joints.parquet")
    t = t.filter(pc.equal(t["source_name"], source))
    names = t["joint"].to_numpy(zero_copy_only=False)
    xy = np.stack([t["x"].to_numpy(), t["y"].to_numpy()], axis=1)
    frames = t["frame_index"].to_numpy()
    return {j: xy[names == j][np.argsort(frames[names == j])] for j in np.unique(names)}


def _events(out: Path) -> list[dict]:
    return read_table("events", out / "events.parquet").to_pylist()


def _dominant_hz(xy: np.ndarray, fps: float) -> float:
    """Frequency of the largest spectral peak (x and y power summed), DC and drift removed."""
    x = xy - xy.mean(axis=0)
    k = np.arange(len(x))[:, None]
    x = x - k * np.polyfit(np.arange(len(x)), x, 1)[0]
    power = (np.abs(np.fft.rfft(x * np.hanning(len(x))[:, None], axis=0)) ** 2).sum(axis=1)
    freqs = np.fft.rfftfreq(len(x), 1 / fps)
    power[freqs < 0.3] = 0
    return float(freqs[int(np.argmax(power))])


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---- layout and tables --------------------------------------------------------
def test_cohort_writes_videos_and_valid_tables(cohort):
    for name in TABLES:
        read_table(name, cohort / f"{name}.parquet")  # validates the contract
    recs = read_table("recordings", cohort / "recordings.parquet").to_pylist()
    assert len(recs) == 4
    assert sorted(p.name for p in (cohort / "videos").iterdir()) == sorted(r["source_name"] for r in recs)
    labels = read_table("labels", cohort / "labels.parquet")
    assert labels.num_rows == 4 * 20
    faces = read_table("faces", cohort / "faces.parquet")
    assert set(faces["person"].to_pylist()) <= {"patient", "staff"}
    rec = recs[0]
    n_decoded = sum(1 for _ in iter_frames(cohort / "videos" / rec["source_name"]))
    assert n_decoded == round(rec["duration_s"] * rec["fps"])
    joints = _joints(cohort, rec["source_name"])
    assert {"nose", "left_wrist", "right_ankle"} <= set(joints)
    assert len(joints["nose"]) == n_decoded
    audio = read_audio(cohort / "videos" / rec["source_name"], sample_rate=16_000)
    assert abs(len(audio) / 16_000 - rec["duration_s"]) < 0.2


# ---- determinism --------------------------------------------------------------
def test_same_seed_same_truth_and_frames(cohort, cohort_again):
    for name in TABLES:
        assert read_table(name, cohort / f"{name}.parquet").equals(read_table(name, cohort_again / f"{name}.parquet")), name
    for video in sorted((cohort / "videos").iterdir())[:2]:
        a = [f.rgb for f in iter_frames(video) if f.index % 50 == 0]
        b = [f.rgb for f in iter_frames(cohort_again / "videos" / video.name) if f.index % 50 == 0]
        assert len(a) == len(b) > 5
        # Same frames, same encoder settings; libx264 output was seen to vary
        # by encoder noise between runs under load (see tasks/media.py), so
        # decoded frames are compared within MAX_DECODE_NOISE grey levels.
        noise = max(float(np.abs(x.astype(np.int16) - y).mean()) for x, y in zip(a, b))
        print(f"{video.name}: decoded difference between same-seed runs {noise:.4f} levels")
        assert noise <= MAX_DECODE_NOISE, video.name


def test_other_seed_other_cohort():
    a = sz.plan_cohort(SMALL, seed=SEED)
    b = sz.plan_cohort(SMALL, seed=SEED + 1)
    assert [s.events for s in a] != [s.events for s in b]
    assert [s.duration_s for s in a] != [s.duration_s for s in b]


# ---- planting ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [SEED, 1, 2])
def test_default_cohort_prevalence_in_band(seed):
    specs = sz.plan_cohort(SeizureSynthParams(), seed=seed)
    assert len(specs) == 24
    labels = sz.annotate(specs, seed=seed)
    for fid in sz.feature_ids():
        planted = sum(fid in s.features for s in specs) / len(specs)
        voted = sum(r["label"] for r in labels if r["feature_id"] == fid) / len(specs)
        assert 0.2 <= planted <= 0.8, (fid, planted)
        assert 0.15 <= voted <= 0.85, (fid, voted)
    # Annotators disagree a little, not a lot.
    flips = sum(r[f"annotator_{k}"] != r["label"] for r in labels for k in (1, 2, 3)) / (3 * len(labels))
    assert 0.0 < flips < 0.1


def test_labels_carry_the_planted_onsets_of_present_features():
    """S3 Task 4's truth: a present, planted feature's onset is its first event's start, offset its last end."""
    specs = sz.plan_cohort(SeizureSynthParams(), seed=SEED)
    labels = {(r["source_name"], r["feature_id"]): r for r in sz.annotate(specs, seed=SEED)}
    checked = 0
    for spec in specs:
        for fid in sz.feature_ids():
            row = labels[(spec.source_name, fid)]
            times = [(e.t_start_s, e.t_end_s) for e in spec.events if e.feature_id == fid]
            if row["label"] and times:
                assert (row["onset_s"], row["offset_s"]) == (min(t for t, _ in times), max(t for _, t in times))
                checked += 1
            else:
                assert row["onset_s"] is None and row["offset_s"] is None
    assert checked > 100


def test_diagnoses_split_patients_with_class_dependent_prevalence():
    """ES / NES per patient, both classes present, NES signs more common in NES recordings and ES signs in ES."""
    specs = sz.plan_cohort(SeizureSynthParams(), seed=SEED)
    dx = {r["source_name"]: r["diagnosis"] for r in sz.diagnose(specs)}
    by_patient: dict[str, set[str]] = {}
    for s_ in specs:
        by_patient.setdefault(s_.patient_id, set()).add(dx[s_.source_name])
    assert all(len(v) == 1 for v in by_patient.values()) and {d for v in by_patient.values() for d in v} == {"ES", "NES"}

    def rate(signs, cls):
        group = [s_ for s_ in specs if dx[s_.source_name] == cls]
        return np.mean([sum(f in s_.features for f in signs) for s_ in group])
    assert rate(sz.NES_SIGNS, "NES") > rate(sz.NES_SIGNS, "ES") and rate(sz.ES_SIGNS, "ES") > rate(sz.ES_SIGNS, "NES")


def test_several_recordings_per_patient():
    specs = sz.plan_cohort(SeizureSynthParams(), seed=SEED)
    per_patient = {}
    for s in specs:
        per_patient.setdefault(s.patient_id, set()).add(s.source_name)
        assert s.patient.photo != s.staff.photo  # staff is another identity
    assert len(per_patient) == 8 and all(len(v) == 3 for v in per_patient.values())


def test_clonic_rhythm_in_planted_joints():
    # Plan-only cohort: joints come from the same motion model the renderer draws.
    specs = [s for s in sz.plan_cohort(SeizureSynthParams(), seed=SEED) if "clonic" in s.features]
    inside, outside = [], []
    from tasks.synth import body

    for spec in specs:
        m = sz.motion(spec)
        fps = spec.fps
        ev = next(e for e in spec.events if e.feature_id == "clonic")
        side = "left" if ev.side in ("left", "both") else "right"
        wrist = np.array([body.skeleton(sz._frame_pose(m, i), spec.width, spec.height, spec.look.scale)[f"{side}_wrist"]
                          for i in range(spec.n_frames)])
        i0, i1 = int((ev.t_start_s + 0.5) * fps), int((ev.t_end_s - 0.5) * fps)
        inside.append(_dominant_hz(wrist[i0:i1], fps))
        win = i1 - i0
        for a in range(0, spec.n_frames - win, win):
            if a + win < i0 - fps or a > i1 + fps:
                outside.append(_dominant_hz(wrist[a:a + win], fps))
    print(f"\nclonic dominant Hz inside: {np.round(inside, 2).tolist()}")
    print(f"outside (share in 2-4 Hz): {np.mean([(2 <= f <= 4) for f in outside]):.2f} of {len(outside)} windows")
    assert all(2.0 <= f <= 4.0 for f in inside)
    assert np.mean([(2.0 <= f <= 4.0) for f in outside]) <= 0.05


def test_clonic_rhythm_in_rendered_joints(cohort):
    events = [e for e in _events(cohort) if e["feature_id"] == "clonic"]
    assert events
    for ev in events:
        joints = _joints(cohort, ev["source_name"])
        side = "left" if ev["side"] in ("left", "both") else "right"
        fps = SMALL.fps
        i0, i1 = int((ev["t_start_s"] + 0.5) * fps), int((ev["t_end_s"] - 0.5) * fps)
        hz = _dominant_hz(joints[f"{side}_wrist"][i0:i1], fps)
        print(f"\n{ev['source_name']} clonic {side} wrist dominant {hz:.2f} Hz")
        assert 2.0 <= hz <= 4.0


def test_vocalization_raises_vocal_band_energy(cohort):
    events = [e for e in _events(cohort) if e["feature_id"] == "ictal_vocalization"]
    assert events
    sr = 16_000
    for ev in events:
        audio = read_audio(cohort / "videos" / ev["source_name"], sample_rate=sr)
        win = sr // 2
        n = len(audio) // win
        spec = np.abs(np.fft.rfft(audio[: n * win].reshape(n, win), axis=1)) ** 2
        freqs = np.fft.rfftfreq(win, 1 / sr)
        band = spec[:, (freqs >= VOCAL_BAND_HZ[0]) & (freqs <= VOCAL_BAND_HZ[1])].sum(axis=1)
        t = (np.arange(n) + 0.5) * 0.5
        inside = (t > ev["t_start_s"]) & (t < ev["t_end_s"])
        ratio = band[inside].mean() / np.median(band[~inside])
        print(f"\n{ev['source_name']} vocal-band energy inside/outside: {ratio:.0f}x")
        assert ratio > 10


# ---- real detectors ----------------------------------------------------------------
def test_mediapipe_finds_planted_patient_face(cohort):
    mp = pytest.importorskip("mediapipe")
    faces = read_table("faces", cohort / "faces.parquet").to_pylist()
    truth = {}
    for r in faces:
        if r["person"] == "patient" and r["view"] == "frontal":
            truth[(r["source_name"], r["frame_index"])] = (r["x0"], r["y0"], r["x1"], r["y1"])
    hits = total = 0
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        for video in sorted((cohort / "videos").iterdir()):
            for f in iter_frames(video):
                box = truth.get((video.name, f.index))
                if box is None:
                    continue
                total += 1
                h, w = f.rgb.shape[:2]
                res = det.process(f.rgb)
                for d in res.detections or []:
                    b = d.location_data.relative_bounding_box
                    got = (b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h)
                    if _iou(got, box) > 0.3:
                        hits += 1
                        break
    recall = hits / total
    print(f"\nmediapipe face recall on planted frontal patient faces: {recall:.1%} of {total} frames")
    assert recall >= FACE_RECALL_MIN


def test_mediapipe_pose_finds_patient(cohort):
    mp = pytest.importorskip("mediapipe")
    found = total = 0
    errors = []
    for video in sorted((cohort / "videos").iterdir()):
        joints = _joints(cohort, video.name)
        with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1) as pose:
            for f in iter_frames(video):
                if f.index % POSE_STRIDE:
                    continue
                total += 1
                res = pose.process(f.rgb)
                if res.pose_landmarks is None:
                    continue
                h, w = f.rgb.shape[:2]
                lm = res.pose_landmarks.landmark
                pred = {k: np.array([lm[i].x * w, lm[i].y * h]) for k, i in MP_POSE.items()}
                true = {k: joints[k][f.index] for k in MP_POSE}
                ankle = (joints["left_ankle"][f.index] + joints["right_ankle"][f.index]) / 2
                height = float(np.linalg.norm(ankle - joints["nose"][f.index]))
                mid_err = np.linalg.norm((pred["left_shoulder"] + pred["right_shoulder"]) / 2
                                         - (true["left_shoulder"] + true["right_shoulder"]) / 2) / height
                if mid_err > 0.15:
                    continue
                found += 1
                for k in ("left_wrist", "right_wrist", "left_elbow", "right_elbow"):
                    errors.append(np.linalg.norm(pred[k] - true[k]) / height)
    share = found / total
    med = float(np.median(errors))
    print(f"\nmediapipe pose found the patient in {share:.1%} of {total} frames; "
          f"median wrist/elbow error {med:.1%} of body height")
    assert share >= POSE_FOUND_MIN
    assert med <= POSE_ERR_MAX


def test_clonic_rhythm_seen_by_pose_from_pixels(cohort):
    mp = pytest.importorskip("mediapipe")
    events = [e for e in _events(cohort) if e["feature_id"] == "clonic"]
    assert events
    fps = SMALL.fps
    for ev in events:
        side = "left" if ev["side"] in ("left", "both") else "right"
        i0, i1 = int((ev["t_start_s"] + 0.5) * fps), int((ev["t_end_s"] - 0.5) * fps)
        track = []
        # Landmark smoothing is a low-pass filter that would hide a 2-4 Hz beat.
        with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1, smooth_landmarks=False) as pose:
            for f in iter_frames(cohort / "videos" / ev["source_name"]):
                if f.index < i0 or f.index >= i1:
                    continue
                res = pose.process(f.rgb)
                assert res.pose_landmarks is not None
                lm = res.pose_landmarks.landmark[MP_POSE[f"{side}_wrist"]]
                track.append((lm.x * f.rgb.shape[1], lm.y * f.rgb.shape[0]))
        hz = _dominant_hz(np.array(track), fps)
        print(f"\n{ev['source_name']} clonic {side} wrist from mediapipe pose: {hz:.2f} Hz")
        assert 2.0 <= hz <= 4.0


# ---- failures ----------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"min_duration_s": 60.0, "max_duration_s": 50.0}, "max_duration_s"),
    ({"width": 385}, "even"),
    ({"patients": 0}, "patients"),
    ({"fps": 0.0}, "fps"),
])
def test_bad_params_fail_clearly_and_write_nothing(tmp_path, change, match):
    bad = dataclasses.replace(SMALL, **change)
    with pytest.raises(ConfigError, match=match):
        sz.generate_cohort(tmp_path / "out", bad, seed=1)
    assert not (tmp_path / "out").exists()


def test_make_spec_long_recording_plans_cheaply():
    t0 = time.perf_counter()
    spec = sz.make_spec(source_name="LONG.mp4", duration_s=3600.0, width=1920, height=1080, fps=30.0, seed=3)
    assert spec.n_frames == 108_000
    m = sz.motion(spec)
    assert np.isfinite(m["yaw"]).all() and np.ptp(m["yaw"]) > 0.5  # the face moves
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="even"):
        sz.make_spec(source_name="x.mp4", duration_s=60.0, width=1919, height=1080, fps=30.0, seed=3)
