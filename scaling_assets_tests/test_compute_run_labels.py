"""The run's ``scaling_assets/run`` tag names its setting(s) and chain once, whole; ``scaling_assets/steps``
lists every asset (issue 43 item 3: the label repeated each asset per dataset and was cut at 200
characters in 79 of the default study's 89 runs)."""

from __future__ import annotations

from scaling_assets.compute.run_labels import run_label, run_steps

DATASETS = ["cite", "development", "lineage", "spatial"]
CHAIN = ["train_counts", "model_scvi", "embeddings_scvi", "mi_scvi"]


def test_a_settings_chains_are_named_once_by_their_algorithms():
    names = [f"cite/{stage}_{algorithm}" for algorithm in ("scvi", "pca", "random_projection")
             for stage in ("mi", "model", "embeddings")] + ["cite/train_counts"]
    assert run_label(names, "n=800_q=1_s=42") == "cite n=800 q=1 s=42: pca, random_projection, scvi"
    assert run_steps(names) == ("cite: train_counts, model_pca, embeddings_pca, mi_pca, model_random_projection, "
                                "embeddings_random_projection, mi_random_projection, model_scvi, embeddings_scvi, mi_scvi")


def test_a_run_of_four_datasets_says_so_once_and_is_never_cut():
    names = [f"{d}/{a}" for d in DATASETS for a in CHAIN]
    assert run_label(names, "n=800_q=1_s=42") == "4 datasets n=800 q=1 s=42: scvi"
    assert run_steps(names) == "cite, development, lineage, spatial: train_counts, model_scvi, embeddings_scvi, mi_scvi"
    # every dataset and asset of a larger run, whole (the old label stopped at 200 characters)
    wide = [f"{d}/{stage}_{a}" for d in DATASETS for a in ("pca", "random_projection", "scvi", "geneformer")
            for stage in ("model", "embeddings", "mi")] + [f"{d}/train_counts" for d in DATASETS]
    steps = run_steps(wide)
    assert len(steps) > 200 and steps.count("mi_geneformer") == 1 and steps.endswith("mi_geneformer")
    assert run_label(wide, "n=800_q=1_s=42") == "4 datasets n=800 q=1 s=42: pca, random_projection, scvi, geneformer"


def test_datasets_with_different_steps_are_listed_apart():
    names = [f"cite/{a}" for a in CHAIN] + ["lineage/embeddings_scvi", "lineage/mi_scvi"]
    assert run_steps(names) == "cite: train_counts, model_scvi, embeddings_scvi, mi_scvi; lineage: embeddings_scvi, mi_scvi"
    assert run_label(names, "n=800_q=1_s=42") == "2 datasets n=800 q=1 s=42: scvi"


def test_part_of_a_chain_shared_data_and_results_name_their_steps():
    # a run resumed from its failure: what is left of the chain
    assert run_label(["cite/mi_pca", "cite/embeddings_pca"], "n=100_q=0.5_s=1") == "cite n=100 q=0.5 s=1: pca (embeddings, mi)"
    assert run_label(["cite/train_counts"], "n=100_q=1_s=42") == "cite n=100 q=1 s=42: train_counts"
    shared = [f"{d}/{a}" for d in DATASETS for a in ("pca_genes", "split", "pool_counts", "gene_medians", "eval_counts")]
    assert run_label(shared, "s=42") == "4 datasets s=42: split, pool_counts, eval_counts, gene_medians, pca_genes"
    assert run_label(["cite/raw_counts"], None) == "cite: raw_counts"
    corpora = ["cite/pool_corpus", "cite/eval_corpus", "cite/train_corpus", "cite/model_geneformer"]
    assert run_label(corpora, "n=400_q=1_s=42") == "cite n=400 q=1 s=42: eval_corpus, pool_corpus, geneformer (model)"
    assert run_label(["results/scaling_plots", "results/mi_table"], None) == "results: mi_table, scaling_plots"
    # "mi_table" is no algorithm's MI step; a key that is not the study's shape is kept as it is
    assert run_label(["table"], "2026-12-07") == "2026-12-07: table"


def test_a_studys_own_models_are_named_like_the_built_ins_after_them():
    names = [f"cite/{stage}_{algorithm}" for algorithm in ("nmf16", "pca", "linear_ae")
             for stage in ("model", "embeddings", "mi")] + ["cite/train_counts"]
    assert run_label(names, "n=200_q=1_s=42") == "cite n=200 q=1 s=42: pca, linear_ae, nmf16"
    assert run_label(["cite/mi_nmf16"], "n=200_q=1_s=42") == "cite n=200 q=1 s=42: nmf16 (mi)"
