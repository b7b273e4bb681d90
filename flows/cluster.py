"""Beyond one machine: the Dask task runner, shared-storage and GPU checks, and a loopback cluster to try it.

``base.runner: dask`` runs every task of the flow through prefect-dask's
``DaskTaskRunner`` on the scheduler at ``base.dask_address``
(``tcp://host:8786``); task inputs and results stay small (ids, paths, keys).

* **Shared data.**  Workers read and write the data dir on shared storage at
  the same path.  The flow writes a fresh token there (``TOKEN_NAME``) and
  passes it with every task; a worker that reads another token (or none)
  stops the task with an error naming the worker (``check_shared_data``).
* **GPUs.**  A model stage (``Stage.device``) on device ``cuda[:N]`` asks for
  the ``GPU`` resource, so it lands only on workers started with
  ``--resources GPU=1``; with no such worker the stage fails at once, before
  anything is submitted.  ``auto`` asks for a GPU when the cluster has one
  and runs anywhere otherwise; ``cpu`` anywhere.  A worker keeps one model
  per process, loaded once (``tasks.query.local``'s cache).
* **Starting a cluster here** (``semioflow cluster up``): a ``dask
  scheduler`` and ``dask worker`` processes on 127.0.0.1, detached, their
  pids and address in ``.semioflow/cluster.json``.  Other machines run the
  same two commands (README "Beyond one machine").
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tasks.atomic import atomic_write_text
from tasks.errors import SemioflowError
from tasks.params import Params

TOKEN_NAME = ".semioflow.token"
CONNECT_TIMEOUT_S = 10.0  # a scheduler that does not answer within this is reported, not waited for
STATE = "cluster.json"  # under .semioflow/
WORKER_START_TIMEOUT_S = 60.0
GPU = "GPU"  # the Dask resource name model stages ask for

# Semioflow task runs executed in this process, by stage (a Dask worker's count is read by tests and
# `semioflow cluster status` through the scheduler).
TASKS_RUN: Counter[str] = Counter()


class ClusterError(SemioflowError):
    """The Dask cluster cannot run the flow (no scheduler, no GPU worker, a worker without the data)."""


# ---- the runner -----------------------------------------------------------------------------------


def dask_runner(params: Params):
    """The Dask task runner on the scheduler at ``base.dask_address`` (checked to answer first), with the
    resources of ``placed`` (``flows.dask_runner``)."""
    from flows.dask_runner import ResourceDaskTaskRunner

    address = params.base.dask_address
    workers(address)  # a clear error now instead of a connect timeout inside the flow
    return ResourceDaskTaskRunner(address=address)


def workers(address: str) -> dict[str, dict]:
    """The scheduler's workers: address -> {"name", "resources", "pid"}; raises ``ClusterError`` when none answers."""
    from distributed import Client

    if not address:
        raise ClusterError("base.runner is dask but base.dask_address is empty: set it to tcp://host:8786 "
                           "(`semioflow cluster up` starts one on this machine)")
    try:
        with Client(address, timeout=CONNECT_TIMEOUT_S) as client:
            info = client.scheduler_info(n_workers=-1)["workers"]
            pids = client.run(os.getpid) if info else {}
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"no Dask scheduler answers at {address} ({type(exc).__name__}): start it "
                           "(`semioflow cluster up` here, or `dask scheduler` on the scheduler machine)") from None
    return {a: {"name": w.get("name"), "resources": w.get("resources") or {}, "pid": pids.get(a)}
            for a, w in info.items()}


def resources_for(device: str | None, address: str) -> dict[str, float]:
    """Dask resources a stage on ``device`` asks for (see the module doc); raises when it needs a GPU worker
    and the cluster has none."""
    if device is None or device == "cpu":
        return {}
    has_gpu = any(w["resources"].get(GPU) for w in workers(address).values())
    if device.startswith("cuda"):
        if not has_gpu:
            raise ClusterError(f"a model stage runs on {device} but no Dask worker at {address} has a {GPU}: start "
                               f"one with `dask worker {address} --resources {GPU}=1` on a GPU machine (or set the "
                               "stage's device to cpu or auto)")
        return {GPU: 1}
    return {GPU: 1} if has_gpu else {}


def check_scheduler(address: str, stage: str) -> None:
    """Called when task runs of ``stage`` did not finish on the cluster: raises one ``ClusterError`` saying the
    scheduler was lost when it no longer answers (rather than one failure per recording)."""
    try:
        workers(address)
    except ClusterError:
        raise ClusterError(f"lost the Dask scheduler at {address} during {stage}: restart it (`dask scheduler`, or "
                           "`semioflow cluster up` here) and its workers, then rerun; finished recordings are "
                           "cached, unfinished ones run again") from None


def tasks_run(address: str) -> dict[str, dict[str, int]]:
    """Per worker (address), the semioflow task runs it executed, by stage (``TASKS_RUN``)."""
    from distributed import Client

    def count() -> dict[str, int]:
        from flows.cluster import TASKS_RUN as ran

        return dict(ran)

    with Client(address, timeout=CONNECT_TIMEOUT_S) as client:
        return client.run(count)


# ---- the worker process ---------------------------------------------------------------------------

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameter numbers
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # what glibc's dynamic rule pairs with it
_MALLOC_TUNED = False


def restore_malloc_thresholds() -> None:
    """Undo the cost of a Dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` in this process (once).

    Setting any malloc threshold turns off glibc's dynamic mmap threshold, so
    every buffer over 128 KiB (a video frame) is mmap'd and unmapped anew, page
    faults each time: deidentify of the same six recordings took 144 s instead
    of 106 s.  The environment cannot be undone after start, but the thresholds
    can: set to what the dynamic rule reaches, large buffers are reused again.
    A no-op where the variable is not set (the local process pool) or libc is
    not glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


# ---- shared data ----------------------------------------------------------------------------------


def write_token(data_dir: Path) -> str:
    """A fresh token for this run in ``<data_dir>/TOKEN_NAME`` (0600); returns it."""
    token = secrets.token_hex(16)
    atomic_write_text(Path(data_dir) / TOKEN_NAME, token, mode=0o600)
    return token


def check_shared_data(data_dir: str | Path, token: str | None) -> None:
    """Stop a task that runs where the flow's data dir is not (another disk at the same path, or none)."""
    if token is None:
        return
    try:
        seen = (Path(data_dir) / TOKEN_NAME).read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        where = f"{socket.gethostname()} (pid {os.getpid()})"
        raise ClusterError(f"worker {where} does not see this run's data dir {data_dir} "
                           f"({'another run' if seen else 'no'} token there): every worker must mount the same "
                           "shared storage at the same path")


# ---- a cluster on this machine --------------------------------------------------------------------


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def up(state_dir: Path, *, n_workers: int, gpu: bool, port: int | None = None) -> dict:
    """Start a scheduler and ``n_workers`` single-threaded workers on 127.0.0.1 (detached); returns the state."""
    state_dir = Path(state_dir)
    if (state_dir / STATE).is_file() and _alive(json.loads((state_dir / STATE).read_text())):
        raise ClusterError(f"a cluster is already up ({(state_dir / STATE)}); `semioflow cluster down` first")
    logs = state_dir / "cluster"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = port or _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_spawn(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"),
                    logs / "scheduler.log")]
    extra = ["--resources", f"{GPU}=1"] if gpu else []
    for k in range(n_workers):
        # one thread: the work is CPU-bound Python (threads give no speed-up); one process per worker
        procs.append(_spawn(_dask("worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                                  "--name", f"local-{k}", "--no-dashboard", *extra), logs / f"worker-{k}.log"))
    state = {"address": address, "pids": [p.pid for p in procs], "workers": n_workers, "gpu": gpu}
    atomic_write_text(state_dir / STATE, json.dumps(state, indent=2), mode=0o600)
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while True:
        try:
            if len(workers(address)) >= n_workers:
                return state
        except ClusterError:
            pass
        if time.monotonic() > deadline:
            down(state_dir)
            raise ClusterError(f"the cluster did not start within {WORKER_START_TIMEOUT_S:.0f} s; logs in {logs}")
        time.sleep(0.5)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _alive(state: dict) -> bool:
    return any(_pid_alive(p) for p in state.get("pids", []))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def down(state_dir: Path) -> int:
    """Stop the cluster ``up`` started; returns how many processes were stopped."""
    path = Path(state_dir) / STATE
    if not path.is_file():
        return 0
    pids = json.loads(path.read_text()).get("pids", [])
    stopped = 0
    for pid in reversed(pids):  # workers first, the scheduler last
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGTERM)
            stopped += 1
    deadline = time.monotonic() + 10
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return stopped


def status(state_dir: Path) -> dict | None:
    """The state ``up`` wrote, with the workers the scheduler knows now; None when no cluster is up."""
    path = Path(state_dir) / STATE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    try:
        state["live_workers"] = workers(state["address"])
    except ClusterError:
        state["live_workers"] = {}
    return state
