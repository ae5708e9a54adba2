"""Simulator: canonical layout per task, reproducibility, chunk-size independence, learnable signal."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scaling_assets.data.h5ad_io import CsrReader
from scaling_assets.data.simulate import simulate
from scaling_assets.data.tasks import TASKS
from scaling_assets.data.thinning import thin_counts
from scaling_assets.errors import InputError


@pytest.mark.parametrize("task", list(TASKS))
def test_canonical_layout(tmp_path, task):
    path = tmp_path / f"{task}.h5ad"
    summary = simulate(task, 2500, 200, seed=3, out_path=path, chunk_size=1000)
    a = ad.read_h5ad(path)
    assert a.shape == (2500, 200) and summary["cells"] == 2500 and summary["genes"] == 200
    assert a.X.dtype == np.int32 and a.obs_names.is_unique and a.var_names.is_unique
    assert a.var_names[0] == "G00001" and a.uns["task"] == task
    totals = np.asarray(a.X.sum(1)).ravel()
    assert 10_000 <= np.median(totals) <= 22_000 and totals.min() > 0  # MEDIAN_UMIS 15,000
    assert summary["umis_per_cell"] == pytest.approx(totals.mean())
    if task == "cite":
        assert a.obs["cell_type"].nunique() >= 5
        assert a.obsm["protein"].shape == (2500, 20) and a.obsm["protein"].dtype == np.int32
    elif task == "lineage":
        clone = a.obs["clone"]
        assert 0.05 < clone.isna().mean() < 0.3
        assert set(a.obs["day"].unique()) == {2, 4, 6}
        sizes = clone.value_counts()
        assert sizes.min() >= 4 and sizes.max() <= 12
        by_clone = a.obs.dropna().groupby("clone", observed=True)["day"]
        assert (by_clone.max() == 6).all() and (by_clone.min() < 6).all()  # early and late sisters
    elif task == "spatial":
        assert a.obs["x"].dtype == np.float64 and a.obs["y"].std() > 100
    else:
        assert set(a.obs["day"].unique()) == {8.5, 9.5, 10.5, 11.5, 12.5, 13.5}
        assert a.obs["cell_type"].nunique() >= 5


def test_reproducible_and_chunk_size_independent(tmp_path):
    simulate("cite", 5000, 100, seed=9, out_path=tmp_path / "a.h5ad", chunk_size=10_000)
    simulate("cite", 5000, 100, seed=9, out_path=tmp_path / "b.h5ad", chunk_size=700)
    simulate("cite", 5000, 100, seed=10, out_path=tmp_path / "c.h5ad")
    a, b, c = (ad.read_h5ad(tmp_path / f"{n}.h5ad") for n in "abc")
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["protein"], b.obsm["protein"])
    assert a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0


def test_signal_is_learnable_and_both_cells_and_depth_matter(tmp_path):
    """The simulator's purpose: a 16-component PCA separates cell types better when fitted on more
    cells (the size law) and when the cells have more UMIs (the noise law)."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    path = tmp_path / "cite.h5ad"
    simulate("cite", 3000, 400, seed=1, out_path=path)
    with CsrReader(path) as r:
        X = r.read_rows(0, r.n_obs)
        labels = r.read_obs(columns=["cell_type"])["cell_type"].to_numpy()
    test = np.arange(2000, 3000)  # never fitted on

    def accuracy(M, n_fit):
        L = M.multiply(1e4 / np.maximum(M.sum(1), 1)).tocsr().log1p().toarray()
        Z = PCA(16, random_state=0).fit(L[:n_fit]).transform(L[test])
        return cross_val_score(KNeighborsClassifier(15), Z, labels[test], cv=3).mean()

    few, many = accuracy(X, 50), accuracy(X, 2000)
    shallow = accuracy(thin_counts(X, np.arange(X.shape[0]), 0.003, seed=0), 2000)  # ~45 UMIs per cell
    print(f"accuracy: 50 cells {few:.3f}, 2,000 cells {many:.3f}, 2,000 shallow cells {shallow:.3f}")
    assert many > 0.55  # 12 types, the most frequent ~18% of cells
    assert many > few + 0.1
    assert shallow < many - 0.2


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown task 'nope'"):
        simulate("nope", 10, 20, 0, tmp_path / "x.h5ad")
    assert list(tmp_path.iterdir()) == []
