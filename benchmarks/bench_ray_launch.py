"""Submit-to-start latency of a Dagster run: StudyRayRunLauncher on a local Ray cluster vs the local
GpuAwareRunLauncher (one subprocess per run). Latency = launch_run called -> run STARTED (the run
worker has loaded the code and begun). Runs are launched one after another, each waited for.

    pip install -e '.[ray]' && python benchmarks/bench_ray_launch.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dagster import Definitions, job, op


@op
def noop():
    return None


@job
def noop_job():
    noop()


defs = Definitions(jobs=[noop_job])


def measure(launcher: dict, runs: int, tmp: Path) -> list[float]:
    from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test, poll_for_finished_run
    from dagster._core.workspace.load_target import PythonFileTarget

    home = Path(tempfile.mkdtemp(dir=tmp))
    target = PythonFileTarget(python_file=__file__, attribute="defs", working_directory=str(Path(__file__).parents[1]),
                              location_name="bench")
    overrides = {"run_launcher": launcher, "telemetry": {"enabled": False}}
    latencies = []
    with instance_for_test(overrides=overrides, temp_dir=str(home)) as instance, \
            create_test_daemon_workspace_context(target, instance) as context:
        workspace = context.create_request_context()
        remote = workspace.get_code_location("bench").get_repository("__repository__").get_full_job("noop_job")
        for _ in range(runs):
            run = instance.create_run_for_job(noop_job, remote_job_origin=remote.get_remote_origin(),
                                              job_code_origin=remote.get_python_origin())
            t0 = time.time()
            instance.launch_run(run.run_id, workspace)
            poll_for_finished_run(instance, run.run_id, timeout=120)
            latencies.append(instance.get_run_record_by_id(run.run_id).start_time - t0)
    return latencies


def main() -> None:
    from scaling_assets.compute.ray_local import start_local_cluster, stop_local_cluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    local = measure({"module": "scaling_assets.compute.coordinator", "class": "GpuAwareRunLauncher"}, args.runs, tmp)
    cluster, url, _ = start_local_cluster(head_cpus=1, nodes=({"num_cpus": 2, "num_gpus": 1},))
    try:
        on_ray = measure({"module": "scaling_assets.compute.ray_launcher", "class": "StudyRayRunLauncher",
                          "config": {"ray": {"address": url}, "gpu_memory_mib": 16000, "cpus_per_run": 0.5,
                                     "study_root": str(tmp)}}, args.runs, tmp)
    finally:
        stop_local_cluster(cluster)
    for name, xs in (("local launcher", local), ("Ray launcher", on_ray)):
        print(f"{name:15s} submit-to-start: median {statistics.median(xs):.2f} s, "
              f"min {min(xs):.2f}, max {max(xs):.2f} ({len(xs)} runs: {', '.join(f'{x:.2f}' for x in xs)})")


if __name__ == "__main__":
    main()
