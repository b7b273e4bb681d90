"""The one cache: keys from contents, params and code; markers that say a run's files are complete.

A key is a SHA-256 over a stage run's inputs (file contents, never paths or
times), the params sections it reads and a hash of its code
(``tasks.codehash``: its module and every ``tasks`` module it imports).

Prefect's cache and DVC's must not fight: DVC deletes a stage's outputs
before it runs it, after which a Prefect cache hit would write nothing.  So
every run leaves a marker (``done/<id>.json``, ``done/_cohort.json`` for a
cohort stage: the key, the SHA-256 of each output file, the small result).
``run_marked`` returns the marker's result without recomputing when the key
matches and every file is intact, else runs the work and writes a new marker
last.  A recording's run that raises leaves its last good outputs as they were
(``last_good_kept``); the stage tables are rebuilt from every complete result on
disk (``collect``), those kept from an earlier run marked stale when their key
differs from this run's.  Prefect-free: ``flows/`` wraps these in tasks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tasks import layout
from tasks.atomic import atomic_write_text, remove_stale_partials
from tasks.codehash import code_hash
from tasks.cohorts import members
from tasks.errors import mask_secrets
from tasks.contract import STATE, Stage
from tasks.identity import sha256_file
from tasks.params import Params, build, to_dict
from tasks.quiet import native_stderr_captured
from tasks.schema import SchemaError, read_table
from tasks.threads import pin

COHORT_MARKER = "_cohort"


def cache_key(stage: str, input_hash: str, params: dict, *extra: str) -> str:
    """Key of one run of ``stage``."""
    blob = json.dumps({"stage": stage, "input": input_hash, "params": params, "code": code_hash(f"tasks.{stage}"),
                       "extra": list(extra)}, sort_keys=True)
    return f"{stage}-" + hashlib.sha256(blob.encode()).hexdigest()


# ---- markers ------------------------------------------------------------------------------


def _marker_path(out_dir: Path, marker: str) -> Path:
    return out_dir / "done" / f"{marker}.json"


def marker_key(out_dir: Path, marker: str) -> str | None:
    """The cache key recorded for ``marker`` (whatever the state of its files)."""
    try:
        return json.loads(_marker_path(out_dir, marker).read_text()).get("key")
    except (OSError, ValueError):
        return None


def _read_marker(out_dir: Path, marker: str) -> dict | None:
    try:
        m = json.loads(_marker_path(out_dir, marker).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _files_intact(out_dir: Path, m: dict) -> bool:
    for rel, digest in m.get("files", {}).items():
        f = out_dir / rel
        if not f.is_file() or sha256_file(f) != digest:
            return False
    return True


def marker_result(out_dir: Path, marker: str, key: str) -> dict | None:
    """The stored result if the marker matches ``key`` and every output file is intact."""
    m = _read_marker(out_dir, marker)
    if m is None or m.get("key") != key or not _files_intact(out_dir, m):
        return None
    return m.get("result")


def intact_key(out_dir: Path, marker: str) -> str | None:
    """The key of ``marker``'s last complete result if every file its marker lists is intact (whatever the
    key), else None: what a failed rerun leaves in place."""
    m = _read_marker(out_dir, marker)
    return m.get("key") if m is not None and _files_intact(out_dir, m) else None


def write_marker(out_dir: Path, marker: str, key: str, files: list[Path], result: dict) -> None:
    entries = {f.relative_to(out_dir).as_posix(): sha256_file(f) for f in files if f.is_file()}
    atomic_write_text(_marker_path(out_dir, marker), json.dumps({"key": key, "files": entries, "result": result},
                                                               sort_keys=True))


def recorded_digest(out_dir: Path, rel: str) -> str | None:
    """The SHA-256 a marker of ``out_dir`` recorded for output ``rel`` (relative to ``out_dir``) when the
    stage wrote it, else None.  The marker named after the file's stem (its recording) is read first."""
    done = Path(out_dir) / "done"
    stem = f"{PurePosixPath(rel).stem}.json"
    for p in sorted(done.glob("*.json"), key=lambda p: p.name != stem):
        try:
            digest = json.loads(p.read_text()).get("files", {}).get(rel)
        except (OSError, ValueError):
            continue
        if digest:
            return digest
    return None


def marker_ids(out_dir: Path) -> list[str]:
    """Recordings with a marker in ``out_dir`` (they came through the stage)."""
    return [p.stem for p in (out_dir / "done").glob("*.json") if p.stem != COHORT_MARKER]


def outputs(out_dir: Path, marker: str) -> list[Path]:
    """Files a run wrote (a recording's: names carry its id; a cohort run's: all), markers excluded."""
    pattern = "*" if marker == COHORT_MARKER else f"*{marker}*"
    found = []
    # os.walk, not Path.rglob: sibling recordings' workers create and remove folders here meanwhile (their
    # done/keep/<id>/ links), and rglob raised FileNotFoundError on one that vanished mid-walk; walk skips it
    for root, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if d != "done"]
        found += [Path(root) / f for f in files if fnmatch.fnmatchcase(f, pattern) and not f.startswith(".")]
    return sorted(p for p in found if p.is_file())


KEEP = "keep"  # done/keep/<id>/: hard links to a recording's last good outputs while it reruns


def _restore(out_dir: Path, marker: str, keep: Path, *, check: bool) -> None:
    """Put the outputs the marker lists back from ``keep`` and remove the recording's files it does not list.

    ``check``: only where the file on disk is not the one the marker recorded and the kept one is (after a
    killed run, whose marker may or may not be new)."""
    m = _read_marker(out_dir, marker) or {}
    files = m.get("files", {})
    for rel, digest in files.items():
        kept, final = keep / rel, out_dir / rel
        if not kept.is_file():
            continue
        if check and (final.is_file() and sha256_file(final) == digest or sha256_file(kept) != digest):
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(kept, final)
    for f in outputs(out_dir, marker):  # what a failed run wrote beside them: no complete result
        if f.relative_to(out_dir).as_posix() not in files:
            f.unlink(missing_ok=True)


@contextmanager
def last_good_kept(out_dir: Path, marker: str) -> Iterator[None]:
    """Run a job's work inside this: if it raises, the recording's outputs are again those of its last complete
    result (its marker's files, put back from hard links; files the failed run added removed), so a
    recording's outputs are only ever replaced by a complete, successful result.  Stages write atomically
    (``tasks.atomic``), so a hard link keeps the old content of a file the run replaces or deletes."""
    out_dir = Path(out_dir)
    keep = out_dir / "done" / KEEP / marker
    if keep.is_dir():  # left by a killed run: put back what it had replaced, unless its marker vouches for it
        _restore(out_dir, marker, keep, check=True)
    shutil.rmtree(keep, ignore_errors=True)
    m = _read_marker(out_dir, marker) or {}
    for rel in m.get("files", {}):
        src = out_dir / rel
        if src.is_file():
            dst = keep / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:  # a file system without hard links
                shutil.copy2(src, dst)
    try:
        yield
    except BaseException:
        _restore(out_dir, marker, keep, check=False)
        raise
    finally:
        shutil.rmtree(keep, ignore_errors=True)


# ---- planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One run of a stage (a recording's, or the cohort's) with its cache key."""

    marker: str  # the recording id, or COHORT_MARKER
    cache_key: str


def durations(data_dir: Path) -> dict[str, float]:
    """Recordings that passed de-identification -> their duration in seconds."""
    rows = read_table("deidentified", layout.path(data_dir, "deidentify", "deidentified.parquet")).to_pylist()
    return {r["recording_id"]: r["duration_s"] for r in rows if r["status"] == "ok"}


def _manifest(data_dir: Path) -> list[dict]:
    return read_table("manifest", layout.path(data_dir, "ingest", "manifest.parquet")).to_pylist()


def recordings_after(stage: str, data_dir: Path, cohort: str | None = None) -> list[str]:
    """Recordings (of ``cohort``; None: every cohort) that came through ``stage`` successfully."""
    if stage == "ingest":
        rids = [r["recording_id"] for r in _manifest(data_dir)]
    elif stage == "deidentify":
        rids = sorted(durations(data_dir))
    else:
        rids = sorted(marker_ids(layout.stage_dir(data_dir, stage)))
    return rids if cohort is None else members(data_dir, cohort, rids)


def _hash_files(h, roots: list[tuple[str, Path]]) -> None:
    for label, root in roots:
        files = sorted(p for p in root.rglob("*") if p.is_file() and "done" not in p.relative_to(root).parts) \
            if root.is_dir() else [root]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() if f != root else label.encode())
            h.update(sha256_file(f).encode() if f.is_file() else b"<absent>")


def _sections(stage: Stage, params: Params) -> dict[str, dict]:
    """The params sections (or single ``section.key`` values) in a stage's key, as plain values."""
    values = to_dict(params)
    return {k: values[k] if "." not in k else values[k.split(".")[0]][k.split(".")[1]] for k in stage.sections}


def recording_jobs(stage: Stage, data_dir: Path, params: Params) -> list[Job]:
    """One job per recording the stage must cover (those that came through ``stage.after``).

    A stage fed straight from the source is keyed by each recording's id (a
    keyed hash of its content); the others by the contents of their declared ``{rid}`` inputs and
    the recording's duration.
    """
    section = _sections(stage, params)
    identity = stage.identity(params) if stage.identity else ""
    rids = recordings_after(stage.after, data_dir, stage.cohort)
    if stage.after == "ingest":
        # the id is the keyed hash of the raw file's content: it names the content without publishing it
        return [Job(rid, cache_key(stage.name, rid, section, repr(None), identity)) for rid in rids]
    dur = durations(data_dir)
    jobs = []
    for rid in rids:
        h = hashlib.sha256()
        for pattern in stage.inputs:
            f = data_dir / pattern.format(rid=rid)
            h.update(pattern.encode())
            h.update(sha256_file(f).encode() if f.is_file() else b"<absent>")
        jobs.append(Job(rid, cache_key(stage.name, h.hexdigest(), section, repr(dur.get(rid)), identity)))
    return jobs


def cohort_job(stage: Stage, data_dir: Path, params: Params) -> Job:
    """The cohort run's job: its data-dir inputs' and external inputs' contents + params sections + code.

    External paths are read as given (relative to the working directory), as the stage reads them.
    """
    h = hashlib.sha256()
    # an absent optional input hashes as such
    _hash_files(h, [(Path(rel).name, data_dir / rel) for rel in stage.data_inputs]
                + [(p.name, p) for p in stage.external_paths(params)])
    return Job(COHORT_MARKER, cache_key(stage.name, h.hexdigest(), _sections(stage, params)))


def prepare(data_dir: Path, stage: str) -> Path:
    """Create the stage folder and remove temp files left by killed writers."""
    out = layout.stage_dir(data_dir, stage)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    return out


# ---- running ------------------------------------------------------------------------------


class RunFailed(RuntimeError):
    """A stage run raised; the message carries no file path."""


_PATHLIKE = re.compile(r"(?P<url>\b[a-z][a-z0-9+.-]*://[^\s/'\"?#]+)(?P<rest>[^\s'\"]*)"
                       r"|(?:[A-Za-z]:)?[/\\][^\s'\"]+")


def _path_or_url(m: re.Match) -> str:
    if m.group("url"):  # an endpoint's address stays readable; its path and query may carry anything
        return m.group("url") + ("/<path>" if m.group("rest") else "")
    return "<path>"


def scrub_paths(text: str) -> str:
    """Replace anything that looks like a file path with ``<path>`` (a URL keeps its scheme and host) and
    mask key-like strings (``tasks.errors.mask_secrets``)."""
    return _PATHLIKE.sub(_path_or_url, mask_secrets(text))


def run_job(stage: Stage, data_dir: Path, job: Job, params: dict) -> dict:
    """The job's marker result if its files are intact, else the stage's ``run`` then a new marker.

    ``params`` is the plain-dict form (what crosses process boundaries).
    """
    out = layout.stage_dir(data_dir, stage.name)
    done = marker_result(out, job.marker, job.cache_key)
    if done is not None:
        return done
    failure = f"{stage.name} failed" + ("" if job.marker == COHORT_MARKER else f" for {job.marker}")
    if job.marker != COHORT_MARKER:  # a recording that fails keeps its last good outputs
        with last_good_kept(out, job.marker):
            return _run_and_mark(stage, data_dir, out, job, params, failure)
    return _run_and_mark(stage, data_dir, out, job, params, failure)


def _run_and_mark(stage: Stage, data_dir: Path, out: Path, job: Job, params: dict, failure: str) -> dict:
    pin()  # the same numeric thread pools on every runner and machine: the same outputs (tasks.threads)
    try:
        # mediapipe/TFLite graph threads write absl lines to fd 2 while models start and first run;
        # they are kept out of the console and shown only if the work fails (or with --debug)
        with native_stderr_captured(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            p = build(Params, params, prefix="")
            result = stage.run(data_dir, out, p) if job.marker == COHORT_MARKER else \
                stage.run(job.marker, data_dir, out, p)
    except Exception as exc:  # noqa: BLE001 - re-raised without paths so the Prefect log/UI never shows one
        raise RunFailed(f"{failure}: {type(exc).__name__}: {scrub_paths(str(exc))}") from None
    notes = own_warnings(caught)
    if notes:  # the run summary prints them once, as notes (a stage's own warnings are expected advice)
        result = {**result, "notes": notes}
    write_marker(out, job.marker, job.cache_key, outputs(out, job.marker), result)
    return result


def run_local(stage: Stage, data_dir: Path, params: Params, *, workers: int = 1) -> list[dict]:
    """Every job of ``stage`` without Prefect, then its stage tables; returns the jobs' results.

    The same jobs, keys and markers as the flow (``flows/pipeline.py``), run
    here in turn or on ``workers`` spawned processes: for tests, benchmarks
    and debugging.  Failures raise (``RunFailed``) instead of letting the
    sibling recordings finish.
    """
    data_dir = Path(data_dir)
    out = prepare(data_dir, stage.name)
    if stage.kind == "source":
        return [stage.run(data_dir, out, params, None)]
    pdict = to_dict(params)
    if stage.kind == "cohort":
        return [run_job(stage, data_dir, cohort_job(stage, data_dir, params), pdict)]
    jobs = recording_jobs(stage, data_dir, params)
    results: list[dict] = []
    try:
        if workers > 1 and len(jobs) > 1:
            # spawn: forking a process that already runs torch/mediapipe threads can abort the child
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(_run_args, [(stage, data_dir, job, pdict) for job in jobs]))
        else:
            for job in jobs:
                results.append(run_job(stage, data_dir, job, pdict))
    finally:  # a failure too: the tables hold what finished, and what failed keeps its last good result
        collect(stage, out, jobs, current=[job.marker for job in jobs[:len(results)]])
    return results


@dataclass(frozen=True)
class Collected:
    """What a recording stage's tables hold after a run."""

    ids: list[str]  # recordings in the tables: each with a complete result on disk
    stale: list[str]  # of those, kept from an earlier run whose inputs differ from this run's (it failed)
    missing: list[str]  # jobs with no complete result (not in the tables)


def collect(stage: Stage, out_dir: Path, jobs: list[Job], *, current: tuple[str, ...] | list[str] = ()
            ) -> Collected:
    """Rebuild ``stage``'s tables from the complete per-recording results on disk (intact markers), not only
    this run's successes, and write ``state.json`` (counts, stale ids); returns what they hold.

    ``current``: jobs known to have an intact marker with their current key (just run or checked)."""
    out_dir = Path(out_dir)
    known = set(current)
    ids, stale, missing = [], [], []
    for job in jobs:
        key = job.cache_key if job.marker in known else intact_key(out_dir, job.marker)
        if key is None:
            missing.append(job.marker)
            continue
        if key != job.cache_key:
            if not _readable(stage, out_dir, job.marker):  # kept from an older version whose tables differ
                missing.append(job.marker)
                continue
            stale.append(job.marker)
        ids.append(job.marker)
    stage.collect(out_dir, ids)
    atomic_write_text(out_dir / STATE, json.dumps({"recordings": len(ids), "stale": sorted(stale),
                                                   "missing": sorted(missing)}, indent=2, sort_keys=True))
    return Collected(sorted(ids), sorted(stale), sorted(missing))


def _readable(stage: Stage, out_dir: Path, rid: str) -> bool:
    """Whether a kept (stale) result's per-recording tables still match today's schemas: one written by an
    older version of the code may lack a column added since, and must not break the tables of the others."""
    try:
        for t in stage.tables:
            read_table(t.schema, out_dir / t.folder / f"{rid}.parquet")
    except SchemaError:
        return False
    return True


def _run_args(args: tuple[Stage, Path, Job, dict]) -> dict:
    return run_job(*args)  # a Stage pickles by reference to its module's functions


def own_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
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

