"""A small synthetic cohort for the report and review tests, with planted truth.

Three recordings with pseudonymous ids, their windows (the real
``window_bounds``), de-identified videos (no faces: coloured frames whose red
channel encodes the time, so a keyframe tells which moment it shows),
planted events keyed by source file names (joined through a private id map,
as the phantom does), a model that answers yes exactly on the windows that
overlap a planted event -- except one planted event it misses, one false
positive and one unparsed answer -- the real aggregation of those answers,
reference labels, a transcript, metrics and Study 2 rationales.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tasks.aggregate import aggregate
from tasks.media import VideoWriter
from tasks.params import AggregateParams, WindowParams
from tasks.answers import RANDOM_BANNER, RANDOM_TAG
from tasks.cache import write_marker
from tasks.schema import write_table
from tasks.window import window_bounds

MODEL = "qwen2_5_vl-tiny" + RANDOM_TAG
DURATIONS = {"R0a1b2c3d4e": 80.0, "R1f2e3d4c5b": 55.0, "R2c3b4a5f6e": 30.0}
RA, RB, RC = DURATIONS
SOURCE = {RA: "smith_john_2024-03-01.mp4", RB: "doe_jane_2024-03-02.mp4", RC: "roe_rick_2024-03-03.mp4"}
INBOX = "/secure/emu_inbox"
# planted events: (recording, feature, t_start_s, t_end_s)
EVENTS = [(RA, "clonic", 20.0, 34.0), (RA, "head_turning", 60.0, 70.0), (RB, "clonic", 5.0, 12.0),
          (RB, "ictal_vocalization", 40.0, 50.0)]
MISSED = {(RA, "head_turning")}  # planted, but the model says no in every window
FALSE_POSITIVE = (RC, "oral_automatisms", 0)  # no event, the model says yes
UNPARSED = (RA, "oral_automatisms", 1)
ARM_FEATURES = {"raw": ("head_turning", "oral_automatisms", "clonic"), "audio_transcript": ("ictal_vocalization",)}
SEGMENTS = [(RB, 41.0, 45.0, "help me please"), (RB, 10.0, 12.0, "good morning"), (RA, 70.0, 72.0, "all fine")]
FULL_FPS, LOW_FPS = 4.0, 2.0
FULL_SIZE, LOW_SIZE = (96, 64), (128, 96)
AUDIO_RATE = 16000


def red_at(t_s: float, duration_s: float) -> int:
    """The red level planted in every frame at time ``t_s``."""
    return int(round(40 + 200 * t_s / duration_s))


def justification(rid: str, fid: str, wi: int, status: str) -> str:
    return f"{fid} {'seen' if status == 'yes' else 'not seen'} in {rid} window {wi}"


@dataclass(frozen=True)
class Cohort:
    data_dir: Path
    events_path: Path  # table events keyed by source file name (phantom truth)
    windows: dict[str, list[tuple[float, float]]]
    answers: list[dict]
    predictions: list[dict]

    def planted_windows(self, rid: str, fid: str) -> set[int]:
        return {wi for wi, (t0, t1) in enumerate(self.windows[rid])
                for r, f, s, e in EVENTS if r == rid and f == fid and s < t1 and e > t0}


def _video(path: Path, duration_s: float, fps: float, size: tuple[int, int], audio: bool) -> None:
    w, h = size
    with VideoWriter(path, width=w, height=h, fps=fps, audio_rate=AUDIO_RATE if audio else None) as vw:
        if audio:
            t = np.arange(int(duration_s * AUDIO_RATE)) / AUDIO_RATE
            vw.write_audio(0.1 * np.sin(2 * np.pi * 220 * t).astype(np.float32))
        for i in range(int(duration_s * fps)):
            t = i / fps
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[..., 0] = red_at(t, duration_s)
            rgb[..., 1] = 90
            rgb[..., 2] = 120
            x = int((w - 12) * t / duration_s)
            rgb[h // 2 - 6:h // 2 + 6, x:x + 12] = 255
            vw.write(rgb)


def build(tmp: Path, *, videos: bool = True) -> Cohort:
    """Lay out ``tmp/data`` (and ``tmp/truth/events.parquet``) as the pipeline would."""
    tmp = Path(tmp)
    data = tmp / "data"
    windows = {rid: window_bounds(d, WindowParams()) for rid, d in DURATIONS.items()}
    write_table("windows", [dict(recording_id=rid, window_index=wi, t_start_s=t0, t_end_s=t1,
                                 frame_start=int(t0 * LOW_FPS), frame_end=int(t1 * LOW_FPS))
                            for rid, ws in windows.items() for wi, (t0, t1) in enumerate(ws)],
                data / "04_window" / "windows.parquet")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    write_table("id_map", [dict(recording_id=rid, source_path=f"{INBOX}/{SOURCE[rid]}", content_sha256="0" * 64,
                                size_bytes=1, mtime_ns=0, status="accepted", ingested_at=now) for rid in DURATIONS],
                data / "01_ingest" / "private" / "id_map.parquet")
    events_path = tmp / "truth" / "events.parquet"
    write_table("events", [dict(source_name=SOURCE[r], feature_id=f, t_start_s=s, t_end_s=e, side=None)
                           for r, f, s, e in EVENTS], events_path)
    cohort = Cohort(data, events_path, windows, [], [])
    answers = []
    for rid, ws in windows.items():
        for arm, feats in ARM_FEATURES.items():
            for fid in feats:
                planted = cohort.planted_windows(rid, fid)
                for wi in range(len(ws)):
                    yes = (wi in planted and (rid, fid) not in MISSED) or (rid, fid, wi) == FALSE_POSITIVE
                    status = "unparsed" if (rid, fid, wi) == UNPARSED else ("yes" if yes else "no")
                    answers.append(dict(
                        recording_id=rid, window_index=wi, feature_id=fid, arm=arm, model_id=MODEL, backend="local",
                        prompt_version=f"{fid}@v1", status=status,
                        present=None if status == "unparsed" else yes,
                        yes_prob=None if status == "unparsed" else (0.9 if yes else 0.1),
                        justification=None if status == "unparsed" else justification(rid, fid, wi, status),
                        raw_text="garbled" if status == "unparsed" else "{}", finish_reason="stop", cache_key="k"))
    write_table("answers", answers, data / "09_query" / "answers.parquet")
    (data / "09_query" / "query.json").write_text(json.dumps(
        {"models": [MODEL], "random_weights": True, "banner": RANDOM_BANNER}))
    preds, evidence, _ = aggregate(answers, AggregateParams())
    write_table("predictions", preds, data / "10_aggregate" / "predictions.parquet")
    write_table("evidence", evidence, data / "10_aggregate" / "evidence.parquet")
    labels = [dict(recording_id=rid, patient_id=f"P{i:010d}", feature_id=fid,
                   label=any(r == rid and f == fid for r, f, _, _ in EVENTS))
              for i, rid in enumerate(DURATIONS) for feats in ARM_FEATURES.values() for fid in feats]
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("transcript_segments", [dict(recording_id=r, t_start_s=s, t_end_s=e, text=t, avg_logprob=None,
                                             no_speech_prob=None, model_id="whisper-base") for r, s, e, t in SEGMENTS],
                data / "08_transcript" / "transcript_segments.parquet")
    if videos:
        for rid, d in DURATIONS.items():
            _video(data / "02_deidentify" / "videos" / f"{rid}.mp4", d, FULL_FPS, FULL_SIZE, audio=True)
            _video(data / "03_downsample" / "videos" / f"{rid}.mp4", d, LOW_FPS, LOW_SIZE, audio=False)
        for stage in ("02_deidentify", "03_downsample"):  # as the stages record what they wrote
            for rid in DURATIONS:
                write_marker(data / stage, rid, "fixture", [data / stage / "videos" / f"{rid}.mp4"], {})
    return Cohort(data, events_path, windows, answers, preds)


def write_metrics(data: Path) -> list[dict]:
    """A metrics table for arm raw: F1 of clonic 1.0 [0.8, 1.0], head_turning 0.0 [0.0, 0.4]."""
    rows = []
    for fid, f1, lo, hi in (("clonic", 1.0, 0.8, 1.0), ("head_turning", 0.0, 0.0, 0.4)):
        for metric in ("accuracy", "precision", "recall", "f1"):
            rows.append(dict(arm="raw", feature_id=fid, metric=metric, value=f1 if metric == "f1" else 0.5,
                             ci_low=lo if metric == "f1" else None, ci_high=hi if metric == "f1" else None, n=3,
                             n_not_assessable=0))
    write_table("metrics", rows, data / "13_evaluate" / "metrics.parquet")
    return rows


VARIANTS = ("biogait-vlm-v3", "zeroshot-internvl", "r2plus1d-finetuned")  # never shown to reviewers


def write_rationales(data: Path, media: str | None = None) -> Path:
    """Study 2 input: case G1 with three variants, G2 with two; rationale i of a case reads "... #i ..."."""
    media = media or f"02_deidentify/videos/{RA}.mp4"
    rows = [dict(case_id="G1", variant=v, rationale=f"Rationale #{i}: short steps, wide base.",
                 media=media, context="Gait class predicted: ataxic") for i, v in enumerate(VARIANTS)]
    rows += [dict(case_id="G2", variant=v, rationale=f"Second case, rationale #{i}.",
                  media=f"02_deidentify/videos/{RB}.mp4", context=None) for i, v in enumerate(VARIANTS[:2])]
    return write_table("rationales", rows, data / "15_gait" / "review_rationales.parquet")
