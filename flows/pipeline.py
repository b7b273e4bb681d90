"""Flows over the stage registry, plus the process-pool task runner.

``pipeline`` runs every stage of ``tasks.registry`` in order: ingest (always
runs), the per-recording stages (one task run per recording,
``<stage>-<recording_id>``, on a process pool of ``base.workers``, or on the
Dask cluster of ``base.runner: dask``, see ``flows.cluster``), then the
cohort stages (one task run each).  ``stage_flow`` runs a single stage (what
``dvc.yaml`` calls through ``semioflow stage NAME``).  A recording whose task
fails does not stop its siblings; the stage then ends with one clear error
naming the failed recording ids and the first cause.  Stage summaries are
published as Prefect artifacts.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ProcessPoolTaskRunner

from flows.lock import worker_guard
from flows.progress import stage_line
from flows.settings import inbox_path
from flows.stages import ingest_task, stage_task
from tasks import registry
from tasks.atomic import remove_stale_partials
from tasks.cache import (COHORT_MARKER, cohort_job, collect, intact_key, marker_key, marker_result, prepare,
                         recording_jobs, scrub_paths)
from tasks.contract import Stage
from tasks.errors import SemioflowError, did_you_mean
from tasks.params import Params, load_params, to_dict


class StageFailed(SemioflowError):
    """Some (or all) recordings of a stage raised; the others finished."""


@dataclass
class StageReport:
    stage: str
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # failed, their last good result kept (inputs changed since)
    cached: int = 0
    rebuilt: int = 0  # cache entries whose files had gone (e.g. removed by DVC)
    results: list[dict] = field(default_factory=list)
    summary: str = ""

    def line(self) -> str:
        if self.summary:
            return self.summary
        return (f"{self.stage}: {len(self.done)} recording(s) ok ({self.cached} cached, {self.rebuilt} rebuilt "
                f"from a stale cache entry), {len(self.failed)} failed"
                + (f", {len(self.stale)} stale (their last good result kept)" if self.stale else ""))

    def failure(self, cause: str) -> str:
        """The stage's error: how many of its recordings failed, which, why, and what was kept."""
        total = len(self.done) + len(self.failed)
        what = (f"all {total} recordings" if len(self.failed) == total > 1 else
                f"its only recording" if total == 1 else f"{len(self.failed)} of {total} recordings")
        kept = (f"; {len(self.stale)} of them keep their last good result, marked stale" if self.stale else "")
        others = "" if len(self.failed) == total else "the others finished; "
        return (f"{self.stage} failed for {what}: {', '.join(self.failed)}; first cause: {cause}{kept} "
                f"({others}every cause is in the Prefect UI)")


def _run_ingest(data_dir: Path, params: Params, inbox: str | None) -> StageReport:
    prepare(data_dir, "ingest")
    with stage_line("ingest", 1) as tick:
        res = ingest_task(inbox, str(data_dir), to_dict(params))
        tick()
    create_table_artifact(key="ingest", table=[{k: v for k, v in res.items() if k != "quarantined"}],
                          description=res["line"])
    return StageReport("ingest", results=[res], summary=res["line"])


def run_stage(stage: str, data_dir: Path, params: Params, *, inbox: str | None = None) -> StageReport:
    """Run one stage inside the current flow; returns its report (its wall-clock seconds go to STAGE_SECONDS)."""
    t0 = time.monotonic()
    declared = registry.stage(stage)
    try:
        if declared.kind == "source":
            return _run_ingest(data_dir, params, inbox)
        if declared.kind == "cohort":
            return _run_cohort(declared, data_dir, params)
        return _run_per_recording(declared, data_dir, params)
    finally:
        STAGE_SECONDS[stage] = time.monotonic() - t0


# Wall-clock seconds of each stage run in this process, failed ones too (the flow runs in the CLI's
# process, which writes them to .semioflow/last-run.json).
STAGE_SECONDS: dict[str, float] = {}


def _task_data_dir(data_dir: Path, params: Params) -> str:
    """The data dir as task runs get it: absolute on a cluster (a worker's working directory is its own)."""
    return str(Path(data_dir).resolve()) if params.base.runner == "dask" else str(data_dir)


def _placement(declared: Stage, params: Params):
    """Where a stage's task runs go: (a factory of the Dask resources context, whether they must be submitted
    to the runner).

    On Dask every stage is submitted, model stages with the resources their
    device asks for (``flows.cluster.resources_for``: fails at once when a
    GPU is required and no worker has one).
    """
    if params.base.runner != "dask":
        return nullcontext, False
    from flows.cluster import resources_for
    from flows.dask_runner import placed

    device = declared.device(params) if declared.device else None
    resources = resources_for(device, params.base.dask_address)
    return (lambda: placed(resources)), True


def _run_per_recording(declared: Stage, data_dir: Path, params: Params) -> StageReport:
    stage = declared.name
    for line in declared.preflight(params) if declared.preflight else []:
        print(f"{stage}: {line}")
    out = prepare(data_dir, stage)
    jobs = recording_jobs(declared, data_dir, params)
    pdict = to_dict(params)
    report = StageReport(stage)
    kw = dict(data_dir=_task_data_dir(data_dir, params), params=pdict, data_token=RUN_TOKEN.get(str(data_dir)))
    futures, fresh, finished = [], [], []
    placement, remote = _placement(declared, params) if jobs else (nullcontext, False)
    # one model in the flow process (e.g. on this machine's GPU), unless a cluster runs it
    in_process = (declared.in_process(params) if declared.in_process else False) and not remote
    task = stage_task(stage)
    with stage_line(stage, len(jobs)) as tick:
        def ran(job, state) -> None:
            finished.append((job, state))
            ok = state.is_completed()
            # a failed recording whose last good result is intact keeps it (tasks.cache.last_good_kept): stale
            tick(cached=state.name == "Cached", failed=not ok, stale=not ok and intact_key(out, job.marker) is not None)

        for job in jobs:
            # Files behind a cache entry gone (e.g. DVC removed them)? Re-run and re-cache.
            if marker_result(out, job.marker, job.cache_key) is None:
                report.rebuilt += marker_key(out, job.marker) == job.cache_key
                t = task.with_options(refresh_cache=True)
                if in_process:  # one model in this process (e.g. on the GPU), recordings in turn
                    ran(job, t(recording_id=job.marker, cache_key=job.cache_key, return_state=True, **kw))
                else:
                    with placement():
                        futures.append((job, t.submit(recording_id=job.marker, cache_key=job.cache_key, **kw)))
            else:
                fresh.append(job)
        for job in fresh:
            # Finished recordings are cache hits: checked in this process rather than
            # shipped to a worker (that round trip dominated a nightly rerun's time).
            ran(job, task(recording_id=job.marker, cache_key=job.cache_key, return_state=True, **kw))
        for job, fut in futures:
            fut.wait()
            ran(job, fut.state)
    if remote and not all(state.is_completed() for _, state in finished):
        _check_scheduler(params, stage)
    causes = []
    for job, state in sorted(finished, key=lambda js: js[0].marker):
        if state.is_completed():
            report.cached += state.name == "Cached"
            report.done.append(job.marker)
            report.results.append(state.result())
        else:
            report.failed.append(job.marker)
            causes.append(_cause(state))
    # a writer killed mid-task (a lost Dask worker, whose task ran again elsewhere) left its temp file; every
    # task of the stage has ended, so nothing is being written now
    remove_stale_partials(out)
    # the tables from every complete result on disk: a failed recording keeps its last good one
    report.stale = collect(declared, out, jobs, current=report.done).stale
    # artifact keys allow lowercase letters, digits and dashes only
    create_table_artifact(key=stage.replace("_", "-"), table=report.results or [{"recordings": 0}],
                          description=report.line())
    if report.failed:
        raise StageFailed(report.failure(causes[0]))
    return report


def _check_scheduler(params: Params, stage: str) -> None:
    """Task runs failed on the cluster: one clear error if the scheduler is gone (its orphaned workers may
    still be writing, so the stage's partial files are left for the rerun to sweep)."""
    from flows.cluster import check_scheduler

    check_scheduler(params.base.dask_address, stage)


def _cause(state) -> str:
    """A failed task's error as one line (task errors are already path-scrubbed, see tasks.cache)."""
    exc = state.result(raise_on_failure=False)
    text = " ".join(str(exc).split()) if isinstance(exc, BaseException) else ""
    return scrub_paths(text) or state.message or state.name


def _run_cohort(declared: Stage, data_dir: Path, params: Params) -> StageReport:
    """A whole-cohort stage: one task run, cached on its inputs' contents + params + code."""
    stage = declared.name
    out = prepare(data_dir, stage)
    key = cohort_job(declared, data_dir, params).cache_key
    t = stage_task(stage)
    rebuilt = marker_result(out, COHORT_MARKER, key) is None and marker_key(out, COHORT_MARKER) == key
    if marker_result(out, COHORT_MARKER, key) is None:
        t = t.with_options(refresh_cache=True)
    kw = dict(data_dir=_task_data_dir(data_dir, params), params=to_dict(params), cache_key=key,
              data_token=RUN_TOKEN.get(str(data_dir)))
    placement, remote = _placement(declared, params)
    with stage_line(stage, 1) as tick:
        if remote:  # on a cluster the stage runs on a worker (a model stage on a GPU worker)
            with placement():
                fut = t.submit(**kw)
            fut.wait()
            state = fut.state
        else:
            state = t(**kw, return_state=True)
        tick(cached=state.name == "Cached", failed=not state.is_completed())
    if remote and not state.is_completed():
        _check_scheduler(params, stage)
    remove_stale_partials(out)  # as for a per-recording stage
    if not state.is_completed():
        raise StageFailed(_cause(state) or f"{stage} failed (see the Prefect UI)")
    result = state.result()
    cached = state.name == "Cached"
    line = result.get("line") or f"{stage}: done" + (" (cached)" if cached else "") + (
        " (rebuilt from a stale cache entry)" if rebuilt else "")
    for note in ([result["banner"]] if result.get("banner") else []) + list(result.get("notes") or []):
        line += f" -- {note}"
    create_table_artifact(key=stage.replace("_", "-"), table=[_flat(result)], description=line)
    return StageReport(stage, done=["cohort"], cached=int(cached), rebuilt=int(rebuilt), results=[result],
                       summary=line)


def _flat(result: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in result.items()}


def _runner(params: Params, data_dir: str):
    if params.base.runner == "dask":
        from flows.cluster import dask_runner

        return dask_runner(params)
    # workers exit when this process dies, and a rerun waits for them (flows.lock.worker_guard)
    return ProcessPoolTaskRunner(max_workers=max(1, params.base.workers), initializer=worker_guard,
                                 initargs=(str(data_dir),))


# data dir -> this run's shared-storage token (flows.cluster): every task checks it sees the same data dir
RUN_TOKEN: dict[str, str] = {}


@flow(name="semioflow", log_prints=True)
def pipeline(data_dir: str = "data", params_path: str = "params.yaml", inbox_ref: str | None = None) -> list[str]:
    """All stages in order; returns one summary line per stage.  ``inbox_ref`` names an ``--inbox`` folder
    (``flows.settings.inbox_ref``): a raw path must not be a flow parameter, which Prefect stores."""
    params = load_params(params_path)
    inbox = inbox_path(inbox_ref)
    _token(data_dir)
    lines = []
    for stage in registry.names():
        lines.append(run_stage(stage, Path(data_dir), params, inbox=inbox).line())
    return lines


@flow(name="semioflow-stage", log_prints=True)
def stage_flow(stage: str, data_dir: str = "data", params_path: str = "params.yaml",
               inbox_ref: str | None = None) -> str:
    """One stage (what dvc.yaml runs)."""
    inbox = inbox_path(inbox_ref)
    if stage not in registry.names():
        raise SemioflowError(f"unknown stage {stage!r}{did_you_mean(stage, registry.names())} "
                             f"(stages: {', '.join(registry.names())})")
    _token(data_dir)
    return run_stage(stage, Path(data_dir), load_params(params_path), inbox=inbox).line()


def _token(data_dir: str) -> None:
    from flows.cluster import write_token

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    RUN_TOKEN[str(Path(data_dir))] = write_token(Path(data_dir))  # keyed as the stages see it: str(Path(...))


def with_runner(f, params: Params, data_dir: str | Path = "data"):
    """The flow with its task runner: a process pool sized by ``base.workers`` whose workers die with this
    process, or (``base.runner: dask``) the Dask cluster at ``base.dask_address``."""
    return f.with_options(task_runner=_runner(params, str(data_dir)))
