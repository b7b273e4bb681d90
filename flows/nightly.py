"""The nightly deployment: ingest new recordings, run every stage, publish versions.

``semioflow schedule --cron "0 2 * * *"`` registers the ``semioflow-nightly/
nightly`` deployment on the project's local Prefect server and serves it
(the process must stay up, e.g. under systemd or tmux; see README).  Each
run waits for any manual run holding the data folder, processes only new
recordings (the rest are cached), then — with ``publish`` — records the
outputs in ``dvc.lock`` (``dvc commit``), pushes them to the DVC remote and
commits ``dvc.lock`` to git.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import flow
from prefect import serve as prefect_serve

from flows.lock import run_lock
from flows.pipeline import pipeline, with_runner
from flows.settings import run_name
from tasks.errors import SemioflowError
from tasks.params import load_params

DEPLOYMENT = "nightly"


def _sh(args: list[str], cwd: Path) -> str:
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SemioflowError(f"`{' '.join(args)}` failed: {tail[0]}")
    return res.stdout


def publish(project: Path) -> str:
    """dvc commit + dvc push (if a remote is set) + git commit of dvc.lock (if changed)."""
    _sh(["dvc", "commit", "--force", "--quiet"], project)
    pushed = "no DVC remote configured"
    if _sh(["dvc", "remote", "list"], project).strip():
        _sh(["dvc", "push", "--quiet"], project)
        pushed = "pushed to the DVC remote"
    committed = "dvc.lock unchanged"
    if (project / ".git").exists() and _sh(["git", "status", "--porcelain", "dvc.lock"], project).strip():
        _sh(["git", "add", "dvc.lock"], project)
        _sh(["git", "commit", "--quiet", "-m", "nightly: record data versions", "--", "dvc.lock"], project)
        committed = "dvc.lock committed"
    return f"publish: dvc.lock updated, {pushed}, {committed}"


@flow(name="semioflow-nightly", log_prints=True)
def nightly(data_dir: str, params_path: str, inbox_ref: str | None = None, publish_results: bool = True) -> list[str]:
    """One scheduled run (waits for a manual run to finish rather than failing)."""
    params = load_params(params_path)
    with run_lock(Path(data_dir), wait=True):
        f = with_runner(pipeline, params, data_dir).with_options(flow_run_name=run_name("nightly"))
        lines = f(data_dir=data_dir, params_path=params_path, inbox_ref=inbox_ref)
    if publish_results:
        lines.append(publish(Path(params_path).resolve().parent))
    for line in lines:
        print(line)
    return lines


def register_and_serve(*, cron: str, data_dir: str, params_path: str, inbox_ref: str | None, publish: bool,
                       keep_serving: bool = True) -> None:
    """Register the deployment (idempotent) and, unless ``keep_serving`` is False, serve it."""
    dep = nightly.to_deployment(
        name=DEPLOYMENT, cron=cron,
        parameters={"data_dir": data_dir, "params_path": params_path, "inbox_ref": inbox_ref,
                    "publish_results": publish},
        description="Nightly semioflow run: new recordings only, then publish data versions.",
    )
    if keep_serving:
        prefect_serve(dep)
    else:
        dep.apply()
