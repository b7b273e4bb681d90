"""Column names and Parquet schemas of every table semioflow writes.

This is the one place that defines table contracts.  Stages build rows,
then call ``write_table(name, rows, path)``, which validates against
``TABLES[name]`` (missing/unexpected column, wrong type, null in a required
column -> ``SchemaError`` naming the column) and writes atomically (temp file
in the same folder, fsync, rename).  ``read_table`` validates on the way in.

Conventions: ids are strings; times are float64 seconds (``*_s``); pixel
boxes are float32 ``x0, y0, x1, y1`` in the frame's own pixel grid; wall-clock
times are UTC ``timestamp[us, tz=UTC]``; booleans are real booleans.
Tables are plain Parquet, readable by polars and pandas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.atomic import atomic_path
from tasks.catalog import load_catalog
from tasks.errors import SchemaError

# ---- shared column names ---------------------------------------------------
RECORDING_ID = "recording_id"
PATIENT_ID = "patient_id"
SOURCE_NAME = "source_name"  # phantom/truth side only: the file's own name
FEATURE_ID = "feature_id"
FRAME_INDEX = "frame_index"
PTS_S = "pts_s"
WINDOW_INDEX = "window_index"
# The cohorts a recording can belong to (the manifest's ``cohort``): which inbox it came from, and so which
# stages see it (seizure: the seizure track; gait: kinematics and gait).
SEIZURE, GAIT = "seizure", "gait"
COHORTS = (SEIZURE, GAIT)
AUDIO_STATES = ("anonymized", "original", "none")  # deidentified.audio: what the de-identified video carries
DIAGNOSES = ("ES", "NES")  # epileptic / non-epileptic seizure (S³ Task 7)
# answers.status; not_assessable: the window x arm has no media (no face, no pose, no audio): never asked, never
# "no"; skipped: the arm had no model (query.*.backend none)
ANSWER_STATUSES = ("yes", "no", "unparsed", "refused", "truncated", "skipped", "not_assessable")
FEATURE_IDS = "<catalog>"  # stands for the catalog's feature ids in CLOSED
# Columns whose values form a closed set: any other value is a SchemaError naming it.  An unknown feature id or
# status would otherwise pass through and silently vanish from every summary that groups by the known ones.
CLOSED: dict[str, dict[str, tuple[str, ...] | str]] = {
    "manifest": {"cohort": COHORTS},
    "deidentified": {"audio": AUDIO_STATES},
    "answers": {"status": ANSWER_STATUSES, FEATURE_ID: FEATURE_IDS},
    "predictions": {FEATURE_ID: FEATURE_IDS},
    "labels": {FEATURE_ID: FEATURE_IDS},
    "recording_labels": {FEATURE_ID: FEATURE_IDS},
    "onsets": {FEATURE_ID: FEATURE_IDS},
    "label_justifications": {FEATURE_ID: FEATURE_IDS},
    "diagnoses": {"diagnosis": DIAGNOSES},
    "recording_diagnoses": {"diagnosis": DIAGNOSES},
    "diagnosis_predictions": {"predicted": DIAGNOSES},
}

UTC_TS = pa.timestamp("us", tz="UTC")
# Gait track columns.  Joint angles in degrees per frame (definitions in tasks/kinematics.py); spatiotemporal
# parameters per clip: cadence in steps/min, step and stride times in s, swing % of the stride, double support %
# of the time both feet are on the ground.
GAIT_ANGLES = ("pelvis_tilt_deg", "pelvis_list_deg", "trunk_flex_deg", "trunk_lean_deg") + tuple(
    f"{s}_{j}_deg" for j in ("hip_flex", "knee_flex", "ankle_dorsi", "shoulder_flex", "elbow_flex")
    for s in ("left", "right"))
GAIT_SPATIOTEMPORAL = ("cadence_spm", "step_time_left_s", "step_time_right_s", "stride_time_left_s",
                       "stride_time_right_s", "swing_left_pct", "swing_right_pct", "double_support_pct")
BOX = [
    pa.field("x0", pa.float32(), nullable=False),
    pa.field("y0", pa.float32(), nullable=False),
    pa.field("x1", pa.float32(), nullable=False),
    pa.field("y1", pa.float32(), nullable=False),
]


def _f(name: str, typ: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


def _schema(*fields: pa.Field | list[pa.Field], doc: str) -> pa.Schema:
    flat: list[pa.Field] = []
    for f in fields:
        flat.extend(f if isinstance(f, list) else [f])
    return pa.schema(flat, metadata={"doc": doc})


TABLES: dict[str, pa.Schema] = {
    # ---- ingest --------------------------------------------------------------
    "manifest": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("cohort", pa.string()),  # one of COHORTS
        _f("size_bytes", pa.int64()),
        _f("container", pa.string()),
        _f("video_codec", pa.string()),
        _f("width", pa.int32()),
        _f("height", pa.int32()),
        _f("fps", pa.float64()),
        _f("duration_s", pa.float64()),
        _f("n_frames", pa.int64(), nullable=True),
        _f("rotation_deg", pa.int32()),
        _f("vfr", pa.bool_()),
        _f("has_audio", pa.bool_()),
        _f("audio_codec", pa.string(), nullable=True),
        _f("sample_rate", pa.int32(), nullable=True),
        _f("flags", pa.list_(pa.string())),
        _f("ingested_at", UTC_TS),
        doc="One row per accepted recording; pseudonymous ids, no file names, no raw file hash (that would "
            "link a raw file to its id: it is in the private id map only).",
    ),
    "id_map": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("source_path", pa.string()),
        _f("content_sha256", pa.string()),
        _f("size_bytes", pa.int64()),
        _f("mtime_ns", pa.int64()),
        _f("status", pa.string()),  # accepted | quarantined | superseded (its path came back changed)
        _f("ingested_at", UTC_TS),
        doc="PRIVATE: recording id -> original path. Kept in a 0600 file, never logged.",
    ),
    "quarantine": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("stage", pa.string()),
        _f("reason", pa.string()),
        _f("detail", pa.string()),
        _f("decoded_coverage", pa.float64(), nullable=True),
        _f("quarantined_at", UTC_TS),
        doc="Recordings held back by a stage, with a short reason code and a clear detail.",
    ),
    # ---- deidentify / downsample / window -----------------------------------
    "face_boxes": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FRAME_INDEX, pa.int64()),
        _f(PTS_S, pa.float64()),
        BOX,
        _f("score", pa.float32(), nullable=True),
        _f("source", pa.string()),
        doc="Per-frame face boxes that were blurred; source: detected (on that frame), held (the last detection "
            "pass's, nothing moved since) or gapfill (a neighbour's).",
    ),
    "deidentified": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("status", pa.string()),  # ok | quarantined
        _f("reason", pa.string(), nullable=True),
        _f("detail", pa.string(), nullable=True),
        _f("width", pa.int32()),
        _f("height", pa.int32()),
        _f("fps", pa.float64()),
        _f("duration_s", pa.float64()),
        _f("n_frames", pa.int64()),
        _f("decoded_coverage", pa.float64()),
        _f("face_frames", pa.int64()),  # frames with at least one blurred box
        _f("audit_frames", pa.int64()),
        _f("audit_residual_frames", pa.int64()),
        _f("detector", pa.string()),
        _f("audit_detector", pa.string()),
        _f("text_frames", pa.int64()),  # frames with at least one blurred text region
        _f("text_audit_frames", pa.int64()),  # frames the OCR audit read
        _f("text_audit_residual_frames", pa.int64()),  # of those, frames where it still read text
        _f("ocr_audit_frames", pa.int64(), nullable=True),  # frames the independent OCR (tesseract) read
        _f("ocr_audit_residual_frames", pa.int64(), nullable=True),  # of those, frames where it read text
        _f("audio", pa.string()),  # AUDIO_STATES: anonymized | original (deidentify.audio: keep) | none
        doc="Per-recording outcome of de-identification and its audit.",
    ),
    "frames": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FRAME_INDEX, pa.int32()),
        _f(PTS_S, pa.float64()),
        doc="Frames kept by downsample, in order; pts in seconds from the recording start.",
    ),
    "windows": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(WINDOW_INDEX, pa.int32()),
        _f("t_start_s", pa.float64()),
        _f("t_end_s", pa.float64()),
        _f("frame_start", pa.int32()),
        _f("frame_end", pa.int32()),
        doc="Analysis windows; frames [frame_start, frame_end) of the frames table.",
    ),
    # ---- enhancement ---------------------------------------------------------
    "arms": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(WINDOW_INDEX, pa.int32()),
        _f("arm", pa.string()),  # face_crop | pose_overlay | audio_raw | audio_denoised | transcript
        _f("path", pa.string(), nullable=True),  # relative to the data dir; null when unavailable
        _f("status", pa.string()),  # ok | no_face | no_audio | silent | ...
        doc="Per-window enhancement artifacts, named so the query stage finds the arm it needs.",
    ),
    "face_tracks": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FRAME_INDEX, pa.int32()),
        _f(PTS_S, pa.float64()),
        BOX,  # the smoothed crop box (pixels of the 2 fps frame)
        _f("detected", pa.bool_()),  # a patient face box was observed at this frame
        _f("held", pa.bool_()),  # box carried over a short miss
        doc="Smoothed patient face track per 2 fps frame.",
    ),
    "pose_landmarks": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FRAME_INDEX, pa.int32()),
        _f(PTS_S, pa.float64()),
        _f("landmark", pa.int8()),  # mediapipe PoseLandmark index 0..32
        _f("name", pa.string()),
        _f("x", pa.float32()),  # normalised image coordinates
        _f("y", pa.float32()),
        _f("z", pa.float32()),
        _f("visibility", pa.float32()),
        _f("wx", pa.float32()),  # world coordinates, metres, hip-centred
        _f("wy", pa.float32()),
        _f("wz", pa.float32()),
        doc="mediapipe pose landmarks of the patient per 2 fps frame.",
    ),
    "audio_quality": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("has_audio", pa.bool_()),
        _f("silent", pa.bool_()),
        _f("rms_dbfs", pa.float64(), nullable=True),
        _f("snr_before_db", pa.float64(), nullable=True),  # blind estimate (loud vs quiet frames)
        _f("snr_after_db", pa.float64(), nullable=True),
        _f("method", pa.string()),  # spectral_gate | wiener
        _f("duration_s", pa.float64()),  # seconds of decoded audio (0 without an audio stream)
        _f("flags", pa.list_(pa.string())),  # no_audio_stream | silent | audio_shorter_than_video
        doc="Per-recording audio extraction/denoising outcome.",
    ),
    "transcript_segments": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("t_start_s", pa.float64()),
        _f("t_end_s", pa.float64()),
        _f("text", pa.string()),
        _f("avg_logprob", pa.float64(), nullable=True),
        _f("no_speech_prob", pa.float64(), nullable=True),
        _f("model_id", pa.string()),
        doc="Whisper segments per recording (times in recording seconds).",
    ),
    # ---- query / aggregate --------------------------------------------------
    "answers": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(WINDOW_INDEX, pa.int32()),
        _f(FEATURE_ID, pa.string()),
        _f("arm", pa.string()),
        _f("model_id", pa.string()),
        _f("backend", pa.string()),
        _f("prompt_version", pa.string()),
        # yes | no | unparsed | refused | truncated | skipped (no model) | not_assessable (no media)
        _f("status", pa.string()),
        _f("present", pa.bool_(), nullable=True),  # null unless status is yes/no
        _f("yes_prob", pa.float64(), nullable=True),
        _f("justification", pa.string(), nullable=True),
        _f("raw_text", pa.string(), nullable=True),
        _f("finish_reason", pa.string(), nullable=True),
        _f("cache_key", pa.string()),
        doc="One model answer per window x feature x arm.",
    ),
    "predictions": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("arm", pa.string()),
        _f("model_id", pa.string()),
        _f("rule", pa.string()),
        _f("predicted", pa.bool_(), nullable=True),  # null: not assessable (no window of it had media)
        _f("score", pa.float64()),
        _f("n_windows", pa.int32()),
        _f("n_yes", pa.int32()),
        _f("evidence_windows", pa.list_(pa.int32())),
        _f("n_not_assessable", pa.int32()),  # windows without media (never asked, not votes)
        doc="Per recording x feature decision with the windows that said yes; a recording x feature x arm with "
            "no assessable window is not assessable (predicted null), one with some is decided over those.",
    ),
    "evidence": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("arm", pa.string()),
        _f("model_id", pa.string()),
        _f(WINDOW_INDEX, pa.int32()),
        _f("yes_prob", pa.float64(), nullable=True),
        _f("justification", pa.string(), nullable=True),
        doc="The windows behind each positive vote: what the model said there.",
    ),
    # ---- ground truth (phantom cohorts or imported annotations) -------------
    "patients": _schema(
        _f(PATIENT_ID, pa.string()),
        _f("face_source", pa.string()),
        _f("body_scale", pa.float32()),
        doc="Phantom patients: which face photo and body size identify them.",
    ),
    "recordings": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(PATIENT_ID, pa.string()),
        _f("duration_s", pa.float64()),
        _f("fps", pa.float64()),
        _f("width", pa.int32()),
        _f("height", pa.int32()),
        _f("seed", pa.int64()),
        doc="Phantom recordings (truth side), keyed by the file's own name.",
    ),
    "labels": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("label", pa.bool_(), nullable=True),  # the consensus (majority); null = not assessable
        _f("annotator_1", pa.bool_(), nullable=True),  # each annotator's, where known (S³: a consensus only)
        _f("annotator_2", pa.bool_(), nullable=True),
        _f("annotator_3", pa.bool_(), nullable=True),
        _f("onset_s", pa.float64(), nullable=True),  # when the feature starts / ends, where annotated
        _f("offset_s", pa.float64(), nullable=True),
        _f("justification", pa.string(), nullable=True),  # the annotator's words, where given
        doc="Recording x feature labels (keyed by the file's own name: annotation side, never in data/): the "
            "consensus, each annotator where known, onset/offset where annotated; null label = not assessable.",
    ),
    "diagnoses": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f("diagnosis", pa.string()),  # DIAGNOSES: ES (epileptic) | NES (non-epileptic)
        doc="Seizure diagnosis per annotated file (S³ Task 7's truth), keyed by the file's own name.",
    ),
    "recording_diagnoses": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(PATIENT_ID, pa.string()),
        _f("diagnosis", pa.string()),
        doc="Diagnosis per de-identified recording, keyed by pseudonymous ids (folds).",
    ),
    "diagnosis_predictions": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("source", pa.string()),  # the feature vector: labels | mllm_raw | mllm_enhanced
        _f("p_es", pa.float64()),  # out-of-fold P(ES) of the random forest
        _f("predicted", pa.string()),  # ES | NES
        doc="Out-of-fold ES / NES predictions per recording and feature-vector source (evaluate, S³ Task 7).",
    ),
    "annotation_patients": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(PATIENT_ID, pa.string()),  # the study's own patient code (annotation side; folds pseudonymises it)
        doc="Annotated file -> patient (semioflow labels import); what folds.recordings points at.",
    ),
    "label_justifications": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("justification", pa.string()),  # the annotator's words, identifiers scrubbed (tasks.phi)
        doc="PRIVATE (annotators write free text): why a feature was labelled present, per recording.",
    ),
    "onsets": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("onset_s", pa.float64()),
        _f("offset_s", pa.float64(), nullable=True),
        doc="Annotated onset (and offset) of a present feature per de-identified recording (S³ Task 4 truth).",
    ),
    "events": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("t_start_s", pa.float64()),
        _f("t_end_s", pa.float64()),
        _f("side", pa.string(), nullable=True),
        doc="Planted semiology events over time.",
    ),
    "faces": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(FRAME_INDEX, pa.int64()),
        _f(PTS_S, pa.float64()),
        _f("person", pa.string()),  # patient | staff
        _f("view", pa.string()),  # frontal | profile
        BOX,
        doc="Every planted face box per frame.",
    ),
    "overlays": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f("kind", pa.string()),  # name | mrn | dob | clock | bed | unit | study
        _f("text", pa.string()),  # the clock: its value at t = 0 (it runs, one second at a time)
        _f("style", pa.string()),  # tasks.synth.overlay.STYLES: boxed | yellow | grey | grey_on_grey | translucent | small | colour
        _f("x0", pa.int32()),
        _f("y0", pa.int32()),
        _f("x1", pa.int32()),
        _f("y1", pa.int32()),
        doc="Planted burned-in overlay text per recording (pixels; the box any value of the line fits).",
    ),
    "spoken": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f("t_start_s", pa.float64()),
        _f("t_end_s", pa.float64()),
        _f("text", pa.string()),  # what the patient says
        _f("kind", pa.string()),  # first_name | last_name | mrn | mrn_spoken | birth_year | birth_date | birth_date_digits
        _f("identifier", pa.string()),  # a string no output outside private/ may hold
        doc="Planted spoken identifiers (espeak-ng), one row per identifier form.",
    ),
    "joints": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(FRAME_INDEX, pa.int64()),
        _f(PTS_S, pa.float64()),
        _f("joint", pa.string()),
        _f("x", pa.float32()),
        _f("y", pa.float32()),
        doc="Planted 2D joint positions of the seizure patient per frame (pixels).",
    ),
    "gait_clips": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f("subject_id", pa.string()),
        _f("gait_class", pa.string()),
        _f("duration_s", pa.float64()),
        _f("fps", pa.float64()),
        _f("width", pa.int32()),
        _f("height", pa.int32()),
        _f("seed", pa.int64()),
        _f("cadence_spm", pa.float64()),  # planted: steps/min over the clip's heel strikes
        doc="Gait phantom clips: subject, planted gait class and cadence.",
    ),
    "gait_joints": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f(FRAME_INDEX, pa.int64()),
        _f(PTS_S, pa.float64()),
        _f("joint", pa.string()),
        _f("x_m", pa.float32()),  # world metres: x forward (walking direction)
        _f("y_m", pa.float32()),  # up
        _f("z_m", pa.float32()),  # lateral (towards the camera)
        _f("u", pa.float32()),  # image pixels
        _f("v", pa.float32()),
        doc="Planted 3D joints (metres) and their image projection per gait frame.",
    ),
    "gait_events": _schema(
        _f(SOURCE_NAME, pa.string()),
        _f("side", pa.string()),  # left | right
        _f("event", pa.string()),  # heel_strike | toe_off
        _f("t_s", pa.float64()),
        doc="Planted heel-strike and toe-off times.",
    ),
    # ---- gait track (kinematics, gait) ---------------------------------------
    "gait_kinematics": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("status", pa.string()),  # ok | quarantined (deidentify audit) | no_pose
        _f("reason", pa.string(), nullable=True),
        _f("fps", pa.float64()),
        _f("n_frames", pa.int64()),
        _f("pose_frames", pa.int64()),
        _f("n_events", pa.int64()),
        *[_f(c, pa.float64(), nullable=True) for c in GAIT_SPATIOTEMPORAL],
        doc="Per gait clip: processing outcome and spatiotemporal parameters from detected events.",
    ),
    "gait_angles": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(FRAME_INDEX, pa.int64()),
        _f(PTS_S, pa.float64()),
        *[_f(c, pa.float64(), nullable=True) for c in GAIT_ANGLES],
        doc="Per-frame clinical joint angles (degrees) of a gait clip; see tasks/kinematics.py for definitions.",
    ),
    "gait_detected_events": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("side", pa.string()),  # left | right
        _f("event", pa.string()),  # heel_strike | toe_off
        _f("t_s", pa.float64()),
        doc="Heel strikes and toe-offs detected from pose.",
    ),
    "gait_labels": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("subject_id", pa.string()),  # pseudonymous (HMAC of the label table's subject id)
        _f("gait_class", pa.string()),
        doc="Gait class per de-identified clip, keyed by pseudonymous ids.",
    ),
    "gait_split": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("subject_id", pa.string()),
        _f("split", pa.string()),  # train | test
        doc="Subject-disjoint train/test split of the gait clips.",
    ),
    "gait_predictions": _schema(
        _f("model", pa.string()),  # biogait | no_ted | no_bio | no_ted_no_bio | video_<arm> | zero_shot | kinematics_linear
        _f(RECORDING_ID, pa.string()),
        _f("gait_class", pa.string()),  # reference
        _f("predicted", pa.string()),
        _f("score", pa.float64()),  # probability (or normalised likelihood) of the predicted class
        doc="Test-split gait class predictions of every model.",
    ),
    "gait_results": _schema(
        _f("model", pa.string()),
        _f("metric", pa.string()),  # accuracy | macro_f1 | f1
        _f("gait_class", pa.string(), nullable=True),  # per-class F1 only
        _f("value", pa.float64()),
        _f("n", pa.int32()),  # test clips
        doc="Gait classification results table: accuracy, macro F1 and per-class F1 per model.",
    ),
    "gait_rationales": _schema(
        _f(RECORDING_ID, pa.string()),
        _f("model", pa.string()),  # whose prediction is explained: biogait | zero_shot | biogait_no_bio
        _f("model_id", pa.string()),
        _f("predicted", pa.string()),
        _f("text", pa.string()),
        _f("numbers", pa.list_(pa.string())),  # every number the rationale states
        _f("unmatched", pa.list_(pa.string())),  # numbers that match no computed metric
        _f("verified", pa.bool_()),  # every stated number matches a computed metric
        doc="VLM rationales for the test clips' predictions with the number check.",
    ),
    # ---- evaluation ------------------------------------------------------------
    "folds": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(PATIENT_ID, pa.string()),
        _f("fold", pa.int8()),
        doc="Patient-stratified fold assignment.",
    ),
    "recording_labels": _schema(
        _f(RECORDING_ID, pa.string()),
        _f(PATIENT_ID, pa.string()),  # pseudonymous (HMAC of the annotation table's patient id)
        _f(FEATURE_ID, pa.string()),
        _f("label", pa.bool_()),
        doc="Reference labels per de-identified recording x feature, keyed by pseudonymous ids.",
    ),
    "window_scores": _schema(
        _f("arm", pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("fold", pa.int8()),  # the held-out fold of the model that scored the window
        _f(RECORDING_ID, pa.string()),
        _f(WINDOW_INDEX, pa.int32()),
        _f("split", pa.string()),  # train | test (the recording's role for that model)
        _f("score", pa.float64()),  # P(feature present) from the sigmoid
        doc="Baseline window scores of every fold's model on its training and held-out recordings.",
    ),
    "thresholds": _schema(
        _f("arm", pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("fold", pa.int8()),  # the held-out fold the threshold is applied to
        _f("threshold", pa.float64()),  # recording score >= threshold = present
        _f("train_f1", pa.float64()),  # F1 at that threshold on the training folds
        doc="Per arm x feature x fold decision threshold, chosen on the training folds only.",
    ),
    "metrics": _schema(
        _f("arm", pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("metric", pa.string()),
        _f("value", pa.float64()),
        _f("ci_low", pa.float64(), nullable=True),
        _f("ci_high", pa.float64(), nullable=True),
        _f("n", pa.int32()),
        _f("n_not_assessable", pa.int32()),  # labelled recordings the arm could not assess: left out of n
        doc="Per arm x feature metric with bootstrap CI.",
    ),
    # ---- expert review (tasks/review.py) --------------------------------------
    "rationales": _schema(
        _f("case_id", pa.string()),  # one case = one piece of media every variant explained
        _f("variant", pa.string()),  # model / variant name: stored, never shown to reviewers
        _f("rationale", pa.string()),
        _f("media", pa.string()),  # de-identified video, relative to the data dir (02_deidentify/videos/<id>.mp4...)
        _f("context", pa.string(), nullable=True),  # the task shown above the rationales (same for every variant)
        doc="Study 2 input, written by any track: up to three variants' rationales per case.",
    ),
    "faithfulness_ratings": _schema(
        _f("reviewer", pa.string()),
        _f("case_id", pa.string()),
        _f(RECORDING_ID, pa.string()),
        _f(FEATURE_ID, pa.string()),
        _f("arm", pa.string()),
        _f("model_id", pa.string()),
        _f("outcome", pa.string()),  # tp | tn
        _f("score", pa.int8()),  # 1..5
        _f("rated_at", UTC_TS),
        doc="Study 1: each reviewer's 1-5 faithfulness score of a correctly predicted sample's justification.",
    ),
    "comparison_ratings": _schema(
        _f("reviewer", pa.string()),
        _f("case_id", pa.string()),
        _f("variant", pa.string()),
        _f("slot", pa.string()),  # A | B | C: the letter this reviewer saw
        _f("scale", pa.string()),  # evidence_grounding | explainability | clinical_usefulness | consistency
        _f("score", pa.int8()),  # 1..5
        _f("rated_at", UTC_TS),
        doc="Study 2: each reviewer's 1-5 Likert rating of one variant's rationale on one scale.",
    ),
    "comparison_choices": _schema(
        _f("reviewer", pa.string()),
        _f("case_id", pa.string()),
        _f("best", pa.string(), nullable=True),  # variant
        _f("second", pa.string(), nullable=True),  # variant
        _f("comment", pa.string(), nullable=True),
        _f("rated_at", UTC_TS),
        doc="Study 2: each reviewer's best and second-best variant and comment per case.",
    ),
    "review_stats": _schema(
        _f("study", pa.string()),  # faithfulness | comparison
        _f("metric", pa.string()),  # share_pass | median | mean | mean_likert | best_rate | preference
        _f("key", pa.string()),  # feature id, variant, "X>Y" pair, or "all"
        _f("scale", pa.string(), nullable=True),  # Likert scale (mean_likert) or null
        _f("value", pa.float64()),
        _f("n", pa.int32()),
        _f("p_value", pa.float64(), nullable=True),  # exact binomial test (best_rate, preference)
        doc="Expert review statistics (semioflow review stats).",
    ),
}


def schema_of(name: str) -> pa.Schema:
    """The pyarrow schema of table ``name`` (``SchemaError`` if unknown)."""
    try:
        return TABLES[name]
    except KeyError:
        raise SchemaError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}") from None


def columns(name: str) -> list[str]:
    """Column names of table ``name`` in schema order."""
    return schema_of(name).names


def empty_table(name: str) -> pa.Table:
    """A zero-row table with the contract's schema."""
    return schema_of(name).empty_table()


TableLike = Any  # pa.Table | Sequence[Mapping] | Mapping[str, Sequence] | polars/pandas DataFrame


def _as_columns(name: str, data: TableLike) -> dict[str, Any]:
    if isinstance(data, pa.Table):
        return {c: data.column(c) for c in data.column_names}
    if hasattr(data, "to_arrow") and not isinstance(data, Mapping):  # polars
        tbl = data.to_arrow()
        return {c: tbl.column(c) for c in tbl.column_names}
    if hasattr(data, "to_dict") and hasattr(data, "columns") and not isinstance(data, Mapping):  # pandas
        tbl = pa.Table.from_pandas(data, preserve_index=False)
        return {c: tbl.column(c) for c in tbl.column_names}
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, Iterable):
        rows = list(data)
        keys: list[str] = []
        for r in rows:
            if not isinstance(r, Mapping):
                raise SchemaError(f"table {name!r}: rows must be mappings, got {type(r).__name__}")
            for k in r:
                if k not in keys:
                    keys.append(k)
        # A key missing from some rows is an error, not a silent null.
        for k in keys:
            for i, r in enumerate(rows):
                if k not in r:
                    raise SchemaError(f"table {name!r}: row {i} has no column {k!r}")
        cols = {k: [r[k] for r in rows] for k in keys}
        if not rows:
            cols = {f.name: [] for f in schema_of(name)}
        return cols
    raise SchemaError(f"table {name!r}: cannot build a table from {type(data).__name__}")


def validate(name: str, data: TableLike) -> pa.Table:
    """Return ``data`` as a ``pa.Table`` that matches table ``name`` exactly.

    Accepts a pyarrow Table, polars or pandas DataFrame, a mapping of column
    -> values, or a list of row mappings.  Columns are reordered to the
    contract; values are cast only where the cast is lossless.  Raises
    ``SchemaError`` naming the column for a missing or unexpected column, a
    value of the wrong type, or a null in a required column.
    """
    schema = schema_of(name)
    cols = _as_columns(name, data)
    expected = set(schema.names)
    for col in cols:
        if col not in expected:
            raise SchemaError(f"table {name!r}: unexpected column {col!r} (allowed: {', '.join(schema.names)})")
    arrays = []
    n_rows = None
    for field in schema:
        if field.name not in cols:
            raise SchemaError(f"table {name!r}: missing column {field.name!r} ({field.type})")
        arr = _column_array(name, field, cols[field.name])
        if n_rows is not None and len(arr) != n_rows:
            raise SchemaError(f"table {name!r}: column {field.name!r} has {len(arr)} rows, expected {n_rows}")
        n_rows = len(arr)
        if not field.nullable and arr.null_count:
            raise SchemaError(f"table {name!r}: column {field.name!r} is required but has {arr.null_count} null(s)")
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=schema)
    for col, allowed in CLOSED.get(name, {}).items():
        known = load_catalog().ids if allowed == FEATURE_IDS else allowed
        bad = sorted(set(pc.unique(table[col]).drop_null().to_pylist()) - set(known))
        if bad:
            raise SchemaError(f"table {name!r}: column {col!r} has unknown value(s) {', '.join(map(repr, bad[:5]))}"
                              f"{' …' if len(bad) > 5 else ''} (allowed: {', '.join(known)})")
    return table


def _column_array(table: str, field: pa.Field, values: Any) -> pa.ChunkedArray:
    where = f"table {table!r}: column {field.name!r}"
    try:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arr = values
        else:
            # Infer first, then cast safely: pa.array(type=int32) would truncate 1.5 silently.
            arr = pa.array(values if isinstance(values, list) else list(values), from_pandas=True)
        if arr.type != field.type:
            if not _castable(arr.type, field.type):
                raise SchemaError(f"{where}: expected {field.type}, got {arr.type}")
            arr = arr.cast(field.type, safe=True)
    except SchemaError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError) as exc:
        raise SchemaError(f"{where}: expected {field.type}: {exc}") from None
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], type=field.type)
    return arr


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Casts we accept silently: same kind, wider/narrower numerics checked for loss."""
    if pa.types.is_null(src):
        return True
    if pa.types.is_integer(src) and (pa.types.is_integer(dst) or pa.types.is_floating(dst)):
        return True
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return True
    if (pa.types.is_string(src) or pa.types.is_large_string(src)) and (
        pa.types.is_string(dst) or pa.types.is_large_string(dst)
    ):
        return True
    if pa.types.is_timestamp(src) and pa.types.is_timestamp(dst):
        return src.tz is not None or dst.tz is None
    if (pa.types.is_list(src) or pa.types.is_large_list(src)) and pa.types.is_list(dst):
        return _castable(src.value_type, dst.value_type)
    return False


def write_table(name: str, data: TableLike, path: str | Path) -> Path:
    """Validate ``data`` against table ``name`` and write it atomically to ``path``.

    Nothing appears at ``path`` unless the whole file was written; an
    interrupted write leaves only a hidden ``.partial`` temp file that is
    never read as a table.  Returns the final path.
    """
    table = validate(name, data)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_user_table(path: str | Path, columns: tuple[str, ...], param: str, *,
                    optional: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a user-supplied table (an annotation table named by params key ``param``): only ``columns``
    and those of ``optional`` it has (the others read as None), extra columns ignored.  Raises
    ``SchemaError`` naming ``param`` when the file or a required column is missing."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"no table at {path} (set {param} in params.yaml)")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SchemaError(f"the table of {param} ({path}) lacks column(s) {', '.join(missing)}")
    present = [c for c in optional if c in table.column_names]
    return [{**{c: None for c in optional}, **r} for r in table.select(list(columns) + present).to_pylist()]


def read_table(name: str, path: str | Path) -> pa.Table:
    """Read a Parquet table and validate it against its contract."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"table {name!r}: no file at {path}")
    return validate(name, pq.read_table(path))


def concat_write(name: str, paths: list[Path], out: str | Path) -> pa.Table:
    """Concatenate per-recording tables of ``name`` (validated) and write them atomically to ``out``.

    This is how every per-recording stage builds its stage-level table.
    """
    tables = [read_table(name, p) for p in paths]
    write_table(name, pa.concat_tables(tables) if tables else [], out)
    return read_table(name, out)
