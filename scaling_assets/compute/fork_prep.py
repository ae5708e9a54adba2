"""Imported last by the run workers' forkserver (``run_workers``), after the heavy libraries.

``gc.freeze()`` moves every object imported so far into the collector's permanent generation: a
forked worker's garbage collections then no longer write to (and so copy) the pages of the preloaded
torch/scikit-learn/Dagster objects it shares with the server and with every other worker. It also
installs the run workers' Dagster patch (``dagster_patches.RUN_WORKER_PATCHES``) once for all workers
and resolves the SQLite storages' Alembic heads with it (each worker used to load every migration
script to find them).
"""

import gc

from scaling_assets.compute import dagster_patches

dagster_patches.install(only=dagster_patches.RUN_WORKER_PATCHES)
dagster_patches.warm_alembic_heads()
gc.collect()
gc.freeze()
