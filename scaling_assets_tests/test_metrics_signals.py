"""Task signals: the (X, Y) pairs built from a test set's obs/obsm and its embeddings."""

import numpy as np
import pandas as pd
import pytest

from scaling_assets.errors import InputError
from scaling_assets.data.tasks import TASKS
from scaling_assets.metrics.signals import task_signals


def embeddings(n, d=4):
    # row i of the embedding encodes i, so tests can read back which cells were paired
    return np.column_stack([np.arange(n, dtype=float)] + [np.zeros(n)] * (d - 1))


def test_signal_names_per_task():
    # the reference's signals: what the MI stage measures, and what an ingested file must carry
    assert {name: t.mi_signals for name, t in TASKS.items()} == {
        "cite": ("cell_type", "protein"), "lineage": ("clone",),
        "spatial": ("neighbour",), "development": ("day", "cell_type"),
    }
    assert {name: t.stored_signals for name, t in TASKS.items()} == {
        "cite": ["cell_type", "obsm:protein"], "lineage": ["clone", "day"],
        "spatial": ["x", "y"], "development": ["day", "cell_type"],
    }


def test_cite_one_hot_cell_types_and_raw_protein_counts():
    obs = pd.DataFrame({"cell_type": ["B", "T", "B", None, "NK"]})
    protein = np.array([[0, 1], [3, 0], [7, 2], [1, 1], [0, 0]])
    ct, prot = task_signals("cite", obs, embeddings(5), {"protein": protein})
    assert ct.signal == "cell_type" and ct.n_pairs == 4  # the unlabelled cell is left out
    np.testing.assert_array_equal(ct.x[:, 0], [0, 1, 2, 4])
    # columns in sorted label order: B, NK, T
    np.testing.assert_array_equal(ct.y, [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert prot.signal == "protein" and prot.n_pairs == 5
    np.testing.assert_array_equal(prot.y, protein)  # raw counts, no log (as the reference)
    np.testing.assert_array_equal(prot.x, embeddings(5))


def test_development_day_and_cell_type():
    obs = pd.DataFrame({"day": [9.5, 10.5, 9.5, 12.0], "cell_type": ["a", "b", "b", "a"]})
    day, ct = task_signals("development", obs, embeddings(4))
    assert [day.signal, ct.signal] == ["day", "cell_type"]
    np.testing.assert_array_equal(day.y, [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert day.n_pairs == ct.n_pairs == 4 and ct.y.shape == (4, 2)


def lineage_obs():
    # clone A: early rows 0 (d2), 1 (d4); late rows 2, 3 (d6)
    # clone B: early row 4 (d2), late row 5 (d6); clone C: only early (6); clone D: only late (7)
    # row 8: day 6 without a clone
    return pd.DataFrame({
        "clone": ["A", "A", "A", "A", "B", "B", "C", "D", None],
        "day": [2, 4, 6, 6, 2, 6, 4, 6, 6],
    })


def test_lineage_one_seeded_sister_pair_per_clone():
    obs = lineage_obs()
    (pairs,) = task_signals("lineage", obs, embeddings(9), seed=0)
    assert pairs.signal == "clone" and pairs.n_pairs == 2  # clones A and B only
    early, late = pairs.x[:, 0].astype(int), pairs.y[:, 0].astype(int)
    assert early[0] in (0, 1) and late[0] in (2, 3)
    assert (early[1], late[1]) == (4, 5)
    # seeded: same seed, same pairs; over seeds every early/late choice of clone A appears
    again = task_signals("lineage", obs, embeddings(9), seed=0)[0]
    np.testing.assert_array_equal(again.x, pairs.x)
    chosen = {tuple(task_signals("lineage", obs, embeddings(9), seed=s)[0].x[:1, 0]) for s in range(20)}
    assert chosen == {(0.0,), (1.0,)}


def test_lineage_without_early_late_clone_is_an_error():
    obs = pd.DataFrame({"clone": ["A", "A", "B", None], "day": [2, 4, 6, 6]})
    with pytest.raises(InputError, match="no clone with both an early cell"):
        task_signals("lineage", obs, embeddings(4))


def test_spatial_pairs_each_cell_with_a_near_neighbour():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(200, 2))
    obs = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
    (pairs,) = task_signals("spatial", obs, embeddings(200), seed=1)
    assert pairs.signal == "neighbour" and pairs.n_pairs == 200
    cell, partner = pairs.x[:, 0].astype(int), pairs.y[:, 0].astype(int)
    np.testing.assert_array_equal(cell, np.arange(200))
    assert np.all(partner != cell)
    # the partner is among the 4 nearest other cells, and each of the 4 is chosen for some cell
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    rank = (d < d[np.arange(200), partner][:, None]).sum(axis=1)
    assert rank.max() == 3 and set(rank) == {0, 1, 2, 3}
    other = task_signals("spatial", obs, embeddings(200), seed=2)[0]
    assert not np.array_equal(other.y, pairs.y)


def test_missing_columns_and_shapes_are_named():
    with pytest.raises(InputError, match="obs has no column 'clone'"):
        task_signals("lineage", pd.DataFrame({"day": [2, 6]}), embeddings(2))
    with pytest.raises(InputError, match="obs has no column 'x'"):
        task_signals("spatial", pd.DataFrame({"y": range(10)}), embeddings(10))
    with pytest.raises(InputError, match="no 'protein' matrix"):
        task_signals("cite", pd.DataFrame({"cell_type": ["a", "b"]}), embeddings(2))
    with pytest.raises(InputError, match="embeddings have 3 rows but obs has 2"):
        task_signals("development", pd.DataFrame({"day": [1, 2], "cell_type": ["a", "b"]}), embeddings(3))
    with pytest.raises(InputError, match="unknown task 'atac'"):
        task_signals("atac", pd.DataFrame(), embeddings(0))


def test_one_hot_signal_through_lmi_measures_label_entropy():
    # Embeddings that separate 4 balanced cell types carry log2(4) = 2 bits about the label;
    # embeddings independent of the label carry none. (KSG handles the discrete one-hot side.)
    from scaling_assets.metrics import lmi

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c", "d"], 200)
    centres = {k: rng.standard_normal(8) * 6 for k in "abcd"}
    informative = np.array([centres[k] for k in labels]) + rng.standard_normal((800, 8))
    obs = pd.DataFrame({"cell_type": labels, "day": 1})
    (ct, _) = task_signals("cite", obs, informative, {"protein": np.ones((800, 2))})
    assert lmi.estimate(ct.x, ct.y, seed=0, epochs=40) == pytest.approx(2.0, abs=0.15)
    (ct0, _) = task_signals("cite", obs, rng.standard_normal((800, 8)), {"protein": np.ones((800, 2))})
    assert abs(lmi.estimate(ct0.x, ct0.y, seed=0)) < 0.15
    # a single day is a constant signal: zero information, flagged rather than an error
    day, _ = task_signals("development", obs, informative)
    r = lmi.estimate_pointwise(day.x, day.y)
    assert r.mi_bits == 0.0 and r.constant
