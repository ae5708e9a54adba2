"""A study's own models: any scikit-learn transformer, any RepresentationModel subclass, an installed
package's entry point; registered without forking and checked when the study is loaded."""

from __future__ import annotations

import copy
import json
import textwrap

import numpy as np
import pytest
import yaml
from conftest import write_tiny_study
from sklearn.decomposition import NMF

from scaling_assets.errors import StudyConfigError
from scaling_assets.models.base import normalise_log1p
from scaling_assets.models.pca import PCAModel
from scaling_assets.models.synthetic import simulate_counts
from scaling_assets.models.user import ModelSpecError, model_entry
from scaling_assets.study.spec import load_study

NMF8 = {"sklearn": "sklearn.decomposition.NMF", "params": {"n_components": 8, "max_iter": 200, "init": "nndsvda"},
        "input": "log1p"}
TOP = {"class": "own_models:TopGenes", "params": {"width": 3}}


@pytest.fixture(scope="module")
def data():
    return simulate_counts(240, 300, seed=7), simulate_counts(60, 300, seed=8), simulate_counts(80, 300, seed=9)


def test_a_scikit_learn_transformer_embeds_as_the_estimator_itself_does_and_reloads_without_pickle(data, tmp_path):
    train, validation, test = data
    entry = model_entry("nmf8", NMF8, None)
    assert (entry.embedding_dim, entry.reads, entry.dagster_kind, entry.hvg_genes) == (8, "counts", "scikitlearn", False)
    model = entry.build(train.var_names, seed=3)
    model.fit(train, validation)
    z = model.embed(test)
    reference = NMF(n_components=8, max_iter=200, init="nndsvda", random_state=3)  # the seed is the run's
    reference.fit(normalise_log1p(train.read_rows(0, 240)))
    np.testing.assert_allclose(z, reference.transform(normalise_log1p(test.read_rows(0, 80))), rtol=1e-5, atol=1e-6)
    assert z.shape == (80, 8) and z.dtype == np.float32
    assert model.n_parameters() == 8 * 300 == entry.parameters(300)  # components_
    assert model.hyperparameters()["params"] == {"init": "nndsvda", "max_iter": 200, "n_components": 8, "random_state": 3}
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "estimator.skops", "history.csv", "model.json", "sklearn.json"]
    again = entry.load(tmp_path / "m")
    np.testing.assert_array_equal(again.embed(test), z)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["algorithm"] == "nmf8" and meta["params"] == {"estimator": "sklearn.decomposition.NMF",
                                                              "params": NMF8["params"], "input": "log1p"}


def test_truncated_svd_on_the_highly_variable_genes_is_the_built_in_pca(data):
    """input: hvg_log1p gives an estimator PCA's input (log1p on the 750 Seurat-dispersion genes), so
    TruncatedSVD(16) with the same seed reproduces the built-in PCA exactly."""
    train, validation, test = data
    train, test = simulate_counts(240, 900, seed=7), simulate_counts(80, 900, seed=9)
    entry = model_entry("svd16", {"sklearn": "sklearn.decomposition.TruncatedSVD", "params": {"n_components": 16},
                                  "input": "hvg_log1p"}, None)
    assert entry.hvg_genes and entry.parameters(900) == 750 * 16
    svd = entry.build(train.var_names, seed=0)
    svd.fit(train)
    pca = PCAModel(train.var_names, seed=0)
    pca.fit(train)
    np.testing.assert_array_equal(svd.hvg_idx, pca.hvg_idx)
    np.testing.assert_allclose(svd.embed(test), pca.embed(test), rtol=1e-5, atol=1e-5)


def test_raw_input_gives_the_estimator_the_counts(data):
    train, _, test = data
    entry = model_entry("svd_raw", {"sklearn": "sklearn.decomposition.TruncatedSVD", "params": {"n_components": 4},
                                    "input": "raw"}, None)
    model = entry.build(train.var_names, seed=1)
    model.fit(train)
    from sklearn.decomposition import TruncatedSVD

    reference = TruncatedSVD(4, random_state=1).fit(train.read_rows(0, 240).astype(float))
    np.testing.assert_allclose(model.embed(test), reference.transform(test.read_rows(0, 80).astype(float)), rtol=1e-4)


def test_a_class_model_is_built_with_its_params_and_saves_them(data, tmp_path):
    train, _, test = data
    entry = model_entry("top", TOP, None)
    assert (entry.embedding_dim, entry.dagster_kind, entry.origin) == (3, "python", "class own_models:TopGenes (study file)")
    assert entry.gpu_need_mib("model", 1000) == 1100 and entry.gpu_need_mib("embeddings", 1000) == 0
    model = entry.build(train.var_names)
    model.fit(train)
    model.save(tmp_path / "top")
    again = entry.load(tmp_path / "top")
    assert (again.algorithm, again.width, again.params) == ("top", 3, {"width": 3})
    np.testing.assert_array_equal(again.embed(test), model.embed(test))
    from scaling_assets.models import load_model

    assert load_model(tmp_path / "top").width == 3  # by the class model.json records


def study_file(tmp_path, models=None, **fields):
    return write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "own", **({"models": models} if models else {}),
                            **fields)


def test_study_file_models_resolve_to_entries_and_assets(tmp_path):
    from scaling_assets.definitions import build_definitions

    (tmp_path / "beside.py").write_text(textwrap.dedent("""
        from own_models import TopGenes


        class Beside(TopGenes):
            def hyperparameters(self):
                return {"algorithm": self.algorithm, "beside": True}
    """))
    path = study_file(tmp_path, {"nmf16": {**NMF8, "params": {**NMF8["params"], "n_components": 16}}, "top": TOP,
                                 "beside": {"class": "beside:Beside"}},
                      algorithms=["pca", "nmf16", "top", "beside"])
    study = load_study(path)
    assert list(study.models) == ["pca", "nmf16", "top", "beside"]
    assert [e.embedding_dim for e in study.models.values()] == [16, 16, 3, 4]
    assert study.models["beside"].origin == "class beside:Beside (study file)"  # a module beside the study file
    graph = build_definitions(study).resolve_asset_graph()
    for name, kind in (("nmf16", "scikitlearn"), ("top", "python")):
        for stage in ("model", "embeddings", "mi"):
            assert graph.has(dagster_key(["cite", f"{stage}_{name}"]))
        assert kind in graph.get(dagster_key(["cite", f"model_{name}"])).kinds
    # without `algorithms`, the study runs the built-in four and its own models
    raw = yaml.safe_load(study_file(tmp_path, {"top": TOP}).read_text())
    del raw["algorithms"]
    path.write_text(yaml.safe_dump(raw))
    assert list(load_study(path).models) == ["pca", "random_projection", "scvi", "geneformer", "top"]


def dagster_key(path):
    from dagster import AssetKey

    return AssetKey(path)


def code_versions(study) -> dict:
    from scaling_assets.definitions import build_definitions

    graph = build_definitions(study).resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.materializable_asset_keys}


def test_changing_one_models_params_marks_that_model_stale_and_no_other(tmp_path):
    models = copy.deepcopy({"nmf16": {**NMF8, "params": {**NMF8["params"], "n_components": 16}}, "top": TOP})
    algorithms = ["pca", "nmf16", "top"]
    before = code_versions(load_study(study_file(tmp_path, models, algorithms=algorithms)))
    models["nmf16"]["params"]["max_iter"] = 500
    after = code_versions(load_study(study_file(tmp_path, models, algorithms=algorithms)))
    assert {k for k in before if before[k] != after[k]} == {"cite/model_nmf16"}
    models["top"]["params"]["width"] = 2
    again = code_versions(load_study(study_file(tmp_path, models, algorithms=algorithms)))
    assert {k for k in after if after[k] != again[k]} == {"cite/model_top"}
    # a built-in's version is what it was before studies had models of their own
    from scaling_assets.models.versions import settings_version

    assert after["cite/model_pca"] == settings_version("pca", "test")


BAD = [
    ({"mine": {"class": "no_such_package.models:Mine"}}, "models.mine.class",
     r"cannot import no_such_package.models:Mine \(ModuleNotFoundError: No module named 'no_such_package'\); "
     r"expected 'package.module:Class' importable here"),
    ({"mine": {"class": "own_models:NotAModel"}}, "models.mine",
     r"<class 'own_models.NotAModel'> is not a model: expected a subclass of scaling_assets.models.RepresentationModel"),
    ({"mine": {"class": "own_models:HalfAModel"}}, "models.mine",
     r"HalfAModel does not implement \['_load_native', '_save_native', 'embed', 'fit', 'hyperparameters', "
     r"'n_parameters'\] of RepresentationModel"),
    ({"mine": {"class": "own_models:TopGenes", "params": {"depth": 3}}}, "models.mine.params",
     r"unknown parameter\(s\) \['depth'\] for TopGenes; it takes \['width', 'fail', 'fail_above'\]"),
    ({"nmf": {**NMF8, "params": {"n_component": 16}}}, "models.nmf.params",
     r"NMF: unknown parameter\(s\) \['n_component'\] for NMF; it takes \['n_components', "),
    ({"nmf": {**NMF8, "params": {"n_components": 16, "init": "random_walk"}}}, "models.nmf.params",
     r"NMF: The 'init' parameter of NMF must be a str among"),
    ({"nmf": {**NMF8, "params": {}}}, "models.nmf.params",
     r"NMF: n_components: expected a positive integer \(the embedding's width\), got 'auto'"),
    ({"nmf": {**NMF8, "input": "counts"}}, "models.nmf.input",
     r"'counts' is not one of \['raw', 'log1p', 'hvg_log1p'\]"),
    ({"tsne": {"sklearn": "sklearn.manifold.TSNE", "input": "log1p"}}, "models.tsne.sklearn",
     r"sklearn.manifold.TSNE is not a transformer class with fit and transform"),
    ({"pca": NMF8}, "models.pca", r"'pca' is a built-in algorithm \(pca, random_projection, scvi, geneformer\); "
                                  r"give your model another name"),
    ({"nmf": {**NMF8, "class": "own_models:TopGenes"}}, "models.nmf",
     r"expected exactly one of 'sklearn: <estimator class>', 'class: <module:Class>' or 'pretrained: "),
    ({"nmf": {**NMF8, "epochs": 3}}, "models.nmf",
     r"unknown keys \['epochs'\]; a sklearn model takes \['input', 'learns_from_cells', 'params', 'sklearn'\]"),
]


@pytest.mark.parametrize("models, field, message", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_models_are_refused_when_the_study_loads_naming_the_file_and_field(tmp_path, models, field, message):
    path = study_file(tmp_path, models, algorithms=["pca"])
    with pytest.raises(StudyConfigError, match=f"^study file {path}: {field}: {message}"):
        load_study(path)


def test_an_unknown_algorithm_names_where_it_was_looked_for(tmp_path):
    path = study_file(tmp_path, {"top": TOP}, algorithms=["pca", "nope"])
    with pytest.raises(StudyConfigError, match=rf"^study file {path}: algorithms: unknown algorithm 'nope'; expected a "
                       r"built-in \['pca', 'random_projection', 'scvi', 'geneformer'\], a model of the study's models "
                       r"block \['top'\] or an installed package's entry point in group 'scaling_assets.models'"):
        load_study(path)


@pytest.mark.parametrize("command", ["show", "run", "plan"])
def test_study_show_run_and_plan_refuse_a_bad_model_before_writing_anything(tmp_path, monkeypatch, capsys, command):
    from scaling_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    path = study_file(tmp_path, {"mine": {"class": "own_models:NotAModel"}}, algorithms=["pca", "mine"])
    assert main(["study", command, "--study", str(path)]) == 2
    assert f"error: study file {path}: models.mine: <class 'own_models.NotAModel'> is not a model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no root, no Dagster home


def test_study_show_lists_the_studys_own_models(tmp_path, capsys):
    from scaling_assets.cli import main

    path = study_file(tmp_path, {"nmf8": NMF8, "top": TOP}, algorithms=["pca", "nmf8", "top"])
    assert main(["study", "show", "--study", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  nmf8: scikit-learn sklearn.decomposition.NMF (study file); reads counts, embedding width 8; params" in out
    assert "  top: class own_models:TopGenes (study file); reads counts, embedding width 3; params {'width': 3}" in out


def write_distribution(folder, name: str, entry_points: str) -> None:
    """An installed package's metadata (what pip writes) with its entry points, on ``folder``."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_an_installed_packages_entry_point_is_an_algorithm(tmp_path, monkeypatch):
    write_distribution(tmp_path / "site", "own-ep", "[scaling_assets.models]\nmine = own_models:TopGenes\n"
                                                    "pca = own_models:NotAModel\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    study = load_study(study_file(tmp_path, algorithms=["pca", "mine"]))
    assert study.models["mine"].origin == "entry point own_models:TopGenes (package own-ep)"
    assert study.models["mine"].embedding_dim == 4 and dict(study.models["mine"].params) == {}
    assert study.models["pca"].origin == "built-in"  # an entry point never replaces a built-in


def test_an_entry_point_that_is_not_a_model_is_refused(tmp_path, monkeypatch):
    write_distribution(tmp_path / "site", "own-bad", "[scaling_assets.models]\nbad = own_models:NotAModel\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = study_file(tmp_path, algorithms=["bad"])
    with pytest.raises(StudyConfigError, match=rf"^study file {path}: algorithms \(bad\): <class 'own_models.NotAModel'> "
                                               "is not a model"):
        load_study(path)


def test_gpu_needs_and_queue_priority_come_from_the_studys_entries(tmp_path):
    from scaling_assets.gpu.needs import gpu_need_mib, run_priority

    study = load_study(study_file(tmp_path, {"top": TOP}, algorithms=["pca", "top"]))
    names = ["cite/train_counts", "cite/model_top", "cite/embeddings_top"]
    assert gpu_need_mib(names, 2000, study.models) == 1200  # TopGenes.gpu_mib("model", 2000)
    assert gpu_need_mib(names, 2000) == 0  # the built-ins alone do not know it
    assert gpu_need_mib(["cite/mi_top"], 2000, study.models) == gpu_need_mib(["cite/mi_pca"], 2000)
    assert run_priority(names, study.models) == 0


def test_the_planner_prices_a_study_with_own_models(tmp_path):
    from scaling_assets.study.planner import format_plan, plan_study

    study = load_study(study_file(tmp_path, {"top": TOP, "nmf8": NMF8}, algorithms=["pca", "nmf8", "top"],
                                  sizes=[100, 200]))
    [plan] = plan_study(study)
    assert plan.cells_read["model_top"] == plan.cells_read["model_nmf8"] == 2 * (100 + 200)  # one pass, 2 qualities
    assert plan.bytes_by_asset["model_nmf8"] == 4 * 4 * 8 * 60  # 4 runs x float32 x n_components x genes
    assert plan.bytes_by_asset["embeddings_top"] == 4 * study.test_size("cite") * 4 * 3  # float32 x width 3
    assert plan.not_priced == ["top"] and "top" not in plan.gpu_hours
    assert "not priced: top (give --throughput NAME=training cells/s)" in format_plan(study, [plan])
    [priced] = plan_study(study, {"top": 10.0})
    assert priced.gpu_hours["top"] == pytest.approx(600 / 10 / 3600) and not priced.not_priced


@pytest.mark.parametrize("values, problem", [
    (np.ones((9, 3)), r"shape \(9, 3\), expected \(10, 3\): one row per test cell, its declared width"),
    (np.ones((10, 4)), r"shape \(10, 4\), expected \(10, 3\)"),
    (np.ones(30), r"shape \(30,\), expected \(10, 3\)"),
    (np.where(np.eye(10, 3) > 0, np.nan, 1.0), r"3 NaN and 0 infinite values in 3 of 10 rows \(first rows \[0, 1, 2\]\)"),
    (np.where(np.eye(10, 3) > 0, -np.inf, 1.0), r"0 NaN and 3 infinite values in 3 of 10 rows"),
    (np.full((10, 3), "a"), r"dtype <U1, expected numbers"),
])
def test_an_embedding_that_is_not_one_finite_row_per_test_cell_is_refused_naming_model_and_partition(values, problem):
    from scaling_assets.assets.embeddings import check_embedding
    from scaling_assets.errors import InputError

    with pytest.raises(InputError, match=rf"^model 'mine' embedded the test cells of cite n=100_q=1_s=42 wrongly: {problem}"):
        check_embedding(values, 10, 3, "mine", "cite n=100_q=1_s=42")
    good = check_embedding(np.ones((10, 3), dtype=np.float64), 10, 3, "mine", "cite n=100_q=1_s=42")
    assert good.dtype == np.float32 and good.shape == (10, 3)
