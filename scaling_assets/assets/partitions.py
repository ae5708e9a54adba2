"""Partitions of one dataset's assets, and the built-in mappings between them.

Each dataset has its own asset group, so each can have its own size and quality grid. Inside a group:

    raw_counts                                      unpartitioned
    split, pool_counts, eval_counts, gene_medians,
    pca_genes                                       seed             s=42
    pool_corpus, eval_corpus (Geneformer's grid)    quality x seed   q=0.1_s=42
    train_counts, train_corpus, model_*, mi_* ...   setting          n=300_q=0.1_s=42

Upstream partitions map to downstream ones with ``StaticPartitionMapping`` only (custom
mapping classes are dropped from the snapshot the webserver and daemon use).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from dagster import AssetIn, AssetKey, StaticPartitionMapping, StaticPartitionsDefinition

from scaling_assets.study.spec import DatasetConfig, Study, parse_quality_seed_key, parse_setting_key, parse_seed_key


@dataclass(frozen=True)
class DatasetAssets:
    """What the asset factories of one dataset need: its config, its partitions, its asset keys."""

    study: Study
    config: DatasetConfig

    @property
    def name(self) -> str:
        return self.config.name

    def key(self, asset: str) -> AssetKey:
        return AssetKey([self.name, asset])

    @cached_property
    def seeds(self) -> StaticPartitionsDefinition:
        return StaticPartitionsDefinition(self.study.seed_keys())

    @cached_property
    def quality_seeds(self) -> StaticPartitionsDefinition:
        return StaticPartitionsDefinition(self.study.quality_seed_keys(self.name))

    @cached_property
    def settings(self) -> StaticPartitionsDefinition:
        return StaticPartitionsDefinition(self.study.setting_keys(self.name))

    def settings_of(self, algorithm: str | None) -> StaticPartitionsDefinition:
        """The settings an algorithm trains at: the dataset's, its own smaller grid's, or n=0 (frozen)."""
        if not self.study.has_own_grid(algorithm):
            return self.settings
        return StaticPartitionsDefinition(self.study.setting_keys(self.name, algorithm))

    def quality_seeds_of(self, algorithm: str | None) -> StaticPartitionsDefinition:
        if not self.study.has_own_grid(algorithm):
            return self.quality_seeds
        return StaticPartitionsDefinition(self.study.quality_seed_keys(self.name, algorithm))

    @cached_property
    def corpus_grid(self) -> str | None:
        """Whose grid the corpora are made at: the one model that reads them, or every quality and seed
        (None) when several do."""
        readers = [e.name for e in self.study.models.values() if e.reads_corpus]
        return readers[0] if len(readers) == 1 else None

    # -- inputs with their partition mappings -----------------------------------------------
    def raw_in(self) -> AssetIn:
        return AssetIn(key=self.key("raw_counts"))

    def split_in(self, downstream: str) -> AssetIn:
        """The split of the downstream partition's seed (downstream: 'quality_seed' or 'setting')."""
        return self.seed_in("split", downstream)

    def seed_in(self, asset: str, downstream: str, algorithm: str | None = None) -> AssetIn:
        """A per-seed asset seen from a 'quality_seed' or 'setting' partition (same seed); ``algorithm``:
        the downstream asset is partitioned by that algorithm's grid."""
        mapping: dict[str, list[str]] = {}
        if downstream == "quality_seed":
            for k in self.study.quality_seed_keys(self.name, algorithm):
                mapping.setdefault(f"s={parse_quality_seed_key(k)[1]}", []).append(k)
        else:
            for k in self.study.setting_keys(self.name, algorithm):
                mapping.setdefault(f"s={parse_setting_key(k).seed}", []).append(k)
        return AssetIn(key=self.key(asset), partition_mapping=StaticPartitionMapping(mapping))

    def quality_seed_in(self, asset: str, algorithm: str | None = None) -> AssetIn:
        """A quality x seed asset seen from a setting partition (same quality and seed)."""
        mapping: dict[str, list[str]] = {}
        for k in self.study.setting_keys(self.name, algorithm):
            mapping.setdefault(parse_setting_key(k).quality_seed_key, []).append(k)
        return AssetIn(key=self.key(asset), partition_mapping=StaticPartitionMapping(mapping))

    def same_in(self, asset: str, within: StaticPartitionsDefinition | None = None) -> AssetIn:
        """The same partition of an asset (identity mapping); ``within``: the downstream partitions when
        they are a subset of the upstream ones (an algorithm's own smaller grid)."""
        if within is None or within in (self.settings, self.quality_seeds):
            return AssetIn(key=self.key(asset))
        keys = within.get_partition_keys()
        return AssetIn(key=self.key(asset), partition_mapping=StaticPartitionMapping({k: [k] for k in keys}))

__all__ = ["DatasetAssets", "parse_seed_key", "parse_quality_seed_key", "parse_setting_key"]
