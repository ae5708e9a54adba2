"""Run study runs on a Ray cluster: dagster-ray's run launcher with GPU-memory-aware requests.

Each Dagster run becomes one Ray job (``RayRunLauncher``), so the run queue (``GpuAwareRunCoordinator``
or ``QueuedRunCoordinator``), backfills and run monitoring work as on one machine. What this adds:

- the run's GPU need (run tag ``scaling_assets/gpu_need_mib``, from ``needs.py``) becomes a fractional
  Ray request, ``num_gpus = need / gpu_memory_mib`` of the cluster's GPU type, so Ray packs several
  small runs on one GPU and never gives a run a GPU too small for it; a run needing more than one GPU
  is refused with a message naming its need;
- the job's entrypoint is ``ray_entry``, which on the node checks that the study root is the shared
  storage the submitter wrote a marker to, records the Ray node and GPU as run tags, then runs the
  usual ``dagster api execute_run``.

Ray is imported only by dagster-ray and inside functions: the default install needs no Ray.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

from dagster import Field, IntSource, Noneable, StringSource
from dagster_ray import RayRunLauncher
from dagster_ray.core.run_launcher import RayLauncherConfig, get_job_submission_id_from_run_id

from scaling_assets.compute.coordinator import run_need_mib
from scaling_assets.compute.dagster_compat import ExecuteRunArgs, LaunchRunContext
from scaling_assets.fs import write_text_atomic

TAG_RAY_CONFIG = "dagster-ray/config"  # dagster-ray reads per-run resource requests from this tag
TAG_RAY_NODE = "scaling_assets/ray_node"
TAG_RAY_GPU = "scaling_assets/ray_gpu"
MARKER_NAME = ".scaling_assets_shared_root"
GPU_FRACTION_STEP = 0.01  # Ray rounds fractional GPUs to 1e-4; whole percents keep tags readable


class RunTooLargeError(ValueError):
    pass


def ray_request(need_mib: int, gpu_memory_mib: int, cpus_per_run: float) -> dict[str, float]:
    """Ray resources for a run needing ``need_mib`` of GPU memory on GPUs of ``gpu_memory_mib``."""
    if need_mib <= 0:
        return {"num_cpus": cpus_per_run, "num_gpus": 0}
    if need_mib > gpu_memory_mib:
        raise RunTooLargeError(
            f"run needs {need_mib} MiB of GPU memory, more than one GPU of the cluster offers "
            f"({gpu_memory_mib} MiB, ray run launcher config gpu_memory_mib)"
        )
    fraction = math.ceil(need_mib / gpu_memory_mib / GPU_FRACTION_STEP) * GPU_FRACTION_STEP
    return {"num_cpus": cpus_per_run, "num_gpus": round(min(1.0, fraction), 4)}


def write_root_marker(root: Path) -> str:
    """Write a fresh token under the study root (temp file + rename); nodes must read it back."""
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    write_text_atomic(root / MARKER_NAME, token)
    return token


def _default_study_root() -> Path:
    from scaling_assets.study.spec import load_study

    return load_study(os.environ.get("SCALING_ASSETS_STUDY")).root


class StudyRayRunLauncher(RayRunLauncher):
    """``RayRunLauncher`` that sizes each run's Ray request from its GPU need (see module doc)."""

    def __init__(
        self,
        gpu_memory_mib: int,
        study_root: str | None = None,
        cpus_per_run: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.gpu_memory_mib = gpu_memory_mib
        self.cpus_per_run = cpus_per_run
        self._study_root = Path(study_root).resolve() if study_root else None
        self._token: str | None = None

    @classmethod
    def config_type(cls):
        return {
            "ray": RayLauncherConfig.to_config_schema().as_field(),
            "gpu_memory_mib": Field(
                IntSource, description="Memory of one GPU of the cluster's GPU type (e.g. 81559 for an H100 80GB)."
            ),
            "cpus_per_run": Field(float, is_required=False, default_value=1.0, description="Ray CPUs per run."),
            "study_root": Field(
                Noneable(StringSource), is_required=False, default_value=None,
                description="Shared study root every node must see (default: the root of $SCALING_ASSETS_STUDY).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        extra = {k: v for k, v in config_value.items() if k != "ray"}
        return cls(inst_data=inst_data, **config_value["ray"], **extra)

    @property
    def study_root(self) -> Path:
        if self._study_root is None:
            self._study_root = _default_study_root().resolve()
        return self._study_root

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        need = run_need_mib(run.tags)
        try:
            request = ray_request(need, self.gpu_memory_mib, self.cpus_per_run)
        except RunTooLargeError as exc:
            self._instance.report_run_failed(run, f"Not submitted to Ray: {exc}")
            return
        user = RayLauncherConfig.from_tags(run.tags).model_dump(exclude_none=True)
        self._instance.add_run_tags(run.run_id, {TAG_RAY_CONFIG: RayLauncherConfig(**{**request, **user}).model_dump_json()})
        run = self._instance.get_run_by_id(run.run_id) or run
        if self._token is None:  # once per launcher: every node must read this token back
            self._token = write_root_marker(self.study_root)
        execute = ExecuteRunArgs(
            job_origin=run.job_code_origin, run_id=run.run_id,
            instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True,
        ).get_command_args()[-3:]  # "api", "execute_run", serialized args
        python = run.job_code_origin.executable_path or "python"  # the same path on every node
        entry = [python, "-m", "scaling_assets.compute.ray_entry", self.address, str(self.study_root), self._token,
                 "--", python, "-m", "dagster", *execute]
        entry[-1] = "'" + entry[-1] + "'"  # the serialized args are JSON inside a shell command
        self._instance.report_engine_event(
            f"Ray request: {request['num_gpus']} GPU ({need} MiB of {self.gpu_memory_mib}), "
            f"{request['num_cpus']} CPU",
            run, cls=self.__class__,
        )
        self._launch_ray_job(get_job_submission_id_from_run_id(run.run_id), " ".join(entry), run)

    # A run whose node died is marked failed by run monitoring and retried as a new run (its
    # partitions were staged, never half-written); resuming in place would skip the entry checks.
    @property
    def supports_resume_run(self):
        return False

    @property
    def supports_run_worker_crash_recovery(self):
        return False
