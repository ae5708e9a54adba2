"""A dataset's own signals: declared in the study YAML (labels, obsm matrices, spatial neighbours, sister
pairs), checked against the file before anything is written, respected by the split, measured by the MI
stage and drawn one plot each; errors name the dataset, the file, the column and what was expected."""

from __future__ import annotations

import io
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from dagster import DagsterInstance

from scaling_assets.assets.versions import code_version
from scaling_assets.data.h5ad_io import CsrReader
from scaling_assets.data.loaders import ingest
from scaling_assets.data.simulate import simulate
from scaling_assets.data.splits import make_split
from scaling_assets.data.tasks import LABEL, MATRIX, NEIGHBOURS, SISTERS, TASKS, SignalSpec, parse_signals
from scaling_assets.errors import InputError, StudyConfigError
from scaling_assets.layout import result_paths
from scaling_assets.metrics.signals import build_signals
from scaling_assets.study.spec import load_study


def write_study(tmp_path, datasets: str, name="own", **top) -> object:
    extra = "".join(f"{k}: {v}\n" for k, v in top.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nroot: {tmp_path / 'root'}\nbudget: test\nalgorithms: [pca]\n"
                    "split: {validation_cells: 50}\nsizes: [100]\nqualities: [1.0]\n" + extra
                    + "datasets:\n" + textwrap.indent(textwrap.dedent(datasets), "  "))
    return path


def plain_h5ad(path, n=300, g=30, obs=None, obsm=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, (n, g)).astype(np.int32)
    X[:, 0] += 1  # no empty cell
    obs = obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(n)])
    obs.index = [f"c{i}" for i in range(n)]
    ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]),
               obsm=obsm or {}).write_h5ad(path)
    return path


# -- the study file ------------------------------------------------------------------------------------


def test_signals_declared_as_a_list_or_by_kind_and_on_top_of_a_task(tmp_path):
    data = plain_h5ad(tmp_path / "d.h5ad")
    study = load_study(write_study(tmp_path, f"""
        labels: {{source: h5ad, cells: 300, paths: {{path: {data}}}, signals: [cell_type, obsm:adt, celltype.l1]}}
        kinds:
          source: h5ad
          cells: 300
          paths: {{path: {data}}}
          signals:
            region: {{obs: area}}
            pairs: {{neighbours: [cx, cy], k: 6}}
            fate: {{sisters: [barcode, timepoint], early: [0], late: [3, 5]}}
        both: {{task: development, source: atlas, cells: 300, paths: {{path: {data}}}, signals: {{batch: {{obs: batch}}}}}}
        sim: {{task: spatial, cells: 300, genes: 20}}
    """), check_paths=False)
    assert study.datasets["labels"].task is None
    assert study.datasets["labels"].signals == (
        SignalSpec("cell_type", LABEL, ("cell_type",)), SignalSpec("adt", MATRIX, key="adt"),
        SignalSpec("celltype_l1", LABEL, ("celltype.l1",)))
    assert study.datasets["kinds"].signals == (
        SignalSpec("region", LABEL, ("area",)), SignalSpec("pairs", NEIGHBOURS, ("cx", "cy"), k=6),
        SignalSpec("fate", SISTERS, ("barcode", "timepoint"), early=(0,), late=(3, 5)))
    # a task's preset first, then the dataset's own
    assert study.datasets["both"].signal_names == ["day", "cell_type", "batch"]
    assert study.datasets["sim"].signals == TASKS["spatial"].signals
    # one plot per (dataset, signal), from the resolved list
    plots = {k for k in result_paths(study) if k.startswith("plot_")}
    assert plots == {"plot_labels_cell_type", "plot_labels_adt", "plot_labels_celltype_l1", "plot_kinds_region",
                     "plot_kinds_pairs", "plot_kinds_fate", "plot_both_day", "plot_both_cell_type", "plot_both_batch",
                     "plot_sim_neighbour"}


@pytest.mark.parametrize("dataset, message", [
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}}",
     r"datasets\.d: expected a task \(one of \['cite', 'lineage', 'spatial', 'development'\]\) or signals"),
    ("{cells: 300, genes: 20, signals: [cell_type]}", r"datasets\.d\.task: a simulated dataset needs a task"),
    ("{task: cite, cells: 300, genes: 20, signals: [batch]}",
     r"datasets\.d\.signals: a simulated dataset has its task's signals only"),
    ("{task: cite, source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: [cell_type]}",
     r"datasets\.d\.signals: signal name\(s\) \['cell_type'\] given twice \(task 'cite' already measures"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: {s: {obs: a, obsm: b}}}",
     r"datasets\.d\.signals\.s: expected exactly one of \['obs', 'obsm', 'neighbours', 'sisters'\]"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: {s: {neighbours: [x], k: 4}}}",
     r"datasets\.d\.signals\.s: neighbours: expected two obs column names \[X, Y\]"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: {s: {neighbours: [x, y], k: 0}}}",
     r"datasets\.d\.signals\.s: k: expected a whole number >= 1"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: {s: {sisters: [c, t], early: [2], late: [2]}}}",
     r"datasets\.d\.signals\.s: early \[2\] and late \[2\] share a time"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: {s: {obs: a, k: 3}}}",
     r"datasets\.d\.signals\.s: unknown keys \['k'\] for a obs signal"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: {'a b': {obs: a}}}",
     r"datasets\.d\.signals\.a b: signal names may use letters"),
    ("{source: h5ad, cells: 300, paths: {path: x.h5ad}, signals: []}", r"datasets\.d\.signals: expected a list"),
])
def test_bad_signal_declarations_name_the_dataset_and_field(tmp_path, dataset, message):
    path = write_study(tmp_path, f"d: {dataset}\n")
    with pytest.raises(StudyConfigError, match=message):
        load_study(path, check_paths=False)


def test_relative_data_paths_are_relative_to_the_study_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write_study(tmp_path / "sub", "d: {source: h5ad, cells: 300, paths: {path: ../data/x.h5ad}, signals: [a]}\n")
    assert load_study(path, check_paths=False).datasets["d"].paths["path"] == str(tmp_path / "data" / "x.h5ad")
    unset = write_study(tmp_path, "d: {source: h5ad, cells: 300, paths: {path: '${NO_SUCH_VARIABLE}/x.h5ad'}, signals: [a]}\n",
                        name="unset")
    with pytest.raises(StudyConfigError, match=r"datasets\.d\.paths\.path: missing data path \$\{NO_SUCH_VARIABLE\}/x"):
        load_study(unset)


def test_own_signals_change_the_code_versions_a_preset_does_not(tmp_path):
    from dagster import AssetKey

    data = plain_h5ad(tmp_path / "d.h5ad")
    study = load_study(write_study(tmp_path, f"""
        preset: {{task: development, source: atlas, cells: 300, paths: {{path: {data}}}}}
        same: {{source: h5ad, cells: 300, paths: {{path: {data}}}, signals: {{day: {{obs: day}}, cell_type: {{obs: cell_type}}}}}}
        own: {{source: h5ad, cells: 300, paths: {{path: {data}}}, signals: [cell_type]}}
    """), check_paths=False)
    versions = {d: {a: code_version(study, AssetKey([d, a])) for a in ("raw_counts", "split", "mi_pca", "pca_genes")}
                for d in study.datasets}
    assert versions["preset"] == versions["same"]  # the preset's signals, however they are written
    from scaling_assets.assets.versions import DATA_VERSION

    assert versions["preset"]["split"] == DATA_VERSION and versions["preset"]["pca_genes"] == DATA_VERSION
    assert versions["own"]["split"].startswith(f"{DATA_VERSION}-signals-") and versions["own"]["pca_genes"] == DATA_VERSION
    assert versions["own"]["mi_pca"].startswith(versions["preset"]["mi_pca"] + "-signals-")


# -- the (X, Y) pairs of each kind on any columns ----------------------------------------------------------


def emb(n):
    return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])


def test_each_kind_builds_its_pairs_from_the_declared_columns():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"area": ["a", "b", None, "a", "c", "b"] * 10, "cx": rng.uniform(0, 9, 60),
                        "cy": rng.uniform(0, 9, 60), "barcode": (["k1"] * 3 + ["k2"] * 3) * 10,
                        "timepoint": [0, 3, 5, 1, 5, 5] * 10})
    specs = parse_signals({"region": {"obs": "area"}, "near": {"neighbours": ["cx", "cy"], "k": 2},
                           "fate": {"sisters": ["barcode", "timepoint"]}, "adt": {"obsm": "adt"}})
    adt = rng.poisson(2.0, (60, 3))
    region, near, fate, matrix = build_signals(specs, obs, emb(60), {"adt": adt}, seed=1)
    assert region.signal == "region" and region.n_pairs == 50 and region.y.shape == (50, 3)
    # the partner is one of the 2 nearest cells in (cx, cy)
    xy = obs[["cx", "cy"]].to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    partner = near.y[:, 0].astype(int)
    assert ((d < d[np.arange(60), partner][:, None]).sum(1) <= 1).all()
    # default times: the last (5) is late, every other (0, 1, 3) early; one pair per clone
    assert fate.n_pairs == 2
    t = obs.timepoint.to_numpy()
    assert set(t[fate.x[:, 0].astype(int)]) <= {0, 1, 3} and set(t[fate.y[:, 0].astype(int)]) == {5}
    np.testing.assert_array_equal(matrix.y, adt)


def test_bad_signal_values_at_the_mi_stage_name_where_and_what():
    obs = pd.DataFrame({"area": [None] * 4, "tag": ["x"] * 4})
    with pytest.raises(InputError, match=r"dataset 'd': test\.h5ad: obs\['area'\] has no non-missing values"):
        build_signals(parse_signals(["area"]), obs, emb(4), where="dataset 'd': test.h5ad")
    with pytest.raises(InputError, match=r"obsm\['adt'\] holds <U1 values; signal 'adt' needs a numeric matrix"):
        build_signals(parse_signals(["obsm:adt"]), obs, emb(4), {"adt": np.array([["a"]] * 4)})
    with pytest.raises(InputError, match=r"obs has no column 'batch'.*signal 'batch' \(label\) needs it"):
        build_signals(parse_signals(["batch"]), obs, emb(4))


# -- checks against the file, before anything is written ------------------------------------------------


def _nothing_written(out):
    assert not out.exists() and not list(out.parent.glob(f"*{out.name}*"))


@pytest.mark.parametrize("obs, obsm, signals, message", [
    ({"area": ["a"] * 300}, None, ["region"], r"missing signal column 'region' needed for signal 'region' \(label\)"),
    ({"area": ["a"] * 300}, None, ["area"], r"signal column 'area' has 1 distinct value\(s\), expected at least 2"),
    ({"area": [np.nan] * 300}, None, ["area"], r"signal column 'area' is entirely missing \(NaN\)"),
    ({"cx": [np.nan] * 300, "cy": np.arange(300.0)}, None, {"s": {"neighbours": ["cx", "cy"]}},
     r"signal column 'cx' is entirely missing \(NaN\); signal 's' \(neighbours\) needs numeric coordinates"),
    ({"cx": ["left"] * 300, "cy": np.arange(300.0)}, None, {"s": {"neighbours": ["cx", "cy"]}},
     r"signal column 'cx' has the non-numeric value 'left', expected numbers"),
    ({"cx": [1.0, np.nan] * 150, "cy": np.arange(300.0)}, None, {"s": {"neighbours": ["cx", "cy"]}},
     r"signal column 'cx' has no value for 150 of 300 cells"),
    ({"c": ["k1", "k2"] * 150, "t": [2.0] * 300}, None, {"s": {"sisters": ["c", "t"]}},
     r"signal column 't' has 1 distinct value"),
    ({"c": ["k1", "k2"] * 150, "t": [2, 4] * 150}, None, {"s": {"sisters": ["c", "t"], "late": [6]}},
     r"signal column 't' has no cell at the late time\(s\) \[6\]"),
    ({}, None, ["obsm:adt"], r"obsm\['adt'\] \(signal 'adt'\): missing; expected a numeric matrix"),
    ({}, {"adt": np.full((300, 2), np.nan)}, ["obsm:adt"],
     r"obsm\['adt'\] \(signal 'adt'\): is entirely missing \(NaN\)"),
    ({}, {"adt": np.array([["a", "b"]] * 300, dtype=object)}, ["obsm:adt"],
     r"obsm\['adt'\] \(signal 'adt'\): (holds object values; expected a numeric matrix|missing)"),
])
def test_the_file_must_carry_the_declared_signals(tmp_path, obs, obsm, signals, message):
    source = plain_h5ad(tmp_path / "in.h5ad", obs=pd.DataFrame(obs, index=range(300)), obsm=obsm)
    out = tmp_path / "out" / "raw.h5ad"
    out.parent.mkdir()
    with pytest.raises(InputError, match=r"in\.h5ad: .*" + message):
        ingest("h5ad", out, path=source, signals=parse_signals(signals))
    _nothing_written(out)


def test_ingest_cli_takes_signals(tmp_path, capsys):
    from scaling_assets.cli import main

    source = plain_h5ad(tmp_path / "in.h5ad", obs=pd.DataFrame({"area": ["a", "b", "c"] * 100}),
                        obsm={"adt": np.ones((300, 2))})
    assert main(["ingest", "--format", "h5ad", "--path", str(source), "--signals", "area,obsm:adt",
                 "--out", str(tmp_path / "ok.h5ad"), "--quiet"]) == 0
    assert main(["ingest", "--format", "h5ad", "--path", str(source), "--signals", "batch",
                 "--out", str(tmp_path / "bad.h5ad"), "--quiet"]) != 0
    assert "missing signal column 'batch'" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5ad").exists()


# -- splits follow the declared signals --------------------------------------------------------------------


def test_splits_hold_out_declared_clones_and_tiles(tmp_path):
    simulate("lineage", 1500, 20, seed=2, out_path=tmp_path / "l.h5ad")
    simulate("spatial", 1500, 20, seed=3, out_path=tmp_path / "s.h5ad")
    with CsrReader(tmp_path / "l.h5ad") as raw:
        obs = raw.read_obs().rename(columns={"clone": "barcode"})

    class Renamed:  # the same file with the clone column under another name
        n_obs, path = 1500, "l.h5ad"

        @staticmethod
        def read_obs(rows=None, columns=None):
            return obs[columns] if columns else obs

    specs = parse_signals({"fate": {"sisters": ["barcode", "day"]}, "day": {"obs": "day"}})
    split = make_split(Renamed, specs, seed=5, n_test=300, n_val=50)
    with CsrReader(tmp_path / "l.h5ad") as raw:
        np.testing.assert_array_equal(split.test, make_split(raw, "lineage", 5, n_test=300, n_val=50).test)
    test_clones = set(obs.barcode.iloc[split.test])
    assert None not in test_clones and not test_clones & set(obs.barcode.iloc[split.pool_order].dropna())
    # a label-only dataset: cells at random, as a task without units
    labels = make_split(Renamed, parse_signals(["day"]), seed=5, n_test=300, n_val=50)
    assert len(labels.test) == 300
    with CsrReader(tmp_path / "s.h5ad") as raw:
        tiles = make_split(raw, parse_signals({"near": {"neighbours": ["x", "y"], "k": 8}}), 4, n_test=300, n_val=50)
        np.testing.assert_array_equal(tiles.test, make_split(raw, "spatial", 4, n_test=300, n_val=50).test)


# -- a study of own signals, end to end in-process -----------------------------------------------------------


def test_a_study_of_own_signals_measures_each_and_a_bad_dataset_is_named(tmp_path):
    from scaling_assets.study.serial import run_study

    simulate("lineage", 2400, 30, seed=2, out_path=tmp_path / "lineage.h5ad")
    plain_h5ad(tmp_path / "nan.h5ad", obs=pd.DataFrame({"area": [np.nan] * 300}))
    path = write_study(tmp_path, f"""
        fate:
          source: h5ad
          cells: 2400
          split: {{test_cells: 900}}
          paths: {{path: {tmp_path / 'lineage.h5ad'}}}
          signals: {{sisters: {{sisters: [clone, day], early: [2, 4], late: [6]}}, day: {{obs: day}}}}
        broken: {{source: h5ad, cells: 300, paths: {{path: {tmp_path / 'nan.h5ad'}}}, signals: [area]}}
    """, lmi="{epochs: 5}")
    study = load_study(path)
    out = io.StringIO()
    result = run_study(study, DagsterInstance.ephemeral(), out=out)
    assert len(result["failed"]) == 1 and "broken" in next(iter(result["failed"])), result
    message = " ".join(result["failed"].values())
    assert "dataset 'broken'" in message and "nan.h5ad" in message and "'area' is entirely missing (NaN)" in message
    assert not (study.root / "broken" / "raw_counts").exists()  # nothing half-written in place
    mi = pd.read_parquet(result_paths(study)["mi_table"])
    assert sorted(mi.signal) == ["day", "sisters"] and set(mi.dataset) == {"fate"}
    assert 64 <= mi.set_index("signal").pairs["sisters"] < 900 / 4  # one pair per held-out clone (4-12 cells)
