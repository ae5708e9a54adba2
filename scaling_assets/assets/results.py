"""Stage 8: study-wide tables (MI, parameters, hyperparameters, scaling-law fits) and plots.

The tables read every MI / model partition of the study grid that has been materialised (they
depend on the partitioned assets without loading them through Dagster, so a partial study still
gives a table; missing partitions are listed in the metadata).
"""



import pandas as pd
from dagster import AssetDep, AssetExecutionContext, AssetIn, AssetKey, MetadataValue, Output, asset

from scaling_assets.assets.common import budget_smoke_of, image_metadata, new_stage, read_summary
from scaling_assets.assets.storage import read_record
from scaling_assets.layout import RESULTS as GROUP
from scaling_assets.layout import partition_dir
from scaling_assets.study.spec import Study


def _partition_folders(study: Study, asset_prefix: str):
    """(dataset, algorithm, setting key, folder or None) for every partition of the study grid."""
    for dataset in study.datasets:
        for algorithm in study.algorithms:
            for key in study.setting_keys(dataset, algorithm):
                folder = partition_dir(study.root, [dataset, f"{asset_prefix}_{algorithm}"], key)
                yield dataset, algorithm, key, (folder if folder.exists() else None)


def mi_rows(study: Study) -> tuple[pd.DataFrame, list[str]]:
    rows, missing = [], []
    for dataset, algorithm, key, folder in _partition_folders(study, "mi"):
        if folder is None:
            missing.append(f"{dataset}/mi_{algorithm}/{key}")
            continue
        record = read_record(folder)
        smoke = bool(budget_smoke_of(study, dataset, algorithm, key))
        for sig in record["signals"]:
            rows.append({
                "dataset": dataset, "task": record["task"], "signal": sig["signal"], "algorithm": algorithm,
                "cells": record["cells"], "quality": record["quality"], "umis_per_cell": record["umis_per_cell"],
                "seed": record["seed"], "mi_bits": sig["mi_bits"], "pairs": sig["pairs"],
                # False: the embedding does not depend on the training cells; the laws fit it once
                "learns_from_cells": study.models[algorithm].learns_from_cells,
                "mi_bits_raw": sig["mi_bits_raw"], "mi_bits_se": sig["mi_bits_se"],
                "pairs_evaluated": sig["pairs_evaluated"], "lmi_preset": sig.get("lmi_preset", "fast"),
                "umis_nominal": record.get("umis_nominal"), "grid": study.grid_label(algorithm) or "study",
                "budget_smoke": smoke, "test_cells": record.get("test_cells"),
                "zero_umi_test_cells_dropped": record.get("zero_umi_test_cells_dropped"),
                "training_cells": record.get("training_cells"),
                "zero_umi_training_cells_dropped": record.get("zero_umi_training_cells_dropped"),
                "zero_umi_validation_cells_dropped": record.get("zero_umi_validation_cells_dropped"),
            })
    from scaling_assets.metrics.tables import MI_COLUMNS

    df = pd.DataFrame(rows, columns=list(MI_COLUMNS) + ["mi_bits_raw", "mi_bits_se", "pairs_evaluated", "lmi_preset",
                                                      "umis_nominal", "grid", "budget_smoke", "learns_from_cells",
                                                      "test_cells",
                                                      "zero_umi_test_cells_dropped", "training_cells",
                                                      "zero_umi_training_cells_dropped",
                                                      "zero_umi_validation_cells_dropped"])
    return df.sort_values(["dataset", "signal", "algorithm", "cells", "quality", "seed"]).reset_index(drop=True), missing


def mi_partitions_done(mi_df: pd.DataFrame) -> dict[str, int]:
    """Per dataset: the MI partitions (algorithm x setting) an MI table holds rows of."""
    done = mi_df.drop_duplicates(["dataset", "algorithm", "cells", "quality", "seed"])["dataset"]
    return {str(d): int(n) for d, n in done.value_counts().items()}


def dataset_coverage(study: Study, done: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per dataset: (MI partitions materialised, MI partitions in the grid)."""
    return {d: (done.get(d, 0), sum(len(study.setting_keys(d, a)) for a in study.algorithms)) for d in study.datasets}


def coverage_groups(coverage: dict[str, tuple[int, int]]) -> tuple[list[str], list[tuple[str, int, int]], list[str]]:
    """The datasets whose MI is complete, partial ((dataset, done, total): some settings missing), missing."""
    complete = [d for d, (done, total) in coverage.items() if done == total]
    partial = [(d, done, total) for d, (done, total) in coverage.items() if 0 < done < total]
    missing = [d for d, (done, _) in coverage.items() if done == 0]
    return complete, partial, missing


def _coverage_metadata(coverage: dict[str, tuple[int, int]]) -> dict:
    """Which datasets the results cover: complete, partial (some settings missing), missing (none yet)."""
    complete, partial, absent = coverage_groups(coverage)
    partial = [f"{d} ({done} of {total} MI partitions)" for d, done, total in partial]
    return {"datasets_complete": MetadataValue.text(", ".join(complete) or "none"),
            "datasets_partial": MetadataValue.text(", ".join(partial) or "none"),
            "datasets_missing": MetadataValue.text(", ".join(absent) or "none")}


def model_records(study: Study) -> list[dict]:
    return [
        dict(read_summary(folder), dataset=dataset)
        for dataset, _, _, folder in _partition_folders(study, "model")
        if folder is not None
    ]


def _table_metadata(df: pd.DataFrame, missing: list[str] | None = None) -> dict:
    """Dagster's standard table metadata: row count, column schema, and a preview table."""
    from dagster import TableColumn, TableRecord, TableSchema

    def dagster_type(dtype) -> str:
        return "int" if pd.api.types.is_integer_dtype(dtype) else "float" if pd.api.types.is_float_dtype(dtype) \
            else "bool" if pd.api.types.is_bool_dtype(dtype) else "string"

    schema = TableSchema(columns=[TableColumn(str(c), dagster_type(df[c].dtype)) for c in df.columns])
    preview = df.head(20).round(4)
    def cell(v):
        v = v.item() if hasattr(v, "item") else v  # numpy scalars -> Python
        if isinstance(v, float) and v != v:
            return None  # NaN
        return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)

    records = [TableRecord({str(k): cell(v) for k, v in row.items()}) for row in preview.to_dict("records")]
    meta = {"dagster/row_count": len(df), "dagster/column_schema": schema,
            "preview": MetadataValue.table(records, schema=schema)}
    if missing is not None:
        meta["missing_partitions"] = len(missing)
        if missing:
            meta["first_missing"] = MetadataValue.text("\n".join(missing[:20]))
    return meta


def parameter_table_df(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, algorithm): the parameter count of the built models."""
    return pd.DataFrame(
        [{"dataset": r["dataset"], "genes": r["genes"], "algorithm": r["algorithm"], "parameters": r["parameters"]}
         for r in records],
        columns=["dataset", "genes", "algorithm", "parameters"],
    ).drop_duplicates().sort_values(["dataset", "algorithm"]).reset_index(drop=True)


def hyperparameter_table_df(study: Study, records: list[dict]) -> pd.DataFrame:
    """The study-wide analysis choices, then each algorithm's recorded hyperparameters, with the budget."""
    from scaling_assets.metrics.tables import analysis_hyperparameters

    rows = [dict(r, budget=study.budget) for r in analysis_hyperparameters(study.lmi, study.fit_rules)]
    for r in records:
        for name, value in sorted(r["hyperparameters"].items()):
            rows.append({"algorithm": r["algorithm"], "budget": r["budget"], "hyperparameter": name,
                         "value": str(value)})
    df = pd.DataFrame(rows, columns=["algorithm", "budget", "hyperparameter", "value"])
    return df.drop_duplicates().sort_values(["algorithm", "hyperparameter", "value"]).reset_index(drop=True)


def results_assets(study: Study) -> list:
    """The study-wide tables, the scaling-law fits and the plots."""
    return [*_table_assets(study), *_law_fit_assets(study), _plots_asset(study)]


def _table_assets(study: Study) -> list:
    mi_keys = [AssetKey([d, f"mi_{a}"]) for d in study.datasets for a in study.algorithms]
    model_keys = [AssetKey([d, f"model_{a}"]) for d in study.datasets for a in study.algorithms]

    @asset(key=[GROUP, "mi_table"], group_name=GROUP, deps=[AssetDep(k) for k in mi_keys], kinds={"parquet"},
           description="Long MI table: one row per (dataset, signal, algorithm, cells, quality, seed) of every "
           "materialised `mi_*` partition (metadata `datasets_complete` / `datasets_partial` / `datasets_missing` "
           "say which datasets it covers; a rerun of the study completes it): MI in bits (clipped at 0, raw and standard error), UMIs per cell, "
           "the grid the algorithm ran on, the cells left out with no UMI at q (`zero_umi_*_cells_dropped`: "
           "training, validation, test; `cells` stays the nominal N, `training_cells` is what trained), and "
           "`budget_smoke` (model trained below the study's stopping rules "
           f"under the `{study.budget}` budget: a smoke test, not a result), and `learns_from_cells` (false for a "
           "model whose embedding does not depend on its training cells, such as random projection: the laws fit "
           "it once, pooled over N).")
    def mi_table(context: AssetExecutionContext):
        df, missing = mi_rows(study)
        coverage = dataset_coverage(study, mi_partitions_done(df))
        incomplete = {d: c for d, c in coverage.items() if c[0] < c[1]}
        if incomplete:
            context.log.warning("results without every MI partition of " + ", ".join(
                f"{d} ({done} of {total})" for d, (done, total) in incomplete.items()))
        return Output(df, metadata={**_table_metadata(df, missing), **_coverage_metadata(coverage)})

    @asset(key=[GROUP, "parameter_table"], group_name=GROUP, deps=[AssetDep(k) for k in model_keys],
           kinds={"parquet"}, description="Parameter count of every algorithm per dataset (from the built models).")
    def parameter_table(context: AssetExecutionContext):
        df = parameter_table_df(model_records(study))
        return Output(df, metadata=_table_metadata(df))

    @asset(key=[GROUP, "hyperparameter_table"], group_name=GROUP, deps=[AssetDep(k) for k in model_keys],
           kinds={"parquet"}, description="Hyperparameters each algorithm was trained with (and the budget), and "
           "the study-wide choices of the corpora, evaluation, signals, LMI and law fits.")
    def hyperparameter_table(context: AssetExecutionContext):
        df = hyperparameter_table_df(study, model_records(study))
        return Output(df, metadata=_table_metadata(df))

    return [mi_table, parameter_table, hyperparameter_table]


MI_IN = {"mi_table": AssetIn(key=[GROUP, "mi_table"])}


def _fit_metadata(fits: pd.DataFrame) -> dict:
    """The table's metadata, and per dataset how many fits are identified (and with R^2 >= 0.9; for the
    size law, of the series whose MI depends on N)."""
    from scaling_assets.metrics.laws import identified_counts

    meta = _table_metadata(fits)
    if len(fits):
        for row in identified_counts(fits, ["dataset"]).itertuples():
            dependent = f"; {row.depends_on_n} depend on N" if hasattr(row, "depends_on_n") else ""
            meta[f"identified_{row.dataset}"] = MetadataValue.text(
                f"{row.identified} of {row.fits} ({row.identified_r2_ge_0_9} with R^2 >= 0.9{dependent})")
    return meta


def _law_fit_assets(study: Study) -> list:
    rules = study.fit_rules

    @asset(key=[GROUP, "noise_law_fits"], group_name=GROUP, ins=MI_IN, kinds={"parquet"},
           description="Noise law I(u) = I_max - 1/2 log2((1 + u/u_bar) / (u/u_bar + 2^(-2 I_max))) per "
           f"(dataset, signal, algorithm, cells) under the `{rules}` fit rules, with standard errors, R^2, "
           "`identified` (no parameter at a bound, each standard error below half its value) and its reason, "
           "and `budget_smoke` (any point from a model trained below the study's stopping rules). A model that does "
           "not learn from its cells (`learns_from_cells` false: random projection) has one fit per (dataset, "
           "signal), its estimates averaged over N (`sizes_pooled`).")
    def noise_law_fits(context: AssetExecutionContext, mi_table: pd.DataFrame):
        from scaling_assets.metrics.laws import fit_noise_laws

        df = fit_noise_laws(mi_table, rules)
        return Output(df, metadata=_fit_metadata(df))

    @asset(key=[GROUP, "size_law_fits"], group_name=GROUP, ins=MI_IN, kinds={"parquet"},
           description=f"Size law I(N) = I_inf - (N/N0)^(-s) per (dataset, signal, algorithm, quality) under the "
           f"`{rules}` fit rules, with standard errors, R^2, `identified` and its reason, `depends_on_n`, and "
           "`budget_smoke`. A series whose MI does not depend on N (random projection's, or a spread within two "
           "standard errors) has no shape but a plateau: `i_inf` (the largest mean over N for PCA and random "
           "projection under the reference rules, else the inverse-variance-weighted mean) with its standard "
           "error, n0 and s empty, reason \"no dependence on N\".")
    def size_law_fits(context: AssetExecutionContext, mi_table: pd.DataFrame):
        from scaling_assets.metrics.laws import fit_size_laws

        df = fit_size_laws(mi_table, rules)
        return Output(df, metadata=_fit_metadata(df))

    return [noise_law_fits, size_law_fits]


def _plots_asset(study: Study):
    @asset(key=[GROUP, "scaling_plots"], group_name=GROUP, kinds={"png"},
           ins={**MI_IN, "noise_law_fits": AssetIn(key=[GROUP, "noise_law_fits"]),
                "size_law_fits": AssetIn(key=[GROUP, "size_law_fits"])},
           description="One figure per (dataset, signal) (an entry named `<dataset>/<signal>`; PNG files in the "
           "asset's folder): MI against UMIs per cell with the noise laws, then MI against cells with the size "
           "laws per algorithm. A point's marker says what it is: filled circle, its series' law identified (drawn "
           "as a line); square, fitted but not identified; diamond, no N dependence (the plateau dashed); "
           "triangle, too few points or not fitted; hollow, from a budget-smoke model. Colour keys sit under "
           "each panel, the marker key at the bottom.")
    def scaling_plots(context: AssetExecutionContext, mi_table: pd.DataFrame, noise_law_fits: pd.DataFrame,
                      size_law_fits: pd.DataFrame):
        from scaling_assets.metrics.law_report import plot_laws

        stage = new_stage(study, "plots")
        metadata = {f"{dataset}/{signal}": image_metadata(context, path, f"{dataset}, {signal}: MI vs UMIs and vs cells")
                    for (dataset, signal), path in (plot_laws(mi_table, noise_law_fits, size_law_fits, stage).items()
                                                     if len(mi_table) else [])}
        return Output(stage, metadata=metadata or {"plots": MetadataValue.text("no MI results yet")})

    return scaling_plots
