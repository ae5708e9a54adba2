"""Entrypoint of a study run's Ray job, on the node Ray chose (see ``ray_launcher``).

    python -m scaling_assets.compute.ray_entry <job_server> <study_root> <token> -- <dagster api execute_run ...>

1. refuses to run (the Dagster run fails with the reason) when the study root is not the shared
   storage the submitter wrote ``<token>`` to;
2. tags the run with the Ray node and the GPU Ray assigned (``CUDA_VISIBLE_DEVICES``), and pins the
   run's GPU steps to that GPU (``scaling_assets/device``; NVML numbering, so the variable is dropped);
3. runs the Dagster run worker (``dagster api execute_run``) in this process.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from scaling_assets.gpu.needs import TAG_DEVICE
from scaling_assets.compute.ray_launcher import MARKER_NAME, TAG_RAY_GPU, TAG_RAY_NODE


def root_problem(root: Path, token: str) -> str | None:
    marker = root / MARKER_NAME
    try:
        seen = marker.read_text().strip()
    except OSError as exc:
        seen = f"unreadable ({exc.__class__.__name__})"
    if seen == token:
        return None
    return (
        f"study root {root} is not shared storage: node {socket.gethostname()} reads {marker} as "
        f"{seen!r}, the submitter wrote {token!r}. Put the study root (study YAML field 'root') on a "
        f"file system every Ray node mounts at the same path."
    )


def ray_node_id(job_server: str, submission_id: str) -> str:
    """The node running this job's entrypoint, as Ray's job server records it (a driver's own
    ``ray.init`` could attach to another node's raylet on the same host)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(job_server).get_job_info(submission_id).driver_node_id or "unknown"


def main(argv: list[str]) -> int:
    from dagster import DagsterInstance, deserialize_value

    from scaling_assets.compute.dagster_compat import ExecuteRunArgs, dagster_cli_main

    job_server, root, token, sep, *command = argv
    assert sep == "--", "usage: ray_entry JOB_SERVER ROOT TOKEN -- COMMAND..."
    args = deserialize_value(command[-1].strip("'"), ExecuteRunArgs)
    with DagsterInstance.from_ref(args.instance_ref) as instance:
        run = instance.get_run_by_id(args.run_id)
        problem = root_problem(Path(root), token)
        if problem:
            instance.report_run_failed(run, problem)
            print(problem, file=sys.stderr)
            return 1
        gpu = os.environ.pop("CUDA_VISIBLE_DEVICES", "")
        tags = {TAG_RAY_NODE: ray_node_id(job_server, f"dagster-run-{run.run_id}"), TAG_RAY_GPU: gpu or "none"}
        if gpu:
            tags[TAG_DEVICE] = f"cuda:{gpu.split(',')[0]}"
        instance.add_run_tags(run.run_id, tags)
        instance.report_engine_event(
            f"On Ray node {tags[TAG_RAY_NODE]} ({socket.gethostname()}), GPU {tags[TAG_RAY_GPU]}", run
        )
    command[-1] = command[-1].strip("'")
    if command[1:3] == ["-m", "dagster"]:  # same interpreter: run the worker here, skip a 2nd start-up
        return dagster_cli_main(command[3:])
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
