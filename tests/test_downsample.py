"""downsample: 2 fps on an even pts grid (also for VFR input), short side resized, never upscaled."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tasks.downsample import STAGE, downsample_recording
from tasks.media import MediaError, VideoWriter, iter_frames
from tasks.params import DownsampleParams
from tasks.schema import read_table
from tasks.synth import seizure as sz

SRC_FPS = 12.0
SRC_W, SRC_H = 384, 288
DURATION_S = 20.0
PTS_TOL_S = 1e-3  # container time bases round pts to the millisecond or better
PIXEL_TOL = 6.0  # mean absolute grey-level difference between a kept frame and its source frame


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds_src") / "phantom.mp4"
    spec = sz.make_spec(source_name=path.name, duration_s=DURATION_S, width=SRC_W, height=SRC_H, fps=SRC_FPS, seed=5)
    sz.render_recording(spec, path)
    return path


def _vfr(path: Path) -> tuple[Path, list[float]]:
    """Uneven frame times (20-300 ms apart); frame i is painted with grey level 2*i so it can be recognised."""
    rng = np.random.default_rng(3)
    times, t = [], 0.0
    with VideoWriter(path, width=96, height=64, fps=30) as w:
        for i in range(100):
            w.write(np.full((64, 96, 3), 2 * i, np.uint8), pts_s=t)
            times.append(t)
            t += float(rng.uniform(0.02, 0.3))
    return path, times


def _decoded(path: Path) -> tuple[list[float], list[np.ndarray]]:
    frames = list(iter_frames(path))
    return [f.pts_s for f in frames], [f.rgb for f in frames]


def test_phantom_at_2fps_on_the_grid_not_upscaled(phantom, tmp_path):
    params = DownsampleParams()  # 2 fps, short side 448 > 288: keeps 384x288
    table = downsample_recording("R1", phantom, tmp_path, params)
    pts = np.asarray(table.column("pts_s").to_pylist())
    n_expected = math.ceil(DURATION_S * params.fps)
    print(f"\n{DURATION_S:g} s at {SRC_FPS:g} fps -> {len(pts)} frames at {params.fps:g} fps")
    assert len(pts) == n_expected
    assert table.column("frame_index").to_pylist() == list(range(len(pts)))
    np.testing.assert_allclose(pts, np.arange(len(pts)) / params.fps, atol=1e-9)
    out_pts, out_rgb = _decoded(tmp_path / "videos" / "R1.mp4")
    assert len(out_pts) == table.num_rows
    np.testing.assert_allclose(out_pts, pts, atol=PTS_TOL_S)
    assert out_rgb[0].shape == (SRC_H, SRC_W, 3)  # never upscaled
    # slot k keeps the source frame shown at k / fps
    src = {f.index: f.rgb for f in iter_frames(phantom)}
    step = round(SRC_FPS / params.fps)
    diffs = [np.abs(out_rgb[k].astype(float) - src[k * step]).mean() for k in range(len(out_rgb))]
    assert max(diffs) < PIXEL_TOL, max(diffs)


def test_short_side_is_resized(phantom, tmp_path):
    params = DownsampleParams(short_side=144)
    downsample_recording("R1", phantom, tmp_path, params)
    _, rgb = _decoded(tmp_path / "videos" / "R1.mp4")
    assert rgb[0].shape == (144, 192, 3)


def test_vfr_input_keeps_an_even_half_second_grid(tmp_path):
    src, times = _vfr(tmp_path / "vfr.mp4")
    params = DownsampleParams()
    table = downsample_recording("V", src, tmp_path / "out", params)
    pts = np.asarray(table.column("pts_s").to_pylist())
    slots = np.round(pts * params.fps)
    np.testing.assert_allclose(pts, slots / params.fps, atol=1e-9)  # every pts on the 0.5 s grid
    assert (np.diff(slots) >= 1).all()
    occupied = sorted({math.floor(t * params.fps + 1e-6) for t in times})
    assert slots.astype(int).tolist() == occupied  # one frame for every slot the source covers
    out_pts, out_rgb = _decoded(tmp_path / "out" / "videos" / "V.mp4")
    assert len(out_pts) == table.num_rows
    np.testing.assert_allclose(out_pts, pts, atol=PTS_TOL_S)
    # each slot keeps the first source frame that falls in it
    first = [next(i for i, t in enumerate(times) if math.floor(t * params.fps + 1e-6) == s) for s in occupied]
    grey = [float(img.mean()) for img in out_rgb]
    np.testing.assert_allclose(grey, [2 * i for i in first], atol=3)


def test_collect_concatenates(phantom, tmp_path):
    params = DownsampleParams()
    a = downsample_recording("A", phantom, tmp_path, params)
    b = downsample_recording("B", phantom, tmp_path, params)
    table = STAGE.collect(tmp_path, ["B", "A"])
    assert table.num_rows == a.num_rows + b.num_rows
    assert table.column("recording_id").to_pylist() == ["A"] * a.num_rows + ["B"] * b.num_rows
    assert read_table("frames", tmp_path / "frames.parquet").num_rows == table.num_rows


def test_unreadable_input_raises_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(MediaError):
        downsample_recording("X", bad, tmp_path / "out", DownsampleParams())
    assert not list(tmp_path.glob("out/**/*.mp4"))  # no half-written video either
