"""`scaling-assets simulate` / `ingest` through scaling_assets.cli.main."""

from __future__ import annotations

import anndata as ad
import numpy as np

from scaling_assets.cli import main


def test_simulate_then_ingest(tmp_path, capsys):
    sim = tmp_path / "sim.h5ad"
    rc = main(["simulate", "--task", "spatial", "--cells", "1500", "--genes", "60", "--seed", "2",
               "--out", str(sim), "--chunk-size", "500", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cells      1,500" in out and "genes      60" in out and "signals    x, y" in out
    a = ad.read_h5ad(sim)
    assert a.shape == (1500, 60) and a.uns["task"] == "spatial"

    copy = tmp_path / "copy.h5ad"
    rc = main(["ingest", "--format", "h5ad", "--path", str(sim), "--task", "spatial", "--out", str(copy), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dropped    0 cells with zero counts (of 1,500)" in out
    assert (ad.read_h5ad(copy).X != a.X).nnz == 0
    umis = float(np.asarray(a.X.sum(1)).mean())
    assert f"UMIs/cell  {umis:,.1f}" in out


def test_cli_reports_input_errors(tmp_path, capsys):
    out = tmp_path / "x.h5ad"
    rc = main(["ingest", "--format", "atlas", "--path", str(tmp_path / "none.h5ad"), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "none.h5ad: file not found" in err
    rc = main(["ingest", "--format", "merfish", "--path", "a.h5ad", "--out", str(out)])
    assert rc == 2 and "does not take --path" in capsys.readouterr().err
    assert not out.exists()
