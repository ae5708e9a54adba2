"""Loaders: fixtures written in each real format round-trip; every bad input is refused cleanly."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaling_assets.data.loaders import ingest, recover_larry_counts
from scaling_assets.data.simulate import simulate
from scaling_assets.errors import InputError


def _counts(n, g, seed=0, zero_rows=()):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(0.5, 4.0, (n, g))).astype(np.int32)
    X[:, 0] = np.maximum(X[:, 0], 1)  # every cell has a count of exactly >= 1 somewhere
    X[np.arange(n), rng.integers(0, g, n)] = 1  # ... and a 1, so LARRY's row minimum is one molecule
    for r in zero_rows:
        X[r] = 0
    return X


def _nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name) or p.name.startswith(".larry")]


# -- LARRY -----------------------------------------------------------------------------------------


def _write_mtx(path: Path, M: np.ndarray, fmt="%.7g", shuffle=True, seed=0):
    r, c = np.nonzero(M)
    order = np.random.default_rng(seed).permutation(r.size) if shuffle else np.arange(r.size)
    lines = ["%%MatrixMarket matrix coordinate real general", "% written by the test",
             f"{M.shape[0]} {M.shape[1]} {r.size}"]
    lines += [f"{r[i] + 1} {c[i] + 1} {fmt % M[r[i], c[i]]}" for i in order]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def _larry(tmp_path, n=120, g=30, normed=None, genes=None, zero_rows=(7,)):
    X = _counts(n, g, seed=1, zero_rows=zero_rows)
    totals = np.maximum(X.sum(1, keepdims=True), 1)
    if normed is None:
        normed = X / totals * 1000.0  # per-cell normalised, as in the published file
    d = tmp_path / "larry"
    d.mkdir(exist_ok=True)
    _write_mtx(d / "stateFate_inVitro_normed_counts.mtx.gz", normed)
    with gzip.open(d / "stateFate_inVitro_gene_names.txt.gz", "wt") as fh:
        fh.write("\n".join(genes or [f"Gene{j}" for j in range(g)]) + "\n")
    rng = np.random.default_rng(2)
    meta = pd.DataFrame({
        "Library": "d2_1", "Cell barcode": [f"BC{i:04d}" for i in range(n)],
        "Time point": rng.choice([2, 4, 6], n), "Starting population": "Lin-Kit+Sca1-",
        "Cell type annotation": rng.choice(["Undifferentiated", "Neutrophil", "Monocyte"], n),
        "Well": rng.choice([0, 1, 2], n), "SPRING-x": rng.normal(size=n), "SPRING-y": rng.normal(size=n),
    })
    meta.to_csv(d / "stateFate_inVitro_metadata.txt.gz", sep="\t", index=False)
    clones = np.zeros((n, 15), dtype=int)
    clone_of = np.full(n, -1)
    clone_of[: n - 20] = np.arange(n - 20) % 15  # last 20 cells in no clone
    clones[np.arange(n - 20), clone_of[: n - 20]] = 1
    _write_mtx(d / "stateFate_inVitro_clone_matrix.mtx", clones, fmt="%d", shuffle=False)
    opts = dict(counts=d / "stateFate_inVitro_normed_counts.mtx.gz", genes=d / "stateFate_inVitro_gene_names.txt.gz",
                metadata=d / "stateFate_inVitro_metadata.txt.gz", clones=d / "stateFate_inVitro_clone_matrix.mtx")
    return X, meta, clone_of, opts


def test_larry_round_trip_recovers_exact_counts(tmp_path):
    X, meta, clone_of, opts = _larry(tmp_path)
    out = tmp_path / "larry.h5ad"
    summary = ingest("larry", out, chunk_size=25, **opts)
    a = ad.read_h5ad(out)
    keep = np.flatnonzero(X.sum(1) > 0)
    assert summary["cells"] == keep.size == 119 and summary["cells_dropped_zero"] == 1
    assert summary["cells_rejected_non_integer"] == 0
    np.testing.assert_array_equal(a.X.toarray(), X[keep])  # exact count recovery
    assert a.X.dtype == np.int32 and list(a.var_names) == [f"Gene{j}" for j in range(30)]
    np.testing.assert_array_equal(a.obs["day"].to_numpy(), meta["Time point"].to_numpy()[keep])
    expected_clone = np.where(clone_of[keep] >= 0, [f"clone_{c}" for c in clone_of[keep]], None)
    assert a.obs["clone"].astype(object).where(a.obs["clone"].notna(), None).tolist() == expected_clone.tolist()
    assert a.obs_names[0] == "d2_1:BC0000" and a.uns["task"] == "lineage"
    assert a.obs["cell_type"].tolist() == meta["Cell type annotation"].iloc[keep].tolist()


def test_recover_larry_counts_rejects_non_integer_rows():
    M = sp.csr_matrix(np.array([[0.5, 1.0, 1.5], [1.0, 1.3, 0.0], [0.0, 0.0, 0.0]]))
    counts, rejected = recover_larry_counts(M)
    assert counts.toarray()[0].tolist() == [1, 2, 3]
    assert rejected.tolist() == [False, True, False]


def test_larry_refuses_unrecoverable_and_strict_mode(tmp_path):
    rng = np.random.default_rng(0)
    _, _, _, opts = _larry(tmp_path, normed=rng.uniform(0.1, 5.0, (120, 30)))
    out = tmp_path / "bad.h5ad"
    with pytest.raises(InputError, match=r"normed_counts\.mtx\.gz: \d+ of 120 cells do not become integers"):
        ingest("larry", out, **opts)
    _nothing_written(out)
    _, _, _, opts = _larry(tmp_path)
    with pytest.raises(InputError, match=r"normed_counts\.mtx\.gz: non-integer count .*allow_normalized"):
        ingest("larry", out, allow_normalized=False, **opts)
    _nothing_written(out)


def test_larry_duplicate_genes_and_missing_file(tmp_path):
    _, _, _, opts = _larry(tmp_path, genes=[f"Gene{j}" for j in range(29)] + ["Gene3"])
    out = tmp_path / "dup.h5ad"
    with pytest.raises(InputError, match=r"gene_names\.txt\.gz: duplicate gene ids \['Gene3'\]"):
        ingest("larry", out, **opts)
    _nothing_written(out)
    opts["clones"] = tmp_path / "nope.mtx"
    with pytest.raises(InputError, match=r"nope\.mtx: file not found \(expected the LARRY clone matrix"):
        ingest("larry", out, **opts)


# -- CITE-seq --------------------------------------------------------------------------------------


def _cite(tmp_path, n=200, g=25, l2=None):
    rng = np.random.default_rng(3)
    X = _counts(n, g, zero_rows=(0, 50))
    l2 = rng.choice(["CD4 TCM", "CD8 Naive", "NK", "B naive"], n) if l2 is None else l2
    obs = pd.DataFrame({"celltype.l1": pd.Categorical(np.where(np.isin(l2, ["NK"]), "NK", "other")),
                        "celltype.l2": pd.Categorical(l2),
                        "celltype.l3": pd.Categorical(l2), "donor": "P1"},
                       index=[f"AAAC-{i}" for i in range(n)])
    a = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    a.obsm["protein_counts"] = pd.DataFrame(rng.poisson(30, (n, 4)).astype(np.float64), index=obs.index,
                                            columns=["CD3", "CD4", "CD8", "CD19"])
    path = tmp_path / "pbmc.h5ad"
    a.write_h5ad(path)
    return X, a, path


def test_cite_round_trip(tmp_path):
    X, src, path = _cite(tmp_path)
    out = tmp_path / "cite.h5ad"
    summary = ingest("cite", out, path=path, level="l2", reference_filters=False, chunk_size=64)
    a = ad.read_h5ad(out)
    keep = np.flatnonzero(X.sum(1) > 0)
    assert summary["cells_dropped_zero"] == 2 and a.n_obs == 198
    np.testing.assert_array_equal(a.X.toarray(), X[keep])
    assert a.obs["cell_type"].tolist() == src.obs["celltype.l2"].iloc[keep].tolist()
    np.testing.assert_array_equal(a.obsm["protein"], src.obsm["protein_counts"].to_numpy()[keep])
    assert list(a.uns["protein_names"]) == ["CD3", "CD4", "CD8", "CD19"] and a.uns["task"] == "cite"


def test_cite_one_class_and_not_hdf5(tmp_path):
    _, _, path = _cite(tmp_path, l2=np.array(["NK"] * 200))
    out = tmp_path / "cite.h5ad"
    with pytest.raises(InputError, match=r"pbmc\.h5ad.*'cell_type' has 1 distinct value"):
        ingest("cite", out, path=path, reference_filters=False)
    _nothing_written(out)
    fake = tmp_path / "fake.h5ad"
    fake.write_text("not hdf5")
    with pytest.raises(InputError, match=r"fake\.h5ad: not an HDF5 file"):
        ingest("cite", out, path=fake)
    _nothing_written(out)


# -- MERFISH ---------------------------------------------------------------------------------------


def test_merfish_round_trip_drops_blanks(tmp_path):
    n, g = 150, 12
    X = _counts(n, g, zero_rows=(10,))
    ids = np.arange(10_000, 10_000 + n)
    cbg = pd.DataFrame(X, columns=[f"Gene{j}" for j in range(g)], index=pd.Index(ids, name="cell"))
    cbg["Blank-1"] = 1
    cbg["Blank-2"] = 2
    cbg.to_csv(tmp_path / "cell_by_gene.csv")
    rng = np.random.default_rng(1)
    meta = pd.DataFrame({"fov": 0, "volume": 100.0, "center_x": rng.uniform(0, 5000, n),
                         "center_y": rng.uniform(0, 3000, n)}, index=ids[::-1])  # other order
    meta.to_csv(tmp_path / "cell_metadata.csv")
    out = tmp_path / "merfish.h5ad"
    summary = ingest("merfish", out, cell_by_gene=tmp_path / "cell_by_gene.csv",
                     cell_metadata=tmp_path / "cell_metadata.csv", chunk_size=40)
    a = ad.read_h5ad(out)
    keep = np.flatnonzero(X.sum(1) > 0)
    assert summary["cells_dropped_zero"] == 1 and a.n_obs == n - 1
    assert list(a.var_names) == [f"Gene{j}" for j in range(g)]
    np.testing.assert_array_equal(a.X.toarray(), X[keep])
    np.testing.assert_allclose(a.obs["x"].to_numpy(), meta.loc[ids[keep], "center_x"].to_numpy())
    np.testing.assert_allclose(a.obs["y"].to_numpy(), meta.loc[ids[keep], "center_y"].to_numpy())
    meta.drop(columns="center_y").to_csv(tmp_path / "cell_metadata.csv")
    with pytest.raises(InputError, match=r"cell_metadata\.csv: missing signal column 'center_y'"):
        ingest("merfish", tmp_path / "m2.h5ad", cell_by_gene=tmp_path / "cell_by_gene.csv",
               cell_metadata=tmp_path / "cell_metadata.csv")
    _nothing_written(tmp_path / "m2.h5ad")


# -- atlas -----------------------------------------------------------------------------------------


def _atlas(tmp_path, n=180, g=20, drop_x=False):
    rng = np.random.default_rng(4)
    X = _counts(n, g)
    obs = pd.DataFrame({"development_stage": pd.Categorical(rng.choice(["E8.5", "E9.5", "E10.5"], n)),
                        "celltype": pd.Categorical(rng.choice(["neural", "gut", "blood"], n))},
                       index=[f"e{i}" for i in range(n)])
    counts = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=obs,
                        var=pd.DataFrame(index=[f"ENSMUSG{j:05d}" for j in range(g)]))
    a = counts.copy()
    a.raw = counts
    a.X = sp.csr_matrix(np.log1p(counts.X.toarray() / X.sum(1, keepdims=True) * 1e4))  # normalised X
    path = tmp_path / "atlas.h5ad"
    a.write_h5ad(path, compression="gzip")
    if drop_x:
        with h5py.File(path, "a") as f:
            del f["X"], f["raw"]
    return X, obs, path


def test_atlas_round_trip_reads_raw(tmp_path):
    X, obs, path = _atlas(tmp_path)
    out = tmp_path / "dev.h5ad"
    summary = ingest("atlas", out, path=path, day_column="development_stage", cell_type_column="celltype")
    a = ad.read_h5ad(out)
    np.testing.assert_array_equal(a.X.toarray(), X)
    np.testing.assert_array_equal(a.obs["day"].to_numpy(),
                                  obs["development_stage"].astype(str).str[1:].astype(float).to_numpy())
    assert a.obs["cell_type"].tolist() == obs["celltype"].tolist()
    assert summary["signals"] == ["day", "cell_type"] and a.uns["task"] == "development"


def test_atlas_bad_inputs(tmp_path):
    _, _, path = _atlas(tmp_path)
    out = tmp_path / "dev.h5ad"
    with pytest.raises(InputError, match=r"atlas\.h5ad: missing signal column 'stage' \(day_column\)"):
        ingest("atlas", out, path=path, day_column="stage", cell_type_column="celltype")
    _nothing_written(out)
    # normalised X only: non-integer values are refused
    with pytest.raises(InputError, match=r"atlas\.h5ad \(X\): non-integer count"):
        ingest("atlas", out, path=path, day_column="development_stage", cell_type_column="celltype", matrix="X")
    _nothing_written(out)
    _, _, nox = _atlas(tmp_path, drop_x=True)
    with pytest.raises(InputError, match=r"atlas\.h5ad: no count matrix"):
        ingest("atlas", out, path=nox, day_column="development_stage", cell_type_column="celltype")
    _nothing_written(out)


# -- canonical h5ad --------------------------------------------------------------------------------


def test_h5ad_round_trip_of_simulated(tmp_path):
    simulate("cite", 600, 40, seed=0, out_path=tmp_path / "sim.h5ad")
    summary = ingest("h5ad", tmp_path / "copy.h5ad", path=tmp_path / "sim.h5ad")
    a, b = ad.read_h5ad(tmp_path / "sim.h5ad"), ad.read_h5ad(tmp_path / "copy.h5ad")
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.obsm["protein"], b.obsm["protein"])
    assert summary["task"] == "cite" and summary["signals"] == ["cell_type", "obsm:protein"]


def _plain_h5ad(path, X, obs=None, var_names=None):
    obs = obs if obs is not None else pd.DataFrame(
        {"cell_type": pd.Categorical(np.arange(X.shape[0]) % 2)}, index=[f"c{i}" for i in range(X.shape[0])])
    var = pd.DataFrame(index=var_names or [f"g{j}" for j in range(X.shape[1])])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns on duplicate var names
        ad.AnnData(sp.csr_matrix(X), obs=obs, var=var).write_h5ad(path)


@pytest.mark.parametrize(
    "value, message",
    [(-1.0, "negative count"), (np.nan, "NaN count"), (2.5, "non-integer count")],
)
def test_h5ad_bad_counts(tmp_path, value, message):
    X = _counts(30, 5).astype(np.float32)
    X[17, 2] = value
    _plain_h5ad(tmp_path / "in.h5ad", X)
    out = tmp_path / "out.h5ad"
    with pytest.raises(InputError, match=rf"in\.h5ad: {message} \(cell c17, gene column 2"):
        ingest("h5ad", out, path=tmp_path / "in.h5ad", task="cite", chunk_size=8)
    _nothing_written(out)


def test_h5ad_zero_cells_duplicates_and_signals(tmp_path):
    X = _counts(30, 5, zero_rows=(3, 4, 29))
    _plain_h5ad(tmp_path / "in.h5ad", X)
    summary = ingest("h5ad", tmp_path / "ok.h5ad", path=tmp_path / "in.h5ad", task="cite")
    assert summary["cells"] == 27 and summary["cells_dropped_zero"] == 3
    assert list(ad.read_h5ad(tmp_path / "ok.h5ad").obs_names[:4]) == ["c0", "c1", "c2", "c5"]

    _plain_h5ad(tmp_path / "dup.h5ad", X, var_names=["a", "b", "c", "b", "e"])
    out = tmp_path / "out.h5ad"
    with pytest.raises(InputError, match=r"dup\.h5ad: var: duplicate gene ids \['b'\]"):
        ingest("h5ad", out, path=tmp_path / "dup.h5ad")
    _nothing_written(out)
    with pytest.raises(InputError, match=r"in\.h5ad: missing signal column 'clone' needed for task 'lineage'"):
        ingest("h5ad", out, path=tmp_path / "in.h5ad", task="lineage")
    _nothing_written(out)
    obs = pd.DataFrame({"x": np.zeros(30), "y": np.arange(30.0)}, index=[f"c{i}" for i in range(30)])
    _plain_h5ad(tmp_path / "flat.h5ad", X, obs=obs)
    with pytest.raises(InputError, match=r"flat\.h5ad: signal column 'x' has 1 distinct value"):
        ingest("h5ad", out, path=tmp_path / "flat.h5ad", task="spatial")
    _nothing_written(out)
    with pytest.raises(InputError, match=r"missing\.h5ad: file not found"):
        ingest("h5ad", out, path=tmp_path / "missing.h5ad")
    with pytest.raises(InputError, match="unknown format 'loom'"):
        ingest("loom", out, path=tmp_path / "in.h5ad")


def test_ingest_options_are_checked_against_the_format_table(tmp_path):
    import inspect

    from scaling_assets.data import loaders
    from scaling_assets.data.tasks import FORMATS

    # the table and the loaders agree: every option a loader takes, and no other
    for name, source in FORMATS.items():
        params = inspect.signature(getattr(loaders, f"ingest_{name}")).parameters
        assert set(params) - {"out_path", "chunk_size", "progress"} == set(source.options), name
        assert all(params[p].default is inspect.Parameter.empty for p in source.paths), name
    with pytest.raises(InputError, match=r"--format larry: needs genes, metadata, clones"):
        loaders.ingest("larry", tmp_path / "out.h5ad", counts=str(tmp_path / "c.mtx"))
    with pytest.raises(InputError, match=r"--format cite: does not take clones; its options are path, level"):
        loaders.ingest("cite", tmp_path / "out.h5ad", path=str(tmp_path / "x.h5ad"), clones="y")
    assert not (tmp_path / "out.h5ad").exists()
