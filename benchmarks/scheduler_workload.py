"""The synthetic GPU run of ``bench_scheduler.py``: one op that takes a device lease through the real
lease ledger for the run's ``scaling_assets/gpu_need_mib`` (its ``needs.py`` estimate), sleeps for the
run's ``bench/sleep_s`` while holding it, and writes what happened to ``$BENCH_SCHEDULER_OUT``.
Each run is a partition of the job (its grid point's setting key, ``n=<N>_q=<q>_s=<seed>``), as a
study's runs are, so the coordinator orders it by its training-set size as it does those.
In-process executor: one process per run (the run worker), as a single-step run has no use for more.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
from dagster import Definitions, DynamicPartitionsDefinition, in_process_executor, job, op

from scaling_assets.gpu.leases import gpu_step
from scaling_assets.gpu.needs import TAG_GPU_NEED

TAG_SLEEP = "bench/sleep_s"
SETTINGS = DynamicPartitionsDefinition(name="bench_settings")


@op
def hold_gpu(context) -> None:
    tags = context.run.tags
    need, sleep_s = int(tags[TAG_GPU_NEED]), float(tags[TAG_SLEEP])
    op_start = time.time()
    cpu_start = sum(os.times()[:2])  # the worker's CPU seconds before its op: fork, Dagster's run start
    with gpu_step(tags, need, log=context.log.info, run_id=context.run_id, timeout_s=3600, poll_s=1) as placed:
        leased = time.time()
        time.sleep(sleep_s)
    released = time.time()
    mem = psutil.Process().memory_full_info()  # PSS: shared pages of the forked worker count in part
    record = {
        "run_id": context.run_id, "device": placed.device, "reason": placed.reason, "need_mib": need,
        "op_start": op_start, "leased": leased,
        "released": released, "rss_mib": mem.rss / 2**20,
        "pss_mib": mem.pss / 2**20, "uss_mib": mem.uss / 2**20, "cpu_s_to_op_start": cpu_start,
    }
    (Path(os.environ["BENCH_SCHEDULER_OUT"]) / f"{context.run_id}.json").write_text(json.dumps(record))


@job(executor_def=in_process_executor, partitions_def=SETTINGS)
def gpu_sleep():
    hold_gpu()


defs = Definitions(jobs=[gpu_sleep])
