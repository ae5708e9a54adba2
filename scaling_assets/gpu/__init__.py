"""GPUs without Dagster: the NVML inventory (real or a fake for tests and benchmarks), device leases
with their ledger of promised memory, and each run's GPU need from the model registry.

The Dagster side (run coordinator, launchers) is ``scaling_assets.compute``; the assets take leases
through ``scaling_assets.assets.devices``. Nothing in this package imports Dagster.
"""
