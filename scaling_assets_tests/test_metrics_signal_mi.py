from types import SimpleNamespace

import numpy as np
import pytest

from scaling_assets.errors import InputError
from scaling_assets.metrics import lmi
from scaling_assets.metrics.signal_mi import embedded_test_rows, out_of_range, signal_estimates
from scaling_assets.metrics.signals import SignalPairs
from scaling_assets.metrics.synthetic import latent_gaussian_pairs


def test_embedded_cells_are_found_in_the_test_set_in_their_own_order():
    assert embedded_test_rows(["a", "b", "c", "d"], ["d", "b"]).tolist() == [3, 1]
    with pytest.raises(InputError, match="1 embedded cells are not in the test set .first: 'x'"):
        embedded_test_rows(["a", "b"], ["a", "x"])


def test_rows_report_the_clamped_estimate_the_raw_one_and_its_standard_error():
    pmi = np.array([-1.0, 0.0, 0.5, 0.1])  # mean -0.1 bits, SE = std / sqrt(4)
    signals = [SimpleNamespace(signal="cell_type", x=None, y=None, n_pairs=4)]
    (row,) = signal_estimates(signals, lambda pairs, names: [SimpleNamespace(mi_bits=pmi.mean(), pmi=pmi, n_eval=4)],
                              "fast")
    assert row["mi_bits"] == 0.0 and row["mi_bits_raw"] == pytest.approx(-0.1)
    assert row["mi_bits_se"] == pytest.approx(np.std(pmi) / 2) and (row["pairs"], row["lmi_preset"]) == (4, "fast")


def test_a_settings_signals_are_estimated_in_one_call_each_with_its_own_row():
    x, y1, _ = latent_gaussian_pairs(300, 1.0, dx=6, dy=4, seed=5)
    y2 = latent_gaussian_pairs(300, 2.0, dx=6, dy=5, seed=6)[1][:250]
    signals = [SignalPairs("cell_type", x, y1, 300), SignalPairs("protein", x[:250], y2, 250)]
    calls = []

    def estimate_many(pairs, names):
        calls.append(names)
        return lmi.estimate_pointwise_many(pairs, seed=3, names=names, epochs=5)

    rows = signal_estimates(signals, estimate_many, "fast")
    assert calls == [["signal 'cell_type'", "signal 'protein'"]]
    assert [(r["signal"], r["pairs"], r["pairs_evaluated"]) for r in rows] == [("cell_type", 300, 150), ("protein", 250, 125)]
    alone = lmi.estimate_pointwise(x[:250], y2, seed=3, epochs=5)
    assert rows[1]["mi_bits_raw"] == pytest.approx(alone.mi_bits, abs=1e-9)
    assert set(rows[0]) == {"signal", "mi_bits", "mi_bits_raw", "mi_bits_se", "pairs", "pairs_evaluated", "lmi_preset"}
    with pytest.raises(InputError, match=r"^signal 'protein': LMI needs at least 64 pairs"):
        signal_estimates([signals[0], SignalPairs("protein", x[:50], y2[:50], 50)], estimate_many, "fast")


@pytest.mark.parametrize("raw, se, pairs, allowed", [
    (-0.09, 0.0, 100, True),    # within the 0.1-bit noise floor
    (-0.2, 0.01, 100, False),   # below it, and below 5 SE
    (-0.2, 0.05, 100, True),    # noisy estimate: 5 SE = 0.25 bits
    (-0.3, 0.05, 100, False),   # beyond 5 SE
    (6.6, 0.0, 100, True),      # log2(100) = 6.64 bits is the most 100 pairs can show
    (6.7, 0.0, 100, False),
])
def test_the_range_rule(raw, se, pairs, allowed):
    row = {"mi_bits_raw": raw, "mi_bits_se": se, "pairs": pairs}
    assert (out_of_range([row]) == []) is allowed
