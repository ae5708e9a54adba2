"""Run a ``dagster-daemon`` (run queue, run monitoring, backfills) for the duration of a block, and
stop everything it started: the daemon spawns code servers that outlive it unless stopped too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil

DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))


@contextmanager
def dagster_daemon(
    workspace: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    *,
    log_path: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    stop_timeout_s: float = 30.0,
) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run -w workspace`` in its own session (output to ``log_path``); at exit it is
    asked to stop (SIGTERM), then whatever is left of its session (code servers) is killed."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [DAEMON, "run", "-w", str(workspace)], env=dict(env) if env is not None else None,
            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop_session(proc, stop_timeout_s)


def _stop_session(proc: subprocess.Popen, timeout_s: float) -> None:
    session = proc.pid  # the daemon leads its own session; its code servers stay in it
    members = session_members(session)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    members += [p for p in session_members(session) if p not in members]
    for p in members:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(members, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def session_members(session: int) -> list[psutil.Process]:
    """Live processes of a session (other than its leader)."""
    members = []
    for p in psutil.process_iter():
        try:
            if p.pid != session and os.getsid(p.pid) == session:
                members.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def wait_for_daemon(instance, timeout_s: float = 60.0) -> None:
    """Block until the daemon's run queue has sent a heartbeat to ``instance``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(hb.daemon_type == "QUEUED_RUN_COORDINATOR" for hb in instance.get_daemon_heartbeats().values()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"dagster-daemon sent no heartbeat within {timeout_s:.0f} s")
