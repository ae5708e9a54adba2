"""Where a step runs: a device lease for GPU steps (CPU when there is no GPU), logged in the step."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager


@contextmanager
def step_device(context, asset_name: str, need: int):
    """Yield the torch device for this step ("cuda:N" or "cpu"), holding a lease on it meanwhile.
    ``need``: the step's GPU MiB (``ModelEntry.gpu_need_mib``; 0: the step runs on the CPU).

    Runs launched by the GPU-aware coordinator carry their device as a run tag; runs started with
    ``dagster asset materialize`` (no coordinator) pick a device with room through the same lease
    ledger, so concurrent runs cannot oversubscribe a GPU.
    """
    from scaling_assets.gpu.leases import gpu_step, is_oom
    from scaling_assets.gpu.nvml import FAKE_NVML_ENV

    limit_threads(context)
    if need <= 0:
        yield "cpu"
        return
    # run_id lets a retried step avoid the GPU it ran out of memory on
    try:
        with gpu_step(context.run.tags, need, log=context.log.info, run_id=context.run.run_id) as placement, \
                placement.reporting():
            context.log.info(f"{asset_name}: running on {placement.device} ({placement.reason})")
            if placement.device.startswith("cuda:") and os.environ.get(FAKE_NVML_ENV):
                # a simulated GPU (tests, benchmarks/bench_*.py): the lease is held on it, the work runs on the CPU
                yield "cpu"
                return
            if placement.device.startswith("cuda:"):
                import torch

                # Libraries that say plain "cuda" (HF Trainer, Lightning) then use the leased GPU.
                torch.cuda.set_device(int(placement.device.split(":")[1]))
            yield placement.device
    except Exception as error:
        if is_oom(error):
            raise oom_retry(context.retry_number) from error
        raise


def limit_threads(context) -> None:
    """Use the run's share of the cores (tag set by the run coordinator), so concurrent runs do not
    oversubscribe them. Runs without the tag (in-process debugging) keep the libraries' defaults."""
    from scaling_assets.gpu.needs import TAG_THREADS

    threads = context.run.tags.get(TAG_THREADS)
    if not threads:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(int(threads))
    threadpool_limits(int(threads))  # numpy/scipy/sklearn BLAS and OpenMP pools


OOM_RETRIES = 2
OOM_RETRY_DELAY_S = 30.0


def oom_retry(retry_number: int, max_retries: int = OOM_RETRIES, delay_s: float = OOM_RETRY_DELAY_S):
    """The retry of a GPU step that ran out of memory: at most ``max_retries``, after ``delay_s`` doubling
    with each retry, +-50% jitter. The retried step re-enters ``gpu_step``, which avoids the GPU that
    ran out of memory.

    Raised for out-of-memory errors only, not a Dagster ``RetryPolicy`` on the asset: a policy retries
    every failure (a bad input twice more, minutes later) and, by Dagster's design, an *interrupted*
    step too, so a cancelled run (Ctrl-C of ``study run``, Terminate in the UI) ran its GPU step again
    from the start and then the rest of the run, and ended as a success."""
    from dagster import RetryRequested

    delay = delay_s * 2 ** retry_number * random.uniform(0.5, 1.5)
    return RetryRequested(max_retries=max_retries, seconds_to_wait=delay)
