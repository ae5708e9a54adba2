"""The four tasks are presets of signal specs now: their splits and (X, Y) pairs must be the old ones to
the bit, so the default study's MI table does not change. The old code is frozen beside this test
(old_signal_builders.py, old_split_rules.py)."""

import numpy as np
import pytest

from scaling_assets.data.h5ad_io import CsrReader
from scaling_assets.data.simulate import simulate
from scaling_assets.data.splits import make_split
from scaling_assets.data.tasks import TASKS
from scaling_assets.metrics.signals import build_signals
import old_signal_builders
import old_split_rules


@pytest.mark.parametrize("task", list(TASKS))
def test_task_presets_build_the_old_splits_and_pairs(tmp_path, task):
    path = tmp_path / f"{task}.h5ad"
    simulate(task, 1500, 40, seed=3, out_path=path)
    with CsrReader(path) as raw:
        for seed in (42, 7):
            old = old_split_rules.make_split(raw, task, seed, n_test=400, n_val=100)
            new = make_split(raw, TASKS[task].signals, seed, n_test=400, n_val=100)
            for part in ("test", "validation", "pool_order"):
                np.testing.assert_array_equal(getattr(new, part), getattr(old, part))
            test = np.sort(new.test)
            obs = raw.read_obs(test)
            obsm = {key: raw.read_obsm(key, test) for key in TASKS[task].obsm_keys}
            emb = np.random.default_rng(seed).standard_normal((len(test), 6)).astype(np.float32)
            before = old_signal_builders.task_signals(task, obs, emb, obsm=obsm, seed=seed)
            after = build_signals(TASKS[task].signals, obs, emb, obsm=obsm, seed=seed)
            assert [p.signal for p in after] == [p.signal for p in before] == list(TASKS[task].mi_signals)
            for a, b in zip(after, before):
                assert a.n_pairs == b.n_pairs and a.x.dtype == b.x.dtype and a.y.dtype == b.y.dtype
                np.testing.assert_array_equal(a.x, b.x)
                np.testing.assert_array_equal(a.y, b.y)
