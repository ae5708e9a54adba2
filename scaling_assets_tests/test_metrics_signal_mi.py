from types import SimpleNamespace

import numpy as np
import pytest

from scaling_assets.errors import InputError
from scaling_assets.metrics.signal_mi import embedded_test_rows, out_of_range, signal_estimates


def test_embedded_cells_are_found_in_the_test_set_in_their_own_order():
    assert embedded_test_rows(["a", "b", "c", "d"], ["d", "b"]).tolist() == [3, 1]
    with pytest.raises(InputError, match="1 embedded cells are not in the test set .first: 'x'"):
        embedded_test_rows(["a", "b"], ["a", "x"])


def test_rows_report_the_clamped_estimate_the_raw_one_and_its_standard_error():
    pmi = np.array([-1.0, 0.0, 0.5, 0.1])  # mean -0.1 bits, SE = std / sqrt(4)
    signals = [SimpleNamespace(signal="cell_type", x=None, y=None, n_pairs=4)]
    (row,) = signal_estimates(signals, lambda x, y: SimpleNamespace(mi_bits=pmi.mean(), pmi=pmi, n_eval=4), "fast")
    assert row["mi_bits"] == 0.0 and row["mi_bits_raw"] == pytest.approx(-0.1)
    assert row["mi_bits_se"] == pytest.approx(np.std(pmi) / 2) and (row["pairs"], row["lmi_preset"]) == (4, "fast")


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
