import json

import numpy as np
import pytest
import scipy.sparse as sp

from scaling_assets.data import corpus as tk
from scaling_assets.data.corpus import Corpus, TokenDictionary, build_corpus, gene_nonzero_medians, rank_value_encode
from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.errors import InputError
from scaling_assets.models.synthetic import simulate_counts


def test_token_dictionary_ids_roundtrip_and_equality(tmp_path):
    td = TokenDictionary(["A", "B", "C"])
    assert td.token_to_id == {"<pad>": 0, "<mask>": 1, "A": 2, "B": 3, "C": 4}
    assert len(td) == 5
    td.save(tmp_path / "d.json")
    assert TokenDictionary.load(tmp_path / "d.json") == td
    assert td != TokenDictionary(["A", "C", "B"])
    assert "token 3" in td.difference(TokenDictionary(["A", "C", "B"]))
    with pytest.raises(InputError, match="unique"):
        TokenDictionary(["A", "A"])
    (tmp_path / "bad.json").write_text(json.dumps({"A": 0}))
    with pytest.raises(InputError, match="not a token dictionary"):
        TokenDictionary.load(tmp_path / "bad.json")


def test_rank_value_encoding_hand_worked_example_with_ties_and_truncation():
    # Cell 0 counts [4, 2, 0, 2, 8, 4] (total 20 -> x500 normalised); medians [1, 1, 1, 2, 2, 1]:
    # values 2000, 1000, -, 500, 2000, 2000 -> genes 0, 4, 5 tie at 2000 (token order 2, 6, 7),
    # then gene 1 (1000, token 3), then gene 3 (500, token 5).
    # Cell 1 counts [0, 0, 5, 0, 0, 0] -> only gene 2 (token 4). Cell 2 is empty.
    X = sp.csr_matrix(np.array([[4, 2, 0, 2, 8, 4], [0, 0, 5, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    medians = np.array([1, 1, 1, 2, 2, 1], dtype=float)
    cells = rank_value_encode(X, medians)
    assert [c.tolist() for c in cells] == [[2, 6, 7, 3, 5], [4], []]
    assert all(c.dtype == np.int32 for c in cells)
    truncated = rank_value_encode(X, medians, max_len=3)
    assert truncated[0].tolist() == [2, 6, 7]
    # The median rescales: a doubled median for gene 0 drops it from 2000 to 1000, tying gene 1.
    medians2 = medians.copy()
    medians2[0] = 2
    assert rank_value_encode(X, medians2)[0].tolist() == [6, 7, 2, 3, 5]


def test_rank_value_encoding_skips_genes_without_median_and_truncates_to_512():
    X = sp.csr_matrix(np.arange(1, 601, dtype=float)[None, :])
    medians = np.ones(600)
    medians[599] = np.nan  # the highest-count gene was never expressed in the training pool
    tokens = rank_value_encode(X, medians)[0]
    assert len(tokens) == 512
    assert tokens[0] == 598 + 2 and tokens[-1] == 598 + 2 - 511


def _naive_medians(X):
    X = X.toarray().astype(float)
    N = X / X.sum(axis=1, keepdims=True) * 1e4
    return np.array([np.median(col[col > 0]) if (col > 0).any() else np.nan for col in N.T])


def test_medians_exact_and_restricted_to_the_given_rows():
    src = simulate_counts(200, 30, seed=3)
    X = src.read_rows(0, 200)
    train = np.arange(0, 150)
    med = gene_nonzero_medians(src, rows=train, chunk_size=37)
    np.testing.assert_allclose(med, _naive_medians(X[train]), rtol=1e-12)
    # Test cells with an outlandish expression of gene 0 must not move the training medians.
    X2 = X.tolil()
    X2[150:, :] = 0
    X2[150:, 0] = 10_000
    src2 = InMemoryCounts(X2.tocsr(), var_names=src.var_names)
    np.testing.assert_array_equal(gene_nonzero_medians(src2, rows=train), med)
    assert not np.allclose(gene_nonzero_medians(src2), med)


def test_medians_never_expressed_gene_is_nan_and_histogram_mode_is_within_bound(monkeypatch):
    X = simulate_counts(120, 20, seed=4).read_rows(0, 120).tolil()
    X[:, 5] = 0
    src = InMemoryCounts(X.tocsr())
    exact = gene_nonzero_medians(src)
    assert np.isnan(exact[5]) and np.isfinite(np.delete(exact, 5)).all()
    monkeypatch.setattr(tk, "EXACT_MEDIAN_MAX_VALUES", 50)  # force the histogram after one chunk
    approx = gene_nonzero_medians(src, chunk_size=10)
    assert np.isnan(approx[5])
    # within half a bin of the ⌈n/2⌉-th smallest value
    X = X.tocsr().toarray().astype(float)
    N = X / X.sum(axis=1, keepdims=True) * 1e4
    lower_middle = np.array([np.sort(c[c > 0])[((c > 0).sum() + 1) // 2 - 1] for c in np.delete(N, 5, axis=1).T])
    ratio = np.delete(approx, 5) / lower_middle
    half_bin = 10 ** (0.5 / tk.HIST_BINS_PER_DECADE)
    assert (ratio <= half_bin + 1e-12).all() and (ratio >= 1 / half_bin - 1e-12).all()
    assert np.abs(ratio - 1).max() > 0  # it really is the histogram path


def test_medians_empty_pool_is_an_error():
    with pytest.raises(InputError, match="empty"):
        gene_nonzero_medians(simulate_counts(10, 5), rows=np.array([], dtype=int))


def test_build_corpus_roundtrip_drops_empty_cells_and_is_atomic(tmp_path):
    X = simulate_counts(60, 25, seed=5).read_rows(0, 60).tolil()
    X[[3, 40], :] = 0  # two cells with no counts
    src = InMemoryCounts(X.tocsr(), var_names=[f"g{j}" for j in range(25)])
    rows = np.arange(10, 60)  # cell 3 is outside the rows, cell 40 inside
    med = gene_nonzero_medians(src, rows=rows)
    td = TokenDictionary(src.var_names)
    summary = build_corpus(src, tmp_path / "corpus", med, td, rows=rows, chunk_size=7)
    assert summary["input_cells"] == 50 and summary["dropped"] == 1 and summary["cells"] == 49
    corpus = Corpus(tmp_path / "corpus")
    assert len(corpus) == 49
    kept = rows[rows != 40]
    np.testing.assert_array_equal(corpus.rows, kept)
    assert list(corpus.cell_ids) == [f"cell{i}" for i in kept]
    expected = rank_value_encode(X.tocsr()[kept], med)
    for i in range(49):
        np.testing.assert_array_equal(corpus[i], expected[i])
    np.testing.assert_array_equal(corpus.lengths, [len(e) for e in expected])
    assert corpus.summary["tokens"] == sum(len(e) for e in expected)
    assert corpus.token_dictionary == td
    np.testing.assert_array_equal(corpus.medians, med)
    assert isinstance(corpus._tokens, np.memmap)
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no temp dirs left behind
    # rebuilding replaces the directory whole
    build_corpus(src, tmp_path / "corpus", med, td, rows=rows[:5])
    assert len(Corpus(tmp_path / "corpus")) == 5 and [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_build_corpus_rejects_mismatched_dictionary_and_failed_builds_leave_nothing(tmp_path):
    src = simulate_counts(20, 10)
    med = gene_nonzero_medians(src)
    with pytest.raises(InputError, match="token dictionary"):
        build_corpus(src, tmp_path / "c", med, TokenDictionary([f"x{j}" for j in range(10)]))
    with pytest.raises(InputError, match="medians"):
        build_corpus(src, tmp_path / "c", med[:5], TokenDictionary(src.var_names))

    class Broken(InMemoryCounts):
        def iter_chunks(self, chunk_size=10_000, rows=None):
            yield from list(super().iter_chunks(5, rows))[:2]
            raise RuntimeError("disk gone")

    broken = Broken(src.read_rows(0, 20), var_names=src.var_names)
    with pytest.raises(RuntimeError):
        build_corpus(broken, tmp_path / "c", med, TokenDictionary(src.var_names))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="not a corpus"):
        Corpus(tmp_path)
