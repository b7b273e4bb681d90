"""Where everything lives under the data dir: the one place stage names and folder names are written.

``STAGES`` is the stage list, in run order.  A stage's folder is
``<data dir>/<NN>_<stage>`` with ``NN`` its position in that list, so
the names used everywhere (params key, DVC stage, ``tasks/<stage>.py``,
Prefect task, ``data/<NN>_<stage>/``, ``tests/test_<stage>.py``) follow
from one line here.  ``tasks.registry`` finds each stage's declared
contract (``tasks.<stage>.STAGE``) from this list.

Folders of tools that are not stages (the review app's) follow the stages.
"""

from __future__ import annotations

from pathlib import Path

# Run order.  synth makes the phantom cohorts (the CLI's `semioflow synth`, not part of a pipeline run);
# the gait track (kinematics, gait) runs after the seizure track; report reads both.
STAGES = ("synth", "ingest", "deidentify", "downsample", "window", "face_crop", "pose", "audio", "transcript",
          "query", "aggregate", "folds", "train", "evaluate", "kinematics", "gait", "report")
APPS = ("review",)  # tools with a data folder of their own after the stages (the review app)
# Inside a stage folder: owner-only files (0600 in a 0700 folder) that hold identifiers (ingest's id map,
# the raw transcript); never a DVC output, never read by a later stage, never shown.
PRIVATE = "private"


def folder(name: str) -> str:
    """``NN_<name>``: the data-dir folder of a stage (or app)."""
    order = STAGES + APPS
    if name not in order:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return f"{order.index(name):02d}_{name}"


def rel(name: str, *parts: str) -> str:
    """Data-dir-relative POSIX path of ``parts`` inside a stage's folder (``rel("window", "windows.parquet")``)."""
    return "/".join((folder(name),) + parts)


def stage_dir(data_dir: str | Path, name: str) -> Path:
    """``<data_dir>/<NN>_<name>``."""
    return Path(data_dir) / folder(name)


def path(data_dir: str | Path, name: str, *parts: str) -> Path:
    """``<data_dir>/<NN>_<name>/<parts...>``."""
    return stage_dir(data_dir, name).joinpath(*parts)


def relative(p: str | Path, data_dir: str | Path) -> str:
    """``p`` relative to the data dir (POSIX), as tables store media paths; as given when outside it."""
    try:
        return Path(p).resolve().relative_to(Path(data_dir).resolve()).as_posix()
    except ValueError:
        return Path(p).as_posix()


def window_name(recording_id: str, window_index: int, suffix: str) -> str:
    """File name of a per-window artifact: ``<id>_w<NNN><suffix>`` (``suffix`` with its dot, e.g. ``.mp4``)."""
    return f"{recording_id}_w{window_index:03d}{suffix}"


# Stage tables that later stages and the review app read (data-dir relative).
ANSWERS = rel("query", "answers.parquet")
PREDICTIONS = rel("aggregate", "predictions.parquet")
EVIDENCE = rel("aggregate", "evidence.parquet")
WINDOWS = rel("window", "windows.parquet")
LABELS = rel("folds", "labels.parquet")
