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
