"""Creating a run on SQLite instance storage: Dagster as installed against the repository's patches.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_run_creation.py [--runs 60] [--assets 10] [--checks 6]

A backfill's daemon creates every run it requests: a run of a study setting's chain targets ~10 assets
of one partition, and Dagster writes one "materialization planned" event per asset partition into the
run's own SQLite database (created and stamped for the run) and into the index database. Each variant
runs in a fresh interpreter on a fresh instance (``DagsterInstance.local_temp``) and creates ``--runs``
runs of a chain of ``--assets`` partitioned assets, one partition each, ``--checks`` of them with an
asset check (defaults: a PCA/random projection/SCVI setting's run, 10 assets and 6 checks):

- ``dagster``: Dagster 1.13 as installed (events one by one, each in its own transaction on a connection
  opened for it; the new run database stamped by Alembic, which reads every migration script);
- ``patched``: ``scaling_assets.compute.dagster_patches.install()`` (the daemon and run workers load it
  with the run coordinator): the run's events in one transaction a database, the scripts read once.

Prints the median and 90th percentile of ``create_run`` and the event-log connections a run opened.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import contextlib, json, os, sys, tempfile, time
patched = sys.argv[1] == "patched"
n_runs, n_assets, n_checks = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if patched:
    from scaling_assets.compute import dagster_patches
    dagster_patches.install()
else:
    os.environ.pop("DAGSTER_EVENT_BATCH_SIZE", None)
import warnings
from dagster import AssetCheckSpec, DagsterInstance, Definitions, StaticPartitionsDefinition, asset
warnings.simplefilter("ignore")  # partitioned checks are a preview feature (the study uses them)

partitions = StaticPartitionsDefinition([f"s{i}" for i in range(n_runs)])
assets, parent = [], None
for i in range(n_assets):
    checks = ([AssetCheckSpec("in_range", asset=f"step{i}", blocking=True, partitions_def=partitions)]
              if i >= n_assets - n_checks else [])
    @asset(name=f"step{i}", partitions_def=partitions, deps=[parent] if parent else [], check_specs=checks)
    def _step():
        return None
    assets.append(_step)
    parent = _step
job = Definitions(assets=assets).resolve_implicit_global_asset_job_def()
keys = frozenset(a.key for a in assets)
with tempfile.TemporaryDirectory() as home, DagsterInstance.local_temp(home) as instance:
    storage, connects = instance.event_log_storage, [0]
    connect = storage._connect
    @contextlib.contextmanager
    def counting(shard):
        connects[0] += 1
        with connect(shard) as conn:
            yield conn
    storage._connect = counting
    seconds = []
    for i in range(n_runs):
        t = time.perf_counter()
        instance.create_run_for_job(job, asset_selection=keys, tags={"dagster/partition": f"s{i}"})
        seconds.append(time.perf_counter() - t)
print(json.dumps({"seconds": seconds, "connections": connects[0]}))
"""


def run_variant(name: str, runs: int, assets: int, checks: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(runs), str(assets), str(checks)], cwd=REPO,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO),
                                                                           "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = sorted(result["seconds"][1:])  # the first run also creates the index database
    return {"median_ms": 1000 * statistics.median(seconds),
            "p90_ms": 1000 * seconds[int(0.9 * (len(seconds) - 1))],
            "connections_per_run": result["connections"] / runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--assets", type=int, default=10, help="asset partitions a run targets")
    parser.add_argument("--checks", type=int, default=6, help="of those, how many carry an asset check")
    args = parser.parse_args()
    results = {name: run_variant(name, args.runs, args.assets, args.checks) for name in ("dagster", "patched")}
    print(f"create_run on SQLite, {args.runs} runs of {args.assets} assets x 1 partition each, "
          f"{args.checks} checks")
    print(f"{'':10} {'median':>9} {'p90':>9} {'connections a run':>18}")
    for name, r in results.items():
        print(f"{name:10} {r['median_ms']:7.1f}ms {r['p90_ms']:7.1f}ms {r['connections_per_run']:18.1f}")
    print(f"speed-up (median): {results['dagster']['median_ms'] / results['patched']['median_ms']:.1f}x")


if __name__ == "__main__":
    main()
