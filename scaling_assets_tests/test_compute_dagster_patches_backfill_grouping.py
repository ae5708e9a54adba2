"""The asset backfill groups a setting's chain into one run even when its seeds' shared data finish apart.

A study's chain (a per-setting record -> model -> MI, all on the setting partitions) hangs under seed-level
shared data. Dagster's backfill puts a child into its parent's run only when the child's whole unrequested
subset equals what the parent requests in that tick, so once the first seed's chain had materialised,
every later seed but the last ran its chain one asset a run (`compute/dagster_patches.py`). Here a
miniature of that graph is backfilled through Dagster's own backfill iteration, the seeds' runs executed
one at a time with a tick in between, as the daemon would see them finish.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
from dagster import (
    AssetIn,
    AssetKey,
    Definitions,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
    asset,
    in_process_executor,
)

SEEDS = ["0", "1", "2"]
SETTINGS = [f"n={n}_s={s}" for s in SEEDS for n in (10, 20)]
seeds = StaticPartitionsDefinition(SEEDS)
settings = StaticPartitionsDefinition(SETTINGS)
setting_to_seed = StaticPartitionMapping({s: [k for k in SETTINGS if k.endswith(f"_s={s}")] for s in SEEDS})


@asset(partitions_def=seeds)
def pool(context):
    return context.partition_key


@asset(partitions_def=settings, ins={"pool": AssetIn(partition_mapping=setting_to_seed)})
def train(context, pool):
    return context.partition_key


@asset(partitions_def=settings)
def model(train):
    return train


@asset(partitions_def=settings)
def mi(model):
    return model


defs = Definitions(assets=[pool, train, model, mi], executor=in_process_executor)
PATCHES = ("backfill_grouping", "backfill_snapshot_reads")


def install_patches() -> None:
    from scaling_assets.compute import dagster_patches

    if not set(PATCHES) <= set(dagster_patches.install(only=PATCHES)):
        pytest.skip("the Dagster patches are off here (SCALING_ASSETS_DAGSTER_PATCHES, or an untested Dagster)")


def dagster_alone(monkeypatch, module, name: str) -> None:
    """``module.name`` as Dagster has it, patched or not, for the rest of the test."""
    function = getattr(module, name)
    monkeypatch.setattr(module, name, getattr(function, "__wrapped__", function))


@contextlib.contextmanager
def backfill_of_the_graph(tmp_path: Path):
    """A backfill of the whole graph on a test instance: yields the instance, a tick of Dagster's backfill
    iteration, and a function that executes a launched run (runs are launched, not executed, by a tick)."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import execute_run
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import (
        InProcessTestWorkspaceLoadTarget,
        create_test_daemon_workspace_context,
        instance_for_test,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._daemon.backfill import execute_backfill_iteration

    here = str(Path(__file__).parent)
    origin = LoadableTargetOrigin(python_file=__file__, attribute="defs", working_directory=here)
    repo = ReconstructableRepository.for_file(__file__, "defs", here)
    overrides = {  # runs are launched as the backfill asks, and executed by the test
        "run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }
    logger = logging.getLogger("test_compute_dagster_patches_backfill_grouping")
    tmp_path.mkdir(parents=True)
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance, \
            create_test_daemon_workspace_context(
                InProcessTestWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin)), instance) as workspace:
        instance.add_backfill(PartitionBackfill.from_asset_partitions(
            backfill_id="grouping", asset_graph=workspace.create_request_context().asset_graph,
            partition_names=None, asset_selection=[AssetKey(k) for k in ("pool", "train", "model", "mi")],
            backfill_timestamp=0.0, tags={}, dynamic_partitions_store=instance, all_partitions=True,
            title=None, description=None, run_config=None))

        def tick():
            list(execute_backfill_iteration(workspace, logger))

        def execute(run):
            job = repo.get_reconstructable_job("__ASSET_JOB").get_subset(asset_selection=run.asset_selection)
            assert execute_run(job, run, instance).success

        yield instance, tick, execute


def launched_runs(instance):
    from dagster._core.storage.dagster_run import DagsterRunStatus

    return [r for r in reversed(instance.get_runs()) if r.status == DagsterRunStatus.STARTING]


def backfill_runs(tmp_path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(partition, assets) of each run of a whole backfill, executing one run per daemon tick, the
    chains of finished seeds before the next seed's pool."""
    with backfill_of_the_graph(tmp_path) as (instance, tick, execute):
        order = []
        for _ in range(40):
            tick()
            launched = launched_runs(instance)
            if not launched:
                break
            run = min(launched, key=lambda r: r.asset_selection == {AssetKey("pool")})  # chains first, in order
            execute(run)
            order.append((run.tags["dagster/partition"], tuple(sorted(k.path[-1] for k in run.asset_selection))))
        else:
            raise AssertionError(f"the backfill still launched runs after 40 ticks: {order}")
        return order


def materialised_by_a_tick_while_a_chain_run_writes(tmp_path: Path, monkeypatch) -> set[str]:
    """A chain run executes while a tick reads the new materialisations, just after the tick has read its
    first asset: which of the run's assets does the tick count as materialised?"""
    with backfill_of_the_graph(tmp_path) as (instance, tick, execute):
        tick()  # the pools
        execute(next(r for r in launched_runs(instance) if r.tags["dagster/partition"] == "0"))
        tick()  # seed 0's chains
        chain = next(r for r in launched_runs(instance) if r.asset_selection != {AssetKey("pool")})
        read = instance.get_asset_event_summary_records

        def read_then_run_the_chain(*args, **kwargs):
            rows = read(*args, **kwargs)
            if kwargs.get("asset_key") in chain.asset_selection and not executed:
                executed.append(chain.run_id)
                execute(chain)  # writes train, then model, then mi
            return rows

        executed: list[str] = []
        monkeypatch.setattr(instance, "get_asset_event_summary_records", read_then_run_the_chain)
        tick()
        monkeypatch.undo()
        assert executed == [chain.run_id]
        done = instance.get_backfill("grouping").asset_backfill_data.materialized_subset
        partition = chain.tags["dagster/partition"]
        by_asset = done.partitions_subsets_by_asset_key
        return {k.path[-1] for k in chain.asset_selection if k in by_asset and partition in by_asset[k]}


def test_each_setting_chain_is_one_run_when_the_seeds_finish_one_after_another(tmp_path):
    from dagster._core.execution import asset_backfill

    install_patches()
    assert hasattr(asset_backfill._should_backfill_atomic_asset_subset_unit, "__wrapped__")

    runs = backfill_runs(tmp_path / "patched")
    assert sorted(runs) == sorted([(s, ("pool",)) for s in SEEDS] + [(k, ("mi", "model", "train")) for k in SETTINGS])


def test_dagster_alone_splits_the_chains_of_the_middle_seeds(tmp_path, monkeypatch):
    """What the patch is for; if a Dagster upgrade groups these runs itself, this fails and the patch can go."""
    from dagster._core.execution import asset_backfill

    dagster_alone(monkeypatch, asset_backfill, "_should_backfill_atomic_asset_subset_unit")

    runs = backfill_runs(tmp_path / "dagster")
    # seed 0 came first (no model materialised yet) and seed 2 last (nothing else left): grouped;
    # seed 1 ran while seed 2's pool was pending: one asset a run
    assert sorted(r for r in runs if r[0].endswith("_s=1")) == sorted(
        (k, (a,)) for k in SETTINGS if k.endswith("_s=1") for a in ("train", "model", "mi"))
    assert [r for r in runs if r[0].endswith("_s=0")] == [(k, ("mi", "model", "train")) for k in SETTINGS[:2]]


def test_a_tick_counts_a_runs_materialisations_all_or_none(tmp_path, monkeypatch):
    install_patches()
    # the tick's reads stop at the newest event on entry: the chain's three are the next tick's
    assert materialised_by_a_tick_while_a_chain_run_writes(tmp_path / "patched", monkeypatch) == set()


def test_dagster_alone_counts_a_runs_later_materialisations_without_its_earlier_ones(tmp_path, monkeypatch):
    from dagster._core.execution import asset_backfill

    dagster_alone(monkeypatch, asset_backfill, "get_asset_backfill_iteration_materialized_subset")
    seen = materialised_by_a_tick_while_a_chain_run_writes(tmp_path / "dagster", monkeypatch)
    assert seen and seen != {"train", "model", "mi"}  # some of the run, not all: the split stop 36 measured
