"""Tesseract 5 (Debian ``tesseract-ocr``), wrapped once: the text audit's second OCR engine, unlike PP-OCR.

PP-OCR (``tasks.burned_text``) finds the text deidentify blurs; an audit that
reads with the same engine shares its blind spots.  Tesseract is another
engine (its own layout analysis and LSTM, trained on other data), run as its
command-line program: one process reads a batch of images (``read``), so
its start-up (loading the language model, ~0.2 s) is paid once per batch.

``renderings`` draws a grey crop the ways a reader who wants to read it
would: contrast-stretched, inverted and binarised, upscaled to a readable
glyph size.  ``text_like_regions`` finds where text may be in a luma plane
by a classical method independent of PP-OCR (morphological gradient on a
contrast-normalised copy, joined along lines): the audit reads there.

A missing binary is an error saying how to install it, never a silent pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.detectors import FaceBox
from tasks.errors import ModelNotFoundError

BINARY = "tesseract"
LANGUAGE = "eng"
PAGE_SEG_MODE = 6  # a uniform block of text: a crop holds one line or a few
HOW_TO = ("install Tesseract 5 with its English data: `sudo apt-get install tesseract-ocr` "
          "(or `make ocr-tools` as root)")
TIMEOUT_PER_IMAGE_S = 10.0  # seconds; a batch that takes longer is an error (fail-closed), not a pass
STRETCH_PERCENTILES = (1.0, 99.0)  # grey levels below / above are clipped before stretching to 0-255
GLYPH_PX = 40  # a crop is upscaled so a line's height is about this (tesseract reads best at 20-40 px x-height)
MAX_UPSCALE = 4.0
TOKEN_MIN_CHARS = 2  # a token: a run of ASCII letters or digits at least this long (one glyph is no token)


class TesseractError(RuntimeError):
    """The tesseract program failed (its own message is kept)."""


def binary() -> str:
    """The tesseract program's path; ``ModelNotFoundError`` saying how to install it when there is none."""
    path = shutil.which(BINARY)
    if path is None:
        raise ModelNotFoundError(f"the independent text audit needs the tesseract program, not found on PATH; {HOW_TO}")
    return path


def version() -> str:
    """``tesseract 5.3.0`` (the first line of ``tesseract --version``)."""
    out = subprocess.run([binary(), "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).splitlines()[0].strip()


@dataclass(frozen=True)
class Word:
    """One word tesseract read: its text and confidence (0-100)."""

    text: str
    conf: float


def read(images: list[np.ndarray], *, psm: int = PAGE_SEG_MODE) -> list[list[Word]]:
    """The words read in each image (uint8 grey or RGB), one tesseract process for all of them."""
    if not images:
        return []
    exe = binary()
    with tempfile.TemporaryDirectory(prefix="semioflow-ocr-") as tmp:
        paths = []
        for i, img in enumerate(images):
            p = Path(tmp) / f"{i:05d}.png"
            if not cv2.imwrite(str(p), img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise TesseractError("could not write an image for tesseract")
            paths.append(str(p))
        listing = Path(tmp) / "images.txt"
        listing.write_text("\n".join(paths) + "\n", encoding="utf-8")
        try:
            # one OpenMP thread: deidentify already keeps the cores busy, and tesseract's own threads doubled its
            # CPU time here for the same wall time
            out = subprocess.run([exe, str(listing), "stdout", "--psm", str(psm), "-l", LANGUAGE, "tsv"],
                                 capture_output=True, text=True, timeout=30 + TIMEOUT_PER_IMAGE_S * len(images),
                                 env={**os.environ, "OMP_THREAD_LIMIT": "1"})
        except subprocess.TimeoutExpired:
            raise TesseractError(f"tesseract did not finish {len(images)} images in time") from None
        if out.returncode != 0:
            raise TesseractError(f"tesseract failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
    words: list[list[Word]] = [[] for _ in images]
    for line in out.stdout.splitlines()[1:]:
        cols = line.split("\t")
        # level 5 = a word; columns: level page block par line word left top width height conf text
        if len(cols) == 12 and cols[0] == "5" and cols[11].strip():
            page = int(cols[1]) - 1
            if 0 <= page < len(images):
                words[page].append(Word(cols[11].strip(), float(cols[10])))
    return words


def tokens(words: list[Word], min_conf: float = 0.0) -> set[str]:
    """The alphanumeric tokens (upper case) of the words read at least ``min_conf`` confidently."""
    out: set[str] = set()
    for w in words:
        if w.conf >= min_conf:
            run = "".join(c if c.isascii() and c.isalnum() else " " for c in w.text.upper())
            out |= {t for t in run.split() if len(t) >= TOKEN_MIN_CHARS}
    return out


def stretch(grey: np.ndarray) -> np.ndarray:
    """Grey levels stretched so the ``STRETCH_PERCENTILES`` of the crop become 0 and 255."""
    lo, hi = np.percentile(grey, STRETCH_PERCENTILES)
    return np.clip((grey.astype(np.float32) - lo) * (255.0 / max(1.0, hi - lo)), 0, 255).astype(np.uint8)


def upscale(grey: np.ndarray, line_px: float | None = None, factor: float | None = None) -> np.ndarray:
    """``grey`` enlarged ``factor`` times (or so a line ``line_px`` high becomes ``GLYPH_PX``), at most
    ``MAX_UPSCALE``, never shrunk."""
    f = factor if factor is not None else min(MAX_UPSCALE, max(1.0, GLYPH_PX / max(1.0, line_px or grey.shape[0])))
    return cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC) if f > 1.0 else grey


def renderings(grey: np.ndarray, line_px: float | None = None) -> list[np.ndarray]:
    """A grey crop drawn the ways a reader would, each upscaled: contrast-stretched, inverted where its glyphs
    are light (tesseract reads dark on light), and binarised (local background removed, Otsu, glyphs dark on
    white).  Grey text on grey, bright text on a bright moving scene and dark text on light all become
    dark-on-white.  (The stretched copy in the other polarity read the same words on the phantom's every style:
    left out, it cost a third of the audit.)"""
    k = max(3, int(round((line_px or grey.shape[0]) * 0.8)) | 1)  # wider than a stroke, about a glyph
    se = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, se)  # light glyphs on a darker (or moving) background
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, se)
    light = int(bright.sum()) >= int(dark.sum())
    _, binar = cv2.threshold(stretch(bright if light else dark), 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    s = stretch(grey)
    return [upscale(r, line_px) for r in ((255 - s) if light else s, binar)]


LCN_SIGMA_FRAC = 0.01  # local contrast normalisation: the neighbourhood (Gaussian sigma) as a share of the height
LCN_FLOOR = 4.0  # grey levels added to the local deviation: flat areas stay flat, not amplified noise


def normalised_luma(grey: np.ndarray, frame_height: int | None = None) -> np.ndarray:
    """Local contrast normalisation: (grey - local mean) / local deviation, mapped to 0-255 around 128.

    30 grey levels of text on a grey plate, or a half-transparent line over
    a bright moving scene, come out as contrasty as white on black.
    """
    y = grey.astype(np.float32)
    s = max(1.0, LCN_SIGMA_FRAC * grey.shape[0])
    d = y - cv2.GaussianBlur(y, (0, 0), s)
    sd = np.sqrt(cv2.GaussianBlur(d * d, (0, 0), s))
    return np.clip(128.0 + 50.0 * d / (sd + LCN_FLOOR), 0, 255).astype(np.uint8)


REGION_MIN_PX = 4  # a text-like region lower than this (pixels of the plane searched) is not a line
REGION_MAX_HEIGHT_FRAC = 0.15  # taller than this share of the plane: not an overlay line
REGION_MIN_ASPECT = 1.5  # width / height of a line of three or more characters
REGION_MIN_FILL = 0.25  # share of the region's pixels that are edges
MAX_REGIONS = 24  # per frame; the ones with the most edge pixels first
LONG_EDGE_FRAC = 0.05  # a straight edge longer than this share of the height is a border, not a stroke
EDGE_LEVEL = 40  # grey levels of morphological gradient (on the normalised copy) that count as an edge


def text_like_regions(grey: np.ndarray) -> list[FaceBox]:
    """Boxes (pixels of ``grey``) where lines of text may be: edges of the contrast-normalised copy joined
    along rows into line-shaped blobs.  Independent of PP-OCR; finds scene edges too (they read as nothing)."""
    h, w = grey.shape
    norm = normalised_luma(grey)
    grad = cv2.morphologyEx(norm, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3)))
    edges = (grad >= EDGE_LEVEL).astype(np.uint8)
    # long straight edges (a plate's border, the bed's edge) are no glyph strokes: without them lines on plates
    # that touch stay apart
    run = max(9, int(round(LONG_EDGE_FRAC * h)))
    long_edges = (cv2.morphologyEx(edges, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (run, 1)))
                  | cv2.morphologyEx(edges, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, run))))
    edges &= 1 - long_edges
    gap = max(3, int(round(0.012 * h)))  # glyph gaps of a line
    joined = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * gap + 1, 1)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    found = []
    for i in range(1, n):
        x, y, bw, bh, _ = (int(v) for v in stats[i])
        for y0, y1 in _rows(edges[y:y + bh, x:x + bw], REGION_MAX_HEIGHT_FRAC * h):
            y0, y1 = y + y0, y + y1
            if not (REGION_MIN_PX <= y1 - y0 <= REGION_MAX_HEIGHT_FRAC * h) or bw < REGION_MIN_ASPECT * (y1 - y0):
                continue
            fill = float(edges[y0:y1, x:x + bw].mean())
            if fill >= REGION_MIN_FILL:
                found.append((float(edges[y0:y1, x:x + bw].sum()), FaceBox(x, y0, x + bw, y1, fill)))
    found.sort(key=lambda t: -t[0])
    return [b for _, b in found[:MAX_REGIONS]]


def _rows(edges: np.ndarray, max_h: float) -> list[tuple[int, int]]:
    """A blob's row spans: all of it when it is line-high, else split where its rows hold (almost) no edges
    (lines stacked one over the other, joined by a plate or a glyph's descender)."""
    if edges.shape[0] <= max_h:
        return [(0, edges.shape[0])]
    busy = edges.mean(axis=1) > 0.02
    spans, start = [], None
    for r, b in enumerate(np.append(busy, False)):
        if b and start is None:
            start = r
        elif not b and start is not None:
            spans.append((start, r))
            start = None
    return spans


REGION_PAD = 0.25  # share of a region's height added around it before reading


def region_renderings(grey: np.ndarray, regions: list[FaceBox]) -> list[list[np.ndarray]]:
    """``renderings`` of each region's crop of ``grey`` (grown by ``REGION_PAD``)."""
    h, w = grey.shape
    out = []
    for b in regions:
        pad = REGION_PAD * b.height
        x0, y0 = max(0, int(b.x0 - pad)), max(0, int(b.y0 - pad))
        x1, y1 = min(w, int(np.ceil(b.x1 + pad))), min(h, int(np.ceil(b.y1 + pad)))
        out.append(renderings(np.ascontiguousarray(grey[y0:y1, x0:x1]), line_px=b.height))
    return out
