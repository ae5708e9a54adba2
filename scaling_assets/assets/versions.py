"""Code versions of the assets, so that a change of settings marks their partitions stale.

- ``model_<algorithm>``: the fingerprint of the algorithm's recorded hyperparameters and budget
  section (``models.versions.settings_version``): changing the study's budget or a setting marks
  every trained model of that algorithm stale, and through them their embeddings and MI. A study's own
  model adds its ``params`` (and a checkpoint's files): changing them marks that model alone stale.
- ``mi_<algorithm>``: the study's LMI options, and ``PROJECT_LMI_VERSION`` under the project's sampling
  (the `fast` preset), bumped when its estimates change; the `reference` preset's are latentmi's.
- the law fits and plots: the study's fit rules (and ``LAWS_VERSION``).
- a simulated dataset's raw counts: ``DATA_VERSION`` and the simulator's version.
- every other asset: ``DATA_VERSION``, bumped by hand when a stage writes different output from the
  same inputs.
- a dataset whose signals are not exactly a task's preset (it declares its own): its raw counts, split
  and MI carry a fingerprint of the signal list too (changing a signal re-checks the file, re-splits and
  re-measures); a preset adds nothing, so studies of the four tasks keep their versions.

Dagster shows a partition materialised under another code version as stale ("code version
changed"); ``outdated_partitions`` lists them, and what depends on them, for the study run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from dagster import AssetKey, AssetRecordsFilter, AssetsDefinition, DagsterEventType, DagsterInstance

from scaling_assets.assets.staleness import latest_storage_ids, with_dependants
from scaling_assets.compute.dagster_compat import CODE_VERSION_TAG, AssetKeyPartitionKey
from scaling_assets.data.simulate import SIMULATOR_VERSION
from scaling_assets.data.tasks import SIMULATED, TASKS
from scaling_assets.metrics.lmi_options import PROJECT_LMI_VERSION, resolve_options
from scaling_assets.models.versions import settings_version

DATA_VERSION = "2"  # 2: zero-UMI cells left out of training and validation sets
# The law fits and their plots: the fit rules, and LAWS_VERSION bumped when the fits change.
LAW_ASSETS = ("noise_law_fits", "size_law_fits", "scaling_plots")
LAWS_VERSION = "laws3"  # 3: the N-dependence test at 5%, the reference I_inf floor less 2 SE
SIGNAL_ASSETS = ("raw_counts", "split")  # with mi_<algorithm>: what a dataset's own signals change


def code_version(study, key: AssetKey) -> str:
    version = _code_version(study, key)
    config = study.datasets.get(key.path[0]) if len(key.path) > 1 else None
    if config is not None and key.path[-1] == "raw_counts" and config.source == SIMULATED:
        version += f"-sim{SIMULATOR_VERSION}"  # a new simulator writes other data
    if config is not None and key.path[-1] in SIGNAL_ASSETS + tuple(f"mi_{a}" for a in study.algorithms):
        if config.signals not in [t.signals for t in TASKS.values()]:
            specs = json.dumps([dataclasses.astuple(s) for s in config.signals], default=str)
            version += f"-signals-{hashlib.sha256(specs.encode()).hexdigest()[:8]}"
    return version


def _code_version(study, key: AssetKey) -> str:
    name = key.path[-1]
    for algorithm, entry in study.models.items():
        if name == f"model_{algorithm}":
            return settings_version(entry, study.budget)
        if name == f"mi_{algorithm}":
            lmi = json.dumps(study.lmi, sort_keys=True, default=str)
            version = f"{DATA_VERSION}-lmi-{hashlib.sha256(lmi.encode()).hexdigest()[:8]}"
            if resolve_options(study.lmi).sampling == "project":
                version += f"-{PROJECT_LMI_VERSION}"
            return version
    if name in LAW_ASSETS:
        return f"{DATA_VERSION}-{LAWS_VERSION}-{study.fit_rules}"
    return DATA_VERSION


def with_code_versions(study, assets: list[AssetsDefinition]) -> list[AssetsDefinition]:
    return [a.map_asset_specs(lambda spec: spec.replace_attributes(code_version=code_version(study, spec.key)))
            for a in assets]


def outdated_partitions(instance: DagsterInstance, asset_graph, latest: dict | None = None) -> set[AssetKeyPartitionKey]:
    """Materialised partitions recorded under another code version than their asset's current one,
    and every partition downstream of them (redoing a model changes its embeddings and MI). ``latest``:
    ``staleness.latest_materialisations``, when the caller has read it."""
    outdated = set()
    for key in asset_graph.materializable_asset_keys:
        current = asset_graph.get(key).code_version
        ids = None if latest is None else latest[key]
        recorded = recorded_code_versions(instance, key, asset_graph.get(key).partitions_def is not None, ids)
        outdated |= {AssetKeyPartitionKey(key, pk) for pk, version in recorded.items()
                     if version is not None and version != current}
    return with_dependants(asset_graph, outdated)


def recorded_code_versions(instance: DagsterInstance, key: AssetKey, partitioned: bool = True,
                           latest: dict[str | None, int] | None = None) -> dict[str | None, str | None]:
    """Partition key (None: unpartitioned) -> code version of its latest materialisation; None for one
    made before assets had code versions (Dagster then records the run id), which is kept: the settings
    it was made with are unknown, and redoing a whole paper-scale study on upgrade is not wanted."""
    if latest is None:
        latest = latest_storage_ids(instance, key, partitioned)  # one query per asset, not per partition
    ids = list(latest.values())
    versions = {}
    for i in range(0, len(ids), 500):  # SQLite bounds a query's variables
        for record in instance.fetch_materializations(AssetRecordsFilter(asset_key=key, storage_ids=ids[i:i + 500]),
                                                      limit=500).records:
            version = (record.asset_materialization.tags or {}).get(CODE_VERSION_TAG)
            versions.setdefault(record.partition_key, None if version == record.run_id else version)
    return versions
