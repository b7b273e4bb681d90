"""deidentify: blur every face on every frame, strip metadata, audit the result.

Per recording (``deidentify_recording``):

1. Decode every frame (upright) and detect faces on each with a recall-tuned
   detector (low threshold, boxes dilated by ``box_dilation``).
2. Temporal gap-fill: a frame is blurred with the union of the boxes detected
   within ``gap_fill_s`` before *and after* it, which also bridges short
   misses between two detections.  Frames wait in a small look-ahead buffer
   (``2 * gap`` frames) for that; memory does not grow with length.
3. Irreversible pixelation (or a heavy Gaussian blur) inside every box.
4. Re-encode H.264 with no source metadata; audio copied or dropped.
5. Audit: an independent detector checks the processed frames at
   ``audit_fps``.  Residual faces above ``audit_max_residual_frac`` quarantine
   the recording (fail-closed): its output video is deleted and it never
   reaches later stages.  Too little decodable video (``min_decoded_coverage``)
   also quarantines it.

Outputs in ``out_dir`` (``data/02_deidentify/``): ``videos/<id>.mp4`` (only
for recordings that passed), ``boxes/<id>.parquet`` (table ``face_boxes``:
every blurred box per frame, source detected|gapfill), ``results/<id>.parquet``
(one ``deidentified`` row), and, for the stage, ``deidentified.parquet`` and
``quarantine.parquet``.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.detectors import FaceBox, FaceDetector, make_detector
from tasks.media import MediaError, Transcoder
from tasks.params import DeidentifyParams
from tasks.schema import read_table, write_table

PIXELATE_BLOCKS = 6  # blocks across a face: identity is gone, a head stays visible
GAUSS_SIGMA_FRAC = 0.25  # sigma as a fraction of the box size for blur="gaussian"
AUDIT_DILATION = 0.0  # audit boxes are taken as the detector gives them


@dataclass(frozen=True)
class RecordingInput:
    """What deidentify needs to know about one recording (from the manifest)."""

    recording_id: str
    source: Path  # raw file (private; never logged)
    duration_s: float


def pixelate(img: np.ndarray, box: FaceBox, *, mode: str) -> None:
    """Destroy the face inside ``box`` in place (pixelate or heavy blur)."""
    x0, y0, x1, y1 = int(box.x0), int(box.y0), int(np.ceil(box.x1)), int(np.ceil(box.y1))
    if x1 - x0 < 2 or y1 - y0 < 2 or mode == "none":
        return
    roi = img[y0:y1, x0:x1]
    h, w = roi.shape[:2]
    if mode == "pixelate":
        small = cv2.resize(roi, (max(1, w * PIXELATE_BLOCKS // max(w, h)), max(1, h * PIXELATE_BLOCKS // max(w, h))),
                           interpolation=cv2.INTER_AREA)
        roi[:] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    else:
        sigma = max(w, h) * GAUSS_SIGMA_FRAC
        roi[:] = cv2.GaussianBlur(roi, (0, 0), sigmaX=sigma, sigmaY=sigma)


def _rows_for(rid: str, idx: int, pts: float, boxes: list[FaceBox], source: str) -> list[dict]:
    return [dict(recording_id=rid, frame_index=idx, pts_s=pts, x0=b.x0, y0=b.y0, x1=b.x1, y1=b.y1, score=b.score,
                 source=source) for b in boxes]


class _Auditor:
    """Checks processed frames at a fixed rate with an independent detector."""

    def __init__(self, detector: FaceDetector, fps: float) -> None:
        self.detector, self.period = detector, 1.0 / fps
        self.next_t, self.frames, self.residual = 0.0, 0, 0

    def check(self, rgb: np.ndarray, pts: float) -> None:
        if pts + 1e-6 < self.next_t:
            return
        self.next_t += self.period * (1 + int((pts - self.next_t) // self.period))
        self.frames += 1
        if self.detector.detect(rgb):
            self.residual += 1


def deidentify_recording(rec: RecordingInput, out_dir: Path, params: DeidentifyParams) -> dict:
    """De-identify one recording; returns its ``deidentified`` row (also written to results/).

    Never raises for bad media: an unreadable or partly readable file, or a
    failed audit, comes back as a row with status ``quarantined`` and a reason.
    """
    out_dir = Path(out_dir)
    rid = rec.recording_id
    detector = make_detector(params.detector, threshold=params.threshold, input_short_side=params.detect_short_side)
    auditor = _Auditor(make_detector(params.audit_detector, threshold=params.audit_threshold), params.audit_fps)
    row = dict(recording_id=rid, status="ok", reason=None, detail=None, width=0, height=0, fps=0.0,
               duration_s=rec.duration_s, n_frames=0, decoded_coverage=0.0, face_frames=0, audit_frames=0,
               audit_residual_frames=0, detector=detector.name, audit_detector=auditor.detector.name)
    box_rows: list[dict] = []
    try:
        with Transcoder(rec.source, out_dir / "videos" / f"{rid}.mp4", keep_audio=params.keep_audio) as tc:
            gap = max(0, round(params.gap_fill_s * tc.fps))
            last_pts = _blur_stream(tc, rid, detector, auditor, params, gap, box_rows, row)
            row["fps"] = tc.fps
            row["n_frames"] = tc.decoded
            coverage = min(1.0, (last_pts + 1.0 / tc.fps) / rec.duration_s) if tc.decoded else 0.0
            row["decoded_coverage"] = coverage
            row["audit_frames"], row["audit_residual_frames"] = auditor.frames, auditor.residual
            reason, detail = _verdict(row, params, tc.decode_error)
            if reason is None:
                tc.commit()
            else:
                row.update(status="quarantined", reason=reason, detail=detail)
    except MediaError as exc:
        row.update(status="quarantined", reason="undecodable", detail=str(exc).replace(str(rec.source), "<file>"))
    finally:
        detector.close()
        auditor.detector.close()
    if row["status"] != "ok":
        (out_dir / "videos" / f"{rid}.mp4").unlink(missing_ok=True)
    write_table("face_boxes", box_rows, out_dir / "boxes" / f"{rid}.parquet")
    write_table("deidentified", [row], out_dir / "results" / f"{rid}.parquet")
    return row


def _blur_stream(tc: Transcoder, rid: str, detector: FaceDetector, auditor: _Auditor, params: DeidentifyParams,
                 gap: int, box_rows: list[dict], row: dict) -> float:
    """Detect, gap-fill, blur, audit and encode every frame; returns the last pts."""
    # Each entry: [frame, detected boxes]; a frame leaves the buffer once the
    # `gap` frames after it have been seen.
    buf: deque = deque()
    recent: deque = deque(maxlen=2 * gap + 1)  # detections of the frames around the one being emitted
    last_pts = 0.0

    def emit(entry_frame, own: list[FaceBox]) -> None:
        h, w = entry_frame.rgb.shape[:2]
        union = [b for dets in recent for b in dets]
        others = [b for b in union if not any(b is o for o in own)]
        img = entry_frame.rgb
        for b in union:
            pixelate(img, b, mode=params.blur)
        if union:
            row["face_frames"] += 1
        box_rows.extend(_rows_for(rid, entry_frame.index, entry_frame.pts_s, own, "detected"))
        box_rows.extend(_rows_for(rid, entry_frame.index, entry_frame.pts_s, others, "gapfill"))
        auditor.check(img, entry_frame.pts_s)
        tc.write(img, pts_s=entry_frame.pts_s)
        row["width"], row["height"] = w - w % 2, h - h % 2

    for frame in tc.frames():
        h, w = frame.rgb.shape[:2]
        dets = [b.dilate(params.box_dilation, w, h) for b in detector.detect(frame.rgb)]
        buf.append((frame, dets))
        recent.append(dets)
        last_pts = frame.pts_s
        if len(buf) > gap:
            # `recent` now spans the gap frames before and after the one leaving
            emit(*buf.popleft())
    while buf:
        recent.append([])  # frames past the end contribute nothing
        emit(*buf.popleft())
    return last_pts


def _verdict(row: dict, params: DeidentifyParams, decode_error: str | None) -> tuple[str | None, str]:
    if row["n_frames"] == 0:
        return "undecodable", "no video frame could be decoded"
    if row["decoded_coverage"] < params.min_decoded_coverage:
        extra = f" (decoder: {decode_error})" if decode_error else ""
        return "corrupt", f"only {row['decoded_coverage']:.0%} of the recording decodes{extra}"
    if row["audit_frames"]:
        frac = row["audit_residual_frames"] / row["audit_frames"]
        if frac > params.audit_max_residual_frac:
            return "audit_failed", (
                f"independent detector ({row['audit_detector']}) still finds faces in {row['audit_residual_frames']}"
                f"/{row['audit_frames']} audited frames ({frac:.1%} > {params.audit_max_residual_frac:.1%})"
            )
    return None, ""


def collect(out_dir: Path, recording_ids: list[str]) -> tuple[list[dict], list[dict]]:
    """Stage tables from per-recording results: (deidentified rows, quarantine rows)."""
    out_dir = Path(out_dir)
    rows = [read_table("deidentified", out_dir / "results" / f"{rid}.parquet").to_pylist()[0]
            for rid in sorted(recording_ids)]
    now = dt.datetime.now(dt.timezone.utc)
    quarantine = [dict(recording_id=r["recording_id"], stage="deidentify", reason=r["reason"], detail=r["detail"],
                       decoded_coverage=r["decoded_coverage"], quarantined_at=now)
                  for r in rows if r["status"] != "ok"]
    write_table("deidentified", rows, out_dir / "deidentified.parquet")
    write_table("quarantine", quarantine, out_dir / "quarantine.parquet")
    return rows, quarantine
