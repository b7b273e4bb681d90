"""window: cut each recording's 2 fps frames into the study's analysis windows.

30 s windows with 5 s overlap (stride 25 s) by default.  The tail is
covered: the last window ends exactly at the recording's end (it may then
overlap its neighbour by more than ``overlap_s``).  A recording shorter than
one window gets a single window spanning all of it.

Output table ``windows`` (see tasks/schema.py): recording_id, window_index,
t_start_s, t_end_s, frame_start, frame_end (half-open range of the frames
table's ``frame_index``).
"""

from __future__ import annotations

import bisect
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks import layout
from tasks.contract import Stage, Table
from tasks.layout import rel
from tasks.params import WindowParams, Params
from tasks.schema import read_table, write_table

EPS_S = 1e-6  # seconds; absorbs float error when a window ends exactly at the end


def window_bounds(duration_s: float, params: WindowParams) -> list[tuple[float, float]]:
    """(t_start_s, t_end_s) of every window of a recording of ``duration_s`` seconds."""
    if duration_s <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration_s}")
    length, stride = params.length_s, params.stride_s
    if duration_s <= length + EPS_S:
        return [(0.0, float(duration_s))]
    bounds = []
    k = 0
    while k * stride + length < duration_s - EPS_S:
        bounds.append((k * stride, k * stride + length))
        k += 1
    bounds.append((duration_s - length, float(duration_s)))
    return bounds


def window_recording(recording_id: str, frames: pa.Table, duration_s: float, params: WindowParams) -> list[dict]:
    """Rows of the ``windows`` table for one recording.

    ``frames`` is that recording's frames table (frame_index, pts_s ascending).
    A frame belongs to a window when t_start_s <= pts_s < t_end_s; the last
    window also takes a frame at exactly t_end_s.
    """
    pts = frames.column("pts_s").to_pylist()
    idx = frames.column("frame_index").to_pylist()
    if any(b < a for a, b in zip(pts, pts[1:])):
        raise ValueError(f"{recording_id}: frames are not in presentation order")
    bounds = window_bounds(duration_s, params)
    rows = []
    for w, (t0, t1) in enumerate(bounds):
        last = w == len(bounds) - 1
        i0 = bisect.bisect_left(pts, t0 - EPS_S)
        i1 = len(pts) if last else bisect.bisect_left(pts, t1 - EPS_S)
        start = idx[i0] if i0 < len(idx) else (idx[-1] + 1 if idx else 0)
        end = idx[i1 - 1] + 1 if i1 > i0 else start
        rows.append(dict(recording_id=recording_id, window_index=w, t_start_s=t0, t_end_s=t1,
                         frame_start=start, frame_end=end))
    return rows


def window_one(recording_id: str, frames_path: Path, duration_s: float, out_dir: Path,
               params: WindowParams) -> list[dict]:
    """Window one recording: reads its frames table, writes ``windows/<id>.parquet``."""
    frames = read_table("frames", frames_path)
    rows = window_recording(recording_id, frames, duration_s, params)
    write_table("windows", rows, Path(out_dir) / "windows" / f"{recording_id}.parquet")
    return rows


def window_stage(frames_path: Path, durations: dict[str, float], out_path: Path, params: WindowParams) -> pa.Table:
    """Window every recording of a stage-level frames table in one go (no per-recording files).

    ``durations`` maps recording_id -> duration in seconds.  Writes the
    ``windows`` table atomically to ``out_path`` and returns it.
    """
    frames = read_table("frames", frames_path)
    rows: list[dict] = []
    for rid in sorted(durations):
        rows.extend(window_recording(rid, frames.filter(pc.equal(frames.column("recording_id"), rid)),
                                     durations[rid], params))
    write_table("windows", rows, out_path)
    return read_table("windows", out_path)


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    """One recording's frames table -> its windows table (duration from its de-identify result)."""
    result = read_table("deidentified", layout.path(data_dir, "deidentify", "results", f"{recording_id}.parquet"))
    rows = window_one(recording_id, layout.path(data_dir, "downsample", "frames", f"{recording_id}.parquet"),
                      result.column("duration_s")[0].as_py(), out_dir, params.window)
    return {"recording_id": recording_id, "n_windows": len(rows)}


STAGE = Stage(
    "window", "recording", run, "30 s analysis windows with 5 s overlap over each recording's 2 fps frames",
    after="deidentify", inputs=(rel("downsample", "frames", "{rid}.parquet"),
                                rel("deidentify", "results", "{rid}.parquet")),
    tables=(Table("windows", "windows"),))
