"""Motion gate: whether a frame changed enough since the last detection pass to need a new one.

A fixed EMU camera films a patient who is mostly still; re-running the face
and text detectors on frames that did not change finds what the last pass
found.  The gate compares a thumbnail of the luma plane (``THUMB_SCALE``
times smaller) with the one taken at the last pass, cell by cell
(``CELL_PX`` thumbnail pixels, 64 source pixels at 1/8), and asks for a new
pass when

* any cell's mean absolute change reaches ``level`` grey levels (something
  moved or appeared there: a person entering, a head turning, new text),
* the whole picture's mean change reaches ``scene_level`` (lights, a scene
  cut, the camera moved),
* ``refresh_s`` passed since the last pass (motion or not), or
* it is the first frame.

The reference is the thumbnail of the last pass, not of the previous frame:
a slow drift adds up until it triggers, so a held box never lags a face by
more than the change one cell may hide.  Regions the caller already covers
for good (static overlay text, whose clock changes every second) can be
masked out of the comparison.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.detectors import FaceBox

THUMB_SCALE = 8  # the luma plane is compared at 1/8 of its size (1080p -> 240x135)
SAMPLE_STEP = 4  # source pixels between the samples the thumbnail averages
CELL_PX = 8  # thumbnail pixels per cell side: 64x64 source pixels
REASONS = ("start", "motion", "scene", "refresh")  # why a pass ran


class MotionGate:
    """Decides, frame by frame, whether a detection pass is due (see the module docstring)."""

    def __init__(self, *, level: float, scene_level: float, refresh_s: float) -> None:
        self.level, self.scene_level, self.refresh_s = level, scene_level, refresh_s
        self._ref: np.ndarray | None = None
        self._ref_pts = 0.0
        # after due() said "motion": the changed cells' bounding box grown by one cell (source pixels), else None
        self.changed: FaceBox | None = None

    @staticmethod
    def thumbnail(y: np.ndarray) -> np.ndarray:
        """The luma plane shrunk ``THUMB_SCALE`` times, int16 for signed differences.

        Every ``SAMPLE_STEP``-th pixel is taken first, then averaged: a tenth of
        the cost of an area shrink of the whole plane (0.05 vs 0.5 ms at 1080p).
        """
        h, w = y.shape
        small = cv2.resize(y[::SAMPLE_STEP, ::SAMPLE_STEP], (max(1, w // THUMB_SCALE), max(1, h // THUMB_SCALE)),
                           interpolation=cv2.INTER_AREA)
        return small.astype(np.int16)

    def due(self, thumb: np.ndarray, pts: float, masked: list[FaceBox] = ()) -> str | None:
        """Why a pass is due at ``pts`` (one of ``REASONS``), or None when the last pass still holds.

        ``masked`` boxes (source pixels) are left out of the comparison.
        A gate with ``level`` 0 asks for a pass on every frame.
        """
        self.changed = None
        if self._ref is None or self._ref.shape != thumb.shape:
            return "start"
        if self.level <= 0:
            return "motion"
        if pts - self._ref_pts >= self.refresh_s - 1e-6:
            return "refresh"
        diff = np.abs(thumb - self._ref).astype(np.uint8)
        for b in masked:
            x0, y0 = int(b.x0) // THUMB_SCALE, int(b.y0) // THUMB_SCALE
            x1, y1 = -(-int(np.ceil(b.x1)) // THUMB_SCALE), -(-int(np.ceil(b.y1)) // THUMB_SCALE)
            diff[y0:y1, x0:x1] = 0
        if float(diff.mean()) >= self.scene_level:
            return "scene"
        h, w = diff.shape
        ch, cw = -(-h // CELL_PX), -(-w // CELL_PX)
        padded = np.zeros((ch * CELL_PX, cw * CELL_PX), np.float32)
        padded[:h, :w] = diff
        cells = padded.reshape(ch, CELL_PX, cw, CELL_PX).mean(axis=(1, 3))  # edge cells count their padding as still
        hot = cells >= self.level
        if not hot.any():
            return None
        rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
        px = CELL_PX * THUMB_SCALE
        self.changed = FaceBox(float(max(0, cols[0] - 1) * px), float(max(0, rows[0] - 1) * px),
                               float((cols[-1] + 2) * px), float((rows[-1] + 2) * px), 1.0)
        return "motion"

    def passed(self, thumb: np.ndarray, pts: float) -> None:
        """A pass ran on this frame: it becomes the reference."""
        self._ref, self._ref_pts = thumb, pts
