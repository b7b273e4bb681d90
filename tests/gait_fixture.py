"""Shared gait phantom for the gait-track tests (kinematics, gait): rendered and processed once per process.

``gait_data(tmp_path_factory)`` renders a small gait phantom (8 classes x
``SUBJECTS`` subjects x 1 clip of ``DURATION_S`` s, 320x240 at 25 fps) and
runs the real kinematics stage on it (de-identify, pose, angles, events),
laying out ``data_dir`` as the pipeline does (``14_kinematics``).  Both test
modules call it, so running them together pays for it once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tasks import kinematics
from tasks.params import GaitSynthParams, KinematicsParams, Params
from tasks.identity import ID_KEY_ENV
from tasks.synth.gait import generate_cohort

SEED = 11
SUBJECTS = 2  # per class: 16 subjects, a subject-disjoint 8:2 split leaves 3-4 test subjects
DURATION_S = 3.2
SYNTH = GaitSynthParams(subjects_per_class=SUBJECTS, clips_per_subject=1, width=320, height=240, fps=25.0,
                        duration_s=DURATION_S)
KEY = b"0" * 64


@dataclass(frozen=True)
class GaitData:
    cohort: Path  # phantom: videos/ + truth tables
    data_dir: Path  # 14_kinematics/ ...
    params: Params
    key_file: Path
    summary: dict  # kinematics.run's return value

    def id_key_env(self):
        """Context in which ``load_id_key`` reads this fixture's site key."""
        return mock.patch.dict(os.environ, {ID_KEY_ENV: str(self.key_file)})


def params_for(cohort: Path, **sections) -> Params:
    """Test params: the cohort's clips as kinematics input, two workers, ``sections`` replaced."""
    base = Params()
    p = dataclasses.replace(base, base=dataclasses.replace(base.base, workers=2),
                            kinematics=KinematicsParams(videos=str(cohort / "videos"),
                                                        labels=str(cohort / "gait_clips.parquet")))
    return dataclasses.replace(p, **sections)


def build(tmp: Path) -> GaitData:
    """Render the phantom and run the kinematics stage on it."""
    tmp = Path(tmp)
    cohort = tmp / "cohort"
    generate_cohort(cohort, SYNTH, seed=SEED, workers=2)
    key_file = tmp / "id_key"
    key_file.write_bytes(KEY)
    params = params_for(cohort)
    data = tmp / "data"
    with mock.patch.dict(os.environ, {ID_KEY_ENV: str(key_file)}):
        summary = kinematics.run(data, data / "14_kinematics", params)
    return GaitData(cohort=cohort, data_dir=data, params=params, key_file=key_file, summary=summary)


_CACHE: dict[str, GaitData] = {}


def gait_data(tmp_path_factory) -> GaitData:
    """``build`` once per test process (both gait-track modules share it)."""
    if "data" not in _CACHE:
        _CACHE["data"] = build(tmp_path_factory.mktemp("gait_track"))
    return _CACHE["data"]
