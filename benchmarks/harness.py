"""What the study benchmarks share: a study run through ``scaling-assets study run`` in a temporary
``DAGSTER_HOME``, a sampler of the processes it starts, and where results are written.

- ``study_home``: a ``DAGSTER_HOME`` holding the repository's ``dagster.yaml`` (its GPU-aware run queue),
  with the coordinator's settings, the launcher or the storage changed for the measurement.
- ``study_env``: the environment ``study run`` and everything it starts (daemon, code servers, run workers)
  see: that home, a scratch ``SCALING_ASSETS_HOME``, no progress bars, this checkout on ``PYTHONPATH``.
- ``StudyRun``: ``scaling-assets study run`` as a child process whose output lines are kept with the time
  each arrived (and written to a log), to time what it prints (``wait_for``, ``first``).
- ``ProcessSampler``: every ``period_s``, every process under the given roots (and any that outlived its
  parent, e.g. a killed command's daemon): RSS (and PSS/USS with ``full_memory``), CPU seconds, by role
  (``role_of``: the CLI, the daemon, a code server, the forkserver, a run worker). It keeps each
  process's peak and last CPU time, so the totals include processes that ended between samples.
- ``result_path``: ``benchmarks/results/<date>_<machine>_<name>``, how results are named.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scaling_assets.compute.instance import instance_config  # noqa: E402
from scaling_assets.fs import write_text_atomic  # noqa: E402

MACHINE_ENV = "BENCH_MACHINE"  # names the machine in result files; default cpu<cores>


def machine() -> str:
    """How result files name this machine: ``$BENCH_MACHINE`` (e.g. ``h200``), else ``cpu<usable cores>``."""
    return os.environ.get(MACHINE_ENV) or f"cpu{len(os.sched_getaffinity(0))}"


def result_path(name: str) -> Path:
    """``benchmarks/results/<today>_<machine>_<name>``: the default place of a benchmark's figures."""
    return RESULTS / f"{date.today().isoformat()}_{machine()}_{name}"


def load() -> list[float]:
    """The load averages: other sessions share the cores, so every figure is reported with them."""
    return [round(x, 2) for x in os.getloadavg()]


# -- a study in a temporary DAGSTER_HOME ----------------------------------------------------------------
def study_home(home: Path, *, coordinator: Mapping[str, Any] | None = None, launcher: Mapping | None = None,
               launcher_config: Mapping[str, Any] | None = None, postgres_url: str | None = None) -> Path:
    """Write ``home/dagster.yaml``: the repository's instance with the coordinator's settings updated by
    ``coordinator``, the run launcher replaced by ``launcher`` (a ``module``/``class``/``config`` block) or
    given ``launcher_config``, and storage on PostgreSQL at ``postgres_url``. Returns ``home``."""
    config = instance_config(postgres_url=postgres_url, coordinator=coordinator)
    if launcher is not None:
        config["run_launcher"] = dict(launcher)
    if launcher_config is not None:
        config["run_launcher"]["config"] = dict(launcher_config)
    home.mkdir(parents=True, exist_ok=True)
    write_text_atomic(home / "dagster.yaml", yaml.safe_dump(config, sort_keys=False))
    return home


def study_env(home: Path, scratch: Path, **extra: str) -> dict[str, str]:
    """The environment of ``study run`` on ``home``: ``scratch`` as ``SCALING_ASSETS_HOME``, progress bars
    off, this checkout first on ``PYTHONPATH`` (the daemon and run workers import it); ``extra`` on top."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_HOME=str(scratch), SCALING_ASSETS_PROGRESS="0",
                PYTHONPATH=path, **extra)


class StudyRun:
    """``scaling-assets study run --study STUDY [ARGS]`` as a child process; each output line is kept with
    the time it arrived (``lines``) and written to ``log`` with the seconds since the start."""

    def __init__(self, study: str | Path, env: Mapping[str, str], cwd: Path, log: Path, args: Iterable[str] = ()):
        self.lines: list[tuple[float, str]] = []
        self.log = log
        self.start = time.time()
        self._started, self._ended = time.perf_counter(), None
        self.proc = subprocess.Popen([sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study",
                                      str(study), *args], env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        with open(self.log, "a") as log:
            for line in self.proc.stdout:
                self.lines.append((time.time(), line.rstrip()))
                log.write(f"{time.time() - self.start:8.1f} {line}")
                log.flush()

    def wait(self, timeout: float | None = None) -> int:
        """The exit code once the command ends (and its output is read); ``TimeoutExpired`` past ``timeout``."""
        code = self.proc.wait(timeout=timeout)
        self._ended = self._ended or time.perf_counter()
        self._reader.join(timeout=30)
        return code

    @property
    def wall_s(self) -> float:
        """Seconds from the start to now, or to the command's end once ``wait`` returned."""
        return (self._ended or time.perf_counter()) - self._started

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (``study run`` cancels its backfills and stops its daemon), then wait."""
        self.proc.terminate()
        return self.wait(timeout)

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, pattern: str, after: float = 0) -> float | None:
        """When the first line matching ``pattern`` (at or after ``after``) arrived, or None."""
        rx = re.compile(pattern)
        return next((t for t, line in self.lines if t >= after and rx.search(line)), None)

    def wait_for(self, pattern: str, timeout: float) -> float | None:
        """Wait until a line matches ``pattern`` (its arrival time), the command ends or ``timeout`` passes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            t = self.first(pattern)
            if t is not None:
                return t
            if self.proc.poll() is not None:
                time.sleep(0.5)
                return self.first(pattern)
            time.sleep(0.5)
        return None


# -- what the platform's processes take -----------------------------------------------------------------
CLI, SERIAL_CLI, DAEMON, CODE_SERVER, FORKSERVER, RUN_WORKER, OTHER = (
    "cli", "cli_serial", "daemon", "code_server", "forkserver", "run_worker", "other")


def role_of(cmdline: str, parent_cmdline: str = "") -> str:
    """Which part of the platform a process is, from its command line and its parent's. Run workers are
    forked from the launcher's forkserver (``compute/run_workers.py``), or spawned by the code server with
    ``fork_workers: false``, or started by Dagster's ``execute_run`` (Ray)."""
    if "multiprocessing.forkserver" in cmdline:
        return RUN_WORKER if "multiprocessing.forkserver" in parent_cmdline else FORKSERVER
    if "multiprocessing.spawn" in cmdline or "execute_run" in cmdline:
        return RUN_WORKER
    if "scaling_assets.study.daemon" in cmdline or "dagster-daemon" in cmdline:
        return DAEMON
    if "grpc" in cmdline:
        return CODE_SERVER
    if "scaling_assets.cli" in cmdline and "study" in cmdline:
        return SERIAL_CLI if "--serial" in cmdline else CLI
    return OTHER


class ProcessSampler(threading.Thread):
    """Samples, every ``period_s``, the processes under ``roots()`` (pids; e.g. a ``StudyRun``'s) and every
    process seen before that still runs (orphans stay ours: they are matched by pid and start time).

    Each sample: ``t``, ``load``, and per role ``rss_mib`` (sum), ``max_one_mib`` (largest one process),
    ``cpu_s`` (sum of the live processes' CPU seconds) and ``n`` (count); with ``full_memory`` also
    ``pss_mib`` and ``uss_mib`` sums (PSS counts a page shared by n processes 1/n in each, so its sum is
    what they take together; RSS counts shared libraries once per process). ``extra()`` adds fields.
    After the run: ``peak`` (pid -> (RSS bytes, role)), ``cpu_by_role()`` (every process's last CPU
    seconds, ended ones included), ``most_at_once(role)``, ``kill_all()``."""

    def __init__(self, roots: Callable[[], Iterable[int]], period_s: float = 0.5, *, full_memory: bool = False,
                 extra: Callable[[], Mapping[str, Any]] | None = None):
        super().__init__(daemon=True)
        self.roots, self.period_s, self.full_memory, self.extra = roots, period_s, full_memory, extra
        self.samples: list[dict] = []
        self.seen: dict[int, tuple[float, str]] = {}  # pid -> (create time, role): every process started
        self.peak: dict[int, tuple[int, str]] = {}
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period_s)

    def finish(self) -> None:
        """Stop sampling and wait for the thread."""
        self.stop.set()
        if self.is_alive():
            self.join()

    def processes(self) -> list[psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        for pid in self.roots():
            try:
                root = psutil.Process(pid)
                procs.update({p.pid: p for p in (root, *root.children(recursive=True))})
            except psutil.Error:
                continue
        for pid, (created, _) in list(self.seen.items()):
            if pid not in procs:
                try:
                    p = psutil.Process(pid)
                    if p.create_time() == created:
                        procs[pid] = p
                except psutil.Error:
                    pass
        return list(procs.values())

    def _role(self, p: psutil.Process) -> str:
        if p.pid not in self.seen:  # named at first sight: an exiting process has no command line
            parent = p.parent()
            self.seen[p.pid] = (p.create_time(), role_of(" ".join(p.cmdline()),
                                                         " ".join(parent.cmdline()) if parent else ""))
        return self.seen[p.pid][1]

    def sample(self) -> dict:
        sums: dict[str, dict[str, float]] = {key: {} for key in ("rss_mib", "max_one_mib", "cpu_s", "n")}
        if self.full_memory:
            sums.update(pss_mib={}, uss_mib={})
        for p in self.processes():
            try:
                role = self._role(p)
                mem = p.memory_full_info() if self.full_memory else p.memory_info()
                times = p.cpu_times()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            self.cpu[p.pid] = cpu
            if mem.rss > self.peak.get(p.pid, (0, ""))[0]:
                self.peak[p.pid] = (mem.rss, role)
            rss = mem.rss / 2**20
            for key, value in (("rss_mib", rss), ("cpu_s", cpu), ("n", 1)):
                sums[key][role] = sums[key].get(role, 0) + value
            sums["max_one_mib"][role] = max(sums["max_one_mib"].get(role, 0), rss)
            if self.full_memory:
                sums["pss_mib"][role] = sums["pss_mib"].get(role, 0) + mem.pss / 2**20
                sums["uss_mib"][role] = sums["uss_mib"].get(role, 0) + mem.uss / 2**20
        sample = {"t": time.time(), "load": load(), **sums, **(self.extra() if self.extra else {})}
        self.samples.append(sample)
        return sample

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per role over the run: each process's last sampled CPU time, ended ones included."""
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            role = self.seen[pid][1]
            out[role] = out.get(role, 0.0) + seconds
        return out

    def largest(self) -> tuple[int, str]:
        """(RSS bytes, role) of the process that reached the largest RSS."""
        return max(self.peak.values(), default=(0, ""))

    def most_at_once(self, role: str) -> int:
        return max((s["n"].get(role, 0) for s in self.samples), default=0)

    def pids(self, role: str) -> list[int]:
        return [pid for pid, (_, r) in self.seen.items() if r == role]

    def kill_all(self) -> None:
        """SIGKILL every process this sampler saw that still runs (by pid, checked against its start time)."""
        for pid, (created, _) in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.Error:
                pass
