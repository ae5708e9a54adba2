"""The platform's Dagster plugin: the GPU-aware run coordinator and run launcher (``dagster.yaml``) with
its forked run workers, the Ray launcher and its run entry point, and the instance files for a
``DAGSTER_HOME``; the Dagster patches the study daemon installs (``dagster_patches``) and the private
Dagster names the package needs (``dagster_compat``): the only two modules that import ``dagster._``.

They build on ``scaling_assets.gpu`` (NVML, leases, needs, placement), which knows nothing of Dagster.
"""
