"""Creating a run: Dagster as installed against each of the repository's patches that touch it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_run_creation.py [--runs 60] [--assets 10] [--checks 6]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_run_creation.py --postgres-url postgresql+psycopg2://...

A backfill's daemon creates every run it requests: a run of a study setting's chain targets ~10 assets
of one partition, and Dagster writes one "materialization planned" event per asset partition into the
run's own SQLite database (created and stamped for the run) and into the index database. Each variant
runs in a fresh interpreter on a fresh instance and creates ``--runs`` runs of a chain of ``--assets``
partitioned assets, one partition each, ``--checks`` of them with an asset check (defaults: a
PCA/random projection/SCVI setting's run, 10 assets and 6 checks). A variant is the daemon's Dagster
patches (``compute/dagster_patches.py``) it installs, through ``SCALING_ASSETS_DAGSTER_PATCHES``:

- ``off``: Dagster 1.13 as installed (events one by one, each in its own transaction on a connection
  opened for it; the new run database stamped by Alembic, which reads every migration script);
- ``alembic_scripts``, ``sqlite_event_batches``: one of the two patches that touch run creation on SQLite;
- ``on``: every patch, as the study daemon runs.

With ``--postgres-url`` (an empty database for each variant is made in it) the storage is PostgreSQL and
the variants are ``off`` and ``daemon_connection_pool``: the daemon's pooled connections, which that
patch sets up when the daemon starts (here: ``optimize_for_webserver`` with the patch's settings).

Prints the median and 90th percentile of ``create_run``'s wall time, its median CPU time (steadier on a
busy machine) and the event-log connections a run opened.
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
n_runs, n_assets, n_checks, postgres_url = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from scaling_assets.compute import dagster_patches
installed = dagster_patches.install()
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
@contextlib.contextmanager
def instance_at(home):
    if not postgres_url:
        with DagsterInstance.local_temp(home) as instance:
            yield instance
        return
    with open(os.path.join(home, "dagster.yaml"), "w") as f:
        json.dump({"storage": {"postgres": {"postgres_url": postgres_url}}, "telemetry": {"enabled": False}}, f)
    with DagsterInstance.from_config(home) as instance:
        if "daemon_connection_pool" in installed:  # what the patch has the daemon do when it starts
            instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600,
                                            max_overflow=dagster_patches.POOL_MAX_OVERFLOW)
        yield instance
with tempfile.TemporaryDirectory() as home, instance_at(home) as instance:
    storage, connects = instance.event_log_storage, [0]
    connect = storage._connect
    @contextlib.contextmanager
    def counting(shard):
        connects[0] += 1
        with connect(shard) as conn:
            yield conn
    if postgres_url:  # one engine connection a query unless pooled: count the engine's connects
        from sqlalchemy import event
        connects = [0]
        event.listen(storage._engine, "connect", lambda *a: connects.__setitem__(0, connects[0] + 1))
    else:
        storage._connect = counting
    seconds, cpu = [], []
    for i in range(n_runs):
        t, c = time.perf_counter(), time.process_time()
        instance.create_run_for_job(job, asset_selection=keys, tags={"dagster/partition": f"s{i}"})
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
print(json.dumps({"seconds": seconds, "cpu": cpu, "connections": connects[0]}))
"""


def run_variant(patches: str, runs: int, assets: int, checks: int, postgres_url: str = "") -> dict:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "SCALING_ASSETS_DAGSTER_PATCHES": patches}
    out = subprocess.run([sys.executable, "-c", CHILD, str(runs), str(assets), str(checks), postgres_url],
                         cwd=REPO, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"variant {patches} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = sorted(result["seconds"][1:])  # the first run also creates the index database
    return {"median_ms": 1000 * statistics.median(seconds),
            "p90_ms": 1000 * seconds[int(0.9 * (len(seconds) - 1))],
            "cpu_ms": 1000 * statistics.median(result["cpu"][1:]),
            "connections_per_run": result["connections"] / runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--assets", type=int, default=10, help="asset partitions a run targets")
    parser.add_argument("--checks", type=int, default=6, help="of those, how many carry an asset check")
    parser.add_argument("--postgres-url", default="",
                        help="a PostgreSQL server's URL (postgresql+psycopg2://user@host:port/db): a database "
                        "is created there for each variant")
    args = parser.parse_args()
    variants = (("off", "daemon_connection_pool") if args.postgres_url
                else ("off", "alembic_scripts", "sqlite_event_batches", "on"))
    results = {name: run_variant(name, args.runs, args.assets, args.checks, _fresh_database(args.postgres_url))
               for name in variants}
    print(f"create_run on {'PostgreSQL' if args.postgres_url else 'SQLite'}, {args.runs} runs of {args.assets} "
          f"assets x 1 partition each, {args.checks} checks; variant = SCALING_ASSETS_DAGSTER_PATCHES")
    print(f"{'':22} {'median':>9} {'p90':>9} {'CPU':>9} {'connections a run':>18} {'vs off':>7}")
    for name, r in results.items():
        print(f"{name:22} {r['median_ms']:7.1f}ms {r['p90_ms']:7.1f}ms {r['cpu_ms']:7.1f}ms "
              f"{r['connections_per_run']:18.1f} {results['off']['median_ms'] / r['median_ms']:6.1f}x")


def _fresh_database(url: str) -> str:
    """A new database on the server of ``url`` (its URL), or "" for SQLite."""
    if not url:
        return ""
    import uuid

    import psycopg2

    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        conn.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


if __name__ == "__main__":
    main()
