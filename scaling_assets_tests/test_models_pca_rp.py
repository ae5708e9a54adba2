import json

import numpy as np
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.random_projection import GaussianRandomProjection

from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.errors import InputError
from scaling_assets.models import get_model_class, load_model
from scaling_assets.gpu.needs import GPU_NEEDS
from scaling_assets.models.registry import ALGORITHMS, MODELS
from scaling_assets.models.base import normalise_log1p
from scaling_assets.models.pca import PCAModel
from scaling_assets.models.random_projection import RandomProjectionModel
from scaling_assets.models.synthetic import simulate_counts


@pytest.fixture(scope="module")
def data():
    return simulate_counts(240, 900, seed=7), simulate_counts(80, 900, seed=8)


def test_registry():
    assert ALGORITHMS == ("pca", "random_projection", "scvi", "geneformer")
    assert get_model_class("pca") is PCAModel
    for entry in MODELS.values():  # each entry names its class and says what that class declares
        cls = get_model_class(entry.name)
        assert (cls.algorithm, cls.embedding_width({}), cls.reads, cls.dagster_kind, cls.learns_from_cells,
                cls.pretrained) == (entry.name, entry.embedding_dim, entry.reads, entry.dagster_kind,
                                    entry.learns_from_cells, entry.pretrained), entry.name
        for genes in (1_000, 20_000):
            assert cls.parameter_count(genes, {}) == entry.parameters(genes), entry.name
            for stage in ("model", "embeddings"):
                assert cls.gpu_mib(stage, genes, {}) == entry.gpu_need_mib(stage, genes), (entry.name, stage)
    assert [a for a, e in MODELS.items() if e.reads_corpus] == ["geneformer"]
    assert [a for a, e in MODELS.items() if not e.learns_from_cells] == ["random_projection"]
    assert set(GPU_NEEDS) == {f"{stage}_{a}" for a in ALGORITHMS for stage in MODELS[a].gpu_mib}
    with pytest.raises(InputError, match="unknown algorithm"):
        get_model_class("umap")


def test_pca_matches_a_direct_sklearn_computation_and_reloads(data, tmp_path):
    train, test = data
    m = PCAModel(train.var_names, seed=0)
    report = m.fit(train, validation=test)
    assert report.stop_reason == "closed_form" and report.budget == "default"
    assert 0 < report.train_loss < 1 and 0 < report.validation_loss < 1
    # reference: whole-matrix log-normalisation, scanpy's Seurat-flavour 750 HVGs, TruncatedSVD(16)
    L = normalise_log1p(train.read_rows(0, 240)).toarray()
    hvg = scanpy_hvg(train.read_rows(0, 240), 750)
    np.testing.assert_array_equal(m.hvg_idx, hvg)
    ref = TruncatedSVD(16, random_state=0).fit(L[:, hvg])
    np.testing.assert_allclose(np.abs(m.components), np.abs(ref.components_), atol=1e-8)
    z = m.embed(test)
    assert z.shape == (80, 16) and z.dtype == np.float32
    assert m.n_parameters() == 750 * 16 == m.components.size
    m.save(tmp_path / "pca")
    again = load_model(tmp_path / "pca")
    assert isinstance(again, PCAModel)
    np.testing.assert_array_equal(again.embed(test), z)
    assert again.fit_report.stop_reason == "closed_form" and len(again.fit_report.history) == 1
    meta = json.loads((tmp_path / "pca" / "model.json").read_text())
    assert meta["algorithm"] == "pca" and meta["n_parameters"] == 12_000


def scanpy_hvg(counts, n_top: int) -> np.ndarray:
    import anndata
    import scanpy as sc

    adata = anndata.AnnData(counts.astype(np.float64))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_top)
    return np.flatnonzero(adata.var["highly_variable"].to_numpy())


@pytest.mark.parametrize("n_top", [50, 300])
def test_seurat_hvg_selection_equals_scanpy_streamed_in_chunks(n_top):
    from scaling_assets.models.hvg import seurat_highly_variable

    src = simulate_counts(300, 600, seed=3)
    rows = np.arange(10, 290)
    ours = seurat_highly_variable(src, n_top, rows=rows, chunk_size=37)
    expected = scanpy_hvg(src.read_subset(rows), n_top)
    assert len(expected) == n_top
    np.testing.assert_array_equal(ours, expected)


def test_pca_uses_genes_chosen_elsewhere(data):
    train, test = data
    chosen = np.arange(0, 900, 3)
    m = PCAModel(train.var_names, seed=0)
    m.use_genes(chosen, chosen_on="a larger training set")
    m.fit(train)
    np.testing.assert_array_equal(m.hvg_idx, chosen)
    assert m.n_parameters() == 300 * 16 and m.hyperparameters()["hvg_chosen_on"] == "a larger training set"
    with pytest.raises(InputError, match="gene indices"):
        PCAModel(train.var_names).use_genes([1, 2, 3], chosen_on="x")


def test_pca_with_fewer_genes_than_750_uses_all(tmp_path):
    src = simulate_counts(50, 100, seed=1)
    m = PCAModel(src.var_names)
    m.fit(src)
    assert m.n_hvg == 100 and m.n_parameters() == 1600 and m.embed(src).shape == (50, 16)


def test_random_projection_is_sklearn_with_state_42_on_raw_counts(data, tmp_path):
    train, test = data
    m = RandomProjectionModel(train.var_names, seed=1404)  # the run seed does not change it
    m.fit(train)
    X = test.read_rows(0, 80)
    ref = GaussianRandomProjection(n_components=16, random_state=42).fit(X)
    z = m.embed(test)
    np.testing.assert_allclose(z, ref.transform(X), rtol=1e-5, atol=1e-4)
    assert m.n_parameters() == 900 * 16
    m.save(tmp_path / "rp")
    np.testing.assert_array_equal(RandomProjectionModel.load(tmp_path / "rp").embed(test), z)


@pytest.mark.parametrize("cls", [PCAModel, RandomProjectionModel])
def test_gene_checks_and_bad_inputs(cls, data, tmp_path):
    train, test = data
    m = cls(train.var_names)
    empty = InMemoryCounts(train.read_rows(0, 0), var_names=train.var_names)
    with pytest.raises(InputError, match="empty"):
        m.fit(empty)
    m.fit(train)
    # genes differ: the message names the first missing genes
    renamed = list(test.var_names)
    renamed[3], renamed[10] = "other_a", "other_b"
    with pytest.raises(InputError, match=r"first missing: \['gene3', 'gene10'\]"):
        m.embed(InMemoryCounts(test.read_rows(0, 80), var_names=renamed))
    # same genes in another order, plus an extra gene: columns are matched by name
    X = test.read_rows(0, 80)
    perm = np.random.default_rng(0).permutation(900)
    import scipy.sparse as sp

    shuffled = InMemoryCounts(sp.hstack([X[:, perm], X[:, :1]]).tocsr(),
                              var_names=list(np.asarray(test.var_names)[perm]) + ["extra"])
    np.testing.assert_allclose(m.embed(shuffled), m.embed(test), rtol=1e-6)
    # the wrong algorithm's directory
    m.save(tmp_path / "model")
    other = RandomProjectionModel if cls is PCAModel else PCAModel
    with pytest.raises(InputError, match=f"holds a '{m.algorithm}' model"):
        other.load(tmp_path / "model")
    with pytest.raises(InputError, match=f"holds a '{m.algorithm}' model, not 'geneformer'"):
        load_model(tmp_path / "model", algorithm="geneformer")
    with pytest.raises(InputError, match="not a saved model"):
        load_model(tmp_path)


def test_unfitted_model_cannot_embed_or_save(data, tmp_path):
    m = PCAModel(data[0].var_names)
    with pytest.raises(InputError, match="not fitted"):
        m.embed(data[1])
    with pytest.raises(InputError, match="not fitted"):
        m.save(tmp_path / "x")
    with pytest.raises(InputError, match="unknown budget"):
        PCAModel(data[0].var_names, budget="huge")


def test_a_failed_save_leaves_the_previous_model_untouched(data, tmp_path, monkeypatch):
    train, test = data
    m = RandomProjectionModel(train.var_names)
    m.fit(train)
    m.save(tmp_path / "rp")
    before = sorted(p.name for p in (tmp_path / "rp").iterdir())

    def crash(directory):
        (directory / "random_projection.npz").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(m, "_save_native", crash)
    with pytest.raises(KeyboardInterrupt):
        m.save(tmp_path / "rp")
    assert [p.name for p in tmp_path.iterdir()] == ["rp"]  # no temp dir left either
    assert sorted(p.name for p in (tmp_path / "rp").iterdir()) == before
    np.testing.assert_array_equal(RandomProjectionModel.load(tmp_path / "rp").embed(test), m.embed(test))


def test_model_override_is_benchmark_only(monkeypatch):
    """SCALING_ASSETS_MODEL_OVERRIDE (the stand-ins of models/stand_ins.py) puts another class behind a name;
    unset, the registry's class."""
    from scaling_assets.models import MODEL_OVERRIDE_ENV
    from scaling_assets.models.random_projection import RandomProjectionModel

    monkeypatch.delenv(MODEL_OVERRIDE_ENV, raising=False)
    assert get_model_class("scvi").__name__ == "SCVIModel"
    monkeypatch.setenv(MODEL_OVERRIDE_ENV, "scvi=scaling_assets.models.random_projection:RandomProjectionModel")
    assert get_model_class("scvi") is RandomProjectionModel
    assert get_model_class("pca") is PCAModel


def test_the_paper_shape_benchmark_models_take_the_fit_arguments_of_the_models_they_stand_in_for():
    """models/stand_ins.py's synthetic SCVI and Geneformer are called by the real model asset: a fit
    argument the real class gained (Geneformer's checkpoint_dir) failed every synthetic Geneformer
    setting of the paper-shape benchmark."""
    import inspect

    from scaling_assets.models import stand_ins

    for name, synthetic in (("scvi", stand_ins.SyntheticSCVI), ("geneformer", stand_ins.SyntheticGeneformer)):
        real = set(inspect.signature(get_model_class(name).fit).parameters)
        assert real <= set(inspect.signature(synthetic.fit).parameters), name
