"""Result tables: both formats written atomically, validated columns."""

import numpy as np
import pandas as pd
import pytest

from scaling_assets.errors import InputError
from scaling_assets.metrics.tables import (
    MI_COLUMNS, PARAM_COLUMNS, read_table, require_columns, validate_mi_table, validate_param_table, write_table,
)


def mi_table():
    return pd.DataFrame({
        "dataset": ["sim_cite"] * 2, "task": ["cite"] * 2, "signal": ["cell_type", "protein"],
        "algorithm": ["pca", "pca"], "cells": [1000, 1000], "quality": [1.0, 0.5],
        "umis_per_cell": [3000.0, 1500.0], "seed": [42, 42], "mi_bits": [1.2, 0.8], "pairs": [1500, 1500],
        "epochs": [40, 38],
    })


def test_write_table_writes_parquet_and_csv(tmp_path):
    df = validate_mi_table(mi_table())
    assert list(df.columns[: len(MI_COLUMNS)]) == MI_COLUMNS and "epochs" in df.columns
    paths = write_table(df, tmp_path / "tables" / "mi")
    assert [p.name for p in paths] == ["mi.parquet", "mi.csv"]
    pd.testing.assert_frame_equal(read_table(paths[0]), df)
    pd.testing.assert_frame_equal(read_table(tmp_path / "tables" / "mi"), df)
    back = pd.read_csv(paths[1])
    np.testing.assert_allclose(back["mi_bits"], df["mi_bits"])
    assert not [p for p in (tmp_path / "tables").iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_table_replaces_existing_files(tmp_path):
    write_table(mi_table(), tmp_path / "mi")
    write_table(mi_table().iloc[:1], tmp_path / "mi")
    assert len(read_table(tmp_path / "mi.csv")) == 1


def test_missing_columns_are_named():
    with pytest.raises(InputError, match=r"MI table is missing column\(s\) \['pairs'\]"):
        validate_mi_table(mi_table().drop(columns="pairs"))
    with pytest.raises(InputError, match="'mi_bits' must be numeric"):
        validate_mi_table(mi_table().assign(mi_bits=["a", "b"]))
    with pytest.raises(InputError, match="missing column"):
        require_columns(pd.DataFrame({"a": [1]}), ["a", "b"])


def test_param_table():
    df = pd.DataFrame({"dataset": ["d"], "genes": [2000], "algorithm": ["scvi"], "parameters": [1_234_567]})
    assert list(validate_param_table(df).columns) == PARAM_COLUMNS
    with pytest.raises(InputError, match="'parameters' must be integer"):
        validate_param_table(df.assign(parameters=[1.5]))


def test_analysis_choices_are_hyperparameter_rows():
    from scaling_assets.metrics.tables import analysis_hyperparameters

    rows = {(r["algorithm"], r["hyperparameter"]): r["value"] for r in analysis_hyperparameters({"preset": "reference"})}
    assert rows[("lmi", "preset")] == "reference" and rows[("lmi", "lr")] == "0.0001"
    assert rows[("lmi", "hidden")] == "(1024, 512, 256)" and rows[("lmi", "validation_fraction")] == "0.3"
    assert rows[("signals", "spatial_neighbours")] == "4" and rows[("laws", "fitted_on")] == "mi_bits_raw"
    assert rows[("laws", "size_law_s_max")] == "10.0"
    assert analysis_hyperparameters({})[0]["value"] == "fast"
