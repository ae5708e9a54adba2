"""Pretrained checkpoints evaluated frozen: a tiny BERT written by ``save_pretrained`` here, Geneformer's
rank-value tokens with the checkpoint's own dictionary and medians, safetensors only unless allowed."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import write_tiny_study
from transformers import BertConfig, BertForMaskedLM, BertModel

from scaling_assets.errors import InputError, StudyConfigError
from scaling_assets.models.synthetic import simulate_counts
from scaling_assets.models.user import model_entry
from scaling_assets.study.spec import load_study

GENES = 40
# the checkpoint knows 30 of the dataset's 40 genes (in another order) and 5 the dataset lacks
KNOWN = [f"gene{j}" for j in np.random.default_rng(0).permutation(GENES)[:30]] + [f"other{j}" for j in range(5)]


def write_checkpoint(folder, safe: bool = True, layers: int = 2, pickled_dictionaries: bool = False,
                     known: list[str] = KNOWN):
    """A tiny BERT masked-LM checkpoint (``save_pretrained``; ``safe=False``: the weights as a pickled
    ``pytorch_model.bin``, as older checkpoints ship them) with its token dictionary and gene medians."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(known) + 2, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=20, pad_token_id=0)
    model = BertForMaskedLM(config)
    model.save_pretrained(folder)
    if not safe:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    tokens = {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(known)}}
    medians = {g: 0.5 + (i % 7) for i, g in enumerate(known)}
    if pickled_dictionaries:
        (folder / "token_dictionary.pkl").write_bytes(pickle.dumps(tokens))
        (folder / "gene_median_dictionary.pkl").write_bytes(pickle.dumps(medians))
    else:
        (folder / "token_dictionary.json").write_text(json.dumps(tokens))
        (folder / "gene_medians.json").write_text(json.dumps(medians))
    return folder, tokens, medians


def by_hand(counts, tokens, medians, folder, layer: int = -1, max_tokens: int = 20) -> np.ndarray:
    """Geneformer's cell embedding written out: scale to 10,000, divide by the median, rank the known
    nonzero genes (ties: lower token id), keep the first tokens, mean of hidden_states[layers + layer]."""
    bert = BertModel.from_pretrained(folder).eval()
    X = counts.read_rows(0, counts.n_obs).toarray().astype(np.float64)
    out = []
    for row in X:
        scaled = row * (1e4 / row.sum())
        ranked = sorted((-(scaled[j] / medians[g]), tokens[g]) for j, g in enumerate(counts.var_names)
                        if g in tokens and scaled[j] > 0)
        ids = torch.tensor([[t for _, t in ranked[:max_tokens]]])
        with torch.no_grad():
            hidden = bert(input_ids=ids, output_hidden_states=True).hidden_states[bert.config.num_hidden_layers + layer]
        out.append(hidden[0].mean(0).numpy())
    return np.array(out)


def frozen_entry(folder, **spec):
    return model_entry("frozen", {"pretrained": str(folder), **spec}, None)


def test_a_frozen_checkpoint_embeds_as_geneformer_does_with_its_own_dictionary_and_medians(tmp_path):
    folder, tokens, medians = write_checkpoint(tmp_path / "ckpt")
    entry = frozen_entry(folder)
    assert (entry.pretrained, entry.learns_from_cells, entry.reads, entry.dagster_kind) == (True, False, "counts",
                                                                                             "huggingface")
    n_params = sum(p.numel() for p in BertForMaskedLM.from_pretrained(folder).parameters())
    assert entry.embedding_dim == 16 and entry.parameters(GENES) == n_params  # from the safetensors header
    assert entry.gpu_need_mib("model", GENES) == 0 < entry.gpu_need_mib("embeddings", GENES)
    test = simulate_counts(25, GENES, seed=3)
    model = entry.build(test.var_names, seed=42)
    report = model.fit(None)
    assert (report.stop_reason, report.epochs) == ("pretrained", 0)
    assert model.hyperparameters()["genes_in_vocabulary"] == 30
    z = model.embed(test)
    np.testing.assert_allclose(z, by_hand(test, tokens, medians, folder), rtol=1e-4, atol=1e-5)
    last = frozen_entry(folder, params={"layer": 0}).build(test.var_names)
    last.fit(None)
    np.testing.assert_allclose(last.embed(test), by_hand(test, tokens, medians, folder, layer=0), rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["checkpoint.json", "history.csv", "model.json"]
    np.testing.assert_array_equal(entry.load(tmp_path / "saved").embed(test), z)


def test_changed_weights_are_refused_when_the_bound_model_loads(tmp_path):
    folder, _, _ = write_checkpoint(tmp_path / "ckpt")
    entry = frozen_entry(folder)
    model = entry.build([f"gene{j}" for j in range(GENES)])
    model.fit(None)
    model.save(tmp_path / "saved")
    torch.manual_seed(1)
    BertForMaskedLM(BertConfig.from_pretrained(folder)).save_pretrained(folder)  # retrained in place
    with pytest.raises(InputError, match=r"frozen: the weights of checkpoint .*ckpt changed since the model partition "):
        entry.load(tmp_path / "saved")


def test_genes_the_checkpoint_does_not_know_are_refused_when_binding(tmp_path):
    folder, _, _ = write_checkpoint(tmp_path / "ckpt")
    model = frozen_entry(folder).build(["ENSG1", "ENSG2"])
    with pytest.raises(InputError, match=r"none of the dataset's 2 genes .* is in the checkpoint's token dictionary"):
        model.fit(None)


def test_the_platforms_own_saved_geneformer_is_a_checkpoint(tmp_path):
    """A Geneformer this platform trained (its model folder, and the seed's gene_medians partition) evaluated
    frozen embeds exactly as the trained model embeds the corpus the platform tokenizes."""
    from scaling_assets.data.corpus import Corpus, TokenDictionary, build_corpus, gene_nonzero_medians
    from scaling_assets.models.base import FitReport
    from scaling_assets.models.geneformer import GeneformerModel

    train, test = simulate_counts(200, GENES, seed=1), simulate_counts(30, GENES, seed=2)
    genes = list(train.var_names)
    trained = GeneformerModel(genes, budget="test", seed=0, device="cpu")
    trained.model = trained._build()
    trained.fit_report = FitReport(0, 0, "closed_form", None, None, 0.0, "cpu", "test")
    trained.save(tmp_path / "model")
    medians = gene_nonzero_medians(train)
    (tmp_path / "gene_medians").mkdir()
    np.save(tmp_path / "gene_medians" / "medians.npy", medians)  # as the gene_medians asset writes them
    TokenDictionary(genes).save(tmp_path / "gene_medians" / "dictionary.json")
    build_corpus(test, tmp_path / "corpus", medians, TokenDictionary(genes))
    entry = frozen_entry(tmp_path / "model", gene_medians=str(tmp_path / "gene_medians"))
    assert entry.embedding_dim == 256 and entry.parameters(GENES) == trained.n_parameters()
    frozen = entry.build(genes)
    frozen.fit(None)
    np.testing.assert_allclose(frozen.embed(test), trained.embed(Corpus(tmp_path / "corpus")), rtol=1e-4, atol=1e-5)


def study_with(tmp_path, **spec):
    return write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "frozen", algorithms=["pca", "gf"],
                            models={"gf": spec})


def test_a_pickle_checkpoint_is_refused_unless_the_study_allows_pickles(tmp_path):
    folder, tokens, medians = write_checkpoint(tmp_path / "ckpt", safe=False)
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    path = study_with(tmp_path, pretrained=str(folder))
    with pytest.raises(StudyConfigError, match=rf"^study file {path}: models.gf.pretrained: {folder}/pytorch_model.bin "
                       r"holds the weights and there is no model.safetensors: pytorch_model.bin is a Python pickle: "
                       r"unpickling runs whatever code the file names. Convert it to safetensors \(or, for a file you "
                       r"trust, set allow_pickle: true\)"):
        load_study(path)
    study = load_study(study_with(tmp_path, pretrained=str(folder), allow_pickle=True))
    test = simulate_counts(10, GENES, seed=3)
    model = study.models["gf"].build(test.var_names)
    model.fit(None)
    np.testing.assert_allclose(model.embed(test), by_hand(test, tokens, medians, folder), rtol=1e-4, atol=1e-5)


def test_pickled_dictionaries_are_refused_unless_allowed(tmp_path):
    folder, _, _ = write_checkpoint(tmp_path / "ckpt", pickled_dictionaries=True)
    path = study_with(tmp_path, pretrained=str(folder))
    with pytest.raises(StudyConfigError, match=rf"models.gf.pretrained: token dictionary {folder}/token_dictionary.pkl "
                                               "is a Python pickle"):
        load_study(path)
    assert load_study(study_with(tmp_path, pretrained=str(folder), allow_pickle=True)).models["gf"].pretrained


def test_a_frozen_model_has_no_size_axis(tmp_path):
    from dagster import AssetKey

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.planner import plan_study

    folder, _, _ = write_checkpoint(tmp_path / "ckpt")
    study = load_study(study_with(tmp_path, pretrained="ckpt"))  # relative to the study file
    assert study.setting_keys("cite", "gf") == ["n=0_q=1_s=42", "n=0_q=0.5_s=42"]
    assert study.setting_keys("cite", "pca") == ["n=100_q=1_s=42", "n=100_q=0.5_s=42"]
    graph = build_definitions(study).resolve_asset_graph()
    model = graph.get(AssetKey(["cite", "model_gf"]))
    assert model.parent_keys == {AssetKey(["cite", "eval_counts"])}  # no training set
    assert "huggingface" in model.kinds
    assert set(graph.get(AssetKey(["cite", "mi_gf"])).partitions_def.get_partition_keys()) == {"n=0_q=1_s=42",
                                                                                            "n=0_q=0.5_s=42"}
    [plan] = plan_study(study)
    assert plan.cells_read["model_gf"] == 0 and plan.bytes_by_asset["model_gf"] == 0
    raw = study_with(tmp_path, pretrained="ckpt")
    raw.write_text(raw.read_text() + "algorithm_grids: {gf: {sizes: [100]}}\n")
    with pytest.raises(StudyConfigError, match=r"algorithm_grids.gf.sizes: 'gf' is a pretrained model evaluated frozen: "
                                               "it has no size axis"):
        load_study(raw)


def test_a_layer_outside_the_checkpoint_is_refused(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    path = study_with(tmp_path, pretrained="ckpt", params={"layer": -3})
    with pytest.raises(StudyConfigError, match=r"models.gf.params.layer: expected an integer in \[-2, 0\]"):
        load_study(path)
