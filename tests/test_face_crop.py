"""face_crop: the crop holds the planted patient face (not the staff one), is steady, and no_face is flagged.

The phantom (``tests/enhance_fixture.py``: one recording with a staff visit
and a head turn) runs through the real ingest, deidentify, downsample and
window stages; face_crop then reads deidentify's box log.  Truth: the
planted ``faces`` table, mapped to the pipeline's recording id through the
private id map.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from tasks.face_crop import STAGE, face_crop_recording
from tasks.media import iter_frames
from tasks.params import FaceCropParams
from tasks.schema import read_table, write_table
from tests.enhance_fixture import enhanced_data

PARAMS = FaceCropParams()
CONTAIN_AREA = 0.8  # share of the planted face box that must lie inside the crop
CONTAIN_MIN = 0.95  # share of frames (where the patient face is planted) that must pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return enhanced_data(tmp_path_factory)


@pytest.fixture(scope="module")
def run(data):
    out = data.data_dir / "05_face_crop"
    summary = face_crop_recording(data.recording_id, data.data_dir, out, PARAMS)
    return out, summary, STAGE.collect(out, [data.recording_id])


def _src_frame(pts_s: float, src_fps: float) -> int:
    """The source frame downsample kept for a 2 fps frame at ``pts_s`` (first frame of its slot)."""
    return math.ceil(pts_s * src_fps - 1e-6)


def _truth(data, person: str) -> dict[int, tuple[float, float, float, float]]:
    faces = read_table("faces", data.cohort / "faces.parquet")
    faces = faces.filter(pc.and_(pc.equal(faces.column("source_name"), data.source_name),
                                 pc.equal(faces.column("person"), person)))
    return {r["frame_index"]: (r["x0"], r["y0"], r["x1"], r["y1"]) for r in faces.to_pylist()}


def _geometry(data):
    deid = read_table("deidentified", data.data_dir / "02_deidentify" / "deidentified.parquet").to_pylist()[0]
    first = next(iter_frames(data.data_dir / "03_downsample" / "videos" / f"{data.recording_id}.mp4"))
    h, w = first.rgb.shape[:2]
    return deid["fps"], deid["width"] / w, deid["height"] / h


def _inside_share(box, crop) -> float:
    ix = max(0.0, min(box[2], crop[2]) - max(box[0], crop[0]))
    iy = max(0.0, min(box[3], crop[3]) - max(box[1], crop[1]))
    return ix * iy / max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)


def test_fixture_has_staff_in_view(data):
    assert _truth(data, "staff"), "the phantom must show a staff face, or the patient choice proves nothing"


def test_crop_contains_the_planted_patient_face(run, data):
    out, _, _ = run
    src_fps, sx, sy = _geometry(data)
    tracks = {r["frame_index"]: r for r in read_table("face_tracks", out / "tracks" / f"{data.recording_id}.parquet")
              .to_pylist()}
    frames = read_table("frames", data.data_dir / "03_downsample" / "frames" / f"{data.recording_id}.parquet")
    patient, staff = _truth(data, "patient"), _truth(data, "staff")
    hits = visible = staff_in = staff_frames = 0
    for r in frames.to_pylist():
        si = _src_frame(r["pts_s"], src_fps)
        t = tracks.get(r["frame_index"])
        crop = (t["x0"] * sx, t["y0"] * sy, t["x1"] * sx, t["y1"] * sy) if t else None
        if si in patient:
            visible += 1
            hits += crop is not None and _inside_share(patient[si], crop) >= CONTAIN_AREA
        if si in staff and crop is not None:
            b = staff[si]
            staff_frames += 1
            staff_in += crop[0] <= (b[0] + b[2]) / 2 <= crop[2] and crop[1] <= (b[1] + b[3]) / 2 <= crop[3]
    share = hits / visible
    print(f"\nface_crop containment: {hits}/{visible} frames = {share:.1%} hold >= {CONTAIN_AREA:.0%} of the planted "
          f"patient face; staff face centre inside the crop in {staff_in}/{staff_frames} staff frames")
    assert visible > 0 and share >= CONTAIN_MIN
    assert staff_frames > 0 and staff_in == 0, "the crop followed the staff face"


def test_crop_is_steadier_than_raw_boxes(run):
    _, summary, _ = run
    print(f"\nface_crop jitter (median frame-to-frame centre motion, 2 fps px): raw {summary['jitter_raw_px']:.2f}, "
          f"smoothed {summary['jitter_smoothed_px']:.2f}")
    assert summary["jitter_smoothed_px"] < summary["jitter_raw_px"]


def test_clips_per_window(run, data):
    out, summary, arms = run
    windows = read_table("windows", data.data_dir / "04_window" / "windows" / f"{data.recording_id}.parquet")
    assert arms.num_rows == windows.num_rows == summary["n_windows"]
    by_w = {r["window_index"]: r for r in arms.to_pylist()}
    for w in windows.to_pylist():
        a = by_w[w["window_index"]]
        assert a["arm"] == "face_crop" and a["status"] == "ok"
        assert a["path"] == f"05_face_crop/clips/{data.recording_id}_w{w['window_index']:03d}.mp4"
        frames = [f.rgb.shape for f in iter_frames(data.data_dir / a["path"])]
        assert len(frames) == w["frame_end"] - w["frame_start"]
        assert set(frames) == {(PARAMS.size, PARAMS.size, 3)}
    assert set(summary) >= {"recording_id", "n_windows", "n_no_face", "jitter_raw_px", "jitter_smoothed_px"}
    assert not any(isinstance(v, str) and "/" in v for v in summary.values()), "no paths in the summary"


def _variant(data, tmp: Path, keep) -> Path:
    """A data dir sharing the fixture's video, frames and windows, with a filtered box log."""
    src = data.data_dir
    dst = tmp / "data"
    (dst / "02_deidentify" / "boxes").mkdir(parents=True)
    os.symlink(src / "02_deidentify" / "deidentified.parquet", dst / "02_deidentify" / "deidentified.parquet")
    for layer in ("03_downsample", "04_window"):
        os.symlink(src / layer, dst / layer)
    boxes = read_table("face_boxes", src / "02_deidentify" / "boxes" / f"{data.recording_id}.parquet")
    mask = np.array([keep(t) for t in boxes.column("pts_s").to_pylist()], bool)
    write_table("face_boxes", boxes.filter(mask), dst / "02_deidentify" / "boxes" / f"{data.recording_id}.parquet")
    return dst


def test_window_without_a_face_is_flagged(data, tmp_path):
    windows = read_table("windows", data.data_dir / "04_window" / "windows" / f"{data.recording_id}.parquet")
    first_end = windows.to_pylist()[0]["t_end_s"]
    dd = _variant(data, tmp_path, lambda t: t >= first_end)  # no face box at all during window 0
    out = dd / "05_face_crop"
    summary = face_crop_recording(data.recording_id, dd, out, PARAMS)
    arms = {r["window_index"]: r for r in STAGE.collect(out, [data.recording_id]).to_pylist()}
    assert arms[0]["status"] == "no_face" and arms[0]["path"] is None
    assert not (out / "clips" / f"{data.recording_id}_w000.mp4").exists()
    assert arms[1]["status"] == "ok" and (dd / arms[1]["path"]).is_file()
    assert summary["n_no_face"] == 1


def test_recording_without_any_face(data, tmp_path):
    dd = _variant(data, tmp_path, lambda t: False)
    out = dd / "05_face_crop"
    summary = face_crop_recording(data.recording_id, dd, out, PARAMS)
    arms = read_table("arms", out / "arms" / f"{data.recording_id}.parquet").to_pylist()
    assert arms and {a["status"] for a in arms} == {"no_face"}
    assert summary["n_no_face"] == summary["n_windows"] and math.isnan(summary["jitter_raw_px"])
    assert read_table("face_tracks", out / "tracks" / f"{data.recording_id}.parquet").num_rows == 0
    assert not (out / "clips").exists() or not any((out / "clips").iterdir())


def test_params_are_validated():
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError, match="face_crop.size"):
        FaceCropParams(size=225)
