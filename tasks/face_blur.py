"""Face blur: blur every face on every frame of a video, strip metadata, audit the result.

The de-identify stage (``tasks.deidentify``) runs this on every recording;
the gait track (``tasks.kinematics``) on every gait clip.

Per recording (``deidentify_recording``):

1. Decode every frame (upright) and detect faces with a recall-tuned
   detector (low threshold, boxes dilated by ``box_dilation``) on every
   frame the motion gate (``tasks.motion``) finds changed since the last
   detection pass; the frames in between keep that pass's boxes (``held``).
   Frames stay in yuv420p as decoded; the detector sees a small RGB copy
   (``detect_short_side``), and decoding + detection run in a second thread
   ahead of blur + encode (a bounded queue, so memory stays fixed).  A second
   detector (CenterFace, low threshold) looks at the same small copy on a
   pass every ``second_every_s``, and whenever the first is unsure or lost
   a face: mediapipe misses faces in profile, CenterFace finds them, and
   gap-fill carries its boxes to the frames in between.
2. Temporal gap-fill: a frame is blurred with the union of the boxes detected
   within ``gap_fill_s`` before *and after* it, which also bridges short
   misses between two detections.  Frames wait in a small look-ahead buffer
   (``2 * gap`` frames) for that; memory does not grow with length.
3. Irreversible pixelation (or a heavy Gaussian blur) inside every box, done
   on the Y, U and V planes directly (no full-size RGB round trip).
4. Re-encode H.264 (``encoder_preset``) with no source metadata; the voice
   anonymised (``tasks.voice``), copied or dropped (``audio``).
5. Audit: an independent detector checks the processed (to-be-encoded) frames at
   ``audit_fps``, in a third thread (``_AuditThread``).  Residual faces above ``audit_max_residual_frac`` quarantine
   the recording (fail-closed): its output video is deleted and it never
   reaches later stages.  OCR reads processed frames at ``text_audit_fps``:
   any string it reads (``text_audit_score``, 3+ letters or digits)
   quarantines it too.  A second OCR engine unlike PP-OCR (Tesseract,
   ``tasks.tesseract``) reads the frame's text-like regions (found by a
   classical method, not by PP-OCR) at ``ocr_audit_fps``, contrast-stretched,
   inverted and binarised: a word of 3+ letters or digits read at least
   ``ocr_audit_conf`` confidently quarantines it (the reason says which engine
   read how many characters when, never what).

Burned-in text (``text: blur``): the worker thread also finds text regions
(``tasks.burned_text``, PP-OCR) at most every ``text_every_s`` on a copy at most
``text_short_side``, where its own motion gate saw a change; ``TextTracker`` keeps static overlays covered for good
and holds the last regions until the next detection; before the first frame, ``text_band_frames`` frames
spread over the recording are searched, and the text found at one place in two of them (the static overlay
band) is covered on every frame, from the first; gap fill carries them
back to the frames before, and they are blurred like faces (not logged as
face boxes: later stages read those as faces).  Too little decodable video (``min_decoded_coverage``)
   also quarantines it.

Outputs in ``out_dir``: ``videos/<id>.mp4`` (only for recordings that
passed), ``boxes/<id>.parquet`` (table ``face_boxes``: every blurred box per
frame, source detected|gapfill) and ``results/<id>.parquet`` (one
``deidentified`` row).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from array import array
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from tasks import tesseract
from tasks.burned_text import READABLE_MIN_CHARS, TextDetector, TextReader, TextTracker, readable_chars, static_band
from tasks.detectors import FaceBox, FaceDetector, make_detector
from tasks.identity import sha256_file
from tasks.motion import MotionGate
from tasks.media import (MediaError, Transcoder, YuvFrame, i420_planes, output_size, shrink_i420_to_rgb,
                         spread_frames)
from tasks.params import DeidentifyParams
from tasks.schema import write_table
from tasks.voice import DEFAULT_ALPHA, VoiceAnonymizer

PIXELATE_BLOCKS = 6  # blocks across a face: identity is gone, a head stays visible
# sigma as a fraction of the box size for blur="gaussian".  0.25 left a face-like blob that mediapipe
# scored 0.61 on 2 frames of the test phantom once codec noise changed slightly; at 0.35 it finds
# nothing even at confidence 0.05 there.
GAUSS_SIGMA_FRAC = 0.35
GAUSS_WORK_PX = 32  # pixels; the long side of a box is blurred at this size, then scaled back


@dataclass(frozen=True)
class RecordingInput:
    """What deidentify needs to know about one recording (from the manifest)."""

    recording_id: str
    source: Path  # raw file (private; never logged)
    duration_s: float
    sha256: str | None = None  # its content hash at ingest: a file that changed since is not what was judged


PROFILE_PARTS = ("decode", "motion", "detect", "second", "text", "text_band", "blur", "audit", "text_audit",
                 "ocr_audit", "encode", "audio")


@dataclass
class Profile:
    """Seconds spent per part of ``deidentify_recording`` (``PROFILE_PARTS``), summed over frames.

    Parts run in three threads (decode + motion gate + detection; blur +
    encode; the audits), so their sum can exceed the wall time.  ``encode``
    includes the muxing and the voice filter, which ``audio`` also counts
    on its own.
    """

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROFILE_PARTS, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROFILE_PARTS, 0))

    @contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            # each part is timed by one thread only: no lock needed
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1


class _Timed:
    """An audio filter whose work is timed as the ``audio`` part of a profile."""

    def __init__(self, inner, profile: Profile) -> None:
        self.inner, self.profile, self.sample_rate = inner, profile, inner.sample_rate

    def process(self, x: np.ndarray) -> np.ndarray:
        with self.profile.part("audio"):
            return self.inner.process(x)

    def flush(self) -> np.ndarray:
        with self.profile.part("audio"):
            return self.inner.flush()


class _Changed(Exception):
    """The source is not the file ingest judged."""


def _source_stamp(rec: RecordingInput) -> tuple[int, int, int, int] | None:
    """The source's (inode, size, mtime, ctime) when it is still there and its content hashes to ``rec.sha256``;
    None when it is gone or changed (a writer that paused past ingest's settle time, then went on)."""
    stamp = _stat_stamp(rec.source)
    try:
        if stamp is None or (rec.sha256 is not None and sha256_file(Path(rec.source)) != rec.sha256):
            return None
    except OSError:  # gone, unreadable now: not the file ingest judged either
        return None
    return stamp


def _stat_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """(inode, size, mtime, ctime) of ``path``, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


SOURCE_CHANGED = ("the source file is gone or changed since ingest (its content hash differs); the next ingest "
                  "gives a changed file a new id")


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
        # A Gaussian with sigma = a quarter of the box, computed on a copy shrunk
        # to GAUSS_WORK_PX: the same low-pass as blurring at full size (whose
        # kernel grows with the face: ~100 ms for a 1080p face) in well under 1 ms.
        s = min(1.0, GAUSS_WORK_PX / max(w, h))
        small = cv2.resize(roi, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        sigma = max(w, h) * s * GAUSS_SIGMA_FRAC
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma, sigmaY=sigma)
        roi[:] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def merge_boxes(boxes: list[FaceBox]) -> list[FaceBox]:
    """Replace every group of overlapping boxes by its enclosing box.

    Gap-fill stacks a dozen slightly shifted boxes on one face; pixelating
    them one after another leaves a finer mosaic along their offset edges
    (detectors still fired on it).  One pass over the enclosing box gives
    one coarse grid.
    """
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1:
                    out[i] = FaceBox(min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1),
                                     max(a.score, b.score))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


# face_boxes.source values, stored as their index until written: detected on the frame, held from the last
# detection pass (nothing moved since: tasks/motion.py), or gap-filled from a neighbour
BOX_SOURCES = ("detected", "held", "gapfill")


class _BoxLog:
    """The ``face_boxes`` rows of one recording, kept as typed columns.

    A face in view all the time gives ~13 rows per frame (its own box plus
    the gap-filled neighbours); as Python dicts that is ~8 kB per frame, a
    gigabyte for an hour at 30 fps.  Packed arrays take ~30 bytes a row.
    """

    def __init__(self) -> None:
        self.frame_index, self.pts_s = array("q"), array("d")
        self.coords = array("f")  # x0, y0, x1, y1, score per row
        self.source = array("B")

    def add(self, idx: int, pts: float, boxes: list[FaceBox], source: str) -> None:
        code = BOX_SOURCES.index(source)
        for b in boxes:
            self.frame_index.append(idx)
            self.pts_s.append(pts)
            self.coords.extend((b.x0, b.y0, b.x1, b.y1, b.score))
            self.source.append(code)

    def table(self, rid: str) -> pa.Table:
        n = len(self.frame_index)
        c = np.frombuffer(self.coords, dtype=np.float32).reshape(n, 5) if n else np.zeros((0, 5), np.float32)
        zeros = pa.array(np.zeros(n, np.int64))
        return pa.table({
            "recording_id": pa.array([rid], pa.string()).take(zeros),
            "frame_index": pa.array(np.frombuffer(self.frame_index, dtype=np.int64)),
            "pts_s": pa.array(np.frombuffer(self.pts_s, dtype=np.float64)),
            **{k: pa.array(c[:, i]) for i, k in enumerate(("x0", "y0", "x1", "y1", "score"))},
            "source": pa.array(BOX_SOURCES, pa.string()).take(pa.array(np.frombuffer(self.source, dtype=np.uint8))),
        })


class _Auditor:
    """Checks processed frames at a fixed rate (``fps``; 0 = never) with an independent detector, at most
    ``short_side`` pixels: ``claim`` picks the frames (the encoding thread), ``examine`` checks them (the audit
    thread, ``_AuditThread``)."""

    part = "audit"  # its Profile part

    def __init__(self, detector, fps: float, short_side: int) -> None:
        self.detector, self.period = detector, (1.0 / fps if fps > 0 else 0.0)
        self.short_side = short_side
        self.next_t, self.frames, self.residual = 0.0, 0, 0

    def due(self, pts: float) -> bool:
        """Whether the frame at ``pts`` is one the audit checks."""
        return self.period > 0 and pts + 1e-6 >= self.next_t

    def claim(self, pts: float) -> bool:
        """Whether the frame at ``pts`` is audited; counts it and moves the schedule on when it is."""
        if not self.due(pts):
            return False
        self.next_t += self.period * (1 + int((pts - self.next_t) // self.period))
        self.frames += 1
        return True

    def examine(self, yuv: np.ndarray, pts: float) -> None:
        """Check one claimed frame (I420, as encoded), shrunk to ``short_side``."""
        h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
        if self._finds(shrink_i420_to_rgb(yuv, *output_size(w, h, self.short_side)), pts):
            self.residual += 1

    def _finds(self, rgb: np.ndarray, pts: float) -> bool:
        return bool(self.detector.detect(rgb))

    def flush(self) -> None:
        """Finish the frames examined so far (the audit thread calls it at the end)."""


class _TextAuditor(_Auditor):
    """The same cadence, reading with OCR (at the size text is detected at): counts frames where text is still
    readable."""

    part = "text_audit"

    def __init__(self, fps: float, min_score: float, short_side: int) -> None:
        super().__init__(TextReader() if fps > 0 else None, fps, short_side)
        self.min_score = min_score
        self.example = ""

    def _finds(self, rgb: np.ndarray, pts: float) -> bool:
        found = self.detector.readable(rgb, self.min_score)
        if found and not self.example:
            self.example = f"{len(found[0].text)} characters at {pts:.1f} s"
        return bool(found)


OCR_BATCH_FRAMES = 16  # audited frames read by one tesseract process (its start-up is paid once per batch)


class _OcrAuditor(_Auditor):
    """The independent text audit: Tesseract reads each claimed frame's text-like regions (``tasks.tesseract``,
    a classical region finder, not PP-OCR) at the size text is detected at; counts frames where it read a word
    of ``READABLE_MIN_CHARS`` letters or digits at least ``min_conf`` confidently."""

    part = "ocr_audit"

    def __init__(self, fps: float, min_conf: float, short_side: int) -> None:
        super().__init__(None, fps, short_side)
        self.engine = tesseract.version() if fps > 0 else ""  # no tesseract: ModelNotFoundError, never a pass
        self.min_conf = min_conf
        self.example = ""
        self._images: list[np.ndarray] = []
        self._pending: list[tuple[float, int]] = []  # (pts, images of that frame)

    def examine(self, yuv: np.ndarray, pts: float) -> None:
        h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
        tw, th = output_size(w, h, self.short_side)
        y = i420_planes(yuv)[0]
        grey = y if (tw, th) == (w, h) else cv2.resize(y, (tw, th), interpolation=cv2.INTER_AREA)
        crops = tesseract.region_renderings(grey, tesseract.text_like_regions(grey))
        n = sum(len(c) for c in crops)
        self._images += [img for c in crops for img in c]
        self._pending.append((pts, n))
        if len(self._pending) >= OCR_BATCH_FRAMES:
            self.flush()

    def flush(self) -> None:
        words = tesseract.read(self._images)
        i = 0
        for pts, n in self._pending:
            found = [w for ws in words[i:i + n] for w in ws if w.conf >= self.min_conf
                     and readable_chars(w.text) >= READABLE_MIN_CHARS]
            i += n
            if found:
                self.residual += 1
                if not self.example:
                    chars = sum(readable_chars(w.text) for w in found)
                    self.example = f"{self.engine} read {chars} characters at {pts:.1f} s"
        self._images, self._pending = [], []


AUDIT_QUEUE = 4  # claimed frames waiting for the audit thread (full-size I420, ~3 MB each at 1080p)


class _AuditThread:
    """Runs the audits' detectors beside encoding: the encoding thread claims frames, this thread examines them.

    The queue is bounded (memory stays flat; a slow audit slows the
    encoding, it never drops a frame).  ``finish`` waits for every claimed
    frame and re-raises an error of the audit thread; ``stop`` abandons it.
    The frames handed over are not edited again: the encoder copies them.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=AUDIT_QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="deidentify-audit")
        self._thread.start()

    def submit(self, auditor: _Auditor, yuv: np.ndarray, pts: float) -> None:
        _put(self._q, (auditor, yuv, pts), self._stop)

    def _run(self) -> None:
        seen: dict[int, _Auditor] = {}  # the auditors that examined frames, flushed at the end
        while True:
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _END:
                for a in seen.values() if self.error is None else ():
                    try:
                        with self.profile.part(a.part):
                            a.flush()
                    except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
                        self.error = exc
                return
            if self.error is not None or self._stop.is_set():
                continue  # keep draining: the encoding thread must never block on a dead audit
            auditor, yuv, pts = item
            seen[id(auditor)] = auditor
            try:
                with self.profile.part(auditor.part):
                    auditor.examine(yuv, pts)
            except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
                self.error = exc

    def finish(self) -> None:
        _put(self._q, _END, self._stop)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()  # the thread skips what is queued and ends within 0.1 s of an empty queue
        self._thread.join()


def deidentify_recording(rec: RecordingInput, out_dir: Path, params: DeidentifyParams, *,
                         voice_alpha: float = DEFAULT_ALPHA, profile: Profile | None = None) -> dict:
    """De-identify one recording; returns its ``deidentified`` row (also written to results/).

    The sound follows ``params.audio``: ``anonymize`` passes it through
    ``tasks.voice.VoiceAnonymizer(voice_alpha)`` (mono, 16 kHz AAC), ``keep``
    copies the source's packets, ``drop`` leaves the video silent.  The row's
    ``audio`` says which the output got (``none`` when the source had none).

    Never raises for bad media: an unreadable or partly readable file, or a
    failed audit, comes back as a row with status ``quarantined`` and a reason.
    ``profile`` (benchmarks) collects the seconds spent per part.
    """
    out_dir = Path(out_dir)
    profile = profile if profile is not None else Profile()
    rid = rec.recording_id
    detector = make_detector(params.detector, threshold=params.threshold, input_short_side=params.detect_short_side)
    auditor = _Auditor(make_detector(params.audit_detector, threshold=params.audit_threshold,
                                     input_short_side=params.audit_short_side), params.audit_fps,
                       params.audit_short_side)
    row = dict(recording_id=rid, status="ok", reason=None, detail=None, width=0, height=0, fps=0.0,
               duration_s=rec.duration_s, n_frames=0, decoded_coverage=0.0, face_frames=0, audit_frames=0,
               audit_residual_frames=0, detector=detector.name, audit_detector=auditor.detector.name, audio="none")
    row.update(text_frames=0, text_audit_frames=0, text_audit_residual_frames=0, ocr_audit_frames=0,
               ocr_audit_residual_frames=0)
    text_auditor = _TextAuditor(params.text_audit_fps, params.text_audit_score, params.text_short_side)
    ocr_auditor = _OcrAuditor(params.ocr_audit_fps, params.ocr_audit_conf, params.text_short_side)
    boxes = _BoxLog()
    try:
        if (stamp := _source_stamp(rec)) is None:
            raise _Changed
        voice = _Timed(VoiceAnonymizer(voice_alpha), profile) if params.audio == "anonymize" else None
        with Transcoder(rec.source, out_dir / "videos" / f"{rid}.mp4", keep_audio=params.audio != "drop",
                        preset=params.encoder_preset, audio_filter=voice) as tc:
            if tc.has_audio:
                row["audio"] = "anonymized" if voice is not None else "original"
            gap = max(0, round(params.gap_fill_s * tc.fps))
            last_pts = _blur_stream(tc, detector, (auditor, text_auditor, ocr_auditor), params, gap, boxes, row,
                                    profile, source=rec.source)
            row["fps"] = tc.fps
            row["n_frames"] = tc.decoded
            coverage = min(1.0, (last_pts + 1.0 / tc.fps) / rec.duration_s) if tc.decoded else 0.0
            row["decoded_coverage"] = coverage
            row["audit_frames"], row["audit_residual_frames"] = auditor.frames, auditor.residual
            row["text_audit_frames"], row["text_audit_residual_frames"] = text_auditor.frames, text_auditor.residual
            row["ocr_audit_frames"], row["ocr_audit_residual_frames"] = ocr_auditor.frames, ocr_auditor.residual
            row["_text_example"] = text_auditor.example
            reason, detail = _verdict(row, params, tc.decode_error, row.pop("_text_example"), ocr_auditor.example)
            if _stat_stamp(rec.source) != stamp:  # grew, was rewritten, replaced or removed while we read it
                reason, detail = "source_changed", SOURCE_CHANGED
            if reason is None:
                tc.commit()
            else:
                row.update(status="quarantined", reason=reason, detail=detail)
    except _Changed:
        row.update(status="quarantined", reason="source_changed", detail=SOURCE_CHANGED)
    except MediaError as exc:
        row.update(status="quarantined", reason="undecodable", detail=str(exc).replace(str(rec.source), "<file>"))
    finally:
        detector.close()
        auditor.detector.close()
    if row["status"] != "ok":
        (out_dir / "videos" / f"{rid}.mp4").unlink(missing_ok=True)
    write_table("face_boxes", boxes.table(rid), out_dir / "boxes" / f"{rid}.parquet")
    write_table("deidentified", [row], out_dir / "results" / f"{rid}.parquet")
    return row


QUEUE_FRAMES = 8  # decoded+detected frames waiting for the blur/encode thread (~3 MB each at 1080p)
_END = object()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless the consumer has stopped; returns False when it has."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


SURE_SCORE = 0.5  # a first-detector face scored below this makes the second detector look at that frame too


def _decode_and_detect(tc: Transcoder, detector: FaceDetector, params: DeidentifyParams, q: queue.Queue,
                       stop: threading.Event, profile: Profile, source: Path | None = None) -> None:
    """Worker thread: decode every frame, detect faces where the motion gate says so; (frame, boxes, held,
    text boxes) into ``q``.

    Detection passes run on frames that changed since the last pass
    (``tasks.motion``); the frames in between get the last pass's boxes
    (``held``).  On a pass the second detector runs when its cadence
    (``second_every_s``) is due, on the first, refresh and scene-change
    passes, when the first detector found fewer faces than at the last pass
    (one lost) or one it is unsure of (``SURE_SCORE``).  Text detection has
    its own gate and cadence (``text_every_s``).  Boxes come back in
    full-frame pixels, dilated.  PyAV, OpenCV and the detectors release the
    GIL for their native work, so this overlaps the blur/encode thread on a
    second core.  Ends with ``_END`` or the exception.
    """
    second = None
    if params.second_detector != "none":
        second = make_detector(params.second_detector, threshold=params.second_threshold)
    next_second = next_text = 0.0
    text = TextDetector(params.text_threshold) if params.text == "blur" else None
    tracker = TextTracker()
    gate, text_gate = (MotionGate(level=params.motion_level, scene_level=params.motion_scene_level,
                                  refresh_s=params.motion_refresh_s) for _ in range(2))
    dets: list[FaceBox] = []
    n_first = 0  # faces the first detector found at the last pass
    try:
        frames = tc.frames_yuv(small_short_side=params.detect_short_side)
        while True:
            with profile.part("decode"):
                f = next(frames, None)
            if f is None:
                break
            if f.index == 0 and text is not None and source is not None and params.text_band_frames > 0:
                with profile.part("text_band"):
                    tracker.hold(_text_band(text, source, f, params))
            with profile.part("motion"):
                thumb = MotionGate.thumbnail(i420_planes(f.yuv)[0])
                # text regions already blurred: a running clock is no reason to look again; but never where a face
                # was at the last pass (a false text find on a face must not hide the face's motion from the gate)
                covered = [b for b in tracker.boxes if not any(_meet(b, d) for d in dets)]
                why = gate.due(thumb, f.pts_s, covered)
            if why is not None:
                dets, n_first, second_ran = _detect(f, detector, second, why, n_first, next_second, params, profile)
                if second_ran:
                    next_second = f.pts_s + params.second_every_s
                gate.passed(thumb, f.pts_s)
            if text is not None and f.pts_s + 1e-6 >= next_text:
                with profile.part("motion"):
                    text_why = text_gate.due(thumb, f.pts_s, covered)
                if text_why is not None:
                    next_text = f.pts_s + params.text_every_s
                    region = _text_region(text_gate.changed, f.width, f.height)
                    with profile.part("text"):
                        tracker.update(_text_regions(text, f, params, region), region)
                    text_gate.passed(thumb, f.pts_s)
            if not _put(q, (f, dets, why is None, tracker.boxes), stop):
                return
        _put(q, _END, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        _put(q, exc, stop)
    finally:
        if second is not None:
            second.close()


def _meet(a: FaceBox, b: FaceBox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _detect(f: YuvFrame, detector: FaceDetector, second: FaceDetector | None, why: str, n_first: int,
            next_second: float, params: DeidentifyParams, profile: Profile) -> tuple[list[FaceBox], int, bool]:
    """One detection pass on ``f``: (dilated full-frame boxes, first-detector face count, whether the second
    detector ran)."""
    w, h = f.width, f.height
    small = f.small_rgb
    sx, sy = w / small.shape[1], h / small.shape[0]
    with profile.part("detect"):
        found = detector.detect(small)
    first = len(found)
    ran = False
    if second is not None and (why != "motion" or f.pts_s + 1e-6 >= next_second or first < n_first
                               or any(b.score < SURE_SCORE for b in found)):
        with profile.part("second"):
            found = found + second.detect(small)
        ran = True
    dets = [b.mapped(sx, sy).dilate(params.box_dilation, w, h) for b in found]
    return dets, first, ran


TEXT_REGION_MAX_FRAC = 0.5  # a changed region bigger than this share of the frame is searched as the whole frame


def _text_region(changed: FaceBox | None, width: int, height: int) -> FaceBox | None:
    """Where a text pass looks: the motion gate's changed region (clipped) when it is small, else None (all)."""
    if changed is None:
        return None
    r = FaceBox(changed.x0, changed.y0, min(float(width), changed.x1), min(float(height), changed.y1), 1.0)
    return r if r.width * r.height <= TEXT_REGION_MAX_FRAC * width * height else None


def _text_regions(text: TextDetector, f: YuvFrame, params: DeidentifyParams,
                  region: FaceBox | None = None) -> list[FaceBox]:
    """Text boxes of one frame (or of ``region`` of it) in full-frame pixels, dilated (found on a copy at most
    ``text_short_side``).  Detection costs grow with the area: the gate's region is a fraction of the frame
    while the patient moves and the overlays stay put."""
    w, h = f.width, f.height
    tw, th = output_size(w, h, params.text_short_side)
    rgb = f.small_rgb if f.small_rgb.shape[:2] == (th, tw) else shrink_i420_to_rgb(f.yuv, tw, th)
    sx, sy = w / tw, h / th
    ox = oy = 0
    if region is not None:
        ox, oy = int(region.x0 / sx), int(region.y0 / sy)
        rgb = rgb[oy:int(np.ceil(region.y1 / sy)), ox:int(np.ceil(region.x1 / sx))]
    return [b.mapped(sx, sy, ox, oy).dilate(params.text_dilation, w, h) for b in text.detect(rgb, frame_height=th)]


def _text_band(text: TextDetector, source: Path, first: YuvFrame, params: DeidentifyParams) -> list[FaceBox]:
    """The recording's static overlay band (``burned_text.static_band``) in full-frame pixels, dilated: text
    found at one place in ``text_band_frames`` frames spread over the source.  An undecodable source gives none
    (the main pass finds the damage)."""
    try:
        frames = spread_frames(source, params.text_band_frames, short_side=params.text_short_side)
    except MediaError:
        return []
    w, h = first.width, first.height
    found = []
    for fr in frames:
        sx, sy = w / fr.rgb.shape[1], h / fr.rgb.shape[0]
        found.append([b.mapped(sx, sy) for b in text.detect(fr.rgb)])
    return [b.dilate(params.text_dilation, w, h) for b in static_band(found)]


def _blur_stream(tc: Transcoder, detector: FaceDetector, auditors: tuple[_Auditor, ...],
                 params: DeidentifyParams, gap: int, boxes: _BoxLog, row: dict, profile: Profile, *,
                 source: Path | None = None) -> float:
    """Detect, gap-fill, blur, audit and encode every frame; returns the last pts.

    Two threads: decode + detect (``_decode_and_detect``) feeds a bounded
    queue; this thread gap-fills, blurs the boxes in the yuv420p planes,
    audits and encodes.  Memory is fixed: ``QUEUE_FRAMES`` + ``gap`` frames.
    An error in the worker is re-raised here.
    """
    # Each entry: (frame, its boxes, whether they are held from an earlier pass); a frame leaves the buffer once the
    # `gap` frames after it have been seen.
    buf: deque = deque()
    recent: deque = deque(maxlen=2 * gap + 1)  # detections of the frames around the one being emitted
    recent_text: deque = deque(maxlen=2 * gap + 1)  # text regions, likewise
    last_pts = 0.0

    def emit(f: YuvFrame, own: list[FaceBox], held: bool) -> None:
        union = list({id(b): b for dets in recent for b in dets}.values())  # held boxes repeat
        others = [b for b in union if not any(b is o for o in own)]
        texts = list({id(b): b for regions in recent_text for b in regions}.values())  # held boxes repeat
        y, u, v = i420_planes(f.yuv)
        with profile.part("blur"):
            for b in merge_boxes(union + texts):
                pixelate(y, b, mode=params.blur)
                half = FaceBox(b.x0 / 2, b.y0 / 2, b.x1 / 2, b.y1 / 2, b.score)  # chroma planes are half size
                pixelate(u, half, mode=params.blur)
                pixelate(v, half, mode=params.blur)
        if union:
            row["face_frames"] += 1
        if texts:
            row["text_frames"] += 1
        boxes.add(f.index, f.pts_s, own, "held" if held else "detected")
        boxes.add(f.index, f.pts_s, others, "gapfill")
        for a in auditors:  # the audits see exactly the planes that are encoded
            if a.claim(f.pts_s):
                audits.submit(a, f.yuv, f.pts_s)
        with profile.part("encode"):  # includes the voice filter's work, also counted as "audio"
            tc.write_yuv(f.yuv, pts_s=f.pts_s)
        row["width"], row["height"] = f.width, f.height

    q: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()
    worker = threading.Thread(target=_decode_and_detect, args=(tc, detector, params, q, stop, profile, source),
                              daemon=True, name="deidentify-detect")
    worker.start()
    audits = _AuditThread(profile)
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item  # inside the Transcoder block: the partial output is discarded
            frame, dets, held, texts = item
            buf.append((frame, dets, held))
            recent.append(dets)
            recent_text.append(texts)
            last_pts = frame.pts_s
            if len(buf) > gap:
                # `recent` now spans the gap frames before and after the one leaving
                emit(*buf.popleft())
        while buf:
            recent.append([])  # frames past the end contribute nothing
            recent_text.append([])
            emit(*buf.popleft())
        audits.finish()
    finally:
        audits.stop()
        stop.set()
        worker.join()
    return last_pts


def _verdict(row: dict, params: DeidentifyParams, decode_error: str | None,
             text_example: str = "", ocr_example: str = "") -> tuple[str | None, str]:
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
    if row["text_audit_residual_frames"]:
        return "audit_failed", (f"OCR still reads text in {row['text_audit_residual_frames']}/{row['text_audit_frames']} "
                                f"audited frames (first: {text_example})")
    if row.get("ocr_audit_residual_frames"):
        return "audit_failed", (f"independent OCR still reads text in {row['ocr_audit_residual_frames']}/"
                                f"{row['ocr_audit_frames']} audited frames (first: {ocr_example})")
    return None, ""
