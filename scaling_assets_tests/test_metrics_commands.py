"""``scaling-assets laws fit``: both laws on any MI table, written beside nothing but --out."""

import pandas as pd
import pytest

from scaling_assets.cli import main
from scaling_assets_tests.test_metrics_plots import two_datasets


def test_laws_fit_on_a_parquet_table_writes_fits_and_plots_only_under_out(tmp_path, capsys):
    study_results = tmp_path / "study" / "results" / "mi_table" / "all"
    study_results.mkdir(parents=True)
    mi_path = study_results / "table.parquet"
    two_datasets().to_parquet(mi_path)
    before = {p: p.read_bytes() for p in (tmp_path / "study").rglob("*") if p.is_file()}
    assert main(["laws", "fit", "--mi", str(mi_path), "--out", str(tmp_path / "refit")]) == 0
    out = capsys.readouterr().out
    assert "with the reference rules" in out and "identified" in out
    # per law, dataset and algorithm; the size law's series that depend on N and the share identified of those
    header = next(line for line in out.splitlines() if line.lstrip().startswith("law"))
    assert header.split() == ["law", "dataset", "algorithm", "fits", "fitted", "identified", "R^2>=0.9", "depend", "on",
                              "N", "R^2>=0.9", "of", "those"]
    size_pca = next(line for line in out.splitlines() if line.split()[:3] == ["size", "sim", "pca"])
    # 5 cell-type qualities (3 identified) and 2 protein ones with one size each (untested for N dependence)
    assert size_pca.split()[3:] == ["7", "5", "3", "3", "5", "60%"]
    assert {p: p.read_bytes() for p in (tmp_path / "study").rglob("*") if p.is_file()} == before  # study untouched
    size = pd.read_parquet(tmp_path / "refit" / "size_law_fits.parquet")
    assert (size.fit_rules == "reference").all() and size.identified.any()
    assert pd.read_csv(tmp_path / "refit" / "noise_law_fits.csv").shape[0] > 0
    assert sorted(p.name for p in (tmp_path / "refit" / "plots").iterdir()) == [
        "scaling_other_cell_type.png", "scaling_sim_cell_type.png", "scaling_sim_protein.png"]


def test_laws_fit_with_wide_rules_on_a_csv_without_raw_estimates(tmp_path):
    df = two_datasets()
    df.to_csv(tmp_path / "mi.csv", index=False)  # mi_bits only: the clipped estimates are fitted
    assert main(["laws", "fit", "--mi", str(tmp_path / "mi.csv"), "--out", str(tmp_path / "o"), "--rules", "wide"]) == 0
    noise = pd.read_parquet(tmp_path / "o" / "noise_law_fits.parquet")
    assert (noise.fit_rules == "wide").all() and (noise.mi_column == "mi_bits").all()


@pytest.mark.parametrize("drop,named", [
    (["cells"], "cells"), (["mi_bits"], "mi_bits_raw (or mi_bits)"),
    (["umis_per_cell"], "umis_nominal (or umis_per_cell)"), (["seed", "signal"], "signal, seed"),
])
def test_a_missing_column_is_named(tmp_path, capsys, drop, named):
    two_datasets().drop(columns=drop).to_csv(tmp_path / "mi.csv", index=False)
    assert main(["laws", "fit", "--mi", str(tmp_path / "mi.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"MI table {tmp_path / 'mi.csv'}: missing column(s) {named};" in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_unreadable_tables_are_named(tmp_path, capsys):
    (tmp_path / "mi.txt").write_text("dataset\n")
    assert main(["laws", "fit", "--mi", str(tmp_path / "mi.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "expected a .csv or .parquet file, got '.txt'" in capsys.readouterr().err
    (tmp_path / "mi.parquet").write_text("not parquet")
    assert main(["laws", "fit", "--mi", str(tmp_path / "mi.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert f"MI table {tmp_path / 'mi.parquet'}: cannot be read as parquet" in capsys.readouterr().err
    assert main(["laws", "fit", "--mi", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
