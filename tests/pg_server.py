"""A throwaway PostgreSQL server for tests (Debian's ``postgresql`` binaries; ``make test`` installs them
when it can, as it does Chromium): the review database and the Prefect server are tested on it.  Skips,
saying why, where no server can be started."""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from glob import glob
from pathlib import Path

import pytest
import sqlalchemy as sa

START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    cands = ([Path(found).resolve().parent] if found else []) + [Path(p).parent for p in
                                                                   sorted(glob("/usr/lib/postgresql/*/bin/initdb"))]
    return next((d for d in cands if (d / "pg_ctl").is_file()), None)


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server on a free port (as a non-root user when run as root); skips if impossible."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="semioflow-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        runuser = shutil.which("runuser")
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if not runuser or not user:
            shutil.rmtree(tmp)
            pytest.skip("running as root without runuser or a postgres/nobody user to start PostgreSQL as")
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run_as = [runuser, "-u", user, "--"]
    os.chmod(tmp, 0o700)
    data, port = tmp / "data", _free_port()
    try:
        init = subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "semio",
                                        "--no-sync", "-E", "UTF8"], capture_output=True, text=True, timeout=120)
        if init.returncode:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
        options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        start = subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t",
                                         str(START_TIMEOUT_S), "-o", options, "start"],
                               capture_output=True, text=True, timeout=START_TIMEOUT_S + 30)
        if start.returncode:
            pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
        yield f"postgresql+psycopg://semio@127.0.0.1:{port}"
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def pg_database(server: str) -> str:
    """A new empty database on ``server``; returns its SQLAlchemy URL (psycopg driver)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"
