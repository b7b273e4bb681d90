"""tasks/burned_text.py: planted overlay lines are found and read; a walker's legs are not text; static tracking.

Ground truth: overlay lines drawn by the phantom's own planner (tasks/synth/overlay.py) with known boxes,
and a gait phantom frame (tasks/synth/gait.py) with no text at all.
"""

from __future__ import annotations

import cv2
import numpy as np

import pytest

from tasks import tesseract
from tasks.burned_text import TextDetector, TextReader, TextTracker, static_band
from tasks.errors import ModelNotFoundError
from tasks.detectors import FaceBox
from tasks.media import iter_frames
from tasks.params import DeidentifyParams, GaitSynthParams
from tasks.synth import gait, overlay

W, H = 384, 288
COVER_MIN = 0.85  # share of a planted line's box the dilated regions cover (the box has a plate and descender room)


def _frame_with_overlays(seed: int) -> tuple[np.ndarray, tuple]:
    rng = np.random.default_rng(seed)
    lines = ()
    while not lines:
        lines = overlay.plan(rng, W, H)
    frame = np.full((H, W, 3), 110, np.uint8)
    frame[90:230, 130:260] = (170, 130, 110)  # a body-ish block
    overlay.draw(frame, lines, 3.0)
    return frame, lines


def _covered(box: tuple[int, int, int, int], found: list[FaceBox]) -> float:
    x0, y0, x1, y1 = box
    mask = np.zeros((H, W), bool)
    for b in found:
        mask[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))] = True
    return float(mask[y0:y1, x0:x1].mean())


def test_every_planted_line_is_found_and_read():
    """Every style (grey on grey, half-transparent over a bright moving scene, small print, colour on a similar
    colour included) is found: on the frame or on its contrast-normalised copy."""
    det, reader = TextDetector(), TextReader()
    for seed in (1, 2, 3):
        frame, lines = _frame_with_overlays(seed)
        found = [b.dilate(DeidentifyParams().text_dilation, W, H) for b in det.detect(frame)]  # as deidentify does
        read = " ".join(r.text for r in reader.readable(frame, 0.5)).replace(" ", "")
        for o in lines:
            assert _covered(o.box, found) >= COVER_MIN, (seed, o.kind, o.text)
        # the reader reads plain lines word for word (the faint styles are the detector's and the other engine's work)
        plain = [o for o in lines if o.style in ("boxed", "yellow", "grey") and o.kind != "clock"]
        assert sum(o.text.replace(" ", "") in read for o in plain) >= 2, read


def test_a_walkers_legs_are_not_text(tmp_path):
    """PP-OCR (trained on Chinese) reads striding legs as the character for "person": too tall to be an overlay."""
    gait.generate_cohort(tmp_path, GaitSynthParams(subjects_per_class=1, clips_per_subject=1, width=320, height=240,
                                                   fps=25.0, duration_s=3.2), seed=11)
    det = TextDetector()
    clip = sorted((tmp_path / "videos").iterdir())[0]
    found = [b for f in iter_frames(clip) if f.index % 12 == 0 for b in det.detect(f.rgb)]
    assert found == []


def test_tracker_keeps_static_overlays_and_holds_the_last_regions():
    clock = FaceBox(2, 2, 150, 20, 1.0)
    moved = FaceBox(2, 3, 152, 21, 1.0)  # the same line, digits changed
    t = TextTracker()
    t.update([clock])
    assert t.boxes == [clock] and t.static == []
    t.update([moved])
    assert t.static == [moved]  # seen twice in a row: static from now on
    t.update([])  # a detection that misses it still covers it
    assert t.boxes == [moved]
    t.update([FaceBox(200, 250, 300, 270, 1.0)])
    assert moved in t.boxes and len(t.boxes) == 2


def test_a_region_pass_finds_the_lines_inside_it_and_keeps_the_regions_outside():
    """deidentify searches only where the motion gate saw a change: the planted lines inside that region are found
    at full-frame coordinates (not dropped as too tall for the small crop), and the last regions outside it stay."""
    det = TextDetector()
    frame, lines = _frame_with_overlays(2)
    o = lines[0]
    x0, y0 = max(0, o.box[0] - 40), max(0, o.box[1] - 30)
    x1, y1 = min(W, o.box[2] + 40), min(H, o.box[3] + 30)  # a small region around one planted line
    crop = frame[y0:y1, x0:x1]
    found = [FaceBox(b.x0 + x0, b.y0 + y0, b.x1 + x0, b.y1 + y0, b.score) for b in det.detect(crop, frame_height=H)]
    assert _covered(o.box, [b.dilate(DeidentifyParams().text_dilation, W, H) for b in found]) >= COVER_MIN
    outside, inside = FaceBox(300, 260, 380, 280, 1.0), FaceBox(x0 + 1, y0 + 1, x0 + 5, y0 + 5, 1.0)
    t = TextTracker()
    t.update([outside, inside])
    t.update(found, FaceBox(x0, y0, x1, y1, 1.0))
    assert outside in t.last and inside not in t.last and all(b in t.last for b in found)


def test_static_band_is_the_text_found_at_one_place_in_two_scanned_frames():
    """A clock whose digits change (boxes a little apart) seen in 3 of 4 frames is one band enclosing every
    sighting; a line seen once (a passing sign, a false find) is not."""
    clock = [FaceBox(2, 2, 150, 20, 1.0), FaceBox(2, 3, 154, 21, 1.0), FaceBox(3, 2, 149, 20, 1.0)]
    once = FaceBox(200, 250, 300, 270, 1.0)
    band = static_band([[clock[0]], [clock[1], once], [], [clock[2]]])
    assert [(b.x0, b.y0, b.x1, b.y1) for b in band] == [(2, 2, 154, 21)]
    t = TextTracker()
    t.hold(band)
    t.update([])
    assert t.boxes == band  # held from the first frame on, whatever the detections say


def test_a_missing_tesseract_is_an_error_saying_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without the program
    with pytest.raises(ModelNotFoundError, match="apt-get install tesseract-ocr"):
        tesseract.read([np.zeros((20, 60), np.uint8)])


def test_tesseract_reads_the_planted_lines_and_nothing_on_a_blank_frame():
    """The independent engine reads the planted words on the classical regions' crops (so an audit that reads
    nothing on blurred output means something), and no word on a flat frame."""
    frame, lines = _frame_with_overlays(1)
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    crops = tesseract.region_renderings(grey, tesseract.text_like_regions(grey))  # what the audit reads
    words = tesseract.read([img for c in crops for img in c] + [np.full((40, 200), 128, np.uint8)])
    read = set().union(*(tesseract.tokens(w, 80) for w in words[:-1]))
    planted = {t for o in lines for t in tesseract.tokens([tesseract.Word(o.text, 100)])}
    assert len(read & planted) >= 0.3 * len(planted), (sorted(read), sorted(planted))  # 8 of 20 here
    assert words[-1] == []
