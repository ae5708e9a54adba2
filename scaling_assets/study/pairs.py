"""Enough pairs for every signal: a test set too small for an MI estimate is refused before anything trains.

LMI needs ``metrics.lmi_options.min_pairs`` pairs (64 with the presets' options). A signal's pairs are counted on
the test set: a sister-pair signal gets one pair per held-out clone that has an early and a late cell, a
neighbour signal one per test cell, a label one per labelled cell. A lineage grid whose test set held 56
sister pairs trained every model, then failed its 30 MI steps. The count is known once the split is made,
and the split needs only the obs columns: a simulated dataset's come from the simulator (its obs without
the counts, ``data.simulate.simulated_obs``), a real one's from its ingested raw counts once they exist
(``study show`` and ``study run`` check it then; before, the split step checks it, before the seed's
pools are written). Only those columns are read, as the split itself does.

Test cells left with no UMI at a low quality are dropped by the evaluation sets, and Geneformer embeds
only cells with tokens, so an MI step can still see fewer pairs than counted here (a handful at most).
"""

from __future__ import annotations

import math

import pandas as pd

from scaling_assets.data.splits import default_sizes
from scaling_assets.data.tasks import LABEL, MATRIX, NEIGHBOURS, SIMULATED, SISTERS, signal_columns
from scaling_assets.errors import InputError, StudyConfigError
from scaling_assets.study.spec import Study

WHAT = {SISTERS: "sister pairs (clones with an early and a late cell)", NEIGHBOURS: "neighbour pairs (one per cell)",
        LABEL: "labelled cells", MATRIX: "cells"}


class ObsSource:
    """What ``data.splits.make_split`` reads of a dataset, from obs columns in memory."""

    def __init__(self, obs: pd.DataFrame, path: str):
        self.obs, self.path, self.n_obs = obs, path, len(obs)

    def read_obs(self, columns):
        return self.obs[list(columns)]


def needed_pairs(study: Study) -> tuple[int, str]:
    """The fewest pairs an MI step of the study accepts, and the options that set it."""
    from scaling_assets.metrics.lmi_options import min_pairs, resolve_options

    opts = resolve_options(study.lmi)
    return (min_pairs(opts.validation_fraction, opts.k, opts.sampling),
            f"validation_fraction {opts.validation_fraction}, k {opts.k}, sampling {opts.sampling}")


def obs_columns(signals) -> list[str]:
    """The obs columns a dataset's split and its signals read."""
    from scaling_assets.data.splits import held_out_unit

    unit = held_out_unit(signals)
    return list(dict.fromkeys([*(unit.columns if unit else ()), *signal_columns(signals)]))


def dataset_obs_of(reader, signals) -> pd.DataFrame:
    """Those columns of every cell of a canonical file (a ``CsrReader``)."""
    return reader.read_obs(columns=obs_columns(signals))


def dataset_obs(study: Study, name: str) -> pd.DataFrame | None:
    """The obs columns the dataset's split and signals read; None while a real dataset is not ingested."""
    from scaling_assets.layout import COUNTS_FILE, partition_dir

    d = study.datasets[name]
    if d.source == SIMULATED:
        from scaling_assets.data.simulate import simulated_obs

        return simulated_obs(d.task, d.cells, d.genes, d.seed)[obs_columns(d.signals)]
    raw = partition_dir(study.root, [name, "raw_counts"], None) / COUNTS_FILE
    if not raw.exists():
        return None
    from scaling_assets.data.h5ad_io import CsrReader

    with CsrReader(raw) as reader:
        return dataset_obs_of(reader, d.signals)


def test_pairs(study: Study, name: str, obs: pd.DataFrame, seed: int, n_test: int | None = None) -> dict[str, int]:
    """Signal -> pairs in the test set that seed's split holds (with ``n_test`` test cells, else the study's)."""
    from scaling_assets.data.splits import make_split
    from scaling_assets.metrics.signals import pair_count

    d = study.datasets[name]
    split = make_split(ObsSource(obs, f"dataset {name!r}"), d.signals, seed,
                       n_test=study.test_size(name) if n_test is None else n_test, n_val=study.validation_size(name))
    test = obs.iloc[split.test]
    return {s.name: pair_count(s, test) for s in d.signals}


def shortfall(study: Study, name: str, obs: pd.DataFrame, counts: dict[int, dict[str, int]]) -> str | None:
    """Why the dataset's test sets hold too few pairs (``counts``: seed -> signal -> pairs), with the test
    size that would hold enough; None when every seed's test set does."""
    needed, options = needed_pairs(study)
    short = [(seed, signal, n) for seed, per_signal in counts.items() for signal, n in per_signal.items() if n < needed]
    if not short:
        return None
    seed, signal, found = min(short, key=lambda s: s[2])
    spec = next(s for s in study.datasets[name].signals if s.name == signal)
    n_test = default_sizes(len(obs), study.test_size(name), None)[0]
    others = [f"seed {s} {g!r} {n}" for s, g, n in short if (s, g) != (seed, signal)]
    where = (f"the test set of seed {seed} ({n_test:,} cells requested) holds {found} "
             f"{WHAT.get(spec.kind, 'pairs')} for signal {signal!r}"
             + (f" (also short: {', '.join(others)})" if others else ""))
    return (f"{where}; an MI estimate needs at least {needed} ({options}), so every MI step of the dataset would "
            f"fail after its models trained. {enough(study, name, obs, needed, n_test, max(found, 1))}")


def check_split(study: Study, name: str, obs: pd.DataFrame, seed: int, test_rows) -> None:
    """The split step's check of its own test set (``obs``: the raw file's, every cell)."""
    from scaling_assets.metrics.signals import pair_count

    test = obs.iloc[test_rows]
    problem = shortfall(study, name, obs, {seed: {s.name: pair_count(s, test) for s in study.datasets[name].signals}})
    if problem:
        raise InputError(f"dataset {name!r}: {problem}")


def enough(study: Study, name: str, obs: pd.DataFrame, needed: int, n_test: int, found: int) -> str:
    """The smallest test size found that holds ``needed`` pairs for every seed and signal, as advice."""
    n_val, largest = study.validation_size(name), study.largest_size(name)
    cells = len(obs)
    size = max(n_test + 1, math.ceil(n_test * needed / found))
    for _ in range(40):  # pairs grow about in proportion to the test set; step up 5% while still short
        if size + n_val >= cells:
            break
        counts = [min(test_pairs(study, name, obs, s, size).values()) for s in study.seeds]
        if min(counts) >= needed:
            pool = cells - size - n_val
            fits = "" if pool >= largest else (f", and more cells: the training pool left ({pool:,}) is smaller "
                                               f"than the largest training size {largest:,}")
            return f"A test set of {size:,} cells holds enough: set datasets.{name}.split.test_cells: {size}{fits}"
        size = math.ceil(size * 1.05)
    size = math.ceil(needed * n_test / found)
    return (f"Its {cells:,} cells cannot hold enough: about {size:,} test cells would, so the dataset needs about "
            f"{size + n_val + largest:,} cells ({size:,} test + {n_val:,} validation + the largest training size "
            f"{largest:,})")


def check_test_pairs(study: Study) -> None:
    """Refuse a study whose test set of some dataset and seed holds too few pairs for one of its signals
    (a real dataset is checked once its raw counts are ingested; its split step checks it before)."""
    for name in study.datasets:
        obs = dataset_obs(study, name)
        if obs is None:
            continue
        try:
            counts = {seed: test_pairs(study, name, obs, seed) for seed in study.seeds}
        except InputError:
            continue  # a split that cannot be made is refused, with its own message, by the split step
        problem = shortfall(study, name, obs, counts)
        if problem:
            raise StudyConfigError(f"study file {study.source_file}: datasets.{name}: {problem}")
