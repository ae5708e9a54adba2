"""The code location: asset graph, partitions and the partition mappings between stages."""

import time

import pytest
from dagster import AssetKey

from scaling_assets.definitions import build_definitions
from scaling_assets.study.spec import load_study


@pytest.fixture(scope="module")
def graph():
    return build_definitions(load_study("default")).resolve_asset_graph()


def parents(graph, child, partition, parent):
    result = graph.get_parent_partition_keys_for_child(partition, AssetKey(parent), AssetKey(child))
    return sorted(result.partitions_subset.get_partition_keys())


def test_every_stage_exists_for_every_dataset(graph):
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for ds in ("cite", "lineage", "spatial", "development"):
        for stage in ("raw_counts", "split", "pool_counts", "eval_counts", "gene_medians", "eval_corpus", "pool_corpus",
                      "train_counts", "train_corpus"):
            assert f"{ds}/{stage}" in keys
        for algo in ("pca", "random_projection", "scvi", "geneformer"):
            for stage in ("model", "embeddings", "mi"):
                assert f"{ds}/{stage}_{algo}" in keys
    for table in ("mi_table", "parameter_table", "hyperparameter_table", "noise_law_fits", "size_law_fits", "scaling_plots"):
        assert f"results/{table}" in keys


def test_assets_are_partitioned_only_by_what_they_depend_on(graph):
    def partition_keys(key):
        pd = graph.get(AssetKey(key)).partitions_def
        return None if pd is None else pd.get_partition_keys()

    assert partition_keys(["cite", "raw_counts"]) is None
    # per seed, for every seed an algorithm trains with (SCVI's second seed included): a setting's whole
    # chain then depends only on per-seed assets (one run per setting)
    for asset in ("split", "gene_medians", "pca_genes", "pool_counts", "eval_counts"):
        assert partition_keys(["cite", asset]) == ["s=42", "s=1404"]
    # the default study: PCA on 8 sizes x 4 qualities, SCVI on its own grid (2 sizes x 2 seeds), random
    # projection at one size, train_counts the union
    assert "n=400_q=0.1_s=1404" in partition_keys(["cite", "model_scvi"])
    assert "n=3200_q=0.1_s=42" not in partition_keys(["cite", "model_scvi"])
    assert len(partition_keys(["cite", "model_scvi"])) == 16
    assert len(partition_keys(["cite", "model_random_projection"])) == 4
    assert len(partition_keys(["cite", "model_pca"])) == 32
    assert len(partition_keys(["cite", "train_counts"])) == 32 + 8  # PCA's, and SCVI's of seed 1404
    # Geneformer runs on its own smaller grid (a smoke test), and so do its corpora
    for asset in ("train_corpus", "model_geneformer", "embeddings_geneformer", "mi_geneformer"):
        assert partition_keys(["cite", asset]) == ["n=3200_q=0.03_s=42"]
    assert partition_keys(["cite", "eval_corpus"]) == partition_keys(["cite", "pool_corpus"]) == ["q=0.03_s=42"]
    assert partition_keys(["results", "mi_table"]) is None


def test_a_setting_partition_loads_exactly_its_upstream_partitions(graph):
    setting = "n=1600_q=0.1_s=42"
    assert parents(graph, ["cite", "train_counts"], setting, ["cite", "pool_counts"]) == ["s=42"]
    assert parents(graph, ["cite", "pool_counts"], "s=42", ["cite", "split"]) == ["s=42"]
    # one median table per seed (full-quality pool), used by the corpora of every quality
    gf = "n=3200_q=0.03_s=42"
    assert parents(graph, ["cite", "gene_medians"], "s=42", ["cite", "pool_counts"]) == ["s=42"]
    assert parents(graph, ["cite", "pool_corpus"], "q=0.03_s=42", ["cite", "gene_medians"]) == ["s=42"]
    assert parents(graph, ["cite", "pool_corpus"], "q=0.03_s=42", ["cite", "pool_counts"]) == ["s=42"]
    assert parents(graph, ["cite", "train_corpus"], gf, ["cite", "pool_corpus"]) == ["q=0.03_s=42"]
    assert parents(graph, ["cite", "eval_corpus"], "q=0.03_s=42", ["cite", "gene_medians"]) == ["s=42"]
    assert parents(graph, ["cite", "eval_corpus"], "q=0.03_s=42", ["cite", "eval_counts"]) == ["s=42"]
    assert parents(graph, ["cite", "model_pca"], setting, ["cite", "pca_genes"]) == ["s=42"]
    assert parents(graph, ["cite", "model_geneformer"], gf, ["cite", "eval_corpus"]) == ["q=0.03_s=42"]
    assert parents(graph, ["cite", "mi_geneformer"], gf, ["cite", "eval_counts"]) == ["s=42"]
    assert parents(graph, ["cite", "embeddings_pca"], setting, ["cite", "model_pca"]) == [setting]
    assert parents(graph, ["cite", "embeddings_pca"], setting, ["cite", "eval_counts"]) == ["s=42"]
    assert parents(graph, ["cite", "mi_pca"], setting, ["cite", "eval_counts"]) == ["s=42"]
    children = graph.get_child_partition_keys_of_parent("s=42", AssetKey(["cite", "eval_counts"]),
                                                        AssetKey(["cite", "mi_scvi"]))
    assert len(children) == 8
    scvi = "n=400_q=0.1_s=1404"
    assert parents(graph, ["cite", "train_counts"], scvi, ["cite", "pool_counts"]) == ["s=1404"]
    assert parents(graph, ["cite", "mi_scvi"], scvi, ["cite", "eval_counts"]) == ["s=1404"]
    gf_children = graph.get_child_partition_keys_of_parent("q=0.03_s=42", AssetKey(["cite", "pool_corpus"]),
                                                           AssetKey(["cite", "train_corpus"]))
    assert list(gf_children) == [gf]


def test_paper_grid_loads_in_seconds(monkeypatch):
    monkeypatch.setenv("SCALING_ASSETS_DATA", "/data")
    start = time.perf_counter()
    graph = build_definitions(load_study("paper", check_paths=False)).resolve_asset_graph()
    elapsed = time.perf_counter() - start
    assert len(graph.get(AssetKey(["development", "model_geneformer"])).partitions_def.get_partition_keys()) == 300
    assert elapsed < 30  # a generous bound for a loaded CI machine; measured ~1.5 s here


def test_module_exposes_defs_lazily():
    import scaling_assets

    assert "defs" in dir(scaling_assets)
    assert scaling_assets.defs.resolve_asset_graph() is not None


def test_serial_plan_batches_share_one_partitions_definition(graph):
    from scaling_assets.study.serial import plan

    study = load_study("default")
    batches = plan(study)
    for batch in batches:
        defs = {graph.get(key).partitions_def for key in batch.keys}
        assert len(defs) == 1, batch.label
        if batch.partition is not None:
            assert all(batch.partition in d.get_partition_keys() for d in defs), batch.label
    geneformer = [b for b in batches if b.label.startswith("cite ") and b.label.endswith(" geneformer")]
    assert [b.partition for b in geneformer] == ["n=3200_q=0.03_s=42"]
    assert geneformer[0].blocked_by == ["cite", "cite|s=42", "cite|n=3200_q=0.03_s=42", "cite|q=0.03_s=42"]
    corpus = [b for b in batches if b.label == "cite q=0.03_s=42"]
    assert [k.path[-1] for k in corpus[0].keys] == ["eval_corpus", "pool_corpus"]
