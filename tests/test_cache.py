"""cache: a recording that fails keeps its last good outputs; the tables come from every complete result."""

from __future__ import annotations

import json
import shutil

import pytest

from tasks.atomic import atomic_write_text
from tasks.cache import KEEP, Job, collect, intact_key, last_good_kept, marker_result, write_marker
from tasks.window import STAGE as WINDOW
from tasks.schema import read_table, write_table

RID = "R0123456789"


def _good(out):
    """A recording's complete result: a table, a clip and a marker listing both."""
    table = write_table("windows", [dict(recording_id=RID, window_index=0, t_start_s=0.0, t_end_s=30.0,
                                         frame_start=0, frame_end=60)], out / "windows" / f"{RID}.parquet")
    clip = atomic_write_text(out / "clips" / f"{RID}_w0000.txt", "old clip")
    write_marker(out, RID, "key-1", [table, clip], {"ok": 1})
    return {p: p.read_bytes() for p in (table, clip)}


def test_a_run_that_raises_leaves_the_last_good_outputs_as_they_were(tmp_path):
    out = tmp_path / "04_window"
    before = _good(out)
    table, clip = before
    with pytest.raises(RuntimeError, match="model died"):
        with last_good_kept(out, RID):
            clip.unlink()  # a stage removing a stale clip before it writes the new one (face_crop, pose do)
            atomic_write_text(table, "half a new table")  # replaced atomically, then the run fails
            atomic_write_text(out / "clips" / f"{RID}_w0001.txt", "a clip of the failed run")
            raise RuntimeError("model died")
    assert {p: p.read_bytes() for p in before} == before
    assert not (out / "clips" / f"{RID}_w0001.txt").exists(), "what the failed run added is no result"
    assert not (out / "done" / KEEP).exists() or not any((out / "done" / KEEP).iterdir())
    assert marker_result(out, RID, "key-1") == {"ok": 1} and intact_key(out, RID) == "key-1"


def test_a_killed_run_is_undone_by_the_next_one_unless_its_marker_is_new(tmp_path):
    out = tmp_path / "04_window"
    before = _good(out)
    table, clip = before
    keep = out / "done" / KEEP / RID
    (keep / "clips").mkdir(parents=True)
    (keep / "windows").mkdir()
    shutil.copy2(clip, keep / "clips" / clip.name)  # what a run killed mid-way had kept
    shutil.copy2(table, keep / "windows" / table.name)
    clip.unlink()
    atomic_write_text(table, "torn")
    with last_good_kept(out, RID):
        assert {p: p.read_bytes() for p in before if p.is_file()} == before and clip.is_file()
    # a run killed after its marker was written: the new result stands
    atomic_write_text(clip, "new clip")
    write_marker(out, RID, "key-2", [table, clip], {"ok": 2})
    (keep / "clips").mkdir(parents=True)
    (keep / "clips" / clip.name).write_text("old clip")
    with last_good_kept(out, RID):
        pass
    assert clip.read_text() == "new clip" and marker_result(out, RID, "key-2") == {"ok": 2}


def test_tables_are_rebuilt_from_every_complete_result_and_stale_ones_are_named(tmp_path):
    out = tmp_path / "04_window"
    _good(out)
    other = "R9876543210"
    write_table("windows", [], out / "windows" / f"{other}.parquet")  # no marker: no complete result
    got = collect(WINDOW, out, [Job(RID, "key-now"), Job(other, "key-now")])
    assert (got.ids, got.stale, got.missing) == ([RID], [RID], [other])
    assert read_table("windows", out / "windows.parquet")["recording_id"].to_pylist() == [RID]
    assert json.loads((out / "state.json").read_text()) == {"recordings": 1, "stale": [RID], "missing": [other]}
    got = collect(WINDOW, out, [Job(RID, "key-1")])
    assert (got.ids, got.stale) == ([RID], [])


def test_a_kept_result_an_older_version_wrote_in_another_schema_is_left_out_not_fatal(tmp_path):
    """A recording whose rerun failed keeps its last good files; written by older code, its table lacks a
    column added since.  The stage's tables are rebuilt from the others and it is counted missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "04_window"
    _good(out)
    old = "R1111111111"
    legacy = out / "windows" / f"{old}.parquet"  # the windows table without frame_end: an older layout
    pq.write_table(pa.table({"recording_id": [old], "window_index": [0], "t_start_s": [0.0], "t_end_s": [30.0],
                             "frame_start": [0]}), legacy)
    write_marker(out, old, "key-old", [legacy], {"ok": 1})
    got = collect(WINDOW, out, [Job(RID, "key-1"), Job(old, "key-now")])
    assert (got.ids, got.stale, got.missing) == ([RID], [], [old])
    assert read_table("windows", out / "windows.parquet")["recording_id"].to_pylist() == [RID]
