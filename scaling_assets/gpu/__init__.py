"""GPUs without Dagster: the NVML inventory (real or a fake for tests and benchmarks), device leases
with their ledger of promised memory, each run's GPU need from the model registry, and where queued
GPU runs go (the run queue's plan, ``placement``).

The Dagster side (run coordinator, launchers) is ``scaling_assets.compute``; the assets take leases
through ``scaling_assets.assets.devices``. Nothing in this package imports Dagster.
"""
