"""GPU-aware run queue for Dagster 1.13: hold GPU runs until a GPU has room, pin them at launch.

How the gate works (Dagster 1.13 has no dequeue hook on the coordinator):
the ``QueuedRunCoordinatorDaemon`` re-reads ``run_coordinator.get_run_queue_config()`` every tick
and drops every queued run that its ``tag_concurrency_limits`` block, *before* it cuts the batch to
``max_concurrent_runs``. So:

1. ``submit_run`` tags each GPU run with ``TAG_GPU_NEED`` (if not already tagged) and a unique gate
   tag ``scaling_assets/gpu_gate=<run_id>``.
2. ``get_run_queue_config`` plans the queue against live NVML free memory minus the promise ledger
   (``leases.py``) and returns, besides the configured limits, ``{key: gate, value: <run_id>,
   limit: 0}`` for every GPU run that does not fit now. Those runs stay QUEUED; CPU runs and fitting
   GPU runs go through the daemon's normal priority order and ``max_concurrent_runs``.
3. ``GpuAwareRunLauncher.launch_run`` (called by the daemon for each dequeued run) picks the GPU
   under the ledger lock, writes a promise for it, tags the run ``TAG_DEVICE=cuda:N`` and launches
   it as its own process, forked from a server with the heavy libraries imported (``run_workers``).
   The run's ``gpu_step`` turns the promise into a lease.

Queue order, where each run goes (best fit, large runs spread over idle GPUs) and the reservation of
a GPU for a run that waited ``reserve_after_seconds``: ``scaling_assets.gpu.placement`` (no Dagster).

CPU runs: every run is tagged ``TAG_CPU_SLOT`` at submit: ``cpu`` unless it needs a GPU and this
machine has one. ``max_cpu_runs`` (default: the number of cores) limits how many ``cpu`` runs execute
at once, and each run's steps use ``threads_per_run`` torch/BLAS threads (tag ``TAG_THREADS``), so
concurrent runs do not oversubscribe the cores.

Study and genes: a run that lacks them (a UI launch of Dagster's asset job, a re-execution) is tagged
with the study (``$SCALING_ASSETS_STUDY``, else ``default``) and the gene count of its dataset, so its
GPU need is sized from the real number of genes, not ``default_n_genes``.

Failure modes: an error while planning holds all GPU runs this tick (fail closed) and is logged; with
no usable GPU at all, GPU runs are not held (``cpu_fallback: true``) and their steps run on CPU.
Don't set ``concurrency.runs.tag_concurrency_limits`` in dagster.yaml: Dagster lets it replace the
coordinator's limits, gate included; put tag limits in this coordinator's config instead.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import (Bool, DagsterRun, DagsterRunStatus, DefaultRunLauncher, Field, IntSource, QueuedRunCoordinator,
                     RunsFilter, SubmitRunContext, serialize_value)

from scaling_assets.compute.dagster_compat import (ACTIVE_RUN_STATUSES, CheckRunHealthResult, ExecuteRunArgs,
                                                   LaunchRunContext, RunQueueConfig, WorkerStatus)
from scaling_assets.compute.run_labels import TAG_RUN, TAG_STEPS, run_label, run_steps
from scaling_assets.compute.run_workers import PRELOAD, TAG_WORKER, find_worker, start_worker, worker_on_other_host
from scaling_assets.gpu import nvml
from scaling_assets.gpu.leases import HEADROOM_MIB, Ledger, available_mib
from scaling_assets.gpu.needs import (
    TAG_CPU_SLOT,
    TAG_DEVICE,
    TAG_GPU_NEED,
    TAG_N_GENES,
    TAG_PRIORITY,
    TAG_STUDY,
    TAG_THREADS,
    gpu_need_mib,
    run_priority,
)
from scaling_assets.gpu.placement import QueuedGpuRun, place_run, plan_queue

log = logging.getLogger(__name__)

TAG_GATE = "scaling_assets/gpu_gate"
PARTITION_TAG = "dagster/partition"
TAG_GPU_UUID = "scaling_assets/gpu_uuid"
DEVICE_PENDING = "pending"  # TAG_DEVICE of a queued GPU run not placed yet


def run_need_mib(tags: Mapping[str, str]) -> int:
    try:
        return max(0, int(tags.get(TAG_GPU_NEED, "0")))
    except ValueError:
        log.warning("ignoring unreadable %s=%r", TAG_GPU_NEED, tags.get(TAG_GPU_NEED))
        return 0


def _priority(tags: Mapping[str, str]) -> int:
    try:
        return int(tags.get(TAG_PRIORITY, "0"))
    except ValueError:
        return 0


def study_models() -> dict:
    """The models of the code location's study ($SCALING_ASSETS_STUDY), its own ones included, so that a
    study-file or entry-point model's runs are sized by its declared needs; the built-ins when the study
    cannot be loaded here. Cached per study file and its modification time (read once per run submitted)."""
    from scaling_assets.models.registry import BUILTIN
    from scaling_assets.study.spec import resolve_study_file

    try:
        path = resolve_study_file(None)
        return _study_models(str(path), path.stat().st_mtime_ns)
    except Exception:  # a run of some other code location: the built-in models' needs
        log.warning("could not read the models of the code location's study", exc_info=True)
        return BUILTIN


@functools.lru_cache(maxsize=4)
def _study_models(path: str, mtime_ns: int) -> dict:
    from scaling_assets.study.spec import load_study

    return load_study(path, check_paths=False).models


def _cells(tags: Mapping[str, str]) -> int:
    """N of a run's setting partition ``n=<N>_q=<q>_s=<seed>`` (0 for other partitions or none)."""
    from scaling_assets.errors import StudyConfigError
    from scaling_assets.study.spec import parse_setting_key

    try:
        return parse_setting_key(tags.get(PARTITION_TAG, "")).cells
    except StudyConfigError:  # not a setting key: a shared-data partition, or no partition
        return 0


class GpuAwareRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that keeps GPU runs queued until a GPU has room for them now."""

    def __init__(
        self,
        gpu_headroom_mib: int | None = None,
        reserve_after_seconds: int | None = None,
        max_reserved_gpus: int | None = None,
        default_n_genes: int | None = None,
        cpu_fallback: bool | None = None,
        max_cpu_runs: int | None = None,
        threads_per_run: int | None = None,
        local_gpu_gate: bool | None = None,
        plan_cache_seconds: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        cores = cpu_cores()
        self.max_cpu_runs = max_cpu_runs or cores
        self.threads_per_run = threads_per_run or max(1, cores // self.max_cpu_runs)
        self.gpu_headroom_mib = HEADROOM_MIB if gpu_headroom_mib is None else gpu_headroom_mib
        self.reserve_after_seconds = 600 if reserve_after_seconds is None else reserve_after_seconds
        self.max_reserved_gpus = 1 if max_reserved_gpus is None else max_reserved_gpus
        self.default_n_genes = default_n_genes
        self.cpu_fallback = True if cpu_fallback is None else cpu_fallback
        self.local_gpu_gate = True if local_gpu_gate is None else local_gpu_gate
        self._plan_cache_seconds = plan_cache_seconds
        self._cached: tuple[float, list[dict]] | None = None
        self.last_held: dict[str, str] = {}  # run_id -> why it waits (for logs / the operator)
        # queued run id -> its QueuedGpuRun (None: not a GPU run). A tick reads only the ids of the
        # queued runs and the records of runs new to the queue, not every queued run again: with
        # thousands queued (a paper study) deserialising them all each tick cost seconds of CPU.
        self._queued_cache: dict[str, QueuedGpuRun | None] = {}
        self._logged_held: tuple[int, int] | None = None
        # run_id -> GPU uuid the last plan packed it on; the launcher (same daemon process) puts the
        # run there if it still fits, so the runs are packed as planned, not in launch order
        self.planned_gpus: dict[str, str] = {}

    @classmethod
    def config_type(cls):
        return {
            **QueuedRunCoordinator.config_type(),
            "gpu_headroom_mib": Field(IntSource, is_required=False, description="MiB kept free per GPU."),
            "reserve_after_seconds": Field(
                IntSource, is_required=False,
                description="After a GPU run waited this long, stop letting later runs take its GPU.",
            ),
            "max_reserved_gpus": Field(
                IntSource, is_required=False,
                description="GPUs held back for long-waiting runs at once (default 1); the rest keep packing.",
            ),
            "default_n_genes": Field(
                IntSource, is_required=False,
                description=f"Genes assumed when sizing a run that has no {TAG_GPU_NEED} tag.",
            ),
            "cpu_fallback": Field(
                Bool, is_required=False,
                description="With no usable GPU, let GPU runs launch (their steps run on CPU).",
            ),
            "max_cpu_runs": Field(
                IntSource, is_required=False,
                description="Runs that compute on CPU at once (default: the number of cores).",
            ),
            "threads_per_run": Field(
                IntSource, is_required=False,
                description="torch/BLAS threads of each run (default: cores // max_cpu_runs, at least 1).",
            ),
            "local_gpu_gate": Field(
                Bool, is_required=False,
                description="Hold GPU runs by this machine's GPUs (false when a cluster places runs, e.g. Ray).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    # -- submit: make GPU runs gateable ---------------------------------------------------------
    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        tags: dict[str, str] = self._study_tags(run)
        need = run_need_mib(run.tags)
        if TAG_GPU_NEED not in run.tags and run.asset_selection:
            n_genes = run.tags.get(TAG_N_GENES) or tags.get(TAG_N_GENES) or self.default_n_genes
            if n_genes:
                names = [key.to_user_string() for key in run.asset_selection]
                need = gpu_need_mib(names, int(n_genes), study_models())
                if need:
                    tags[TAG_GPU_NEED] = str(need)
        if need > 0:
            # overwrite what a retried/re-executed run inherits from its parent: a gate with the
            # parent's id would not match, a device pin would skip placement
            tags[TAG_GATE] = run.run_id
            tags[TAG_DEVICE] = DEVICE_PENDING
        if TAG_PRIORITY not in run.tags and run.asset_selection:  # longest runs first
            priority = run_priority((key.to_user_string() for key in run.asset_selection), study_models())
            if priority:
                tags[TAG_PRIORITY] = str(priority)
        tags[TAG_CPU_SLOT] = "gpu" if need > 0 and self._has_gpu() else "cpu"
        if TAG_RUN not in run.tags and run.asset_selection:  # what it makes, for the UI's run list
            names = [k.to_user_string() for k in run.asset_selection]
            tags[TAG_RUN] = run_label(names, run.tags.get(PARTITION_TAG))
            tags[TAG_STEPS] = run_steps(names)
        tags.setdefault(TAG_THREADS, run.tags.get(TAG_THREADS) or str(self.threads_per_run))
        self._instance.add_run_tags(run.run_id, tags)
        return super().submit_run(context)

    def _study_tags(self, run: DagsterRun) -> dict[str, str]:
        """The study tag and the gene count of the run's dataset(s), where the run lacks them."""
        tags: dict[str, str] = {}
        if TAG_STUDY in run.tags and TAG_N_GENES in run.tags:
            return tags
        try:
            from scaling_assets.layout import dataset_gene_count
            from scaling_assets.study.spec import load_study

            study = load_study(None, check_paths=False)  # the code location's study ($SCALING_ASSETS_STUDY)
            if TAG_STUDY not in run.tags:
                tags[TAG_STUDY] = study.name
            datasets = {key.path[0] for key in run.asset_selection or ()} & set(study.datasets)
            genes = [g for g in (dataset_gene_count(study, d) for d in datasets) if g]
            if genes and TAG_N_GENES not in run.tags:
                tags[TAG_N_GENES] = str(max(genes))
        except Exception:  # a run of some other code location: leave it as it is
            log.warning("could not tag run %s with its study", run.run_id, exc_info=True)
        return tags

    def _has_gpu(self) -> bool:
        try:
            return any(g.healthy for g in nvml.list_gpus())
        except Exception:
            return False

    # -- the gate, re-read by the daemon every tick ---------------------------------------------
    def get_run_queue_config(self) -> RunQueueConfig:
        base = super().get_run_queue_config()
        cpu_limit = {"key": TAG_CPU_SLOT, "value": "cpu", "limit": self.max_cpu_runs}
        base = base._replace(tag_concurrency_limits=[*base.tag_concurrency_limits, cpu_limit])
        if not self.local_gpu_gate:  # runs are placed elsewhere (Ray): size and tag them, never hold
            return base
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._plan_cache_seconds:
            try:
                gate = self._gate_limits()
            except Exception:
                log.exception("GPU queue planning failed: holding all GPU runs this tick")
                gate = [{"key": TAG_GATE, "limit": 0}]
            self._cached = (now, gate)
        return base._replace(tag_concurrency_limits=[*base.tag_concurrency_limits, *self._cached[1]])

    def queued_gpu_runs(self) -> list[QueuedGpuRun]:
        """The queued GPU runs. Their need, priority and queue time are fixed once queued (a retry
        is a new run), so only runs new to the queue are read (``_queued_cache``)."""
        ids = self._instance.get_run_ids(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
        cache = {run_id: self._queued_cache[run_id] for run_id in ids if run_id in self._queued_cache}
        new = [run_id for run_id in ids if run_id not in cache]
        for start in range(0, len(new), 500):  # bounded SQL "IN (...)" lists
            for r in self._instance.get_run_records(RunsFilter(run_ids=new[start:start + 500])):
                tags = r.dagster_run.tags
                need = run_need_mib(tags)
                cache[r.dagster_run.run_id] = (
                    QueuedGpuRun(r.dagster_run.run_id, need, _priority(tags), r.create_timestamp.timestamp(),
                                 _cells(tags))
                    if TAG_GATE in tags and need > 0 else None
                )
        self._queued_cache = cache  # runs that left the queue are forgotten
        return [run for run in cache.values() if run is not None]

    def _gate_limits(self) -> list[dict]:
        queued = self.queued_gpu_runs()
        ledger = Ledger()
        if any(ledger.dir.glob("promise-*.json")):  # forget promises of runs that died/finished
            with ledger.locked():
                self._drop_finished_promises(ledger, ledger.records())
        if not queued:  # cheap path: run workers, CLI processes, idle queues never touch NVML
            self.last_held = {}
            return []
        gpus = nvml.list_gpus()
        if not any(g.healthy for g in gpus):
            if self.cpu_fallback:
                log.info("no usable GPU: %d GPU run(s) will run on CPU", len(queued))
                self.last_held = {}
                return []
            self.last_held = {r.run_id: "no usable GPU" for r in queued}
        else:
            with ledger.locked():
                ledger_records = self._drop_finished_promises(ledger, ledger.records())
            available = available_mib(gpus, ledger.promised_by_gpu(ledger_records), self.gpu_headroom_mib)
            planned: dict[str, str] = {}
            self.last_held = plan_queue(
                queued, gpus, available, now=time.time(),
                reserve_after_s=self.reserve_after_seconds, headroom_mib=self.gpu_headroom_mib,
                placed=planned, max_reserved_gpus=self.max_reserved_gpus,
            )
            self.planned_gpus = planned
        self._log_held(len(queued))
        return [{"key": TAG_GATE, "value": run_id, "limit": 0} for run_id in self.last_held]

    def _log_held(self, n_queued: int) -> None:
        """One line when the number of held runs changes, not the whole held set every tick (at
        thousands of queued runs that was megabytes of daemon log a minute at INFO)."""
        state = (len(self.last_held), n_queued)
        if state != self._logged_held and self.last_held:
            reserved = sum("reserved" in why for why in self.last_held.values())
            log.info("holding %d of %d queued GPU run(s) (%d with a GPU reserved); first: %s",
                     len(self.last_held), n_queued, reserved, next(iter(self.last_held.items())))
        self._logged_held = state

    def _drop_finished_promises(self, ledger: Ledger, records):
        """A promise whose run is no longer active will never become a lease: forget it."""
        promised_runs = [r.run_id for r in records if r.kind == "promise" and r.run_id]
        if not promised_runs:
            return records
        active = {
            run.run_id
            for run in self._instance.get_runs(
                RunsFilter(run_ids=promised_runs, statuses=list(ACTIVE_RUN_STATUSES))
            )
        }
        keep = []
        for r in records:
            if r.kind == "promise" and r.run_id not in active:
                ledger.drop_promise(r.run_id)
            else:
                keep.append(r)
        return keep


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class GpuAwareRunLauncher(DefaultRunLauncher):
    """Starts each run as its own process, pinning GPU runs to a device first.

    By default the process is forked from a server that has imported torch, scikit-learn, scvi-tools
    and transformers once (``run_workers``); ``fork_workers: false`` goes through the code server
    instead, as ``DefaultRunLauncher`` does (a fresh interpreter per run)."""

    def __init__(self, inst_data=None, fork_workers: bool = True, preload_modules: Sequence[str] | None = None):
        super().__init__(inst_data=inst_data)
        self.fork_workers = fork_workers
        self.preload_modules = tuple(PRELOAD if preload_modules is None else preload_modules)

    @classmethod
    def config_type(cls):
        return {
            "fork_workers": Field(
                Bool, is_required=False,
                description="Fork each run from a process with the libraries imported (default true); "
                "false: the code server spawns a fresh interpreter per run.",
            ),
            "preload_modules": Field(
                [str], is_required=False,
                description="Modules the fork server imports once (default: torch, scikit-learn, scvi-tools, ...).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        need = run_need_mib(run.tags)
        if need > 0 and run.tags.get(TAG_DEVICE, DEVICE_PENDING) == DEVICE_PENDING:
            planned = getattr(self._instance.run_coordinator, "planned_gpus", {}).get(run.run_id)
            gpu, reason = place_run(run.run_id, need, planned_uuid=planned)
            tags = {TAG_DEVICE: gpu.device if gpu else "cpu"}
            if gpu is not None:
                tags[TAG_GPU_UUID] = gpu.uuid
            self._instance.add_run_tags(run.run_id, tags)
            self._instance.report_engine_event(
                f"Placed on {tags[TAG_DEVICE]} ({need} MiB): {reason}", run, cls=self.__class__
            )
            run = run.with_tags({**run.tags, **tags})  # as stored: no re-read per launch
            context = LaunchRunContext(dagster_run=run, workspace=context.workspace)
        try:
            if self.fork_workers and run.job_code_origin is not None:
                self._fork_worker(run)
            else:
                super().launch_run(context)
        except Exception:
            Ledger().drop_promise(run.run_id)  # never launched: its memory is free again
            raise

    def _fork_worker(self, run: DagsterRun) -> None:
        args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        worker = start_worker(serialize_value(args), run.run_id, self.preload_modules)
        self._instance.add_run_tags(run.run_id, {TAG_WORKER: worker})
        self._run_ids.add(run.run_id)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        if TAG_WORKER not in run.tags:  # started by the code server
            return super().terminate(run_id)
        self._instance.report_run_canceling(run)
        worker = find_worker(run.tags[TAG_WORKER])
        if worker is None:
            self._instance.report_engine_event(
                f"Run worker ({run.tags[TAG_WORKER]}) is not running on this host: nothing to interrupt.",
                run, cls=self.__class__,
            )
            return False
        # what the code server sends its run on cancel: Dagster stops at the next step boundary or
        # interrupt check, marks the run canceled and leaves no partition half-written
        worker.send_signal(signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return self.fork_workers

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """Run monitoring: a run whose worker process is gone (OOM kill, kill -9) is marked failed."""
        tag = run.tags.get(TAG_WORKER)
        if tag is None or worker_on_other_host(tag):
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not started by a forked worker on this host")
        if find_worker(tag) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {tag.split()[1]} is gone")
