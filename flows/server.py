"""The project's local Prefect server (UI + API on 127.0.0.1).

State under ``.semioflow/``: ``server.json`` (pid, URLs), ``server.log``, and
the SQLite database in ``prefect/`` unless a PostgreSQL URL is given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flows import settings
from tasks.errors import SemioflowError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    api_url: str
    ui_url: str
    database: str  # "sqlite" or "postgresql"


def _info_file() -> Path:
    return settings.state_dir() / settings.SERVER_FILE


def read_info() -> ServerInfo | None:
    f = _info_file()
    if not f.is_file():
        return None
    try:
        return ServerInfo(**json.loads(f.read_text()))
    except (ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status() -> tuple[ServerInfo | None, bool]:
    """(recorded server, whether its API answers)."""
    info = read_info()
    return info, bool(info and _alive(info.pid) and settings.healthy(info.api_url))


def start(*, port: int = settings.DEFAULT_PORT, database_url: str | None = None) -> ServerInfo:
    """Start ``prefect server start`` in the background and wait until it answers."""
    info, up = status()
    if up:
        return info
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    saved = dict(os.environ)
    try:
        settings.configure(database_url=database_url)
        env.update({k: os.environ[k] for k in os.environ if k.startswith("PREFECT_")})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_UI_API_URL"] = f"http://{HOST}:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    log = open(settings.state_dir() / "server.log", "ab")
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", HOST, "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    api = f"http://{HOST}:{port}/api"
    info = ServerInfo(pid=proc.pid, api_url=api, ui_url=f"http://{HOST}:{port}",
                      database="postgresql" if database_url and "postgres" in database_url else "sqlite")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SemioflowError(f"prefect server exited with code {proc.returncode}; see .semioflow/server.log")
        if settings.healthy(api):
            from tasks.atomic import atomic_write_text

            atomic_write_text(_info_file(), json.dumps(info.__dict__), mode=0o600)
            return info
        time.sleep(0.5)
    proc.kill()
    raise SemioflowError(f"prefect server did not answer within {START_TIMEOUT_S:g} s; see .semioflow/server.log")


def stop() -> bool:
    """Stop the recorded server; returns whether one was running."""
    info = read_info()
    if info is None:
        return False
    running = _alive(info.pid)
    if running:
        try:
            os.killpg(info.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(info.pid):
            os.killpg(info.pid, signal.SIGKILL)
    _info_file().unlink(missing_ok=True)
    return running
