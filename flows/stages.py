"""Thin Prefect wrappers: one task per stage, one task run per recording.

Cache keys are content hashes of the recording's inputs + the stage's params
+ a hash of the stage's code (its module and every ``tasks`` module it
imports, transitively) — never object identity or file paths.

Prefect's cache and DVC's must not fight: DVC deletes a stage's outputs
before it runs it, after which a Prefect cache hit would write nothing.  So
every per-recording run leaves a marker (``done/<id>.json``: cache key,
SHA-256 of each output file, the small result).  Before submitting, the
stage checks the marker: if the files behind the cache entry are gone or
changed, the task runs with ``refresh_cache=True``; and the task body itself
returns the marker's result without recomputing when its files are intact
(a fresh Prefect database over existing outputs never redoes work).
Task results hold ids and counts only: no media, no names, no paths.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from prefect import task

from tasks.atomic import atomic_write_text, remove_stale_partials
from tasks.ingest import sha256_file as file_sha256
from tasks.params import Params, build, to_dict
from tasks.quiet import native_stderr_captured

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
STAGE_DIRS = {
    "synth": "00_synth",
    "ingest": "01_ingest",
    "deidentify": "02_deidentify",
    "downsample": "03_downsample",
    "window": "04_window",
    "face_crop": "05_face_crop",
    "pose": "06_pose",
    "audio": "07_audio",
    "transcript": "08_transcript",
    "query": "09_query",
    "aggregate": "10_aggregate",
    "folds": "11_folds",
    "train": "12_train",
    "evaluate": "13_evaluate",
    "kinematics": "14_kinematics",
    "gait": "15_gait",
    "report": "16_report",
}
PER_RECORDING = ("deidentify", "downsample", "window", "face_crop", "pose", "audio", "transcript", "query")  # in order
# Whole-cohort stages, in order: tasks.<stage> exposes ``run(data_dir, out_dir, params) -> dict`` and
# ``INPUTS`` (data-dir-relative files/folders it reads).
# The gait track (kinematics, gait) runs after the seizure track; report reads both.
COHORT = ("aggregate", "folds", "train", "evaluate", "kinematics", "gait", "report")
# Knob definitions and error types do not change what a stage computes (the
# knob *values* are in the key): editing them must not rerun every stage.
NOT_CODE = ("params.py", "errors.py")


def stage_dir(data_dir: Path, stage: str) -> Path:
    """``<data_dir>/<NN>_<stage>``."""
    return Path(data_dir) / STAGE_DIRS[stage]


# ---- hashing -------------------------------------------------------------------


def _tasks_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tasks":
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.split(".")[0] == "tasks")
    return mods


def _module_file(mod: str, root: Path = TASKS_DIR) -> Path | None:
    rel = Path(*mod.split(".")[1:])
    if not rel.parts:
        return root / "__init__.py"
    for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def module_files(module: str, root: Path = TASKS_DIR) -> list[Path]:
    """Source files of ``module`` and every ``tasks`` module it imports, transitively (sorted)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        f = _module_file(todo.pop(), root)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(_tasks_imports(f))
    return sorted(f for f in seen if f.name not in NOT_CODE or f.parent != root)


@lru_cache(maxsize=None)
def code_hash(module: str, root: Path = TASKS_DIR) -> str:
    """SHA-256 over the sources of ``module_files(module)``: editing any helper changes it."""
    h = hashlib.sha256()
    for f in module_files(module, root):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(stage: str, input_hash: str, params: dict, *extra: str) -> str:
    """Key of one recording's run of ``stage``."""
    blob = json.dumps({"stage": stage, "input": input_hash, "params": params, "code": code_hash(f"tasks.{stage}"),
                       "extra": list(extra)}, sort_keys=True)
    return f"{stage}-" + hashlib.sha256(blob.encode()).hexdigest()


# ---- markers -------------------------------------------------------------------


def _marker_path(out_dir: Path, rid: str) -> Path:
    return out_dir / "done" / f"{rid}.json"


def marker_key(out_dir: Path, rid: str) -> str | None:
    """The cache key recorded for ``rid`` (whatever the state of its files)."""
    try:
        return json.loads(_marker_path(out_dir, rid).read_text()).get("key")
    except (OSError, ValueError):
        return None


def marker_result(out_dir: Path, rid: str, key: str) -> dict | None:
    """The stored result if the marker matches ``key`` and every output file is intact."""
    p = _marker_path(out_dir, rid)
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except ValueError:
        return None
    if m.get("key") != key:
        return None
    for rel, digest in m.get("files", {}).items():
        f = out_dir / rel
        if not f.is_file() or file_sha256(f) != digest:
            return None
    return m.get("result")


def write_marker(out_dir: Path, rid: str, key: str, files: list[Path], result: dict) -> None:
    entries = {f.relative_to(out_dir).as_posix(): file_sha256(f) for f in files if f.is_file()}
    atomic_write_text(_marker_path(out_dir, rid), json.dumps({"key": key, "files": entries, "result": result},
                                                            sort_keys=True))


# ---- per-recording work ------------------------------------------------------


def _outputs(out_dir: Path, rid: str) -> list[Path]:
    """Every file a stage wrote for ``rid`` (file names carry the id), markers excluded."""
    return sorted(p for p in out_dir.rglob(f"*{rid}*")
                  if p.is_file() and p.parent.name != "done" and not p.name.startswith("."))


def _deidentify(rid: str, data_dir: Path, out: Path, p: Params) -> dict:
    from tasks.deidentify import RecordingInput, deidentify_recording
    from tasks.ingest import source_path
    from tasks.schema import read_table

    ingest_dir = stage_dir(data_dir, "ingest")
    manifest = {r["recording_id"]: r for r in read_table("manifest", ingest_dir / "manifest.parquet").to_pylist()}
    return deidentify_recording(RecordingInput(rid, source_path(ingest_dir, rid), manifest[rid]["duration_s"]), out,
                                p.deidentify)


def _downsample(rid: str, data_dir: Path, out: Path, p: Params) -> dict:
    from tasks.downsample import downsample_recording

    frames = downsample_recording(rid, stage_dir(data_dir, "deidentify") / "videos" / f"{rid}.mp4", out, p.downsample)
    return {"recording_id": rid, "n_frames": frames.num_rows}


def _window(rid: str, data_dir: Path, out: Path, p: Params) -> dict:
    from tasks.window import window_one

    rows = window_one(rid, stage_dir(data_dir, "downsample") / "frames" / f"{rid}.parquet",
                      _durations(data_dir)[rid], out, p.window)
    return {"recording_id": rid, "n_windows": len(rows)}


def _enhance(module: str, func: str):
    def work(rid: str, data_dir: Path, out: Path, p: Params) -> dict:
        import importlib

        stage = module.rsplit(".", 1)[1]
        return getattr(importlib.import_module(module), func)(rid, data_dir, out, getattr(p, stage))

    return work


def _query(rid: str, data_dir: Path, out: Path, p: Params) -> dict:
    from tasks.query import query_recording

    return query_recording(rid, data_dir, out, p.query, backends=_query_backends(p))


_BACKENDS: dict[str, dict] = {}  # loaded models, per process (a worker or the flow process)


def _query_backends(p: Params) -> dict:
    from tasks.query import make_backend

    key = json.dumps(to_dict(p.query), sort_keys=True)
    if key not in _BACKENDS:
        _BACKENDS.clear()
        _BACKENDS[key] = {"vision": make_backend(p.query.vision, p.query), "audio": make_backend(p.query.audio, p.query)}
    return _BACKENDS[key]


def _query_preflight(p: Params) -> list[str]:
    from tasks.query import preflight

    return preflight(p.query)


def _query_identity(p: Params) -> str:
    from tasks.query import model_fingerprint

    return model_fingerprint(p.query)


def _local_query(p: Params) -> bool:
    return "local" in (p.query.vision.backend, p.query.audio.backend)


def _never(p: Params) -> bool:
    return False


@dataclass(frozen=True)
class StageSpec:
    """How one per-recording stage finds its recordings, hashes its inputs and runs."""

    name: str
    inputs: tuple[str, ...]  # files under the data dir ("{rid}" = the recording), content-hashed into the key
    after: str  # recordings come from this stage's outputs
    work: Callable[[str, Path, Path, Params], dict]
    # Extra cache-key material from params (e.g. the identity of the model files a path points to).
    identity: Callable[[Params], str] | None = None
    # Checked once before any recording runs; returns lines to print (raises ConfigError).
    preflight: Callable[[Params], list[str]] | None = None
    # Run recordings one by one in the flow process (a model loaded once, e.g. on one GPU).
    in_process: Callable[[Params], bool] = _never


WINDOWS = "04_window/windows/{rid}.parquet"
SPECS: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("deidentify", (), "ingest", _deidentify),
    StageSpec("downsample", ("02_deidentify/videos/{rid}.mp4",), "deidentify", _downsample),
    StageSpec("window", ("03_downsample/frames/{rid}.parquet",), "deidentify", _window),
    StageSpec("face_crop", ("02_deidentify/boxes/{rid}.parquet", "03_downsample/videos/{rid}.mp4",
                            "03_downsample/frames/{rid}.parquet", WINDOWS), "window",
              _enhance("tasks.face_crop", "face_crop_recording")),
    StageSpec("pose", ("02_deidentify/boxes/{rid}.parquet", "03_downsample/videos/{rid}.mp4",
                       "03_downsample/frames/{rid}.parquet", WINDOWS), "window",
              _enhance("tasks.pose", "pose_recording")),
    StageSpec("audio", ("02_deidentify/videos/{rid}.mp4", WINDOWS), "window",
              _enhance("tasks.audio", "audio_recording")),
    StageSpec("transcript", ("07_audio/quality/{rid}.parquet", "07_audio/audio/{rid}_raw.wav",
                             "07_audio/audio/{rid}_denoised.wav", WINDOWS), "audio",
              _enhance("tasks.transcript", "transcript_recording")),
    StageSpec("query", ("03_downsample/videos/{rid}.mp4", "03_downsample/frames/{rid}.parquet", WINDOWS,
                        "05_face_crop/done/{rid}.json", "06_pose/done/{rid}.json", "07_audio/done/{rid}.json",
                        "08_transcript/done/{rid}.json"), "window", _query,
              identity=_query_identity, preflight=_query_preflight, in_process=_local_query),
)}


def _durations(data_dir: Path) -> dict[str, float]:
    from tasks.schema import read_table

    rows = read_table("deidentified", stage_dir(data_dir, "deidentify") / "deidentified.parquet").to_pylist()
    return {r["recording_id"]: r["duration_s"] for r in rows if r["status"] == "ok"}


def run_recording(stage: str, recording_id: str, data_dir: str, params: dict, cache_key: str) -> dict:
    """Body of every per-recording task (runs in a worker process)."""
    out = stage_dir(Path(data_dir), stage)
    return _run_marked(out, recording_id, cache_key, params,
                       lambda p: SPECS[stage].work(recording_id, Path(data_dir), out, p),
                       lambda: _outputs(out, recording_id), f"{stage} failed for {recording_id}")


def _run_marked(out: Path, marker: str, cache_key: str, params: dict, work: Callable[[Params], dict],
                outputs: Callable[[], list[Path]], failure: str) -> dict:
    """The marker's result if its files are intact, else ``work`` then a new marker over ``outputs()``."""
    done = marker_result(out, marker, cache_key)
    if done is not None:
        return done
    try:
        # mediapipe/TFLite graph threads write absl lines to fd 2 while models start and first run;
        # they are kept out of the console and shown only if the work fails (or with --debug)
        with native_stderr_captured(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            result = work(build(Params, params, prefix=""))
    except Exception as exc:  # noqa: BLE001 - re-raised without paths so the Prefect log/UI never shows one
        raise RecordingFailed(f"{failure}: {type(exc).__name__}: {scrub_paths(str(exc))}") from None
    notes = _own_warnings(caught)
    if notes:  # the run summary prints them once, as notes (a stage's own warnings are expected advice)
        result = {**result, "notes": notes}
    write_marker(out, marker, cache_key, outputs(), result)
    return result


def _own_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Messages of warnings the project's own code raised (``tasks.*`` categories); others are re-issued."""
    notes: list[str] = []
    for w in caught:
        if w.category.__module__.startswith("tasks."):
            text = scrub_paths(" ".join(str(w.message).split()))
            if text not in notes:
                notes.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return notes


class RecordingFailed(RuntimeError):
    """A per-recording task raised; the message carries no file path."""


_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s'\"]+")


def scrub_paths(text: str) -> str:
    """Replace anything that looks like a file path with ``<path>``."""
    return _PATHLIKE.sub("<path>", text)


def _key_from_params(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["cache_key"]


def _make_task(stage: str, *, cohort: bool = False):
    if cohort:
        def body(data_dir: str, params: dict, cache_key: str) -> dict:
            return run_cohort(stage, data_dir, params, cache_key)
    else:
        def body(recording_id: str, data_dir: str, params: dict, cache_key: str) -> dict:
            return run_recording(stage, recording_id, data_dir, params, cache_key)

    body.__name__ = body.__qualname__ = f"{stage}_task"
    body.__module__ = __name__
    return task(name=stage, task_run_name=stage if cohort else f"{stage}-{{recording_id}}",
                cache_key_fn=_key_from_params, persist_result=True, retries=0)(body)


TASKS = {name: _make_task(name) for name in SPECS}


# ---- stage planning ------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One per-recording unit of a stage with its cache key."""

    recording_id: str
    cache_key: str


def recordings_after(stage: str, data_dir: Path) -> list[str]:
    """Recordings that came through ``stage`` successfully."""
    from tasks.schema import read_table

    if stage == "ingest":
        return read_table("manifest", stage_dir(data_dir, "ingest") / "manifest.parquet")["recording_id"].to_pylist()
    if stage == "deidentify":
        return sorted(_durations(data_dir))
    return sorted(marker_rids(stage_dir(data_dir, stage)))


def marker_rids(out_dir: Path) -> list[str]:
    return [p.stem for p in (out_dir / "done").glob("*.json")]


def input_hash(stage: str, data_dir: Path, rid: str) -> str:
    """Content hash of a recording's inputs to ``stage`` (raw content hash for deidentify)."""
    from tasks.schema import read_table

    if stage == "deidentify":
        rows = read_table("manifest", stage_dir(data_dir, "ingest") / "manifest.parquet").to_pylist()
        return next(r["content_sha256"] for r in rows if r["recording_id"] == rid)
    h = hashlib.sha256()
    for pattern in SPECS[stage].inputs:
        f = data_dir / pattern.format(rid=rid)
        h.update(pattern.encode())
        h.update(file_sha256(f).encode() if f.is_file() else b"<absent>")
    return h.hexdigest()


def plan(stage: str, data_dir: Path, params: Params) -> list[Job]:
    """Recordings a stage must cover (those that passed the stage before) and their keys."""
    section = to_dict(getattr(params, stage))
    durations = _durations(data_dir) if stage != "deidentify" else {}
    spec = SPECS[stage]
    identity = spec.identity(params) if spec.identity else ""
    return [Job(rid, cache_key(stage, input_hash(stage, data_dir, rid), section, repr(durations.get(rid)), identity))
            for rid in recordings_after(spec.after, data_dir)]


def prepare(stage: str, data_dir: Path) -> Path:
    """Create the stage folder and remove temp files left by killed writers."""
    out = stage_dir(data_dir, stage)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    return out


# ---- whole-cohort stages ------------------------------------------------------------------

COHORT_MARKER = "_cohort"


def _cohort_inputs(stage: str, data_dir: Path, params: Params) -> str:
    """Content hash of what a whole-cohort stage reads: ``INPUTS`` under the data dir, plus
    ``external_inputs(<its params section>)`` (e.g. annotation tables named in params)."""
    import importlib

    mod = importlib.import_module(f"tasks.{stage}")
    external = mod.external_inputs(getattr(params, stage)) if hasattr(mod, "external_inputs") else ()
    h = hashlib.sha256()
    # external paths are read as given (relative to the working directory), like the stage reads them
    inside = tuple(mod.INPUTS) + tuple(getattr(mod, "OPTIONAL", ()))  # an absent optional input hashes as such
    for root in [data_dir / rel for rel in dict.fromkeys(inside)] + [Path(p) for p in external]:
        files = sorted(p for p in root.rglob("*") if p.is_file() and "done" not in p.relative_to(root).parts) \
            if root.is_dir() else [root]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() if f != root else str(root.name).encode())
            h.update(file_sha256(f).encode() if f.is_file() else b"<absent>")
    return h.hexdigest()


def cohort_key(stage: str, data_dir: Path, params: Params) -> str:
    """Key of a whole-cohort stage: its inputs' contents + the params sections it reads + its code.

    ``tasks.<stage>.PARAMS`` names those sections (default: the stage's own).
    """
    import importlib

    sections = getattr(importlib.import_module(f"tasks.{stage}"), "PARAMS", (stage,))
    return cache_key(stage, _cohort_inputs(stage, data_dir, params),
                     {k: to_dict(getattr(params, k)) for k in sections})


def _cohort_outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and p.parent.name != "done" and not p.name.startswith("."))


def run_cohort(stage: str, data_dir: str, params: dict, cache_key: str) -> dict:
    """Body of a whole-cohort task: reuse intact outputs, else ``tasks.<stage>.run``."""
    import importlib

    out = stage_dir(Path(data_dir), stage)
    return _run_marked(out, COHORT_MARKER, cache_key, params,
                       lambda p: importlib.import_module(f"tasks.{stage}").run(Path(data_dir), out, p),
                       lambda: _cohort_outputs(out), f"{stage} failed")


COHORT_TASKS = {name: _make_task(name, cohort=True) for name in COHORT}
