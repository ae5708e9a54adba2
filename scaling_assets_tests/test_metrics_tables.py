"""Result-table helpers: missing columns named, the analysis choices as hyperparameter rows."""

import pandas as pd
import pytest

from scaling_assets.errors import InputError
from scaling_assets.metrics.tables import require_columns


def test_missing_columns_are_named():
    with pytest.raises(InputError, match=r"table is missing column\(s\) \['b'\]"):
        require_columns(pd.DataFrame({"a": [1]}), ["a", "b"])


def test_analysis_choices_are_hyperparameter_rows():
    from scaling_assets.metrics.tables import analysis_hyperparameters

    rows = {(r["algorithm"], r["hyperparameter"]): r["value"] for r in analysis_hyperparameters({"preset": "reference"})}
    assert rows[("lmi", "preset")] == "reference" and rows[("lmi", "lr")] == "0.0001"
    assert rows[("lmi", "hidden")] == "(1024, 512, 256)" and rows[("lmi", "validation_fraction")] == "0.3"
    assert rows[("signals", "spatial_neighbours")] == "4"
    assert rows[("laws", "fit_rules")] == "reference" and "mi_bits_raw" in rows[("laws", "fitted_on")]
    assert analysis_hyperparameters({})[0]["value"] == "fast"
