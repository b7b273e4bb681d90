"""Shared phantom for the enhancement tests (face_crop, pose): one recording through the real stages.

``build(tmp)`` renders one phantom recording (1 patient, 40-45 s, 384x288 at
12 fps, a staff visit from ~14 s to ~24 s, a head turn to profile) and runs
the real stages on it in order -- ingest, deidentify, downsample, window --
laying out ``data_dir`` exactly as the pipeline does (``01_ingest`` ...
``04_window``).  The test modules call it from their own module-scoped
fixture through ``enhanced_data`` (built once per process, so running both
modules pays for it once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks import deidentify, downsample, face_blur, window
from tasks.identity import source_path
from tasks.ingest import ingest
from tasks.params import DeidentifyParams, DownsampleParams, IngestParams, SeizureSynthParams, WindowParams
from tasks.schema import read_table
from tasks.synth import seizure as sz

SEED = 6  # recording has a staff visit (13.95-23.6 s), a head turn and body movement features
SMALL = SeizureSynthParams(patients=1, recordings_per_patient=1, min_duration_s=40.0, max_duration_s=45.0)
KEY = b"0" * 64


@dataclass(frozen=True)
class Enhanced:
    cohort: Path  # phantom truth tables + raw videos
    data_dir: Path  # 01_ingest ... 04_window
    recording_id: str
    source_name: str  # truth-side name of the same recording


def build(tmp: Path) -> Enhanced:
    """Render the phantom and run ingest -> deidentify -> downsample -> window on it."""
    tmp = Path(tmp)
    cohort = tmp / "cohort"
    sz.generate_cohort(cohort, SMALL, seed=SEED, workers=1)
    data = tmp / "data"
    ingest(cohort / "videos", data / "01_ingest", IngestParams(settle_s=0), id_key=KEY)
    manifest = read_table("manifest", data / "01_ingest" / "manifest.parquet").to_pylist()
    assert len(manifest) == 1
    m = manifest[0]
    rid = m["recording_id"]
    src = source_path(data / "01_ingest", rid)
    deid = data / "02_deidentify"
    row = face_blur.deidentify_recording(face_blur.RecordingInput(rid, src, m["duration_s"]), deid,
                                          DeidentifyParams())
    assert row["status"] == "ok", row
    deidentify.STAGE.collect(deid, [rid])
    ds = data / "03_downsample"
    downsample.downsample_recording(rid, deid / "videos" / f"{rid}.mp4", ds, DownsampleParams())
    downsample.STAGE.collect(ds, [rid])
    win = data / "04_window"
    window.window_one(rid, ds / "frames" / f"{rid}.parquet", m["duration_s"], win, WindowParams())
    window.STAGE.collect(win, [rid])
    return Enhanced(cohort=cohort, data_dir=data, recording_id=rid, source_name=src.name)


_CACHE: dict[str, Enhanced] = {}


def enhanced_data(tmp_path_factory) -> Enhanced:
    """``build`` once per test process (both enhancement modules share it)."""
    if "data" not in _CACHE:
        _CACHE["data"] = build(tmp_path_factory.mktemp("enhance"))
    return _CACHE["data"]
