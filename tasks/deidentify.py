"""deidentify: every recording's faces blurred, metadata stripped, the result audited (fail-closed).

Per recording of every cohort: ``tasks.face_blur.deidentify_recording`` on
the original file (found through ingest's private id map), with the gait
cohort's own gap fill (``deidentify.gait_gap_fill_s``).  Outputs in ``data/02_deidentify/``:
``videos/<id>.mp4`` (only for recordings that passed), ``boxes/<id>.parquet``
(table ``face_boxes``), ``results/<id>.parquet`` (one ``deidentified`` row),
and, for the stage, ``deidentified.parquet`` and ``quarantine.parquet`` (one
row per recording that failed the audit or could not be decoded).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from tasks import layout
from tasks.contract import Stage, Table
from tasks.face_blur import RecordingInput, deidentify_recording
from tasks.identity import load_id_key, source_of
from tasks.params import Params
from tasks.schema import GAIT, read_table, write_table
from tasks.voice import site_alpha


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    """De-identify one ingested recording; returns its ``deidentified`` row."""
    ingest_dir = layout.stage_dir(data_dir, "ingest")
    manifest = read_table("manifest", ingest_dir / "manifest.parquet").to_pylist()
    row = next(r for r in manifest if r["recording_id"] == recording_id)
    dp = params.deidentify
    if row["cohort"] == GAIT:
        dp = dataclasses.replace(dp, gap_fill_s=dp.gait_gap_fill_s)
    alpha = dp.voice_alpha or site_alpha(load_id_key())
    source, sha256 = source_of(ingest_dir, recording_id)
    return deidentify_recording(RecordingInput(recording_id, source, row["duration_s"], sha256), out_dir, dp,
                                voice_alpha=alpha)


def quarantine(out_dir: Path, recording_ids: list[str]) -> None:
    """``quarantine.parquet``: the recordings of ``deidentified.parquet`` that did not pass."""
    rows = read_table("deidentified", Path(out_dir) / "deidentified.parquet").to_pylist()
    now = dt.datetime.now(dt.timezone.utc)
    write_table("quarantine", [dict(recording_id=r["recording_id"], stage="deidentify", reason=r["reason"],
                                    detail=r["detail"], decoded_coverage=r["decoded_coverage"], quarantined_at=now)
                               for r in rows if r["status"] != "ok"], Path(out_dir) / "quarantine.parquet")


STAGE = Stage(
    "deidentify", "recording", run, "faces blurred on every frame, metadata stripped, an independent audit",
    after="ingest", cohort=None, inputs=(layout.rel("ingest", "manifest.parquet"),),
    tables=(Table("deidentified", "results"),), finish=quarantine)
