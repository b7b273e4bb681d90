"""Prefect tasks over the stage contract: one task per stage, one task run per recording (or per cohort).

The work, the cache keys and the markers are Prefect-free (``tasks.cache``);
a task's cache key is the job's key, so Prefect's cache and the markers agree.
Task results hold ids and counts only: no media, no names, no paths.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task

from flows.cluster import TASKS_RUN, check_shared_data, restore_malloc_thresholds
from tasks import layout, registry
from tasks.cache import COHORT_MARKER, Job, run_job
from tasks.params import Params, build


def _key_from_params(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["cache_key"]


def _run(stage: str, data_dir: str, job: Job, params: dict, data_token: str | None) -> dict:
    check_shared_data(data_dir, data_token)  # a Dask worker without the shared data dir stops here
    restore_malloc_thresholds()  # a Dask nanny's malloc setting made deidentify 36 % slower
    TASKS_RUN[stage] += 1
    return run_job(registry.stage(stage), Path(data_dir), job, params)


def _recording_body(stage: str):
    def body(recording_id: str, data_dir: str, params: dict, cache_key: str, data_token: str | None = None) -> dict:
        return _run(stage, data_dir, Job(recording_id, cache_key), params, data_token)

    return body


def _cohort_body(stage: str):
    def body(data_dir: str, params: dict, cache_key: str, data_token: str | None = None) -> dict:
        return _run(stage, data_dir, Job(COHORT_MARKER, cache_key), params, data_token)

    return body


@lru_cache(maxsize=None)
def stage_task(stage: str):
    """The Prefect task of a recording or cohort stage (task name = stage name)."""
    per_recording = registry.stage(stage).kind == "recording"
    body = (_recording_body if per_recording else _cohort_body)(stage)
    body.__name__ = body.__qualname__ = f"{stage}_task"
    body.__module__ = __name__
    return task(name=stage, task_run_name=f"{stage}-{{recording_id}}" if per_recording else stage,
                cache_key_fn=_key_from_params, persist_result=True, retries=0)(body)


@task(name="ingest", persist_result=False, cache_policy=None)
def ingest_task(inbox: str | None, data_dir: str, params: dict) -> dict:
    """Scan the inbox (always runs: finding new files is its job)."""
    return registry.stage("ingest").run(Path(data_dir), layout.stage_dir(data_dir, "ingest"),
                                        build(Params, params, prefix=""), inbox)
