"""Burned-in text (EMU overlays: name, MRN, date, clock, bed), found and read with PP-OCR, wrapped once.

The models ship inside the ``rapidocr-onnxruntime`` wheel (PP-OCRv4 detection
and recognition, ONNX, run by OpenVINO: ``tasks.onnx_models``); nothing downloads.  (``rapidocr``
3.x would pull opencv-python-headless 5, whose files overwrite our OpenCV 4.)  ``TextDetector``
finds text regions (no reading: every region is blurred, PHI or not);
``TextReader`` reads them, for the audit and the tests.  Both take an RGB
uint8 frame and return boxes in its pixel grid.

Detection runs on the frame and on a contrast-normalised copy of its luma
(``tasks.tesseract.normalised_luma``): grey on a grey plate, colour on a
similar colour and a half-transparent line over a bright scene come out as
contrasty as white on black there.  ``static_band`` finds, in frames spread
over a recording, the text that stays in one place: deidentify covers it on
every frame, from the first.

``TextTracker`` makes detection on a cadence enough: a region seen at two
detections in a row is a static overlay and stays covered for the rest of
the recording (a clock whose digits change every second keeps its place),
and the last detection's regions are held until the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.detectors import FaceBox, iou
from tasks.errors import ModelNotFoundError
from tasks.onnx_models import OnnxModel
from tasks.tesseract import normalised_luma

DET_LIMIT_SIDE = 960  # pixels; rapidocr shrinks a frame whose long side exceeds this (never enlarges)
DET_MULTIPLE = 32  # pixels; the detection network's input sides are multiples of this
SAME_IOU = 0.5  # a box of the normalised copy overlapping one of the frame's this much is the same line
STATIC_IOU = 0.3  # a region overlapping one of the previous detection this much is a static overlay
READABLE_MIN_CHARS = 3  # a read string with at least this many Latin letters or digits counts as readable text
# Overlay lines are short: a region taller than this share of the frame is not burned-in text.  The detector
# (trained on Chinese) takes a walker's legs for the character "person" (a box ~45 % of the frame high).
MAX_HEIGHT_FRAC = 0.15
DET_MODEL, REC_MODEL = "ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"  # in rapidocr's wheel
ONNX_THREADS = 1  # deidentify already overlaps decode, detection and encoding on the machine's cores
HOW_TO = "install the project's dependencies (`make install`): rapidocr-onnxruntime ships its PP-OCR models in its wheel"


def _engine(box_threshold: float):
    try:
        import rapidocr_onnxruntime
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise ModelNotFoundError(f"burned-in text detection needs rapidocr-onnxruntime ({exc}); {HOW_TO}") from None
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    ocr = RapidOCR(det_limit_type="max", det_limit_side_len=DET_LIMIT_SIDE, det_box_thresh=box_threshold,
                   intra_op_num_threads=ONNX_THREADS, inter_op_num_threads=ONNX_THREADS)
    # The same PP-OCRv4 networks run by OpenVINO (half the time of onnxruntime's; the same boxes and strings);
    # rapidocr keeps its pre- and post-processing.  Both sessions are called as session(x)[0].
    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    ocr.text_det.infer = OnnxModel(models / DET_MODEL)
    ocr.text_rec.session = OnnxModel(models / REC_MODEL)
    return ocr


def _box(poly) -> tuple[float, float, float, float]:
    p = np.asarray(poly, dtype=np.float32).reshape(-1, 2)
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


class TextDetector:
    """Text regions of a frame (PP-OCR detection), as boxes (score 1: the detector keeps boxes above its threshold);
    regions taller than ``MAX_HEIGHT_FRAC`` of the frame are dropped (not an overlay line)."""

    def __init__(self, threshold: float = 0.5) -> None:
        self._ocr = _engine(threshold)

    def detect(self, rgb: np.ndarray, frame_height: int | None = None, *, normalised: bool = True) -> list[FaceBox]:
        """Boxes in ``rgb``'s pixels; ``frame_height``: the height of the frame ``rgb`` was cut from (a crop's own
        height would drop an overlay line as too tall).  ``normalised``: also on the contrast-normalised copy
        (its boxes that repeat one of the frame's are left out)."""
        boxes = self._detect(rgb)
        if normalised:
            grey = normalised_luma(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), frame_height)
            boxes += [b for b in self._detect(np.dstack([grey] * 3)) if not any(iou(b, o) > SAME_IOU for o in boxes)]
        return [b for b in boxes if b.height <= MAX_HEIGHT_FRAC * (frame_height or rgb.shape[0])]

    def _detect(self, rgb: np.ndarray) -> list[FaceBox]:
        h, w = rgb.shape[:2]
        if max(h, w) <= DET_LIMIT_SIDE:
            # rapidocr rounds the sides to multiples of 32 by resizing: a 75 px high crop became 64, and 7 px small
            # print in it was lost.  Padded to the multiple, the picture keeps its scale.
            ph, pw = -h % DET_MULTIPLE, -w % DET_MULTIPLE
            if ph or pw:
                rgb = cv2.copyMakeBorder(np.ascontiguousarray(rgb), 0, ph, 0, pw, cv2.BORDER_REPLICATE)
        polys, _ = self._ocr(np.ascontiguousarray(rgb[:, :, ::-1]), use_det=True, use_cls=False, use_rec=False)
        boxes = [FaceBox(*_box(p), 1.0) for p in polys or []]
        return [FaceBox(b.x0, b.y0, min(b.x1, float(w)), min(b.y1, float(h)), 1.0) for b in boxes
                if b.x0 < w and b.y0 < h]


@dataclass(frozen=True)
class ReadText:
    """One string the reader recognised, with its confidence and box."""

    text: str
    score: float
    box: FaceBox


def readable_chars(text: str) -> int:
    """The Latin letters and digits in ``text`` (what makes a read string readable text)."""
    return sum(c.isascii() and c.isalnum() for c in text)


class TextReader:
    """Text regions and what they say (PP-OCR detection + recognition)."""

    def __init__(self, threshold: float = 0.5) -> None:
        self._ocr = _engine(threshold)

    def read(self, rgb: np.ndarray) -> list[ReadText]:
        found, _ = self._ocr(np.ascontiguousarray(rgb[:, :, ::-1]), use_det=True, use_cls=False, use_rec=True)
        return [ReadText(str(t), float(sc), FaceBox(*_box(p), float(sc))) for p, t, sc in found or []]

    def readable(self, rgb: np.ndarray, min_score: float) -> list[ReadText]:
        """Strings read with at least ``min_score`` that hold ``READABLE_MIN_CHARS`` Latin letters or digits."""
        return [r for r in self.read(rgb) if r.score >= min_score and readable_chars(r.text) >= READABLE_MIN_CHARS]


class TextTracker:
    """Regions to cover between detections: static overlays for good, the last detection's until the next."""

    def __init__(self) -> None:
        self.static: list[FaceBox] = []
        self.last: list[FaceBox] = []

    def hold(self, band: list[FaceBox]) -> None:
        """Cover ``band`` (``static_band``'s boxes) for good, from now on."""
        self.static += [b for b in band if not any(iou(b, s) > STATIC_IOU for s in self.static)]

    def update(self, found: list[FaceBox], region: FaceBox | None = None) -> None:
        """A detection's regions; ``region`` (the part of the frame it looked at, None = all of it): the last
        regions lying wholly inside it are replaced, the others (where nothing changed) kept."""
        for b in found:
            if any(iou(b, p) > STATIC_IOU for p in self.last) and not any(iou(b, s) > STATIC_IOU for s in self.static):
                self.static.append(b)
        kept = [] if region is None else [b for b in self.last if not _within(b, region)]
        self.last = kept + list(found)

    @property
    def boxes(self) -> list[FaceBox]:
        return self.static + self.last


def _within(b: FaceBox, region: FaceBox) -> bool:
    return region.x0 <= b.x0 and region.y0 <= b.y0 and b.x1 <= region.x1 and b.y1 <= region.y1


BAND_MIN_FRAMES = 2  # a line found at the same place in this many of the scanned frames is a static overlay


def static_band(found: list[list[FaceBox]]) -> list[FaceBox]:
    """The static overlay band of a recording: ``found`` holds the text boxes of frames spread over it; a line
    found at the same place (IoU > ``STATIC_IOU``) in ``BAND_MIN_FRAMES`` of them comes back as the box
    enclosing every sighting (a clock's changing digits included)."""
    groups: list[tuple[FaceBox, set[int]]] = []
    for k, boxes in enumerate(found):
        for b in boxes:
            for i, (g, seen) in enumerate(groups):
                if iou(b, g) > STATIC_IOU or _within(b, g):
                    groups[i] = (FaceBox(min(g.x0, b.x0), min(g.y0, b.y0), max(g.x1, b.x1), max(g.y1, b.y1), 1.0),
                                 seen | {k})
                    break
            else:
                groups.append((b, {k}))
    return [g for g, seen in groups if len(seen) >= BAND_MIN_FRAMES]
