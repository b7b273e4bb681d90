"""Shared gait phantom for the gait-track tests (kinematics, gait): rendered and processed once per process.

``gait_data(tmp_path_factory)`` renders a small gait phantom (8 classes x
``SUBJECTS`` subjects x 1 clip of ``DURATION_S`` s, 320x240 at 25 fps) and
runs the real stages on it as the pipeline does: ingest (the clips as the
gait cohort), deidentify, kinematics (pose, angles, events), through
``tasks.cache.run_local`` (the flow's jobs and markers, without Prefect).
Both test modules call it, so running them together pays for it once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tasks import registry
from tasks.cache import run_local
from tasks.identity import ID_KEY_ENV
from tasks.params import GaitSynthParams, IngestParams, Params
from tasks.synth.gait import generate_cohort

SEED = 11
SUBJECTS = 2  # per class: 16 subjects, a subject-disjoint 8:2 split leaves 3-4 test subjects
DURATION_S = 3.2
SYNTH = GaitSynthParams(subjects_per_class=SUBJECTS, clips_per_subject=1, width=320, height=240, fps=25.0,
                        duration_s=DURATION_S)
KEY = b"0" * 64
WORKERS = 2
GAIT_STAGES = ("ingest", "deidentify", "kinematics")


@dataclass(frozen=True)
class GaitData:
    cohort: Path  # phantom: videos/ + truth tables
    data_dir: Path  # 01_ingest/ 02_deidentify/ 14_kinematics/ ...
    params: Params
    key_file: Path
    results: dict  # stage -> the jobs' results (kinematics: one gait_kinematics row per clip)

    def id_key_env(self):
        """Context in which ``load_id_key`` reads this fixture's site key."""
        return mock.patch.dict(os.environ, {ID_KEY_ENV: str(self.key_file)})


def params_for(cohort: Path, **sections) -> Params:
    """Test params: the cohort's clips as the gait inbox (no seizure inbox), its labels as ``gait.labels``,
    two workers, ``sections`` replaced (``gait.labels`` always names the cohort's table)."""
    base = Params()
    p = dataclasses.replace(base, base=dataclasses.replace(base.base, workers=WORKERS),
                            ingest=IngestParams(inbox="", gait_inbox=str(cohort / "videos"), settle_s=0.0))
    p = dataclasses.replace(p, **sections)
    return dataclasses.replace(p, gait=dataclasses.replace(p.gait, labels=str(cohort / "gait_clips.parquet")))


def run_gait_stages(data: Path, params: Params, key_file: Path) -> dict:
    """Ingest, deidentify and kinematics over ``data``; returns each stage's job results."""
    with mock.patch.dict(os.environ, {ID_KEY_ENV: str(key_file)}):
        return {s: run_local(registry.stage(s), data, params, workers=WORKERS) for s in GAIT_STAGES}


def build(tmp: Path) -> GaitData:
    """Render the phantom and run the gait cohort's stages up to kinematics on it."""
    tmp = Path(tmp)
    cohort = tmp / "cohort"
    generate_cohort(cohort, SYNTH, seed=SEED, workers=2)
    key_file = tmp / "id_key"
    key_file.write_bytes(KEY)
    params = params_for(cohort)
    data = tmp / "data"
    results = run_gait_stages(data, params, key_file)
    return GaitData(cohort=cohort, data_dir=data, params=params, key_file=key_file, results=results)


_CACHE: dict[str, GaitData] = {}


def gait_data(tmp_path_factory) -> GaitData:
    """``build`` once per test process (both gait-track modules share it)."""
    if "data" not in _CACHE:
        _CACHE["data"] = build(tmp_path_factory.mktemp("gait_track"))
    return _CACHE["data"]
