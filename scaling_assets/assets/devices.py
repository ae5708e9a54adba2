"""Where a step runs: a device lease for GPU steps (CPU when there is no GPU), logged in the step."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def step_device(context, asset_name: str, n_genes: int):
    """Yield the torch device for this step ("cuda:N" or "cpu"), holding a lease on it meanwhile.

    Runs launched by the GPU-aware coordinator carry their device as a run tag; runs started with
    ``dagster asset materialize`` (no coordinator) pick a device with room through the same lease
    ledger, so concurrent runs cannot oversubscribe a GPU.
    """
    from scaling_assets.gpu.leases import gpu_step
    from scaling_assets.gpu.needs import asset_need_mib
    from scaling_assets.gpu.nvml import FAKE_NVML_ENV

    limit_threads(context)
    need = asset_need_mib(asset_name, n_genes)
    if need <= 0:
        yield "cpu"
        return
    # run_id lets a retried step avoid the GPU it ran out of memory on
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


def oom_retry_policy(max_retries: int = 2, delay_s: float = 30.0):
    """Dagster retry policy for GPU assets: bounded retries with exponential backoff and jitter.
    The retried step re-enters ``gpu_step``, which avoids the GPU that ran out of memory."""
    from dagster import Backoff, Jitter, RetryPolicy

    return RetryPolicy(max_retries=max_retries, delay=delay_s, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def retry_policy_for(asset_name: str):
    """Bounded retries for out-of-memory failures of GPU steps; None for CPU-only steps."""
    from scaling_assets.gpu.needs import GPU_ASSETS

    return oom_retry_policy() if asset_name in GPU_ASSETS else None
