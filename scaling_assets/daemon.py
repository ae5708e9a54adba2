"""The Dagster daemon that executes a study: reuse a live one, else run one for the study's duration.

``scaling-assets study run`` submits an asset backfill; Dagster's daemon (backfill, run queue and run
monitoring loops) turns it into queued runs, and the run coordinator/launcher in ``dagster.yaml``
launch them. If no daemon is heart-beating for this ``DAGSTER_HOME``, one is started here and stopped
again at the end (never one that was already running).

Started daemons run ``python -m scaling_assets.daemon``: Dagster's own ``dagster-daemon run`` with two
of its controller's constants changed (``dagster._daemon.controller``, read when used, so setting them
before the daemon starts is enough):

- the backfill loop's pause between evaluations (``DEFAULT_DAEMON_INTERVAL_SECONDS``). Dagster fixes it
  at 30 s, and a study's stages each wait one evaluation, so a study would idle minutes;
  ``SCALING_ASSETS_BACKFILL_INTERVAL`` (default 5 s) sets it.
- how often the daemon reloads its code location (``RELOAD_WORKSPACE_INTERVAL``, 60 s). Each reload
  starts a fresh code server, which imports the package and builds the definitions, and fetches the
  repository snapshot again: measured on the default study on 2 cores, the restarts cost ~60 CPU s of
  code servers in a 12-minute study (14 with a reload every 10 minutes), besides the daemon's own work reading each snapshot.
  ``SCALING_ASSETS_CODE_RELOAD_INTERVAL`` (default 600 s) sets it; a daemon that reloads less often
  picks up edited code that much later (runs themselves always load the code afresh).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from scaling_assets.processes import identity_host, process_identity, running_process

BACKFILL_INTERVAL_ENV = "SCALING_ASSETS_BACKFILL_INTERVAL"
DEFAULT_BACKFILL_INTERVAL_S = 5
CODE_RELOAD_INTERVAL_ENV = "SCALING_ASSETS_CODE_RELOAD_INTERVAL"
DEFAULT_CODE_RELOAD_INTERVAL_S = 600
# Dagster daemons heartbeat every 30 s; older than this and the daemon is taken to be dead.
HEARTBEAT_STALE_S = 75
REQUIRED = ("BACKFILL", "QUEUED_RUN_COORDINATOR")


def pid_file(instance) -> Path:
    """Where a daemon started by ``study run`` records its process identity (host, pid, start time:
    ``scaling_assets/processes.py``), while it runs."""
    return Path(instance.root_directory) / ".scaling_assets" / "daemon.pid"


def daemon_alive(instance, stale_after_s: float = HEARTBEAT_STALE_S) -> bool:
    """True when a daemon running the backfill and run-queue loops heart-beat recently.

    A daemon that a ``study run`` started and that was since killed leaves fresh-looking heartbeats
    for up to a minute; its pid file tells that it is gone (a reused pid does not pass for it). A
    daemon on another host sharing this DAGSTER_HOME is judged by its heartbeats alone."""
    recorded = pid_file(instance)
    if recorded.exists():
        holder = recorded.read_text().strip()
        if identity_host(holder) == socket.gethostname() and running_process(holder) is None:
            recorded.unlink(missing_ok=True)
            return False
    heartbeats = instance.get_daemon_heartbeats()
    now = time.time()
    return all(
        kind in heartbeats and now - heartbeats[kind].timestamp < stale_after_s
        for kind in REQUIRED
        if kind in instance.get_required_daemon_types()
    )


class DaemonProcess:
    """A ``dagster-daemon run`` for this DAGSTER_HOME, in its own process group."""

    @classmethod
    def for_instance(cls, instance, env: dict[str, str]) -> "DaemonProcess":
        home = Path(instance.root_directory)
        return cls(env, home / "logs" / "daemon.log", pid_file(instance))

    def __init__(self, env: dict[str, str], log_path: Path, pid_path: Path, code: list[str] | None = None):
        self.env = env
        self.log_path = log_path
        self.pid_path = pid_path
        # the code location: dagster-daemon's -m/-f/-w options (tests and benchmarks use their own)
        self.code = code or ["-m", "scaling_assets.definitions"]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scaling_assets.daemon", "run", *self.code, "--log-level", "warning"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches the CLI only; it stops us in order
        )
        log.close()
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(process_identity(self.process.pid))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM the daemon's process group (daemon, its code server); SIGKILL what outlives it.

        The pid file stays, naming the stopped process: its heartbeats look fresh for another minute,
        and a ``study run`` started meanwhile must not take it for a live daemon (``daemon_alive``
        removes the file once it has seen the process is gone)."""
        if self.process is None:
            return
        if self.process.poll() is not None:
            return  # it died on its own: the pid file stays, telling the next command it is gone
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def configure_controller(environ) -> None:
    """Set the backfill interval and the code reload interval of Dagster's daemon controller."""
    from dagster._daemon import controller

    for name in ("DEFAULT_DAEMON_INTERVAL_SECONDS", "RELOAD_WORKSPACE_INTERVAL"):
        if not hasattr(controller, name):  # a Dagster upgrade renamed it: setting it would do nothing
            raise RuntimeError(f"dagster._daemon.controller has no {name}; update scaling_assets/daemon.py")
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = float(
        environ.get(BACKFILL_INTERVAL_ENV, DEFAULT_BACKFILL_INTERVAL_S)
    )
    controller.RELOAD_WORKSPACE_INTERVAL = float(
        environ.get(CODE_RELOAD_INTERVAL_ENV, DEFAULT_CODE_RELOAD_INTERVAL_S)
    )


def main() -> None:
    """``python -m scaling_assets.daemon run ...``: dagster-daemon with the backfill and code reload
    intervals set."""
    from dagster._daemon.cli import main as dagster_daemon_main

    configure_controller(os.environ)
    sys.argv[0] = "dagster-daemon"
    threading.Thread(target=_start_run_worker_server, name="run worker server", daemon=True).start()
    dagster_daemon_main()


def _start_run_worker_server() -> None:
    """Have the launcher's forkserver import its libraries while the daemon starts, not at the first run."""
    from dagster import DagsterInstance

    from scaling_assets.compute.coordinator import GpuAwareRunLauncher
    from scaling_assets.compute.run_workers import start_server

    try:
        with DagsterInstance.get() as instance:
            launcher = instance.run_launcher
            if isinstance(launcher, GpuAwareRunLauncher) and launcher.fork_workers:
                start_server(launcher.preload_modules)
    except Exception as exc:  # the first launch starts it instead
        print(f"run worker server not started early: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
