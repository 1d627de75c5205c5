"""Background services (PostgreSQL's neighbours: an S3 stand-in, an MLflow server) for the team server and the tests.

Starting a process, waiting until it answers and stopping its process group are mirakuru's executors; a free port
is port-for's. What is left here is the two things they do not do: a service that outlives the Python that started
it (``detach``: the team server's ``start`` exits while MLflow keeps serving), and stopping such a service from
another shell by the pid its state file recorded (``stop_pid``). Imported by scripts/team_server.py and
tests/helpers/servers.py only, so the pipeline never imports mirakuru.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mirakuru
import mirakuru.base
import port_for
import psutil
from port_for import port_is_used  # noqa: F401 - the team server's check before it starts anything

LOOPBACK = "127.0.0.1"


class ServiceError(Exception):
    """A service did not start: says which, why, and how its log ends."""


def free_port() -> int:
    """A port nothing listens on, chosen at random (two tests starting servers at once get different ones)."""
    return port_for.select_random()


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def executor(command: list[str], *, log: Path, env: dict[str, str], timeout: float, url: str | None = None,
             port: int | None = None) -> mirakuru.SimpleExecutor:
    """An executor for ``command``, ready when ``url`` answers 200 (HTTP) or ``port`` accepts connections on
    127.0.0.1 (TCP); its output appended to ``log``, in a process group of its own (mirakuru's setsid). ``env`` is
    set on top of this process's environment (mirakuru's ``envvars``): to keep a variable from the service, remove
    it from ``os.environ`` first."""
    stream = open(log, "a")  # noqa: SIM115 - held by the child; closed with this process
    options = dict(envvars=env, timeout=timeout, sleep=0.3, stdin=subprocess.DEVNULL, stdout=stream,
                   stderr=subprocess.STDOUT)
    if url:
        return mirakuru.HTTPExecutor(command, url=url, status=200, method="GET", **options)
    return mirakuru.TCPExecutor(command, host=LOOPBACK, port=port, **options)


def start(service: mirakuru.SimpleExecutor, what: str, log: Path) -> mirakuru.SimpleExecutor:
    """Start ``service`` and wait until it answers; a ServiceError quoting its log when it exits, times out, or
    finds its port already taken."""
    try:
        return service.start()
    except mirakuru.AlreadyRunning:
        raise ServiceError(f"{what}: something already listens on its port; choose another") from None
    except mirakuru.ProcessExitedWithError as error:
        raise ServiceError(f"{what} exited ({error.exit_code}) while starting; its log ({log}) ends with:\n"
                           f"{log_tail(log)}") from None
    except mirakuru.TimeoutExpired:
        raise ServiceError(f"{what} did not answer within {service._timeout:.0f} s; its log ({log}) ends with:\n"
                           f"{log_tail(log)}") from None


@contextmanager
def running(service: mirakuru.SimpleExecutor, what: str, log: Path) -> Iterator[mirakuru.SimpleExecutor]:
    """``service`` started (as ``start``) for the block, its process group stopped after it."""
    start(service, what, log)
    try:
        yield service
    finally:
        stop(service)


def stop(service: mirakuru.SimpleExecutor) -> None:
    """SIGTERM ``service``'s process group, SIGKILL after its timeout; a service that already ended with an exit
    code of its own is stopped too (mirakuru would raise for the code)."""
    try:
        service.stop()
    except mirakuru.ProcessFinishedWithError:
        pass


def detach(service: mirakuru.SimpleExecutor) -> int:
    """Leave a started service running after this Python exits, and return its pid (the group it leads).

    mirakuru kills what an executor started when the executor is collected and, through an atexit hook, when the
    interpreter exits; a daemon started by a command that returns must escape both. Stop it with ``stop_pid``."""
    atexit.unregister(mirakuru.base.cleanup_subprocesses)
    pid = service.process.pid
    service.process = None
    return pid


def alive(pid: int | None) -> bool:
    """``pid`` runs (a zombie counts as gone)."""
    try:
        return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_pid(pid: int | None, grace: float = 20.0, group: bool = True) -> None:
    """SIGTERM ``pid`` (with ``group``, the process group it leads: uvicorn's workers, MLflow's job runner), then
    SIGKILL whatever is left after ``grace`` seconds; nothing when it is gone."""
    if not alive(pid):
        return
    send = os.killpg if group else os.kill
    try:
        process = psutil.Process(pid)
        send(pid, signal.SIGTERM)
        _, left = psutil.wait_procs([process], timeout=grace)
        if left:
            send(pid, signal.SIGKILL)
            psutil.wait_procs(left, timeout=grace)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
