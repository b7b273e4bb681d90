"""Burned-in overlay text for the phantom: what an EMU video system stamps on the picture.

A share of recordings (``OVERLAY_SHARE``) carries one overlay line of every
kind (``KINDS``): the patient's (fake) name, an MRN, a date of birth, a
running clock (date and time, changing every second), a bed/camera label, the
unit and a study number, in varied OpenCV fonts and sizes, one line in each
top corner and the rest stacked in the bottom ones, each line in another
style (``STYLES``, a permutation: every recording with overlays shows every
style): white on a black box, yellow, light grey on the scene, grey on a grey
plate, half-transparent white over a bright moving scene, small print, and
colour on a similar colour.  Lines never overlap.  Each line's text, style
and box are truth (table ``overlays``); the clock's text is its value at
t = 0 and its box covers every value.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import cv2
import numpy as np

OVERLAY_SHARE = 0.5  # share of recordings with burned-in text
FAKE_NAMES = ("DOE, JANE", "SMITH, ROBERT", "GARCIA, MARIA", "NGUYEN, THANH", "MUELLER, KLAUS",
              "OKAFOR, CHIDI", "JOHANSSON, ELSA", "ROSSI, MARCO")
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX)
# white on a black box | yellow, no box | light grey on the scene | grey on a grey plate (30 levels apart) |
# white at half opacity over a bright moving scene | small print | colour on a plate of a similar colour
STYLES = ("boxed", "yellow", "grey", "grey_on_grey", "translucent", "small", "colour")
TEXT_HEIGHT_FRAC = (0.035, 0.055)  # glyph height as a share of the frame height
SMALL_HEIGHT_FRAC, SMALL_MIN_PX = 0.022, 7  # small print: glyph height (share of the frame, at least this many px)
GREY_PLATE, GREY_TEXT = 120, 150  # grey on grey: plate and glyph grey levels
TRANSLUCENT_ALPHA = 0.5  # the half-transparent line's opacity
BRIGHT_SCENE = (190.0, 25.0, 48.0, 20.0)  # moving scene under it: mean, amplitude (levels), period (px), px per s
# colour on a similar colour: (plate, glyphs) RGB pairs, about 20-40 luma levels apart
COLOUR_PAIRS = (((200, 90, 40), (235, 45, 45)), ((40, 90, 170), (80, 135, 225)), ((40, 130, 60), (110, 180, 60)))
MARGIN_FRAC = 0.015  # gap to the frame edge and between lines, share of the frame height
CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S"
KINDS = ("name", "mrn", "dob", "clock", "bed", "unit", "study")
UNITS = ("NEURO 4B EMU", "EMU WEST 2", "EPILEPSY UNIT 7", "VIDEO EEG 3A")


@dataclass(frozen=True)
class Overlay:
    """One overlay line: what it says (``text``, or the clock's start), where, and how it is drawn."""

    kind: str
    text: str
    x: int  # baseline origin (OpenCV putText), pixels
    y: int
    font: int
    scale: float
    thickness: int
    style: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 the line can occupy (the clock: any value)
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] = ((0, 0, 0), (0, 0, 0))  # style "colour": plate, glyphs

    def text_at(self, t_s: float) -> str:
        if self.kind != "clock":
            return self.text
        return (dt.datetime.strptime(self.text, CLOCK_FORMAT) + dt.timedelta(seconds=int(t_s))).strftime(CLOCK_FORMAT)


def _scale_for(font: int, px: float, thickness: int) -> float:
    (_, h), _ = cv2.getTextSize("0", font, 1.0, thickness)
    return px / h


def plan(rng: np.random.Generator, width: int, height: int) -> tuple[Overlay, ...]:
    """The overlay lines of one recording (none for ``1 - OVERLAY_SHARE`` of them): every kind, every style."""
    if rng.random() >= OVERLAY_SHARE:
        return ()
    texts = {
        "name": FAKE_NAMES[int(rng.integers(len(FAKE_NAMES)))],
        "mrn": f"MRN {int(rng.integers(1_000_000, 9_999_999))}",
        "dob": f"DOB {int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}/{int(rng.integers(1930, 2005))}",
        "clock": (dt.datetime(2023, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 365 * 86400)))).strftime(CLOCK_FORMAT),
        "bed": f"BED {int(rng.integers(1, 13))} CAM {int(rng.integers(1, 4))}",
        "unit": UNITS[int(rng.integers(len(UNITS)))],
        "study": f"STUDY {int(rng.integers(10_000, 99_999))}",
    }
    kinds = list(KINDS)
    styles = [STYLES[int(k)] for k in rng.permutation(len(STYLES))]
    # corners 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right: one line at each top corner (a visitor's
    # face passes below them), the rest stacked at the bottom; every line within its half of the width
    flip = int(rng.integers(2))
    corners = [0, 1, 2, 3, 2 + flip, 3 - flip, 2 + flip]
    order = rng.permutation(len(kinds))
    margin = max(2, int(round(MARGIN_FRAC * height)))
    stacks: dict[int, int] = {}  # corner -> pixels used from its edge
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for i, kind in enumerate(kinds[int(k)] for k in order):
        corner, style = corners[i % len(corners)], styles[i % len(styles)]
        font = FONTS[int(rng.integers(len(FONTS)))]
        thickness = 1 + int(rng.random() < 0.4)
        px = float(rng.uniform(*TEXT_HEIGHT_FRAC)) * height
        if style == "small":
            font, thickness, px = cv2.FONT_HERSHEY_SIMPLEX, 1, max(SMALL_MIN_PX, SMALL_HEIGHT_FRAC * height)
        pair = COLOUR_PAIRS[int(rng.integers(len(COLOUR_PAIRS)))]
        scale = _scale_for(font, px, thickness)
        sample = "2088-88-88 88:88:88" if kind == "clock" else texts[kind]  # the widest clock value
        left, top = corner in (0, 2), corner in (0, 1)
        used = stacks.get(corner, 0)
        while True:
            (tw, th), base = cv2.getTextSize(sample, font, scale, thickness)
            if tw > width // 2 - 2 * margin and scale > 0.1:
                scale *= 0.9  # within its half of the frame
                continue
            x = margin if left else width - margin - tw
            y = (margin + used + th) if top else (height - margin - used - base)
            pad = 2
            box = (max(0, x - pad), max(0, y - th - pad), min(width, x + tw + pad), min(height, y + base + pad))
            if not any(_overlap(box, p) for p in placed) or y - th < 0 or y > height:
                break
            used += 2  # a safety net: lines in their own halves and stacks never meet
        stacks[corner] = used + th + base + 2 * margin
        placed.append(box)
        out.append(Overlay(kind, texts[kind], int(x), int(y), font, float(scale), thickness, style, box, pair))
    return tuple(out)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw(frame: np.ndarray, overlays: tuple[Overlay, ...], t_s: float) -> None:
    """Stamp every overlay line on ``frame`` (RGB, in place) as it reads at ``t_s``."""
    for o in overlays:
        text = o.text_at(t_s)
        x0, y0, x1, y1 = o.box
        if o.style == "translucent":
            # a bright scene moving under the line (a lit window, a monitor), then the glyphs at half opacity
            mean, amp, period, speed = BRIGHT_SCENE
            xs = np.arange(x0, x1, dtype=np.float32)
            row = mean + amp * np.sin(2 * np.pi * (xs - speed * t_s) / period)
            frame[y0:y1, x0:x1] = np.clip(row, 0, 255).astype(np.uint8)[None, :, None]
            glyphs = np.zeros(frame.shape[:2], np.uint8)
            cv2.putText(glyphs, text, (o.x, o.y), o.font, o.scale, 255, o.thickness, cv2.LINE_AA)
            a = (glyphs[y0:y1, x0:x1, None].astype(np.float32) / 255.0) * TRANSLUCENT_ALPHA
            roi = frame[y0:y1, x0:x1].astype(np.float32)
            frame[y0:y1, x0:x1] = np.clip(roi * (1 - a) + 255.0 * a, 0, 255).astype(np.uint8)
            continue
        if o.style == "boxed":
            frame[y0:y1, x0:x1] = 0
            color = (255, 255, 255)
        elif o.style == "yellow":
            color = (255, 230, 40)
        elif o.style == "grey_on_grey":
            frame[y0:y1, x0:x1] = GREY_PLATE
            color = (GREY_TEXT,) * 3
        elif o.style == "colour":
            frame[y0:y1, x0:x1] = o.colours[0]
            color = o.colours[1]
        elif o.style == "small":
            color = (235, 235, 235)
        else:
            color = (200, 200, 200)
        cv2.putText(frame, text, (o.x, o.y), o.font, o.scale, color, o.thickness, cv2.LINE_AA)
