"""Which materialised partitions are stale because what they were made from was made again.

A partition is *superseded* when one of its parent partitions was materialised after it: it was made
from the parent's previous version (a model retrained after its embeddings and MI, a split redone after
its pools). Rebuilding a partition therefore rebuilds what was made from it, whatever the reason it was
rebuilt: its folder deleted, its file replaced and found by ``study verify``, a UI re-materialisation, a
code version change (``versions.outdated_partitions``).

Dagster's own staleness does not see it: an asset with a code version gets a *logical* data version (a
hash of its code version and its inputs' data versions), so a model retrained with the same code and
inputs has the same data version as before and its embeddings are not "upstream data changed", even
when the training (SCVI, Geneformer) gave other weights; and the input event pointer Dagster records is
the parent asset's latest materialisation of any partition, not of the partition read. The order of the
instance's materialisations is exact: a child's run reads its parent after the parent's materialisation
was stored, so a child's latest materialisation has a larger storage id than its parents' unless a
parent was materialised again since.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagster import AssetKey, DagsterEventType, DagsterInstance

from scaling_assets.compute.dagster_compat import AssetKeyPartitionKey


def latest_storage_ids(instance: DagsterInstance, key: AssetKey, partitioned: bool) -> dict[str | None, int]:
    """Partition key (None: unpartitioned) -> storage id of its latest materialisation; one query per asset."""
    if partitioned:
        return dict(instance.event_log_storage.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION))
    records = instance.fetch_materializations(key, limit=1).records
    return {None: records[0].storage_id} if records else {}


def latest_materialisations(instance: DagsterInstance, asset_graph) -> dict[AssetKey, dict[str | None, int]]:
    """``latest_storage_ids`` of every asset of the graph."""
    return {key: latest_storage_ids(instance, key, asset_graph.get(key).partitions_def is not None)
            for key in asset_graph.materializable_asset_keys}


def superseded_partitions(instance: DagsterInstance, asset_graph,
                          latest: dict[AssetKey, dict[str | None, int]] | None = None) -> set[AssetKeyPartitionKey]:
    """Materialised partitions one of whose parent partitions was materialised after them (``latest``:
    ``latest_materialisations``, when the caller has read it)."""
    latest = latest_materialisations(instance, asset_graph) if latest is None else latest
    superseded = set()
    for key, ids in latest.items():
        for partition, parent_id in ids.items():
            try:
                children = asset_graph.get_children_partitions(key, partition)
            except Exception:  # a partition the study's grid no longer has: nothing of the grid reads it
                continue
            for child in children:
                child_id = latest.get(child.asset_key, {}).get(child.partition_key)
                if child_id is not None and child_id < parent_id:
                    superseded.add(child)
    return superseded


def with_dependants(asset_graph, partitions: Iterable[AssetKeyPartitionKey]) -> set[AssetKeyPartitionKey]:
    """The partitions and every partition downstream of them."""
    found = set(partitions)
    frontier = list(found)
    while frontier:
        node = frontier.pop()
        for child in asset_graph.get_children_partitions(node.asset_key, node.partition_key):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found
