"""Run workers forked from a process that has already imported the heavy libraries.

Dagster's ``DefaultRunLauncher`` asks the code server to start each run, and the code server *spawns*
a fresh interpreter for it (``multiprocessing`` "spawn", fixed in Dagster 1.13). That interpreter
imports Dagster, then the run's first steps import torch, scikit-learn and scvi-tools again: ~8 CPU
seconds per run, about a quarter of a default-study run (``benchmarks/bench_study_execution.py``),
and ~10 CPU hours over the paper's 4,800 runs.

Here each run is still its own process executing ``dagster api execute_run`` (the entry point
Dagster's container launchers run), but it is forked from a ``multiprocessing`` forkserver that
imported ``PRELOAD`` once. Our own package is not preloaded, so an edited asset reaches the next run
as it did before. The forkserver belongs to the process that launches runs (the daemon); a worker
survives that process, as a code server's runs do, and is found again by the pid and start time in
its run's ``TAG_WORKER`` tag (termination, run monitoring).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import socket

import psutil

from scaling_assets.compute.dagster_compat import RUN_WORKER_MODULES, dagster_cli_main, setup_interrupt_handlers
from scaling_assets.processes import process_identity, running_process

TAG_WORKER = "scaling_assets/run_worker"  # the worker's process identity (processes.py)

# Imported once by the forkserver. No CUDA is initialised by importing (a forked child could not use
# it), and no thread pool runs yet; each run sets its own thread counts (assets/devices.py).
PRELOAD = (
    # Dagster's run entry point and what every run imports to open the instance (~0.5 CPU s of a
    # worker's ~1 s start on SQLite)
    *RUN_WORKER_MODULES,
    "alembic.runtime.migration",
    "alembic.script",
    "torch",
    "numpy",
    "scipy.sparse",
    "h5py",
    "anndata",
    "sklearn.decomposition",
    "sklearn.random_projection",
    "scvi",
    "transformers.models.bert.modeling_bert",
    "transformers.trainer",
)


# imported after PRELOAD (or the configured modules): gc.freeze() and Dagster speed-ups (fork_prep.py)
FORK_PREP = "scaling_assets.compute.fork_prep"


def _forkserver(preload: tuple[str, ...]):
    """This process's forkserver context; ``preload`` counts only until the server has started."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*preload, FORK_PREP])
    return context


def start_server(preload: tuple[str, ...] = PRELOAD) -> None:
    """Start the forkserver now rather than at the first launch (its imports take ~6 s)."""
    from multiprocessing import forkserver

    _forkserver(preload)
    forkserver.ensure_running()


def start_worker(serialized_args: str, run_id: str, preload: tuple[str, ...] = PRELOAD) -> str:
    """Fork a run worker for ``dagster api execute_run <serialized_args>``; returns its TAG_WORKER value.

    The worker gets this process's current environment and working directory (the forkserver keeps
    the ones it started with), as a subprocess would."""
    worker = _forkserver(preload).Process(
        target=_execute_run, args=(serialized_args, dict(os.environ), os.getcwd()), name=f"dagster-run-{run_id}"
    )
    worker.start()
    # the run outlives the launching process: multiprocessing must neither join nor kill it at exit
    multiprocessing.process._children.discard(worker)
    return process_identity(worker.pid)


def _execute_run(serialized_args: str, environ: dict[str, str], cwd: str) -> None:
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    # as `dagster api execute_run` from a shell: Ctrl-C / SIGINT interrupts, SIGTERM too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    setup_interrupt_handlers()
    dagster_cli_main(["api", "execute_run", serialized_args])


def find_worker(tag: str | None) -> psutil.Process | None:
    """The live worker a TAG_WORKER value names on this host, else None (gone, or its pid reused)."""
    process = running_process(tag)
    try:
        return None if process is None or process.status() == psutil.STATUS_ZOMBIE else process
    except psutil.Error:
        return None


def worker_on_other_host(tag: str | None) -> bool:
    return bool(tag) and tag.split()[0] != socket.gethostname()


def fail_runs_of_dead_workers(instance, launcher_gone: bool = False) -> list[str]:
    """Mark failed, now, the runs still starting whose worker on this host is gone; returns their ids.

    Dagster's run monitoring asks the launcher about a run's worker only once the run has started
    (``check_run_worker_health``); a run whose worker died while starting (``kill -9`` of a study's
    processes, an OOM kill during imports) waited for the start timeout, 180 s, before it failed and was
    retried. Failed here (``DagsterInstance.report_run_failed``, as run monitoring does), Dagster's run
    retries re-execute it at once. ``launcher_gone``: nothing launches runs any more (the daemon that
    launched them died): a starting run that has no worker yet never gets one either."""
    from dagster import DagsterRunStatus, RunsFilter

    failed = []
    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTING])):
        run = record.dagster_run
        tag = run.tags.get(TAG_WORKER)
        if tag is not None and run.parent_run_id is not None:
            parent = instance.get_run_by_id(run.parent_run_id)
            if parent is not None and parent.tags.get(TAG_WORKER) == tag:
                tag = None  # a retry carries its parent's tags until the launcher tags its own worker
        if tag is None and launcher_gone:
            why = "its launch was cut short: the dagster-daemon launching it is gone and no run worker was started"
        elif tag is not None and not worker_on_other_host(tag) and find_worker(tag) is None:
            why = f"its run worker (pid {tag.split()[1]}) is gone: it died while the run was starting"
        else:
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != DagsterRunStatus.STARTING:
            continue  # it moved on meanwhile: its own events say what became of it
        instance.report_run_failed(current, f"Run failed before it started: {why} (found by `study run`, not left "
                                   f"for the {instance.run_monitoring_start_timeout_seconds:.0f} s start timeout).")
        failed.append(run.run_id)
    return failed
