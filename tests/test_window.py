"""window: property tests of window boundaries over random durations."""

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.errors import ConfigError
from tasks.params import WindowParams
from tasks.schema import read_table
from tasks.window import window_bounds, window_recording, window_stage

STUDY = WindowParams()  # 30 s windows, 5 s overlap
durations = st.floats(min_value=0.5, max_value=4 * 3600, allow_nan=False)
knobs = st.tuples(st.floats(min_value=1, max_value=120), st.floats(min_value=0, max_value=0.95)).map(
    lambda t: WindowParams(length_s=t[0], overlap_s=t[0] * t[1])
)


@settings(max_examples=300, deadline=None)
@given(d=durations, p=knobs)
def test_window_properties(d, p):
    b = window_bounds(d, p)
    # count
    expected = 1 if d <= p.length_s + 1e-6 else math.ceil((d - p.length_s) / p.stride_s - 1e-9) + 1
    assert len(b) == expected
    # first starts at 0, last ends at the recording's end (tail covered)
    assert b[0][0] == 0.0 and b[-1][1] == pytest.approx(d)
    # every window has the full length unless the recording is shorter than one
    for t0, t1 in b:
        assert t1 - t0 == pytest.approx(min(p.length_s, d))
        assert 0.0 <= t0 < t1 <= d + 1e-9
    # consecutive windows: regular stride, overlap >= overlap_s, no gap (coverage)
    for (a0, a1), (b0, b1) in zip(b, b[1:]):
        assert b0 > a0
        assert a1 - b0 >= p.overlap_s - 1e-6
        assert b0 <= a1 + 1e-9
    for (a0, _), (b0, _) in zip(b[:-2], b[1:-1]):
        assert b0 - a0 == pytest.approx(p.stride_s)


def test_study_protocol_examples():
    assert window_bounds(30.0, STUDY) == [(0.0, 30.0)]
    assert window_bounds(12.0, STUDY) == [(0.0, 12.0)]
    assert window_bounds(55.0, STUDY) == [(0.0, 30.0), (25.0, 55.0)]
    assert window_bounds(60.0, STUDY) == [(0.0, 30.0), (25.0, 55.0), (30.0, 60.0)]
    assert window_bounds(80.0, STUDY) == [(0.0, 30.0), (25.0, 55.0), (50.0, 80.0)]


def _frames(rid: str, duration: float, fps: float = 2.0) -> pa.Table:
    n = int(math.floor(duration * fps + 1e-9))
    return pa.table({"recording_id": [rid] * n, "frame_index": list(range(n)), "pts_s": [i / fps for i in range(n)]})


@settings(max_examples=100, deadline=None)
@given(d=st.floats(min_value=1, max_value=400))
def test_frames_are_assigned_to_windows(d):
    frames = _frames("R1", d)
    rows = window_recording("R1", frames, d, STUDY)
    pts = frames.column("pts_s").to_pylist()
    covered = set()
    for r in rows:
        members = range(r["frame_start"], r["frame_end"])
        covered.update(members)
        for i in members:
            assert r["t_start_s"] - 1e-6 <= pts[i] <= r["t_end_s"] + 1e-6
    assert covered == set(range(len(pts)))  # every frame lands in some window
    if len(rows) > 1:
        assert rows[0]["frame_end"] - rows[0]["frame_start"] == 60  # 30 s at 2 fps


def test_stage_writes_valid_table(tmp_path):
    from tasks.schema import write_table

    frames = pa.concat_tables([_frames("Ra", 100.0), _frames("Rb", 20.0)])
    write_table("frames", frames, tmp_path / "frames.parquet")
    out = window_stage(tmp_path / "frames.parquet", {"Ra": 100.0, "Rb": 20.0}, tmp_path / "windows.parquet", STUDY)
    assert read_table("windows", tmp_path / "windows.parquet").num_rows == out.num_rows == 5
    assert out.filter(pa.compute.equal(out["recording_id"], "Rb")).num_rows == 1


def test_bad_params_and_inputs():
    with pytest.raises(ConfigError, match="overlap_s"):
        WindowParams(length_s=30, overlap_s=30)
    with pytest.raises(ValueError, match="duration"):
        window_bounds(0.0, STUDY)
    shuffled = pa.table({"recording_id": ["R"] * 2, "frame_index": [0, 1], "pts_s": [1.0, 0.5]})
    with pytest.raises(ValueError, match="presentation order"):
        window_recording("R", shuffled, 2.0, STUDY)
