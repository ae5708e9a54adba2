"""MI of one model's test embeddings with each task signal: cell alignment, estimates, the range rule.

The policy the MI tables rest on, kept out of the assets: which test cells pair with which
embedding rows, what the table reports (``max(0, estimate)``, the raw value and its standard
error) and when an estimate is outside what estimation noise allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from scaling_assets.errors import InputError

# Estimation noise allowed below zero before the range check fails: 0.1 bits (the LMI tests bound the
# estimator within 0.1 bits of 0 on independent data) or 5 standard errors of the mean pointwise MI,
# whichever is larger. The pointwise SE understates the estimate's spread: on independent data (16-d
# Gaussian vs a 6-class label, fast preset, 12 seeds) its sd over seeds was 0.135 bits against a mean SE
# of 0.080 at 75 evaluated pairs and 0.051 against 0.035 at 500, and one estimate in 12 fell 3.5 SE
# below zero at 75 pairs; 5 SE is ~3 of those sds. At 3 SE, settings whose signal is truly ~0 (a tiny
# test set, or ~10 UMIs per cell) failed their MI step at random.
NEGATIVE_TOLERANCE_BITS = 0.1
NEGATIVE_TOLERANCE_SE = 5.0


def embedded_test_rows(test_cell_ids, embedded_cell_ids) -> np.ndarray:
    """Row of each embedded cell in the test set (embeddings may cover a subset: Geneformer drops
    cells with no tokens); an embedded cell missing from the test set is an error."""
    position = {c: i for i, c in enumerate(np.asarray(test_cell_ids, dtype=str))}
    missing = [c for c in embedded_cell_ids if c not in position]
    if missing:
        raise InputError(f"{len(missing)} embedded cells are not in the test set (first: {missing[0]!r}); "
                         "the embeddings were made from another evaluation set")
    return np.array([position[c] for c in embedded_cell_ids], dtype=np.int64)


def signal_estimates(signals: Iterable, estimate_many: Callable, preset: str) -> list[dict]:
    """One table row per signal. ``estimate_many(pairs, names)`` returns an ``LMIResult`` per (x, y) pair:
    a setting's signals are estimated in one call (lmi.estimate_pointwise_many trains them as one stack),
    and ``names`` say which signal an error is about.

    KSG is unbiased around zero, so a signal the embedding does not carry can come out a little
    negative; the table reports max(0, estimate) and keeps the raw value, which the scaling laws are
    fitted on (averaging clipped values biases fits upward near zero)."""
    signals = list(signals)
    estimates = estimate_many([(sig.x, sig.y) for sig in signals], [f"signal {sig.signal!r}" for sig in signals])
    rows = []
    for sig, est in zip(signals, estimates, strict=True):
        raw_bits = float(est.mi_bits)
        se = float(np.std(est.pmi) / np.sqrt(max(len(est.pmi), 1)))
        rows.append({"signal": sig.signal, "mi_bits": max(raw_bits, 0.0), "mi_bits_raw": raw_bits,
                     "mi_bits_se": se, "pairs": int(sig.n_pairs), "pairs_evaluated": int(est.n_eval),
                     "lmi_preset": preset})
    return rows


def out_of_range(rows: list[dict]) -> list[dict]:
    """Rows whose raw MI lies outside [0, log2(pairs)] bits beyond the allowed estimation noise."""
    return [r for r in rows
            if not (-max(NEGATIVE_TOLERANCE_BITS, NEGATIVE_TOLERANCE_SE * r["mi_bits_se"])
                    <= r["mi_bits_raw"] <= math.log2(max(r["pairs"], 2)))]
