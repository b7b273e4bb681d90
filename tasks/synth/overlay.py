"""Burned-in overlay text for the phantom: what an EMU video system stamps on the picture.

A share of recordings (``OVERLAY_SHARE``) carries 3-5 overlay lines: the
patient's (fake) name, an MRN, a date of birth, a running clock (date and
time, changing every second) and a bed/camera label, in varied OpenCV
fonts, sizes, corners and contrasts (white on a black box, yellow, low-
contrast grey).  Each line's text and box are truth (table ``overlays``);
the clock's text is its value at t = 0 and its box covers every value.
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
STYLES = ("boxed", "yellow", "grey")  # white on a black box | yellow, no box | light grey on the scene
TEXT_HEIGHT_FRAC = (0.035, 0.055)  # glyph height as a share of the frame height
MARGIN_FRAC = 0.015  # gap to the frame edge and between lines, share of the frame height
CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S"
KINDS = ("name", "mrn", "dob", "clock", "bed")


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

    def text_at(self, t_s: float) -> str:
        if self.kind != "clock":
            return self.text
        return (dt.datetime.strptime(self.text, CLOCK_FORMAT) + dt.timedelta(seconds=int(t_s))).strftime(CLOCK_FORMAT)


def _scale_for(font: int, px: float, thickness: int) -> float:
    (_, h), _ = cv2.getTextSize("0", font, 1.0, thickness)
    return px / h


def plan(rng: np.random.Generator, width: int, height: int) -> tuple[Overlay, ...]:
    """The overlay lines of one recording (none for ``1 - OVERLAY_SHARE`` of them)."""
    if rng.random() >= OVERLAY_SHARE:
        return ()
    texts = {
        "name": FAKE_NAMES[int(rng.integers(len(FAKE_NAMES)))],
        "mrn": f"MRN {int(rng.integers(1_000_000, 9_999_999))}",
        "dob": f"DOB {int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}/{int(rng.integers(1930, 2005))}",
        "clock": (dt.datetime(2023, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 365 * 86400)))).strftime(CLOCK_FORMAT),
        "bed": f"BED {int(rng.integers(1, 13))} CAM {int(rng.integers(1, 4))}",
    }
    kinds = ["name", "mrn", "clock"] + [k for k in ("dob", "bed") if rng.random() < 0.7]
    corners = rng.permutation(4)
    margin = max(2, int(round(MARGIN_FRAC * height)))
    stacks: dict[int, int] = {}  # corner -> pixels used from its edge
    out = []
    for i, kind in enumerate(kinds):
        corner = int(corners[i % 4])
        font = FONTS[int(rng.integers(len(FONTS)))]
        thickness = 1 + int(rng.random() < 0.4)
        px = float(rng.uniform(*TEXT_HEIGHT_FRAC)) * height
        scale = _scale_for(font, px, thickness)
        sample = "2088-88-88 88:88:88" if kind == "clock" else texts[kind]  # the widest clock value
        (tw, th), base = cv2.getTextSize(sample, font, scale, thickness)
        used = stacks.get(corner, 0)
        left, top = corner in (0, 2), corner in (0, 1)
        x = margin if left else width - margin - tw
        y = (margin + used + th) if top else (height - margin - used - base)
        stacks[corner] = used + th + base + 2 * margin
        pad = 2
        box = (max(0, x - pad), max(0, y - th - pad), min(width, x + tw + pad), min(height, y + base + pad))
        out.append(Overlay(kind, texts[kind], int(x), int(y), font, float(scale), thickness,
                           STYLES[int(rng.integers(len(STYLES)))], box))
    return tuple(out)


def draw(frame: np.ndarray, overlays: tuple[Overlay, ...], t_s: float) -> None:
    """Stamp every overlay line on ``frame`` (RGB, in place) as it reads at ``t_s``."""
    for o in overlays:
        text = o.text_at(t_s)
        if o.style == "boxed":
            x0, y0, x1, y1 = o.box
            frame[y0:y1, x0:x1] = 0
            color = (255, 255, 255)
        elif o.style == "yellow":
            color = (255, 230, 40)
        else:
            color = (200, 200, 200)
        cv2.putText(frame, text, (o.x, o.y), o.font, o.scale, color, o.thickness, cv2.LINE_AA)
