"""The Dagster daemon that executes a study: one per ``DAGSTER_HOME``, started by ``study run`` and
ending with the study.

``scaling-assets study run`` submits an asset backfill; Dagster's daemon (backfill, run queue, run
monitoring and run retry loops) turns it into queued runs, and the run coordinator/launcher in
``dagster.yaml`` launch them. ``study_daemon`` decides which daemon runs the study:

- the daemon an earlier ``study run`` of the same study started and that is still running (that
  command was killed): adopted, and stopped at the end of this command;
- one an earlier ``study run`` of *another* study started: refused. A daemon loads one study's
  definitions (``$SCALING_ASSETS_STUDY``), so the other study's runs would write into that study's
  root; two studies on one ``DAGSTER_HOME`` run one after the other, or each with its own home;
- a daemon heart-beating for this ``DAGSTER_HOME`` that no ``study run`` started (``dagster dev``,
  ``dagster-daemon run``): used as it is, never stopped;
- otherwise a fresh one, stopped at the end.

Ownership is a file lock (``daemon.owner.lock``) the owning ``study run`` holds while it runs; the
kernel releases it when that command dies, even by ``kill -9``. The record beside it
(``daemon.json``) names the daemon's process identity, its owner, its study and, once stopped, when.
A daemon started here watches the lock (``watch_owner``): when its owner is gone and nothing is left
to run (no backfill in progress, no unfinished run) it stops itself, so a study whose command was
killed finishes its submitted work and the daemon exits, whoever finishes it. A stopped daemon's
record keeps its stop time, so its heartbeats (written every 30 s and counted live for 75 s) are not
taken for a live daemon by a rerun a few seconds later.

Started daemons run ``python -m scaling_assets.study.daemon``: Dagster's own ``dagster-daemon run`` on a
workspace naming the code location ``scaling_assets`` (as ``workspace.yaml`` does for ``dagster dev``,
so the UI places the study's runs), with the daemon's Dagster patches installed first
(``compute/dagster_patches.py``: among them a backfill evaluation every 5 s instead of 30 s,
``SCALING_ASSETS_BACKFILL_INTERVAL``, and a code-location reload every 10 minutes instead of every
minute, ``SCALING_ASSETS_CODE_RELOAD_INTERVAL``; ``SCALING_ASSETS_DAGSTER_PATCHES=off`` runs Dagster as
it is).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from scaling_assets.processes import identity_host, process_identity, running_process

RECORD_ENV = "SCALING_ASSETS_DAEMON_RECORD"  # set for a daemon a `study run` started: it watches its owner
OWNER_CHECK_S = 5.0  # how often such a daemon checks that its `study run` is still there
# Dagster daemons heartbeat every 30 s; older than this and the daemon is taken to be dead.
HEARTBEAT_STALE_S = 75
REQUIRED = ("BACKFILL", "QUEUED_RUN_COORDINATOR")
LOCATION_NAME = "scaling_assets"  # the code location's name, as in the repository's workspace.yaml
STATE_DIR = ".scaling_assets"


def state_dir(instance) -> Path:
    return Path(instance.root_directory) / STATE_DIR


def record_file(instance) -> Path:
    """The record of the daemon a ``study run`` started (``DaemonRecord``, JSON)."""
    return state_dir(instance) / "daemon.json"


def owner_lock_file(record_path: Path) -> Path:
    return record_path.with_name("daemon.owner.lock")


@dataclass(frozen=True)
class DaemonRecord:
    daemon: str  # process identity (processes.py) of the daemon
    owner: str = ""  # identity of the `study run` that owns it
    study: str = ""  # the study it loads: name
    root: str = ""  # and storage root
    stopped_at: float | None = None  # when it was stopped (None: running, or died unseen)

    def serves(self, study) -> bool:
        return Path(self.root).resolve() == Path(study.root).resolve()

    @property
    def pid(self) -> int:
        return int(self.daemon.split()[1])


def read_record(path: Path) -> DaemonRecord | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return DaemonRecord(**json.loads(text))
    except (ValueError, TypeError):  # not ours, or torn: only an identity counts
        return DaemonRecord(daemon=text) if identity_host(text) else None


def write_record(path: Path, record: DaemonRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def _running_here(identity: str) -> psutil.Process | None:
    """The live, non-zombie process an identity names on this host."""
    process = running_process(identity)
    try:
        return None if process is None or process.status() == psutil.STATUS_ZOMBIE else process
    except psutil.Error:
        return None


def daemon_alive(instance, stale_after_s: float = HEARTBEAT_STALE_S) -> bool:
    """True when a daemon running the backfill and run-queue loops heart-beat recently.

    A daemon that a ``study run`` started and that has since stopped (or was killed) leaves
    fresh-looking heartbeats for up to a minute; its record tells that it is gone (a reused pid does
    not pass for it), and then only heartbeats written after it stopped count (another daemon's). A
    daemon on another host sharing this DAGSTER_HOME is judged by its heartbeats alone."""
    path = record_file(instance)
    record = read_record(path)
    since = 0.0
    if record is not None and identity_host(record.daemon) == socket.gethostname() \
            and _running_here(record.daemon) is None:
        if record.stopped_at is None:  # it died unseen: its heartbeats are all from before now
            record = replace(record, owner="", stopped_at=time.time())
            write_record(path, record)
        since = record.stopped_at
    heartbeats = instance.get_daemon_heartbeats()
    now = time.time()
    return all(
        kind in heartbeats and heartbeats[kind].timestamp > max(since, now - stale_after_s)
        for kind in REQUIRED
        if kind in instance.get_required_daemon_types()
    )


def log_file(home: Path) -> Path:
    """The log of a daemon started here. Not under ``$DAGSTER_HOME/logs``: Dagster's daemon runs a telemetry
    uploader (``dagster._core.telemetry_upload``, whatever dagster.yaml's ``telemetry`` says) that moves that
    folder's files to ``.logs_queue``, posts them and deletes them, the first time within seconds of starting:
    the log a failed study points to was gone (found by benchmarks/bench_paper_shape.py)."""
    return Path(home) / STATE_DIR / "daemon.log"


# A started daemon's log takes its run workers' output too (Dagster's console logger at DEBUG: ~65 KB a
# setting run at the paper's shape, whatever the daemon's own level; 47 MiB in a 45-minute paper-shape
# window), appended by every study on this home. Past this size it is moved to daemon.log.1 (replacing the
# previous one): when the next daemon starts, and while a daemon runs (``keep_log_bounded``), so that a
# study of weeks keeps at most twice this on disk.
LOG_ROTATE_BYTES = 64 * 2**20
LOG_ENV = "SCALING_ASSETS_DAEMON_LOG"  # set for a daemon started here: the log it keeps bounded
LOG_CHECK_S = 30.0


def rotate_log(path: Path, limit: int = LOG_ROTATE_BYTES) -> None:
    try:
        if path.stat().st_size > limit:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def rotate_open_log(path: Path, limit: int = LOG_ROTATE_BYTES) -> bool:
    """Rotate the log of a running daemon: copy it to ``.1`` (through a temporary file and a rename), then
    truncate it in place. The daemon, its code servers and run workers hold the file open in append mode
    (``DaemonProcess.start``), so their next writes land at the new end; renaming it instead would leave
    them writing to the rotated file. Lines written between the copy and the truncation are lost (and the
    line being written as it was copied is cut from the copy): a rotation every ~64 MiB, against a log
    that otherwise grows for the whole study. True when rotated."""
    try:
        if path.stat().st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    rotated = path.with_name(path.name + ".1")
    partial = path.with_name(path.name + ".1.partial")
    shutil.copyfile(path, partial)
    _end_at_last_line(partial)  # a line being written as it was copied: its rest is in neither file
    os.replace(partial, rotated)
    os.truncate(path, 0)
    return True


def _end_at_last_line(path: Path, tail: int = 1 << 16) -> None:
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - tail))
        last = f.read().rfind(b"\n")
        if last >= 0:
            f.truncate(max(0, size - tail) + last + 1)


def keep_log_bounded(path: Path, limit: int = LOG_ROTATE_BYTES, interval_s: float = LOG_CHECK_S,
                     stop: threading.Event | None = None) -> None:
    """Check the log every ``interval_s`` and rotate it past ``limit`` (the daemon's helper thread)."""
    stop = stop or threading.Event()
    while not stop.wait(interval_s):
        try:
            rotate_open_log(path, limit)
        except OSError as exc:  # a full disk or a removed folder: try again next time
            print(f"daemon log rotation failed: {exc!r}", file=sys.stderr, flush=True)


def workspace_file(home: Path) -> Path:
    """A workspace loading the study's definitions under the location name the UI's workspace.yaml uses."""
    path = Path(home) / STATE_DIR / "workspace.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("load_from:\n  - python_module:\n      module_name: scaling_assets.definitions\n"
            f"      location_name: {LOCATION_NAME}\n")
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# The daemon's log level (default warning). At info, Dagster's backfill daemon logs every evaluation with
# the backfill's whole status, which grows with the study (benchmarks/bench_paper_shape.py sets info to time
# the evaluations from this log).
LOG_LEVEL_ENV = "SCALING_ASSETS_DAEMON_LOG_LEVEL"


class DaemonProcess:
    """A ``dagster-daemon run`` for this DAGSTER_HOME, in its own process group: started here, or
    adopted from an earlier ``study run`` (``identity``)."""

    @classmethod
    def for_instance(cls, instance, env: dict[str, str]) -> "DaemonProcess":
        home = Path(instance.root_directory)
        return cls(env, log_file(home), record_file(instance), ["-w", str(workspace_file(home))])

    def __init__(self, env: dict[str, str], log_path: Path, pid_path: Path, code: list[str] | None = None,
                 identity: str | None = None):
        self.env = env
        self.log_path = log_path
        self.pid_path = pid_path  # its record (DaemonRecord; tests and benchmarks pass their own path)
        # the code location: dagster-daemon's -m/-f/-w options (tests and benchmarks use their own)
        self.code = code or ["-m", "scaling_assets.definitions"]
        self.process: subprocess.Popen | None = None
        self.identity = identity  # set: adopted, not our child

    @property
    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        return int(self.identity.split()[1]) if self.identity else None

    def start(self, record: DaemonRecord | None = None) -> None:
        """Start it; ``record``: what to record beside its identity (its owner and study)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(self.log_path)
        log = open(self.log_path, "ab")
        env = dict(self.env)
        env[LOG_ENV] = str(self.log_path)
        if record is not None:
            env[RECORD_ENV] = str(self.pid_path)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scaling_assets.study.daemon", "run", *self.code, "--log-level",
             os.environ.get(LOG_LEVEL_ENV, "warning")],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches the CLI only; it stops us in order
        )
        log.close()
        self.identity = process_identity(self.process.pid)
        write_record(self.pid_path, replace(record or DaemonRecord(""), daemon=self.identity))

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.identity is not None and _running_here(self.identity) is not None

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM the daemon's process group (daemon, its code server); SIGKILL what outlives it. Its
        record keeps the stop time, so a rerun does not take its heartbeats for a live daemon."""
        if not self.running():
            return  # it died on its own: its record tells the next command it is gone
        pgid = os.getpgid(self.pid)
        os.killpg(pgid, signal.SIGTERM)
        _wait_gone(self, timeout_s)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(self, 10)
        record = read_record(self.pid_path)
        if record is not None and record.daemon == self.identity:
            write_record(self.pid_path, replace(record, owner="", stopped_at=time.time()))


def _wait_gone(daemon: DaemonProcess, timeout_s: float) -> None:
    if daemon.process is not None:
        try:
            daemon.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        return
    deadline = time.time() + timeout_s
    while daemon.running() and time.time() < deadline:
        time.sleep(0.2)


# -- which daemon runs a study --------------------------------------------------------------------
def _another_study(record: DaemonRecord, study, home: Path, owner_running: bool) -> Exception:
    """The refusal of a `study run` of another study than the one whose daemon holds this home."""
    from scaling_assets.errors import InputError

    who = (f"the `study run` of study {record.study!r} (pid {record.owner.split()[1]})" if owner_running else
           f"the dagster-daemon (pid {record.pid}) of study {record.study!r}, whose `study run` stopped; the "
           "daemon finishes that study's submitted work and then exits")
    return InputError(
        f"DAGSTER_HOME {home} is in use by {who}. One daemon loads one study's definitions, so study "
        f"{study.name!r} run through it would write into {record.root}, not {study.root}. Wait for it to "
        f"finish, or give this study its own home: export DAGSTER_HOME=<another folder> (with a copy of "
        "dagster.yaml)"
    )


def _take_ownership(lock, record_path: Path, study, home: Path, wait_s: float) -> None:
    """Lock the daemon's ownership for this command. Another study's live ``study run`` holding it is
    refused at once; a daemon stopping itself (it holds the lock until it has exited) is waited for."""
    deadline = time.time() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        record = read_record(record_path)
        if record is not None and record.owner and _running_here(record.owner) is not None:
            raise _another_study(record, study, home, owner_running=True)
        if time.time() > deadline:
            from scaling_assets.errors import InputError

            raise InputError(f"{owner_lock_file(record_path)} stayed locked for {wait_s:.0f} s: a dagster-daemon "
                             "of this DAGSTER_HOME is still stopping; run the same command again")
        time.sleep(0.5)


@contextmanager
def study_daemon(instance, study, env: dict[str, str], out=None, wait_s: float = 60.0):
    """The daemon that runs ``study`` while the block runs (module docstring); yields the
    ``DaemonProcess`` this command owns and stops at the end, or None when it uses one it does not
    own."""
    out = sys.stdout if out is None else out
    home = Path(instance.root_directory)
    path = record_file(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(owner_lock_file(path), "a+")
    try:
        _take_ownership(lock, path, study, home, wait_s)
        me = process_identity(os.getpid())
        record = read_record(path)
        daemon = None
        # a record without a study is an older version's: its daemon is judged by heartbeats as before
        if record is not None and record.root and identity_host(record.daemon) == socket.gethostname() \
                and _running_here(record.daemon) is not None and record.stopped_at is None:
            if not record.serves(study):
                raise _another_study(record, study, home, owner_running=False)
            write_record(path, replace(record, owner=me))
            daemon = DaemonProcess(env, log_file(home), path, identity=record.daemon)
            print(f"adopting the dagster-daemon (pid {daemon.pid}) an earlier `study run` of this study started; "
                  "it stops at the end", file=out)
        elif daemon_alive(instance):
            print("using the dagster-daemon already running for this DAGSTER_HOME (not started by `study run`); "
                  f"it must load this study (SCALING_ASSETS_STUDY={env.get('SCALING_ASSETS_STUDY', study.name)}), "
                  "or the runs write into the root of the study it loads", file=out)
        else:
            from scaling_assets.compute import dagster_patches

            daemon = DaemonProcess.for_instance(instance, env)
            daemon.start(DaemonRecord("", owner=me, study=study.name, root=str(study.root)))
            print(f"started dagster-daemon (pid {daemon.pid}; log {daemon.log_path}); it stops at the end", file=out)
            off = dagster_patches.why_off(env)
            if off:
                print(off, file=out)
        try:
            yield daemon
        finally:
            if daemon is not None:
                daemon.stop()
    finally:
        lock.close()  # releases the ownership


# -- inside a daemon a `study run` started ----------------------------------------------------------
def nothing_left_to_run(instance) -> bool:
    """No backfill in progress and no run queued, starting or running on the instance."""
    from dagster import RunsFilter

    from scaling_assets.compute.dagster_compat import NOT_FINISHED_STATUSES, BulkActionsFilter, BulkActionStatus

    active = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]
    return not instance.get_backfills(filters=BulkActionsFilter(statuses=active), limit=1) and \
        not instance.get_run_ids(filters=RunsFilter(statuses=NOT_FINISHED_STATUSES), limit=1)


def owner_gone_and_idle(lock, record_path: Path, me: str, instance) -> bool:
    """True, holding the ownership lock, when this daemon's ``study run`` is gone (its lock is free)
    and nothing is left to run; else False, lock released."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its owner runs (or a rerun is adopting it)
    record = read_record(record_path)
    if record is not None and record.daemon == me and not (record.owner and _running_here(record.owner)) \
            and nothing_left_to_run(instance):
        return True
    fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def watch_owner(record_path: Path, interval_s: float = OWNER_CHECK_S) -> None:
    """Stop this daemon (its whole process group) once its ``study run`` is gone and nothing is left
    to run; the lock stays held until the process exits, so no rerun adopts a daemon that is stopping."""
    from dagster import DagsterInstance

    me = process_identity(os.getpid())
    lock = open(owner_lock_file(record_path), "a+")
    with DagsterInstance.get() as instance:
        while True:
            time.sleep(interval_s)
            try:
                if not owner_gone_and_idle(lock, record_path, me, instance):
                    continue
            except Exception as exc:  # a storage hiccup: try again next time
                print(f"owner check failed: {exc!r}", file=sys.stderr)
                continue
            print("the `study run` that started this daemon is gone and nothing is left to run: stopping",
                  file=sys.stderr, flush=True)
            record = read_record(record_path)
            write_record(record_path, replace(record, owner="", stopped_at=time.time()))
            os.killpg(os.getpgrp(), signal.SIGTERM)
            time.sleep(30)
            os.killpg(os.getpgrp(), signal.SIGKILL)


def main() -> None:
    """``python -m scaling_assets.study.daemon run ...``: dagster-daemon with the daemon's Dagster patches
    installed, ending with its ``study run`` when one started it."""
    from scaling_assets.compute import dagster_patches
    from scaling_assets.compute.dagster_compat import dagster_daemon_main

    patches = dagster_patches.install()
    print(f"Dagster patches installed: {', '.join(patches) or 'none'}", file=sys.stderr, flush=True)
    shorten_backfill_log()
    sys.argv[0] = "dagster-daemon"
    threading.Thread(target=_start_run_worker_server, name="run worker server", daemon=True).start()
    start_watchers(os.environ)
    dagster_daemon_main()


# Dagster's backfill daemon logs every asset's whole partition list at INFO on each evaluation ("Considering
# the following candidate subset", "... considered for materialization but not requested"): at the paper's
# shape lines of thousands of characters, 37 of the 67 MB a paper-shape daemon logged in an hour. A line
# longer than this is cut, saying how much was cut (every asset and reason stays; "Submitted run" lines,
# up to ~1,100 characters with their tags, are kept whole). The backfill's page shows the full sets.
LOG_LINE_MAX_CHARS = 1_200
BACKFILL_LOGGER = "dagster.daemon.BackfillDaemon"


class ShortLines(logging.Filter):
    """Cuts each line of a log record's message to ``limit`` characters."""

    def __init__(self, limit: int = LOG_LINE_MAX_CHARS):
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > self.limit:
            lines = message.split("\n")
            if any(len(line) > self.limit for line in lines):
                record.msg, record.args = "\n".join(self._cut(line) for line in lines), None
        return True

    def _cut(self, line: str) -> str:
        if len(line) <= self.limit:
            return line
        return f"{line[:self.limit]}... [{len(line) - self.limit:,} more characters cut]"


def shorten_backfill_log() -> None:
    logger = logging.getLogger(BACKFILL_LOGGER)
    if not any(isinstance(f, ShortLines) for f in logger.filters):
        logger.addFilter(ShortLines())


def start_watchers(environ) -> list[threading.Thread]:
    """The helper threads of a daemon started by ``DaemonProcess``: its log kept bounded, and its end
    with the ``study run`` that started it."""
    threads = []
    if environ.get(LOG_ENV):
        threads.append(threading.Thread(target=keep_log_bounded, args=(Path(environ[LOG_ENV]),),
                                        name="log rotation", daemon=True))
    if environ.get(RECORD_ENV):
        threads.append(threading.Thread(target=watch_owner, args=(Path(environ[RECORD_ENV]),),
                                        name="owner watch", daemon=True))
    for thread in threads:
        thread.start()
    return threads


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
