"""The four tasks are presets of signal specs: their splits and (X, Y) pairs must be those of the task code
before them, to the bit, so the default study's MI table does not change.

``golden/signal_presets.npz`` holds, per task, the inputs (the obs columns and obsm matrices of
``simulate(task, 1500, 40, seed=3)``) and what the old code made of them for seeds 42 and 7 (400 test and
100 validation cells): the split's rows, and a digest (dtype, shape, SHA-256) of every signal's X and Y for a
seeded 6-d embedding of the test cells. It was written once by the frozen copies of the old split rules and
signal builders (``git show 4303f90:scaling_assets_tests/old_split_rules.py``, ``old_signal_builders.py``),
which are gone since. The inputs are stored rather than simulated again, so a change to the simulator does
not move them."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.data.splits import make_split
from scaling_assets.data.tasks import TASKS
from scaling_assets.metrics.signals import build_signals

GOLDEN = Path(__file__).with_name("golden") / "signal_presets.npz"
CELLS = 1500


def digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{a.dtype.str} {a.shape} " + hashlib.sha256(a.tobytes()).hexdigest()


def golden_source(golden, task: str) -> InMemoryCounts:
    """The simulated dataset's obs and obsm as the old code read them (categorical columns stay categorical)."""
    columns = {}
    for name in golden.files:
        parts = name.split("/")
        if parts[:2] != [task, "obs"]:
            continue
        if len(parts) == 3:
            columns[parts[2]] = golden[name]
        elif parts[3] == "codes":
            categories = golden[f"{task}/obs/{parts[2]}/categories"].astype(object)
            columns[parts[2]] = pd.Categorical.from_codes(golden[name], categories)
    obs = pd.DataFrame(columns, index=[f"c{i:09d}" for i in range(CELLS)])
    obsm = {key: golden[f"{task}/obsm/{key}"] for key in TASKS[task].obsm_keys}
    return InMemoryCounts(sp.csr_matrix((CELLS, 1), dtype=np.int32), obs=obs, obsm=obsm)


@pytest.mark.parametrize("task", list(TASKS))
def test_task_presets_build_the_old_splits_and_pairs(task):
    with np.load(GOLDEN) as golden:
        raw = golden_source(golden, task)
        for seed in (42, 7):
            split = make_split(raw, TASKS[task].signals, seed, n_test=400, n_val=100)
            for part in ("test", "validation", "pool_order"):
                np.testing.assert_array_equal(getattr(split, part), golden[f"{task}/seed{seed}/split/{part}"],
                                              err_msg=f"{task} seed {seed}: {part}")
            test = np.sort(split.test)
            obs = raw.read_obs(test)
            obsm = {key: raw.read_obsm(key, test) for key in TASKS[task].obsm_keys}
            emb = np.random.default_rng(seed).standard_normal((len(test), 6)).astype(np.float32)
            pairs = build_signals(TASKS[task].signals, obs, emb, obsm=obsm, seed=seed)
            assert [p.signal for p in pairs] == list(TASKS[task].mi_signals)
            for p in pairs:
                for side in ("x", "y"):
                    expected = str(golden[f"{task}/seed{seed}/pairs/{p.signal}/{side}"])
                    assert digest(getattr(p, side)) == expected, (task, seed, p.signal, side)
