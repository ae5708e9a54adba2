"""Training sets as row ranges of one pool file per seed, thinned on read; faults refused."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.data.h5ad_io import CsrReader, write_rows
from scaling_assets.data.pools import CorpusRange, CountsRange, record_fingerprints, write_pool
from scaling_assets.data.splits import make_split
from scaling_assets.data.thinning import thin_counts
from scaling_assets.errors import InputError
from scaling_assets.data.corpus import Corpus, TokenDictionary, build_corpus


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.poisson(2.0, (300, 40)).astype(np.int32)
    raw = InMemoryCounts(X, var_names=[f"g{j}" for j in range(40)])
    split = make_split(raw, "cite", seed=42)
    folder = tmp_path_factory.mktemp("pool")
    write_pool(raw, split.pool_order, folder, chunk_size=37)
    return raw, split, folder


def _dense(source, **kw):
    return np.vstack([X.toarray() for _, X in source.iter_chunks(**kw)])


@pytest.mark.parametrize("q", [1.0, 0.3])
def test_range_equals_the_thinned_copy_it_replaces(pool, tmp_path, q):
    raw, split, folder = pool
    n = 100
    # the old layout: first n pool cells (sorted) copied from the raw file, thinned keyed on raw rows
    rows = split.train_rows(n)
    write_rows(raw, rows, tmp_path / "copy.h5ad", transform=None if q == 1 else partial(thin_counts, q=q, seed=42))
    with CsrReader(tmp_path / "copy.h5ad") as copy:
        expected = dict(zip(copy.obs_names, copy.read_rows(0, n).toarray()))
    with CountsRange(str(folder), n, q, 42).open() as rng_src:
        assert rng_src.n_obs == n
        got = dict(zip(rng_src.obs_names, _dense(rng_src, chunk_size=13)))
        assert np.array_equal(rng_src.raw_rows(), split.pool_order[:n])
        # the same cells, each with exactly the counts of the copy, whatever the chunking or access
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[c], expected[c]) for c in got)
        sub = np.array([5, 60, 7])
        assert np.array_equal(rng_src.read_subset(sub).toarray(), _dense(rng_src, chunk_size=64)[sub])


def test_sizes_and_qualities_are_nested(pool):
    _, _, folder = pool
    with CountsRange(str(folder), 200, 0.5, 42).open() as big, CountsRange(str(folder), 50, 0.5, 42).open() as small:
        assert np.array_equal(_dense(small), _dense(big)[:50])  # a smaller set is a prefix of a larger one
    with CountsRange(str(folder), 200, 0.5, 42).open() as hi, CountsRange(str(folder), 200, 0.1, 42).open() as lo:
        h, low = _dense(hi), _dense(lo)
        assert np.all(low <= h) and low.sum() < 0.35 * h.sum()  # q=0.1 keeps a subset of q=0.5's molecules


def test_size_above_the_pool_fails_naming_both(pool):
    _, split, folder = pool
    n_pool = split.pool_order.size
    with pytest.raises(InputError, match=rf"N={n_pool + 1} exceeds .* {n_pool} cells"):
        with CountsRange(str(folder), n_pool + 1, 1.0, 42).open():
            pass


def test_truncated_or_missing_pool_is_refused(pool, tmp_path):
    import shutil

    _, _, folder = pool
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = (bad / "pool.h5ad").read_bytes()
    (bad / "pool.h5ad").write_bytes(data[: len(data) // 2])  # a killed writer's half file
    with pytest.raises(InputError, match=rf"pool.h5ad: {len(data) // 2} bytes, expected {len(data)}"):
        with CountsRange(str(bad), 10, 1.0, 42).open():
            pass
    (bad / "pool.h5ad").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with CountsRange(str(bad), 10, 1.0, 42).open():  # the cheap size check passes ...
        pass
    with pytest.raises(InputError, match="BLAKE2b differs"):  # ... the full hash does not
        with CountsRange(str(bad), 10, 1.0, 42).open(full_hash=True):
            pass
    (bad / "pool.h5ad").unlink()
    with pytest.raises(InputError, match="pool.h5ad: missing"):
        with CountsRange(str(bad), 10, 1.0, 42).open():
            pass
    (bad / "fingerprint.json").unlink()
    with pytest.raises(InputError, match="writer did not finish"):
        with CountsRange(str(bad), 10, 1.0, 42).open():
            pass


def test_corpus_range_is_the_corpus_of_the_first_n_pool_cells(pool, tmp_path):
    raw, _, folder = pool
    medians = np.ones(40)
    dictionary = TokenDictionary(list(raw.var_names))
    with CountsRange(str(folder), 210, 0.05, 42).open() as src:  # low q: some cells lose every molecule
        build_corpus(src, tmp_path / "pool" / "corpus", medians, dictionary, chunk_size=32)
        with CountsRange(str(folder), 120, 0.05, 42).open() as first:
            build_corpus(first, tmp_path / "own", medians, dictionary, chunk_size=32)
    names = [f"corpus/{f}" for f in ("tokens.bin", "offsets.npy", "lengths.npy", "rows.npy", "cell_ids.txt")]
    record_fingerprints(tmp_path / "pool", names)
    view, own = CorpusRange(str(tmp_path / "pool" / "corpus"), 120).open(), Corpus(tmp_path / "own")
    assert len(view) == len(own) < 120  # empty cells dropped the same way
    assert all(np.array_equal(view[i], own[i]) for i in range(len(own)))
    assert list(view.cell_ids) == list(own.cell_ids) and np.array_equal(view.lengths, own.lengths)
    with pytest.raises(InputError, match="N=211 exceeds the corpus.s pool of 210 cells"):
        CorpusRange(str(tmp_path / "pool" / "corpus"), 211).open()
    tokens = tmp_path / "pool" / "corpus" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-4])
    with pytest.raises(InputError, match="tokens.bin: .* bytes, expected"):
        CorpusRange(str(tmp_path / "pool" / "corpus"), 120).open()
    assert json.loads((tmp_path / "pool" / "fingerprint.json").read_text())["corpus/rows.npy"]["bytes"] > 0


def _flip_count(folder, row: int) -> None:
    """Change one stored count of pool row ``row`` in place: same size, same HDF5 structure."""
    import h5py

    path = folder / "pool.h5ad"
    with h5py.File(path, "r") as f:
        data = f["X/data"]
        entry = int(f["X/indptr"][row])
        chunk = data.chunks[0]
        offset = data.id.get_chunk_info_by_coord((entry // chunk * chunk,)).byte_offset
        offset += (entry % chunk) * data.dtype.itemsize
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([value[0] ^ 0x04]))
    assert path.stat().st_size == size


def test_flipped_counts_are_refused_by_an_in_order_read_naming_rows_and_partition(pool, tmp_path):
    import shutil

    from scaling_assets.data.integrity import CorruptFileError

    _, _, folder = pool
    bad = tmp_path / "cite" / "pool_counts" / "s=42"
    shutil.copytree(folder, bad)
    with CountsRange(str(bad), 200, 1.0, 42).open() as src:  # intact: every whole block read is checked
        _dense(src, chunk_size=7)
        assert src.check.rows_verified >= 200 - src.check.block_rows
    _flip_count(bad, 60)
    with CountsRange(str(bad), 50, 0.3, 42).open() as src:  # rows [0, 50) do not read the changed row
        _dense(src, chunk_size=16)
    for q, chunk in [(1.0, 64), (0.3, 5)]:
        with pytest.raises(CorruptFileError, match=r"pool.h5ad: the counts of rows \d+\.\.\d+ differ") as err:
            with CountsRange(str(bad), 200, q, 42).open() as src:
                _dense(src, chunk_size=chunk)
        lo, hi = (int(x) for x in str(err.value).split("rows ")[1].split(" differ")[0].split(".."))
        assert lo <= 60 <= hi
        assert "partition cite/pool_counts s=42 must be rebuilt" in str(err.value)
        assert "scaling-assets study verify" in str(err.value)


def test_changed_raw_row_indices_are_refused_at_open(pool, tmp_path):
    import shutil

    from scaling_assets.data.integrity import CorruptFileError

    _, _, folder = pool
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "raw_rows.npy").read_bytes())
    data[-3] ^= 1
    (bad / "raw_rows.npy").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="raw_rows.npy: BLAKE2b differs"):
        with CountsRange(str(bad), 10, 1.0, 42).open():
            pass


@pytest.fixture(scope="module")
def sparse_pool(tmp_path_factory):
    """Half the cells carry ~3 UMIs, half ~120: at q = 0.1 many of the first thin to nothing."""
    rng = np.random.default_rng(5)
    X = rng.poisson(3.0 / 40, (400, 40)).astype(np.int32)
    X[:, 0] += 1
    X[1::2] = rng.poisson(3.0, (200, 40))
    X[[10, 12]] = 0  # cells with no UMI even at q = 1
    raw = InMemoryCounts(X, var_names=[f"g{j}" for j in range(40)])
    split = make_split(raw, "cite", seed=42, n_test=80, n_val=20)
    folder = tmp_path_factory.mktemp("sparse_pool")
    write_pool(raw, split.pool_order, folder, chunk_size=29)
    return raw, split, folder


def _expected_zero_pool_rows(raw, split, n, q):
    """Independently: thin the raw rows of pool rows [0, n) and list those left with no UMI."""
    raw_rows = split.pool_order[:n]
    X = raw.read_subset(raw_rows)
    X = thin_counts(X, raw_rows, q=q, seed=42) if q < 1 else X
    return np.flatnonzero(np.asarray(X.sum(axis=1)).ravel() == 0), X


@pytest.mark.parametrize("q", [1.0, 0.1])
def test_cells_left_with_no_umi_are_dropped_from_the_training_range(sparse_pool, q):
    from scaling_assets.data.pools import find_zero_umi_rows, handle_from_record

    raw, split, folder = sparse_pool
    n = 250
    zero, X = _expected_zero_pool_rows(raw, split, n, q)
    handle, umis = find_zero_umi_rows(CountsRange(str(folder), n, q, 42), chunk_size=23)
    assert handle.zero_umi_rows == tuple(zero.tolist())
    if q == 1.0:  # only the cells empty in the raw file
        assert set(split.pool_order[zero]) == {10, 12} & set(split.pool_order[:n]) and len(zero) >= 1
    else:
        assert 60 < len(zero) < 120
    assert handle.cells == n and handle.training_cells == n - len(zero)  # N stays nominal
    assert umis == pytest.approx(X.sum() / (n - len(zero)))
    assert handle_from_record(json.loads(json.dumps(handle.to_record()))) == handle  # the stored record
    kept = np.setdiff1d(np.arange(n), zero)
    with handle.open() as src:
        assert src.n_obs == n - len(zero)
        assert np.array_equal(src.pool_rows(), kept) and np.array_equal(src.dropped, zero)
        dense = _dense(src, chunk_size=17)
        assert np.array_equal(dense, X.toarray()[kept]) and (dense.sum(axis=1) > 0).all()
        assert np.array_equal(src.raw_rows(), split.pool_order[kept])
        assert list(src.obs_names) == list(np.asarray(raw.obs_names)[split.pool_order[kept]])
        sub = np.array([0, src.n_obs - 1, 7, 7])
        assert np.array_equal(src.read_subset(sub).toarray(), dense[sub])
        assert np.array_equal(src.read_rows(5, 40).toarray(), dense[5:40])
        assert np.array_equal(_dense(src, chunk_size=9, rows=np.arange(3, 30)), dense[3:30])
        assert list(src.read_obs().index) == list(src.obs_names)
        with pytest.raises(IndexError):
            src.read_subset(np.array([src.n_obs]))


def test_zero_umi_rows_are_nested_across_sizes_and_qualities(sparse_pool):
    from scaling_assets.data.pools import find_zero_umi_rows

    _, _, folder = sparse_pool
    zero = lambda n, q: set(find_zero_umi_rows(CountsRange(str(folder), n, q, 42))[0].zero_umi_rows)  # noqa: E731
    assert zero(100, 0.1) == {r for r in zero(300, 0.1) if r < 100}  # a cell is empty in every sample holding it
    assert zero(300, 0.3) <= zero(300, 0.1)  # q=0.1 keeps a subset of q=0.3's molecules


def test_models_train_only_on_cells_with_umis(sparse_pool):
    """PCA on the range equals PCA on an in-memory copy of the nonzero cells; random projection and
    SCVI see only those cells."""
    import scipy.sparse as sp

    from scaling_assets.data.pools import find_zero_umi_rows
    from scaling_assets.models.pca import PCAModel

    raw, split, folder = sparse_pool
    zero, X = _expected_zero_pool_rows(raw, split, 300, 0.1)
    kept = sp.csr_matrix(X)[np.setdiff1d(np.arange(300), zero)]
    genes = list(raw.var_names)
    handle, _ = find_zero_umi_rows(CountsRange(str(folder), 300, 0.1, 42))
    with handle.open() as train:
        on_range = PCAModel(genes, budget="test", seed=1)
        on_range.fit(train)
    on_copy = PCAModel(genes, budget="test", seed=1)
    on_copy.fit(InMemoryCounts(kept, var_names=genes))
    assert np.allclose(on_range.components, on_copy.components)
    assert on_range.fit_report.train_loss == pytest.approx(on_copy.fit_report.train_loss)


def test_a_range_without_its_zero_umi_cells_is_still_checked_block_by_block(sparse_pool, tmp_path):
    """The dropped rows are read (and hashed) with their neighbours, so an in-order read of a range
    with dropped cells verifies every block it spans, and a changed count anywhere in it is refused."""
    import shutil

    from scaling_assets.data.integrity import CorruptFileError
    from scaling_assets.data.pools import find_zero_umi_rows

    _, _, folder = sparse_pool
    copy = tmp_path / "cite" / "pool_counts" / "s=42"
    shutil.copytree(folder, copy)
    handle, _ = find_zero_umi_rows(CountsRange(str(copy), 250, 0.1, 42))
    assert len(handle.zero_umi_rows) > 50
    with handle.open() as src:
        _dense(src, chunk_size=11)
        assert src.check.rows_verified >= 250 - src.check.block_rows
    _flip_count(copy, int(handle.zero_umi_rows[3]) + 1)
    with pytest.raises(CorruptFileError, match="partition cite/pool_counts s=42 must be rebuilt"):
        with handle.open() as src:
            _dense(src, chunk_size=11)
