"""Splits (disjointness, whole clones, spatial tiles), nested sizes, grids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.data.h5ad_io import CsrReader
from scaling_assets.data.simulate import simulate
from scaling_assets.data.splits import Split, make_split, quality_grid, size_grid
from scaling_assets.errors import InputError


def _disjoint_cover(split: Split, n: int):
    parts = [split.test, split.validation, split.pool_order]
    allrows = np.concatenate(parts)
    assert allrows.size == n and np.unique(allrows).size == n  # disjoint and complete
    assert np.all(np.diff(split.test) > 0) and np.all(np.diff(split.validation) > 0)


def test_default_split_sizes_and_save_load(tmp_path):
    src = InMemoryCounts(np.ones((2000, 3)))
    split = make_split(src, "cite", seed=1)
    assert split.test.size == 400 and split.validation.size == 200  # 20% / 10% of a small dataset
    _disjoint_cover(split, 2000)
    split.save(tmp_path / "split.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["split.npz"]
    back = Split.load(tmp_path / "split.npz")
    for name in ("test", "validation", "pool_order"):
        np.testing.assert_array_equal(getattr(back, name), getattr(split, name))
    assert not np.array_equal(make_split(src, "cite", seed=2).test, split.test)
    np.testing.assert_array_equal(make_split(src, "cite", seed=1).pool_order, split.pool_order)
    big = InMemoryCounts(np.ones((200_000, 1)))
    assert make_split(big, "cite", 0).test.size == 30_000


def test_nested_sizes():
    src = InMemoryCounts(np.ones((1000, 2)))
    split = make_split(src, "development", seed=3, n_test=100, n_val=50)
    small, large = split.train_rows(100), split.train_rows(500)
    assert np.all(np.diff(large) > 0) and set(small) <= set(large)
    assert not set(large) & (set(split.test) | set(split.validation))
    with pytest.raises(InputError, match="training size 851 is larger than the training pool \\(850 cells\\)"):
        split.train_rows(851)


def test_test_request_larger_than_data(tmp_path):
    src = InMemoryCounts(np.ones((100, 2)))
    with pytest.raises(InputError, match=r"test \(150\) \+ validation \(10\) cells leave no training pool in a dataset of 100"):
        make_split(src, "cite", 0, n_test=150)


def test_lineage_holds_out_whole_clones(tmp_path):
    path = tmp_path / "lin.h5ad"
    simulate("lineage", 3000, 50, seed=4, out_path=path)
    with CsrReader(path) as src:
        split = make_split(src, "lineage", seed=9, n_test=500, n_val=100)
        clone = src.read_obs(columns=["clone"])["clone"].astype(object).to_numpy()
    _disjoint_cover(split, 3000)
    test_clones = set(clone[split.test])
    val_clones = {c for c in clone[split.validation] if isinstance(c, str)}
    pool_clones = {c for c in clone[split.pool_order] if isinstance(c, str)}
    assert None not in test_clones and not any(pd.isna(c) for c in test_clones)  # clone-less cells never test
    assert not test_clones & pool_clones and not val_clones & pool_clones and not test_clones & val_clones
    assert 500 - 12 < split.test.size <= 500 and split.validation.size <= 100  # whole clones, never more
    with pytest.raises(InputError, match="only .* cells have a clone"):
        with CsrReader(path) as src:
            make_split(src, "lineage", 0, n_test=2900, n_val=10)


def test_spatial_test_pairs_never_involve_training_cells(tmp_path):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    n = 4000
    obs = pd.DataFrame({"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 50, n)})
    src = InMemoryCounts(np.ones((n, 1)), obs=obs)
    split = make_split(src, "spatial", seed=2, n_test=600, n_val=100)
    _disjoint_cover(split, n)
    xy = obs.to_numpy()
    # tiles: the test set is a union of squares; no other cell lies inside the test cells' tiles
    test_xy = xy[split.test]
    nn = NearestNeighbors(n_neighbors=2).fit(test_xy)
    _, idx = nn.kneighbors(test_xy)
    pair_cells = split.test[idx[:, 1]]
    assert set(pair_cells) <= set(split.test)
    # spatial contiguity: for most test cells the nearest test neighbour is the true nearest cell
    _, true_idx = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(test_xy)
    assert np.mean(true_idx[:, 1] == pair_cells) > 0.6
    assert 560 < split.test.size <= 600  # whole tiles, never more than asked
    # deterministic under the seed
    np.testing.assert_array_equal(make_split(src, "spatial", seed=2, n_test=600, n_val=100).test, split.test)


@pytest.mark.parametrize("task", ["lineage", "spatial"])
def test_every_seed_pool_holds_the_nominal_pool_that_tops_a_log_size_grid(tmp_path, task):
    """Whole clones and tiles never push the test or validation set past its size, so a log grid's top
    size (cells - test - validation) fits every seed's pool. (Taking units until *at least* the size
    left pools of 2,287 cells under a 2,300-cell top size, and the study's PCA genes failed.)"""
    path = tmp_path / f"{task}.h5ad"
    simulate(task, 3000, 30, seed=2, out_path=path)
    nominal = 3000 - 600 - 100
    top = size_grid(nominal)[-1]
    with CsrReader(path) as src:
        for seed in (42, 1404, 2701, 1, 2, 3):
            split = make_split(src, task, seed, n_test=600, n_val=100)
            _disjoint_cover(split, 3000)
            assert split.pool_size >= nominal == top, (seed, split.pool_size)
            assert 590 <= split.test.size <= 600 and split.validation.size <= 100
            split.train_rows(top)


def test_a_test_set_smaller_than_every_clone_is_refused(tmp_path):
    clone = np.repeat([f"c{i}" for i in range(50)], 6)
    src = InMemoryCounts(np.ones((300, 2)), obs=pd.DataFrame({"clone": clone, "time": 2}))
    with pytest.raises(InputError, match=r"no whole clone fits in a test set of 5 cells \(the smallest has 6\)"):
        make_split(src, "lineage", 0, n_test=5, n_val=10)


def test_size_and_quality_grids():
    assert size_grid(100_000) == [100, 215, 464, 1000, 2154, 4642, 10000, 21544, 46416, 100000]
    assert size_grid(50) == [50]
    g = size_grid(12345, n_sizes=5, smallest=100)
    assert g[0] == 100 and g[-1] == 12345 and len(g) == 5
    q = quality_grid(3000)
    assert q[0] == 1.0 and len(q) == 10 and q[-1] == pytest.approx(10 / 3000, rel=2e-3)
    assert q == sorted(q, reverse=True)
    assert all(float(f"{x:.3g}") == x for x in q)
    assert quality_grid(5) == [1.0]
