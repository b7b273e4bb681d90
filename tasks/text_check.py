"""Whether burned-in lines survive de-identification, measured at their planted truth boxes.

For sampled frames of a raw and a de-identified video (in step: the
output keeps every source frame) and each planted line (table
``overlays``): the variance of the Laplacian inside the line's box, raw
and output (fine detail), and the alphanumeric tokens Tesseract
(``tasks.tesseract``, not the engine that blurs) reads on the box crop,
4x upscaled, contrast-stretched, inverted and binarised, raw and output.
A line-frame keeps its detail when the output's variance is at least
``DETAIL_KEPT_RATIO`` of the raw one's; it leaks when the output crop reads a
token the raw crop reads.  Used by the tests and ``bench/burned_text.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks import tesseract
from tasks.media import iter_frames

DETAIL_KEPT_RATIO = 0.5  # output / raw Laplacian variance at or above this: the line kept its fine detail
CROP_UPSCALE = 4.0
# pixels around the truth box (it has room around the glyphs; a blur box's edge just outside it is no detail of the line)
CROP_PAD_PX = 0


@dataclass(frozen=True)
class LineFrame:
    """One planted line on one sampled frame: raw vs output detail and tokens."""

    kind: str
    style: str
    frame_index: int
    lap_raw: float
    lap_out: float
    raw_tokens: frozenset[str]
    out_tokens: frozenset[str]

    @property
    def keeps_detail(self) -> bool:
        return self.lap_out >= DETAIL_KEPT_RATIO * self.lap_raw

    @property
    def leaked(self) -> frozenset[str]:
        """Tokens read on both the raw and the output crop."""
        return self.raw_tokens & self.out_tokens


def _crop(rgb: np.ndarray, line: dict) -> np.ndarray:
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(line["x0"]) - CROP_PAD_PX), max(0, int(line["y0"]) - CROP_PAD_PX)
    x1, y1 = min(w, int(line["x1"]) + CROP_PAD_PX), min(h, int(line["y1"]) + CROP_PAD_PX)
    return cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)


def crop_renderings(grey: np.ndarray) -> list[np.ndarray]:
    """A box crop 4x upscaled: contrast-stretched, inverted, binarised (Otsu on the stretched copy)."""
    s = tesseract.stretch(grey)
    _, b = cv2.threshold(s, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return [tesseract.upscale(r, factor=CROP_UPSCALE) for r in (s, 255 - s, b, 255 - b)]


def line_frames(raw_video: Path, out_video: Path, lines: list[dict], *, every: int) -> list[LineFrame]:
    """Every ``every``-th frame of the two videos, every line of ``lines`` (rows of ``overlays``)."""
    raws, outs, meta, images = [], [], [], []
    for raw, out in zip(iter_frames(raw_video), iter_frames(out_video)):
        if raw.index % every:
            continue
        for line in lines:
            a, b = _crop(raw.rgb, line), _crop(out.rgb, line)
            ra, rb = crop_renderings(a), crop_renderings(b)
            lap_a, lap_b = float(cv2.Laplacian(a, cv2.CV_64F).var()), float(cv2.Laplacian(b, cv2.CV_64F).var())
            meta.append((line, raw.index, lap_a, lap_b, len(images), len(ra), len(images) + len(ra), len(rb)))
            images += ra + rb
    words = tesseract.read(images)
    result = []
    for line, idx, la, lb, ia, na, ib, nb in meta:
        ta = frozenset(t for ws in words[ia:ia + na] for t in tesseract.tokens(ws))
        tb = frozenset(t for ws in words[ib:ib + nb] for t in tesseract.tokens(ws))
        result.append(LineFrame(line["kind"], line["style"], idx, la, lb, ta, tb))
    return result
