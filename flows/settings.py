"""Prefect configuration for this project; call ``configure()`` before importing prefect.

All Prefect state lives under ``.semioflow/`` in the project (mode 0700):
the SQLite database, result storage (small per-recording summaries, never
media or names) and the local server's pid/log.  Analytics are off.  When a
local server started by ``semioflow server start`` is up, flows report to
it (the UI shows them); otherwise Prefect runs an ephemeral server.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path

from tasks import quiet

STATE_DIR = Path(".semioflow")
SERVER_FILE = "server.json"
DEFAULT_PORT = 4200
HEALTH_TIMEOUT_S = 2.0


def state_dir(root: Path | None = None) -> Path:
    """``.semioflow/`` under ``root`` (default: the working directory), created 0700."""
    d = (root or Path.cwd()) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


INBOXES = "inboxes"  # under .semioflow/: one owner-only file per inbox folder given with --inbox


def inbox_ref(path: Path, root: Path | None = None) -> str:
    """An opaque name for an inbox folder given on the command line (``--inbox``).

    Flows and deployments take this name, never the path: Prefect keeps flow-run and deployment
    parameters in its database and shows them in the UI, and an inbox path often names a ward or a
    study.  The name is a keyed hash of the path (site id key); the path is in
    ``.semioflow/inboxes/<name>`` (0600).  ``inbox_path`` reads it back.
    """
    import hashlib
    import hmac

    from tasks.atomic import atomic_write_text
    from tasks.identity import load_id_key

    resolved = str(Path(path).resolve())
    ref = "inbox-" + hmac.new(load_id_key(), b"inbox:" + resolved.encode(), hashlib.sha256).hexdigest()[:12]
    d = state_dir(root) / INBOXES
    d.mkdir(mode=0o700, exist_ok=True)
    atomic_write_text(d / ref, resolved)
    os.chmod(d / ref, 0o600)
    return ref


def inbox_path(ref: str | None, root: Path | None = None) -> str | None:
    """The inbox folder an ``inbox_ref`` name stands for (None for None)."""
    if ref is None:
        return None
    f = state_dir(root) / INBOXES / ref
    if "/" in ref or not f.is_file():
        from tasks.errors import SemioflowError

        raise SemioflowError(f"unknown inbox name {ref!r}: give the folder again with --inbox")
    return f.read_text(encoding="utf-8")


RUN_NAME_TIME = "%Y-%m-%dT%H-%M-%S"  # UTC; a run name carries no colon (the UI's search and URLs take it whole)


def run_name(command: str, stage: str = "all", *, now=None) -> str:
    """A flow run's name, ``<command>-<stage>-<date>``: ``stage-window-2026-12-07T23-40-01``,
    ``run-all-…``, ``demo-all-…``, ``ingest-…`` (the command is the stage).

    Prefect otherwise names every run of a flow at random, and one stage's run cannot be found among the
    ``semioflow-stage`` runs.  Only the command and the stage go in: never a path or a parameter value.
    """
    import datetime as dt

    when = (now or dt.datetime.now(dt.timezone.utc)).strftime(RUN_NAME_TIME)
    return "-".join([command] + ([stage] if stage != command else []) + [when])


def prefect_home(root: Path | None = None) -> Path:
    home = state_dir(root) / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    return home


def server_url(root: Path | None = None) -> str | None:
    """API URL of the project's local server if it answers, else None."""
    f = state_dir(root) / SERVER_FILE
    if not f.is_file():
        return None
    try:
        url = json.loads(f.read_text())["api_url"]
    except (ValueError, KeyError):
        return None
    return url if healthy(url) else None


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=HEALTH_TIMEOUT_S) as r:
            return r.status == 200
    except OSError:
        return False


def configure(root: Path | None = None, *, database_url: str | None = None) -> dict[str, str]:
    """Set Prefect's environment for this project; returns what was set.

    Must run before ``import prefect`` (settings are read at import).  An
    explicit ``PREFECT_API_URL`` in the environment is respected.
    """
    home = prefect_home(root)
    storage = home / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    os.chmod(storage, 0o700)
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(storage),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if not quiet.debug():
        # the console shows one progress line per stage (flows.progress) and, on failure, one error line
        # with the first cause (flows.pipeline); Prefect's per-task lines, failed tasks' tracebacks
        # included, still reach the API, so the UI has them (``--debug`` brings them back to the console)
        env["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
    quiet.quiet_environment()  # mediapipe/TFLite/transformers are chatty on stderr (a no-op with --debug)
    if "PREFECT_API_URL" not in os.environ:
        url = server_url(root)
        if url:
            env["PREFECT_API_URL"] = url
    for k, v in env.items():
        if k == "PREFECT_API_DATABASE_CONNECTION_URL" and database_url is None and k in os.environ:
            continue  # a PostgreSQL URL set by the user wins over the SQLite default
        os.environ[k] = v
    return env


@contextlib.contextmanager
def api_session():
    """Make the flow and its worker processes talk to one Prefect API.

    With the project's server up (or ``PREFECT_API_URL`` set) that is used.
    Otherwise one temporary server is started for this command and shared by
    the worker processes; left alone, every worker would start its own
    ephemeral server (~8 s each) over the same SQLite file.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    srv = _temporary_server()
    srv.start(timeout=120)
    os.environ["PREFECT_API_URL"] = srv.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: srv.api_url}):
            yield srv.api_url
    finally:
        # Send queued logs/events while the server still listens; otherwise
        # they retry against a dead port at exit for about a minute.
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=30, at_exit=False)
        os.environ.pop("PREFECT_API_URL", None)
        srv.stop()


PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent dies (Linux)


def _die_with_parent() -> None:
    """In a child between fork and exec: SIGTERM it when the process that started it dies (even SIGKILLed)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the server then outlives a killed run, as before
        pass


def _temporary_server():
    """Prefect's temporary API server, started so that it ends with this process.

    ``SubprocessASGIServer`` has no hook for the child's start-up, so its one
    ``subprocess.Popen`` call gets ``preexec_fn=_die_with_parent`` (prctl only: safe
    between fork and exec).  Called from the main thread, whose exit is the process's.
    """
    import subprocess
    import types
    from functools import partial

    import prefect.server.api.server as server_module

    class Server(server_module.SubprocessASGIServer):
        def _run_uvicorn_command(self):
            real = server_module.subprocess
            server_module.subprocess = types.SimpleNamespace(
                Popen=partial(subprocess.Popen, preexec_fn=_die_with_parent))
            try:
                return super()._run_uvicorn_command()
            finally:
                server_module.subprocess = real

    return Server()
