"""The platform's Dagster plugin: the GPU-aware run coordinator and run launcher (``dagster.yaml``) with
its forked run workers, the Ray launcher and its run entry point, and the instance files for a
``DAGSTER_HOME``.

They build on ``scaling_assets.gpu`` (NVML, leases, needs), which knows nothing of Dagster.
"""
