"""prefect-dask's ``DaskTaskRunner`` that also asks the scheduler for Dask resources (a GPU) per task run.

prefect-dask's ``submit`` passes no resources, and distributed's
``Client.submit`` does not read ``dask.annotate()``; this runner adds the
resources of ``placed`` to each submission.  A module of its
own (not a class made inside a function) so that a task's serialized
context can name the runner's class by reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

_RESOURCES: ContextVar[dict[str, float] | None] = ContextVar("semioflow_dask_resources", default=None)


@contextmanager
def placed(resources: dict[str, float]) -> Iterator[None]:
    """Task runs submitted in the block ask the Dask scheduler for ``resources`` (e.g. ``{"GPU": 1}``)."""
    token = _RESOURCES.set(resources or None)
    try:
        yield
    finally:
        _RESOURCES.reset(token)


def current_resources() -> dict[str, float] | None:
    """The resources of the enclosing ``placed`` block (None outside one)."""
    return _RESOURCES.get()


class ResourceDaskTaskRunner(DaskTaskRunner):
    """``DaskTaskRunner`` whose submissions carry ``current_resources()`` (none: the parent's submit)."""

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        resources = current_resources()
        if not resources:
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        future = self.client.submit(task, parameters=self._optimize_futures(parameters),
                                    wait_for=self._optimize_futures(wait_for) if wait_for else None,
                                    dependencies=dependencies, return_type="state", resources=resources)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)
