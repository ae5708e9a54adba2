"""CsrReader / CsrWriter / write_rows against anndata on the encodings anndata writes."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaling_assets.data.counts import CountSource, InMemoryCounts
from scaling_assets.data.h5ad_io import CsrReader, CsrWriter, write_rows
from scaling_assets.errors import InputError


def _adata(n=257, g=40, dtype=np.float32, index_dtype=np.int32, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=0.15, format="csr", random_state=seed, dtype=np.float64)
    X.data = np.ceil(X.data * 20)
    keep = np.ones(n)
    keep[5] = 0  # an empty row
    X = sp.diags(keep) @ X
    X.eliminate_zeros()
    X = sp.csr_matrix(X, dtype=dtype)
    X.indptr = X.indptr.astype(index_dtype)
    X.indices = X.indices.astype(index_dtype)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["B", "T", "NK"], n)),
            "ordered": pd.Categorical(rng.choice(["lo", "hi"], n), categories=["lo", "hi"], ordered=True),
            "with_nan": pd.Categorical(np.where(rng.random(n) < 0.3, None, rng.choice(["c1", "c2"], n))),
            "name": np.array([f"s{i % 7}" for i in range(n)], dtype=object),
            "count": np.arange(n, dtype=np.int64),
            "score": rng.normal(size=n),
            "flag": rng.random(n) < 0.5,
        },
        index=[f"cell{i}" for i in range(n)],
    )
    a = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    a.obsm["protein"] = rng.poisson(5, size=(n, 3)).astype(np.float32)
    a.uns["task"] = "cite"
    a.uns["n"] = 3
    return a


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_reader_equals_anndata(tmp_path, compression, dtype, index_dtype):
    path = tmp_path / "a.h5ad"
    _adata(dtype=dtype, index_dtype=index_dtype).write_h5ad(path, compression=compression)
    with h5py.File(path) as f:
        assert f["X/indptr"].dtype == index_dtype
    ref = ad.read_h5ad(path)
    rng = np.random.default_rng(1)
    with CsrReader(path) as r:
        assert isinstance(r, CountSource)
        assert (r.n_obs, r.n_vars) == ref.shape
        assert list(r.var_names) == list(ref.var_names)
        assert list(r.obs_names) == list(ref.obs_names)
        got = r.read_rows(10, 200)
        assert got.dtype == ref.X.dtype
        assert (got != ref.X[10:200]).nnz == 0
        for rows in (np.sort(rng.choice(ref.n_obs, 60, replace=False)), rng.permutation(ref.n_obs)[:50],
                     np.array([3, 3, 250, 0, 5, 5])):
            sub = r.read_subset(rows)
            assert sub.shape == (rows.size, ref.n_vars)
            assert (sub != ref.X[rows]).nnz == 0
            pd.testing.assert_frame_equal(r.read_obs(rows), ref.obs.iloc[rows])
            np.testing.assert_array_equal(r.read_obsm("protein", rows), ref.obsm["protein"][rows])
        pd.testing.assert_frame_equal(r.read_obs(), ref.obs)
        pd.testing.assert_frame_equal(r.read_obs(columns=["score", "cell_type"]), ref.obs[["score", "cell_type"]])
        assert r.read_uns() == {"task": "cite", "n": 3}


def test_reader_gap_merging_on_many_rows(tmp_path):
    """Subsets that bridge gaps (one read) and that do not (many reads) give the same rows."""
    path = tmp_path / "big.h5ad"
    a = _adata(n=3000, g=2000, dtype=np.int32)
    a.write_h5ad(path)
    rows = np.sort(np.random.default_rng(2).choice(3000, 700, replace=False))
    with CsrReader(path) as r:
        assert (r.read_subset(rows) != a.X[rows]).nnz == 0
        assert (r.read_subset(rows[::50]) != a.X[rows[::50]]).nnz == 0


def test_iter_chunks_covers_all_rows_once(tmp_path):
    path = tmp_path / "a.h5ad"
    a = _adata()
    a.write_h5ad(path)
    with CsrReader(path) as r:
        seen = np.concatenate([rows for rows, X in r.iter_chunks(chunk_size=50)])
        np.testing.assert_array_equal(seen, np.arange(a.n_obs))
        stacked = sp.vstack([X for _, X in r.iter_chunks(chunk_size=64)])
        assert (stacked != a.X).nnz == 0
        subset = np.array([9, 1, 200, 77, 4])
        got = list(r.iter_chunks(chunk_size=2, rows=subset))
        np.testing.assert_array_equal(np.concatenate([c for c, _ in got]), subset)
        assert (sp.vstack([X for _, X in got]) != a.X[subset]).nnz == 0


def test_raw_x_and_auto(tmp_path):
    path = tmp_path / "raw.h5ad"
    counts = _adata(dtype=np.float32)
    a = counts.copy()
    a.raw = counts
    a.X = sp.csr_matrix(counts.X.multiply(0.5))  # "normalised" X, counts in raw
    a.write_h5ad(path)
    ref = ad.read_h5ad(path)
    with CsrReader(path, matrix="raw/X") as r:
        assert (r.read_rows(0, 100) != ref.raw.X[:100]).nnz == 0
        assert list(r.var_names) == list(ref.raw.var_names)
    with CsrReader(path) as r:  # auto prefers X
        assert r.matrix == "X"
        assert (r.read_rows(0, 100) != ref.X[:100]).nnz == 0


def test_dense_x_streams(tmp_path):
    path = tmp_path / "dense.h5ad"
    a = _adata()
    a.X = a.X.toarray()
    a.write_h5ad(path)
    with CsrReader(path) as r:
        np.testing.assert_array_equal(r.read_rows(3, 30).toarray(), a.X[3:30])
        np.testing.assert_array_equal(r.read_subset(np.array([8, 2])).toarray(), a.X[[8, 2]])


def test_csc_x_is_refused_with_conversion_hint(tmp_path):
    path = tmp_path / "csc.h5ad"
    a = _adata()
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(path)
    with pytest.raises(InputError, match=r"csc\.h5ad.*CSC.*tocsr\(\)"):
        CsrReader(path)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match=r"missing\.h5ad: file not found"):
        CsrReader(tmp_path / "missing.h5ad")
    text = tmp_path / "text.h5ad"
    text.write_text("cell,gene\n")
    with pytest.raises(InputError, match=r"text\.h5ad: not an HDF5 file"):
        CsrReader(text)
    nox = tmp_path / "nox.h5ad"
    _adata().write_h5ad(nox)
    with h5py.File(nox, "a") as f:
        del f["X"]
    with pytest.raises(InputError, match=r"nox\.h5ad: no count matrix at 'X'"):
        CsrReader(nox, matrix="X")
    with pytest.raises(InputError, match=r"nox\.h5ad: no count matrix at 'raw/X'"):
        CsrReader(nox)


def test_writer_round_trip_via_anndata(tmp_path):
    src = _adata(dtype=np.int32)
    path = tmp_path / "w.h5ad"
    with CsrWriter(path, src.var_names, uns={"task": "cite", "k": 2.5, "meta": {"a": "b"}}) as w:
        for start in range(0, src.n_obs, 100):
            sl = slice(start, start + 100)
            w.append(src.X[sl], src.obs.iloc[sl], {"protein": src.obsm["protein"][sl]})
    assert not list(tmp_path.glob("*.tmp-*"))
    back = ad.read_h5ad(path)
    assert back.X.dtype == np.int32 and (back.X != src.X).nnz == 0
    assert list(back.obs_names) == list(src.obs_names)
    assert list(back.var_names) == list(src.var_names)
    for col in ["cell_type", "ordered", "with_nan"]:
        assert isinstance(back.obs[col].dtype, pd.CategoricalDtype)
        pd.testing.assert_series_equal(back.obs[col].astype(object), src.obs[col].astype(object))
    assert back.obs["ordered"].cat.ordered
    assert back.obs["name"].tolist() == src.obs["name"].tolist()  # strings stored as categoricals
    np.testing.assert_array_equal(back.obs["count"], src.obs["count"])
    np.testing.assert_array_equal(back.obs["flag"], src.obs["flag"])
    np.testing.assert_array_equal(back.obsm["protein"], src.obsm["protein"])
    assert back.uns["task"] == "cite" and back.uns["k"] == 2.5 and back.uns["meta"] == {"a": "b"}
    with h5py.File(path) as f:
        assert f["X/indptr"].dtype == np.int64
    with CsrReader(path) as r:
        pd.testing.assert_frame_equal(r.read_obs(), back.obs)
        assert r.read_uns()["meta"] == {"a": "b"}


def test_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5ad"
    src = _adata()
    with pytest.raises(RuntimeError):
        with CsrWriter(path, src.var_names) as w:
            w.append(src.X[:10], src.obs.iloc[:10])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="out.h5ad: duplicate gene ids"):
        CsrWriter(path, ["a", "b", "a"])
    assert list(tmp_path.iterdir()) == []


def test_write_rows_with_transform(tmp_path):
    src = _adata(dtype=np.int32)
    mem = InMemoryCounts(src.X, obs=src.obs, var_names=src.var_names, obsm={"protein": src.obsm["protein"]})
    rows = np.array([0, 4, 6, 100, 256])
    summary = write_rows(mem, rows, tmp_path / "sub.h5ad", transform=lambda X, r: X * 2, chunk_size=2,
                         uns={"task": "cite"})
    back = ad.read_h5ad(tmp_path / "sub.h5ad")
    assert (back.X != src.X[rows] * 2).nnz == 0
    assert list(back.obs_names) == list(src.obs_names[rows])
    np.testing.assert_array_equal(back.obsm["protein"], src.obsm["protein"][rows])
    total = float(src.X[rows].sum() * 2)
    assert summary["cells"] == 5 and summary["genes"] == src.n_vars
    assert summary["total_umis"] == total and summary["umis_per_cell"] == pytest.approx(total / 5)
    # from a CsrReader too: obs, obsm and uns carried over
    src.write_h5ad(tmp_path / "src.h5ad")
    with CsrReader(tmp_path / "src.h5ad") as r:
        write_rows(r, rows, tmp_path / "sub2.h5ad")
    back2 = ad.read_h5ad(tmp_path / "sub2.h5ad")
    assert (back2.X != src.X[rows]).nnz == 0
    assert back2.uns["task"] == "cite"
    pd.testing.assert_series_equal(back2.obs["score"], src.obs["score"].iloc[rows])


def test_direct_reads_of_chunked_file_match_anndata(tmp_path):
    """Small HDF5 chunks from many appends interleave data/indices in the file: the direct
    (pread) path must follow the chunk addresses, across chunk boundaries."""
    src = _adata(n=500, g=60, dtype=np.int32)
    path = tmp_path / "chunked.h5ad"
    with CsrWriter(path, src.var_names, chunk_elements=64) as w:
        for start in range(0, 500, 37):
            w.append(src.X[start : start + 37], src.obs.iloc[start : start + 37])
    ref = ad.read_h5ad(path)
    rng = np.random.default_rng(5)
    with CsrReader(path) as r:
        assert r._data.offsets is not None and r._data.offsets.size > 10  # direct path in use
        assert (r.read_rows(0, 500) != ref.X).nnz == 0
        for a, b in [(1, 2), (36, 38), (100, 371), (499, 500)]:
            assert (r.read_rows(a, b) != ref.X[a:b]).nnz == 0
        rows = np.sort(rng.choice(500, 120, replace=False))
        assert (r.read_subset(rows) != ref.X[rows]).nnz == 0
    gz = tmp_path / "gz.h5ad"
    with CsrWriter(gz, src.var_names, compression="gzip", chunk_elements=64) as w:
        w.append(src.X, src.obs)
    with CsrReader(gz) as r:
        assert r._data.offsets is None  # compressed: h5py path
        assert (r.read_subset(rows) != src.X[rows]).nnz == 0
