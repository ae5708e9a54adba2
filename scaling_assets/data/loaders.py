"""Loaders: real-data formats (DESIGN §2) -> the canonical raw h5ad, chunk by chunk.

Every loader validates counts (integers >= 0, no NaN; LARRY may recover integers from its
per-cell normalised values), drops cells with zero counts (counted in the summary), rejects
duplicate gene ids, and checks that the task's signal columns exist and hold at least two classes
(``check_signal_specs``: every signal a study dataset declares, obs columns and obsm matrices alike).
Output goes through ``CsrWriter`` (temporary file + rename), so a failure leaves nothing behind.
"""

from __future__ import annotations

import gzip
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from scaling_assets.data.h5ad_io import CsrReader, CsrWriter
from scaling_assets.data.tasks import FORMATS, LABEL, MATRIX, NEIGHBOURS, SISTERS, TASKS, SignalSpec, signal_columns
from scaling_assets.errors import InputError

LARRY_COLUMNS = ["Time point", "Well", "Cell type annotation", "SPRING-x", "SPRING-y"]
# LARRY recovery: a row is accepted if every value / row minimum is within this of an integer
LARRY_TOLERANCE = 0.02
# ... and the whole file is refused if more than this fraction of rows fails the recovery
LARRY_MAX_REJECTED = 0.01


def _require_file(path, what: str) -> Path:
    if path is None:
        raise InputError(f"missing option: the {what} path is required")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected the {what})")
    return path


def _check_genes(var_names, label) -> np.ndarray:
    names = pd.Index([str(v) for v in var_names])
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise InputError(f"{label}: duplicate gene ids {dup} ({names.duplicated().sum()} duplicates); gene ids must be unique")
    return names.to_numpy(dtype=object)


def check_signals(obs: pd.DataFrame, task: str | None, label: str) -> list[str]:
    """Raise unless ``obs`` has the task's signal columns with at least two distinct values."""
    if task is None:
        return []
    if task not in TASKS:
        raise InputError(f"{label}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    for col in TASKS[task].obs_columns:
        if col not in obs.columns:
            raise InputError(
                f"{label}: missing signal column {col!r} needed for task {task!r} "
                f"(columns present: {list(obs.columns)})"
            )
        n_classes = obs[col].dropna().nunique()
        if n_classes == 0:
            raise InputError(f"{label}: signal column {col!r} is entirely missing (NaN); task {task!r} needs "
                             "at least 2 distinct values")
        if n_classes < 2:
            raise InputError(
                f"{label}: signal column {col!r} has {n_classes} distinct value(s); task {task!r} needs at least 2"
            )
    return list(TASKS[task].obs_columns)


def check_signal_specs(source, specs, label: str, chunk_size: int = 10_000) -> list[str]:
    """Raise unless ``source`` (a reader: read_obs, obsm_keys, read_obsm, n_obs) carries every signal of
    ``specs`` in a form the split and MI stages can use; returns what the file carries for them.

    label: at least 2 distinct values; neighbours: numeric coordinates for every cell, each axis with
    at least 2 distinct values; sisters: at least 2 clones and 2 numeric times (and the early and late
    times it names); matrix: a numeric, finite obsm matrix with one row per cell. An entirely missing
    column is named as such. Reads the signal columns and the matrices chunk by chunk, never X."""
    present = list(source.obs_columns)
    for spec in specs:
        for column in spec.columns:
            if column not in present:
                raise InputError(f"{label}: missing signal column {column!r} needed for signal {spec.name!r} "
                                 f"({spec.kind}) (columns present: {present})")
    obs = source.read_obs(columns=signal_columns(specs)) if signal_columns(specs) else None
    for spec in specs:
        def fail(column, msg):
            raise InputError(f"{label}: signal column {column!r} {msg}; signal {spec.name!r} ({spec.kind}) "
                             f"needs {_NEEDS[spec.kind]}")
        if spec.kind == LABEL:
            _distinct(obs[spec.columns[0]], spec.columns[0], fail)
        elif spec.kind == NEIGHBOURS:
            for column in spec.columns:
                values = _numeric(obs[column], column, fail)
                if np.isnan(values).any():
                    fail(column, f"has no value for {int(np.isnan(values).sum())} of {len(values)} cells")
                _distinct(pd.Series(values), column, fail)
        elif spec.kind == SISTERS:
            clone, time = spec.columns
            _distinct(obs[clone], clone, fail)
            days = _numeric(obs[time], time, fail)
            _distinct(pd.Series(days), time, fail)
            for option in ("early", "late"):
                wanted = getattr(spec, option)
                if wanted is not None and not np.isin(days, wanted).any():
                    fail(time, f"has no cell at the {option} time(s) {list(wanted)} (values: "
                               f"{sorted(set(days[np.isfinite(days)].tolist()))[:10]})")
        elif spec.kind == MATRIX:
            _check_matrix(source, spec, label, chunk_size)
    return [*signal_columns(specs), *(f"obsm:{s.key}" for s in specs if s.kind == MATRIX)]


_NEEDS = {LABEL: "at least 2 distinct values", NEIGHBOURS: "numeric coordinates for every cell",
          SISTERS: "at least 2 clones and numeric times", MATRIX: "a numeric matrix"}


def _distinct(values: pd.Series, column: str, fail) -> None:
    n = values.dropna().nunique()
    if n == 0:
        fail(column, "is entirely missing (NaN)")
    if n < 2:
        fail(column, f"has {n} distinct value(s), expected at least 2")


def _numeric(values: pd.Series, column: str, fail) -> np.ndarray:
    numbers = pd.to_numeric(values.astype(object) if values.dtype.kind not in "iufb" else values, errors="coerce")
    numbers = np.asarray(numbers, dtype=np.float64)
    bad = np.isnan(numbers) & values.notna().to_numpy()
    if bad.any():
        fail(column, f"has the non-numeric value {values[bad].iloc[0]!r}, expected numbers")
    if np.isnan(numbers).all():
        fail(column, "is entirely missing (NaN)")
    return numbers


def _check_matrix(source, spec: SignalSpec, label: str, chunk_size: int) -> None:
    where = f"{label}: obsm[{spec.key!r}] (signal {spec.name!r})"
    keys = list(source.obsm_keys())
    if spec.key not in keys:
        raise InputError(f"{where}: missing; expected a numeric matrix with one row per cell (obsm keys: {keys})")
    n, finite_rows = source.n_obs, 0
    for start in range(0, n, chunk_size):
        block = np.asarray(source.read_obsm(spec.key, np.arange(start, min(start + chunk_size, n))))
        if block.dtype.kind not in "biuf":
            raise InputError(f"{where}: holds {block.dtype} values; expected a numeric matrix")
        if block.ndim not in (1, 2) or len(block) != min(chunk_size, n - start):
            raise InputError(f"{where}: shape {block.shape} does not give one row per cell")
        finite = np.isfinite(block.astype(np.float64)).reshape(len(block), -1)
        if not finite.all():
            if finite.any() or finite_rows:
                raise InputError(f"{where}: has NaN or infinite values (first in row "
                                 f"{start + int(np.flatnonzero(~finite.all(1))[0])}); expected finite numbers")
        finite_rows += int(finite.all(1).sum())
    if finite_rows == 0:
        raise InputError(f"{where}: is entirely missing (NaN); expected finite numbers")


def _validate_counts(X: sp.csr_matrix, rows: np.ndarray, label: str, names: np.ndarray | None) -> None:
    data = X.data
    if data.dtype.kind not in "iuf":
        raise InputError(f"{label}: counts have dtype {data.dtype}, expected integers")
    if data.size == 0:
        return

    def where(mask):
        entry = int(np.flatnonzero(mask)[0])
        r = int(np.searchsorted(X.indptr, entry, side="right") - 1)
        cell = names[r] if names is not None else f"row {int(rows[r])}"
        return f"cell {cell}, gene column {int(X.indices[entry])}: {data[entry]!r}"

    if data.dtype.kind == "f":
        bad = np.isnan(data)
        if bad.any():
            raise InputError(f"{label}: NaN count ({where(bad)}); expected integer UMI counts")
    bad = data < 0
    if bad.any():
        raise InputError(f"{label}: negative count ({where(bad)}); expected integer UMI counts >= 0")
    if data.dtype.kind == "f":
        bad = data != np.rint(data)
        if bad.any():
            raise InputError(
                f"{label}: non-integer count ({where(bad)}); expected raw integer UMI counts, not normalised "
                f"values (only the LARRY format defines a recovery, via allow_normalized)"
            )


def recover_larry_counts(X: sp.csr_matrix, tolerance: float = LARRY_TOLERANCE) -> tuple[sp.csr_matrix, np.ndarray]:
    """Divide each row by its smallest nonzero value and round; returns (counts, rejected rows mask).

    A row is rejected when some value / row-minimum is not within ``tolerance`` of an integer.
    """
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    X.eliminate_zeros()  # explicit zeros in an mtx must not become the row minimum
    n = X.shape[0]
    lengths = np.diff(X.indptr)
    nonempty = lengths > 0
    row_min = np.zeros(n)
    if X.nnz:
        row_min[nonempty] = np.minimum.reduceat(X.data, X.indptr[:-1][nonempty])
    ratio = X.data / np.repeat(np.where(row_min > 0, row_min, 1.0), lengths)
    rounded = np.rint(ratio)
    off = np.abs(ratio - rounded) > tolerance
    rejected = np.zeros(n, dtype=bool)
    if off.any():
        rejected[np.repeat(np.arange(n), lengths)[off]] = True
    out = sp.csr_matrix((rounded.astype(np.int32), X.indices, X.indptr), shape=X.shape)
    return out, rejected


def _convert(
    out_path,
    var_names: np.ndarray,
    chunks: Iterator[tuple[np.ndarray, sp.csr_matrix]],
    obs_for: Callable[[np.ndarray], pd.DataFrame],
    obsm_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    uns: dict,
    label: str,
    n_total: int,
    larry: bool = False,
    progress: bool = False,
) -> dict:
    """Validate, drop empty cells and append every chunk to a canonical file."""
    dropped = rejected = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_total, unit="cells", desc=f"ingest {Path(out_path).name}")
    with CsrWriter(out_path, var_names, uns=uns) as writer:
        for rows, X in chunks:
            X = sp.csr_matrix(X)
            obs = obs_for(rows)
            if larry:
                if X.nnz and (np.isnan(X.data).any() or (X.data < 0).any()):
                    _validate_counts(X, rows, label, obs.index.to_numpy())
                X, bad = recover_larry_counts(X)
                rejected += int(bad.sum())
                keep = ~bad
            else:
                _validate_counts(X, rows, label, obs.index.to_numpy())
                keep = np.ones(X.shape[0], dtype=bool)
            totals = np.asarray(X.sum(axis=1)).ravel()
            empty = keep & (totals == 0)
            dropped += int(empty.sum())
            keep &= totals > 0
            if keep.any():
                idx = np.flatnonzero(keep)
                obsm = obsm_for(rows[idx])
                writer.append(X[idx], obs.iloc[idx], obsm)
            if bar is not None:
                bar.update(rows.size)
        if larry and rejected > LARRY_MAX_REJECTED * max(n_total, 1):
            raise InputError(
                f"{label}: {rejected} of {n_total} cells do not become integers when divided by their smallest "
                f"value (tolerance {LARRY_TOLERANCE}); these are not LARRY per-cell normalised counts"
            )
        if writer.n_obs == 0:
            raise InputError(f"{label}: no cell has a nonzero count")
    if bar is not None:
        bar.close()
    summary = writer.summary()
    summary.update(cells_dropped_zero=dropped, cells_input=n_total)
    if larry:
        summary["cells_rejected_non_integer"] = rejected
    return summary


def _reader_chunks(reader: CsrReader, chunk_size: int):
    return reader.iter_chunks(chunk_size)


def _dense_obsm(reader: CsrReader, keys: list[str], rename: dict[str, str] | None = None):
    rename = rename or {}

    def obsm_for(rows):
        out = {}
        for k in keys:
            arr = reader.read_obsm(k, rows)
            if arr.dtype.kind == "f" and np.all(arr == np.rint(arr)):
                arr = arr.astype(np.int32)  # protein counts distributed as floats
            out[rename.get(k, k)] = arr
        return out

    return obsm_for


# -- formats --------------------------------------------------------------------------------------


def ingest_h5ad(path, out_path, task: str | None = None, matrix: str = "auto", chunk_size: int = 10_000,
                progress: bool = False, signals=None) -> dict:
    """Any h5ad in (or close to) the canonical layout: copies all obs columns and obsm arrays.

    ``signals`` (a study dataset's resolved SignalSpec list) are checked in full before anything is
    written (an entirely missing column, a one-valued label, a non-numeric matrix are refused); without
    them, the task's obs columns are."""
    path = _require_file(path, "h5ad file")
    with CsrReader(path, matrix) as reader:
        uns = reader.read_uns()
        task = task or (uns.get("task") if isinstance(uns.get("task"), str) else None)
        var = _check_genes(reader.var_names, f"{path}: var")
        columns = reader.obs_columns
        label = str(path)
        if signals:
            specs, signals = list(signals), check_signal_specs(reader, signals, label, chunk_size)
        else:
            specs = None
            signal_cols = [c for c in (TASKS[task].obs_columns if task in TASKS else ()) if c in columns]
            signals = check_signals(reader.read_obs(columns=signal_cols), task, label)
            if task == "cite" and "protein" in reader.obsm_keys():
                signals.append("obsm:protein")
        keys = [k for k in reader.obsm_keys() if _is_dense_obsm(reader, k)]
        out_uns = {"task": task} if task else {}
        out_uns["source"] = {"format": "h5ad", "path": str(path)}
        summary = _convert(out_path, var, _reader_chunks(reader, chunk_size), lambda r: reader.read_obs(r),
                           _dense_obsm(reader, keys), out_uns, str(path), reader.n_obs, progress=progress)
    summary.update(task=task, signals=signals)
    return summary


def _is_dense_obsm(reader: CsrReader, key: str) -> bool:
    try:
        reader.read_obsm(key, np.array([0]))
        return True
    except InputError:
        return False


# scvi-tools' loader reads its file under this name from ``save_path`` (no download when it is there)
SCVI_CITE_FILE = "pbmc_seurat_v4.h5ad"


def scvi_reference_filters(path, protein_key: str = "protein_counts", aggregate_proteins: bool = True,
                           apply_filters: bool = True, chunk_size: int = 10_000) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows kept and proteins as ``scvi.data.pbmc_seurat_v4_cite_seq`` leaves them, for a local file.

    scvi-tools' own function runs (its filters and protein aggregation are not re-implemented here),
    but on a proxy of the file so memory stays bounded: the proxy keeps every cell's obs and protein
    counts, and replaces the RNA matrix by two columns per cell, the UMIs of ``MT-`` genes and of the
    rest, streamed chunk by chunk. Those are all scvi-tools' filters read from the RNA (total counts,
    mitochondrial counts), so its mask equals the one it computes on the whole file (a test checks
    this against the function on the file itself). Returns (kept row positions, protein DataFrame of
    the kept rows).
    """
    import anndata as ad
    import scvi

    path = Path(path)
    with CsrReader(path, "X") as reader:
        obs = reader.read_obs()
        if not obs.index.is_unique:
            raise InputError(f"{path}: obs names are not unique; the reference filters match cells by name")
        if protein_key not in reader.obsm_keys():
            raise InputError(f"{path}: missing protein counts obsm[{protein_key!r}] (obsm keys: {reader.obsm_keys()})")
        if "celltype.l2" not in obs.columns:
            raise InputError(f"{path}: missing obs column 'celltype.l2' (scvi-tools' filters drop its 'Doublet' cells)")
        values = reader.read_obsm(protein_key)
        names = reader.obsm_columns(protein_key) or [f"protein_{j}" for j in range(values.shape[1])]
        protein = pd.DataFrame(values, index=obs.index, columns=names)
        mito = np.array([str(g).startswith("MT-") for g in reader.var_names])
        sums = np.zeros((reader.n_obs, 2))
        for rows, X in reader.iter_chunks(chunk_size):
            sums[rows, 0] = np.asarray(X[:, ~mito].sum(axis=1)).ravel()
            sums[rows, 1] = np.asarray(X[:, mito].sum(axis=1)).ravel()
    proxy = ad.AnnData(sp.csr_matrix(sums.astype(np.float64)), obs=obs,
                       var=pd.DataFrame(index=["non-mitochondrial UMIs", "MT-UMIs"]))
    proxy.obsm["protein_counts"] = protein
    download_log = logging.getLogger("scvi.data._download")  # its "already downloaded" names the proxy
    level = download_log.level
    with tempfile.TemporaryDirectory(prefix="scvi-cite-") as tmp:
        proxy.write_h5ad(Path(tmp) / SCVI_CITE_FILE)
        del proxy
        download_log.setLevel(logging.WARNING)
        try:
            out = scvi.data.pbmc_seurat_v4_cite_seq(save_path=tmp, apply_filters=apply_filters,
                                                    aggregate_proteins=aggregate_proteins)
        finally:
            download_log.setLevel(level)
    position = pd.Series(np.arange(len(obs)), index=obs.index)
    kept = position.loc[out.obs_names].to_numpy()
    return kept, pd.DataFrame(out.obsm["protein_counts"]).loc[out.obs_names]


def ingest_cite(path, out_path, level: str = "l2", protein_key: str = "protein_counts",
                reference_filters: bool = True, chunk_size: int = 10_000, progress: bool = False) -> dict:
    """PBMC CITE-seq h5ad: counts in X, ``obs['celltype.<level>']``, ``obsm[protein_key]``.

    ``reference_filters`` (default): keep the cells and proteins the reference kept, i.e. what
    ``scvi.data.pbmc_seurat_v4_cite_seq(apply_filters=True, aggregate_proteins=True)`` returns
    (``scvi_reference_filters``); False reads the file as it is.
    """
    path = _require_file(path, "CITE-seq h5ad")
    level = level if level.startswith("l") else f"l{level}"
    column = f"celltype.{level}"
    with CsrReader(path, "X") as reader:
        var = _check_genes(reader.var_names, f"{path}: var")
        if column not in reader.obs_columns:
            raise InputError(f"{path}: missing signal column {column!r} in obs (columns present: {reader.obs_columns})")
        if protein_key not in reader.obsm_keys():
            raise InputError(f"{path}: missing protein counts obsm[{protein_key!r}] (obsm keys: {reader.obsm_keys()})")
        n_file = reader.n_obs
    kept = None
    if reference_filters:
        kept, protein = scvi_reference_filters(path, protein_key, chunk_size=chunk_size)
        if kept.size == 0:
            raise InputError(f"{path}: no cell passes scvi-tools' reference filters (protein library size, "
                             f"proteins detected, percent mito, doublets); reference_filters=False reads all cells")
        slot = np.full(max(int(kept.max()) + 1, 1), -1, dtype=np.int64)
        slot[kept] = np.arange(kept.size)
        protein_values = protein.to_numpy()
        if np.all(protein_values == np.rint(protein_values)):
            protein_values = protein_values.astype(np.int32)
    with CsrReader(path, "X") as reader:
        labels = reader.read_obs(columns=[column])[column]
        if kept is not None:
            labels = labels.iloc[np.sort(kept)]
        check_signals(pd.DataFrame({"cell_type": labels}), "cite", f"{path}: obs[{column!r}]")
        extra = [c for c in ("celltype.l1", "celltype.l2", "celltype.l3") if c in reader.obs_columns]

        def obs_for(rows):
            obs = reader.read_obs(rows, columns=extra)
            obs.insert(0, "cell_type", pd.Categorical(obs[column]) if column in obs else None)
            return obs

        uns = {"task": "cite", "source": {"format": "cite", "path": str(path), "cell_type_level": level,
                                          "reference_filters": bool(reference_filters)}}
        if kept is None:
            names = reader.obsm_columns(protein_key)
            chunks = _reader_chunks(reader, chunk_size)
            obsm_for = _dense_obsm(reader, [protein_key], {protein_key: "protein"})
        else:
            import scvi

            uns["source"]["scvi_tools"] = scvi.__version__
            names = [str(c) for c in protein.columns]
            chunks = reader.iter_chunks(chunk_size, rows=np.sort(kept))

            def obsm_for(rows):
                return {"protein": protein_values[slot[rows]]}
        if names:
            uns["protein_names"] = np.array(names, dtype=object)
        summary = _convert(out_path, var, chunks, obs_for, obsm_for, uns, str(path),
                           reader.n_obs if kept is None else int(kept.size), progress=progress)
    if kept is not None:
        summary.update(cells_input=n_file, cells_filtered_reference=n_file - int(kept.size))
    summary.update(task="cite", signals=["cell_type", "obsm:protein"])
    return summary


_DAY_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _parse_days(values: pd.Series, label: str) -> np.ndarray:
    """Days as floats: numbers, or strings such as 'E8.5' / 'P0' / 'day 4'."""
    if values.dtype.kind in "iuf":
        return values.to_numpy(dtype=np.float64)
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values.astype(object)):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        m = _DAY_RE.search(str(v))
        if m is None:
            raise InputError(f"{label}: cannot read a day number from value {v!r}")
        out[i] = float(m.group())
    return out


def ingest_atlas(path, out_path, day_column: str = "day", cell_type_column: str = "cell_type",
                 matrix: str = "auto", chunk_size: int = 10_000, progress: bool = False) -> dict:
    """CELLxGENE-style h5ad: counts in ``raw/X`` if present, else ``X``; day and cell-type columns."""
    path = _require_file(path, "atlas h5ad")
    with CsrReader(path, "auto") as probe:
        has_raw = probe.has("raw/X")
    with CsrReader(path, ("raw/X" if has_raw else "X") if matrix == "auto" else matrix) as reader:
        var = _check_genes(reader.var_names, f"{path}: var")
        cols = reader.obs_columns
        for col, opt in ((day_column, "day_column"), (cell_type_column, "cell_type_column")):
            if col not in cols:
                raise InputError(f"{path}: missing signal column {col!r} ({opt}) in obs (columns present: {cols})")
        signal = reader.read_obs(columns=[day_column, cell_type_column])
        days = _parse_days(signal[day_column], f"{path}: obs[{day_column!r}]")
        check_signals(pd.DataFrame({"day": days, "cell_type": signal[cell_type_column].to_numpy()}),
                      "development", str(path))
        cell_types = pd.Categorical(signal[cell_type_column].astype(object))

        def obs_for(rows):
            return pd.DataFrame({"day": days[rows], "cell_type": cell_types[rows]},
                                index=reader.read_obs(rows, columns=[]).index)

        uns = {"task": "development", "source": {"format": "atlas", "path": str(path), "matrix": reader.matrix,
                                                 "day_column": day_column, "cell_type_column": cell_type_column}}
        summary = _convert(out_path, var, _reader_chunks(reader, chunk_size), obs_for, lambda rows: {}, uns,
                           f"{path} ({reader.matrix})", reader.n_obs, progress=progress)
    summary.update(task="development", signals=["day", "cell_type"])
    return summary


def ingest_merfish(cell_by_gene, cell_metadata, out_path, chunk_size: int = 10_000,
                   progress: bool = False) -> dict:
    """Vizgen MERFISH: ``cell_by_gene.csv`` (first column cell id, ``Blank-*`` dropped) and
    ``cell_metadata.csv`` (first column cell id, ``center_x``, ``center_y``)."""
    cbg = _require_file(cell_by_gene, "MERFISH cell_by_gene.csv")
    meta_path = _require_file(cell_metadata, "MERFISH cell_metadata.csv")
    meta = pd.read_csv(meta_path, index_col=0)
    meta.index = meta.index.astype(str)
    for col in ("center_x", "center_y"):
        if col not in meta.columns:
            raise InputError(f"{meta_path}: missing signal column {col!r} (columns present: {list(meta.columns)})")
    xy = pd.DataFrame({"x": meta["center_x"].astype(np.float64), "y": meta["center_y"].astype(np.float64)})
    check_signals(xy, "spatial", str(meta_path))
    header = pd.read_csv(cbg, nrows=0, index_col=0).columns
    genes = [str(c) for c in header if not str(c).startswith("Blank-")]
    var = _check_genes(genes, f"{cbg}: header")
    with open(cbg) as fh:
        n_total = max(0, sum(1 for _ in fh) - 1)

    state = {}

    def chunks():
        start = 0
        for df in pd.read_csv(cbg, index_col=0, chunksize=chunk_size):
            df.index = df.index.astype(str)
            missing = df.index.difference(xy.index)
            if len(missing):
                raise InputError(f"{meta_path}: no center_x/center_y for cell(s) {missing[:5].tolist()} of {cbg}")
            values = df[genes].to_numpy()
            if values.dtype.kind not in "iuf":
                raise InputError(f"{cbg}: non-numeric count values in rows {start}..{start + len(df) - 1}")
            rows = np.arange(start, start + len(df))
            state[start] = df.index
            yield rows, sp.csr_matrix(values)
            start += len(df)

    def obs_for(rows):
        ids = state.pop(int(rows[0]))
        return xy.loc[ids]

    uns = {"task": "spatial", "source": {"format": "merfish", "cell_by_gene": str(cbg),
                                         "cell_metadata": str(meta_path)}}
    summary = _convert(out_path, var, chunks(), obs_for, lambda rows: {}, uns, str(cbg), n_total,
                       progress=progress)
    summary.update(task="spatial", signals=["x", "y"])
    return summary


# -- LARRY ----------------------------------------------------------------------------------------


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _mtx_header(path: Path) -> tuple[int, int, int, int, bool]:
    """(n_rows, n_cols, nnz, header lines, pattern) of a MatrixMarket coordinate file."""
    try:
        with _open_text(path) as fh:
            first = fh.readline()
            if not first.startswith("%%MatrixMarket"):
                raise InputError(f"{path}: not a MatrixMarket file (first line {first[:60]!r})")
            if "coordinate" not in first:
                raise InputError(f"{path}: MatrixMarket 'array' format is not supported; expected 'coordinate'")
            pattern = "pattern" in first
            n_header = 1
            for line in fh:
                n_header += 1
                if not line.startswith("%"):
                    r, c, nnz = (int(x) for x in line.split())
                    return r, c, nnz, n_header, pattern
    except InputError:
        raise  # already names the file and the problem
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot read MatrixMarket header: {exc}") from exc
    raise InputError(f"{path}: MatrixMarket file has no size line")


def mtx_row_chunks(path: Path, chunk_rows: int, tmp_dir: Path, read_block: int = 2_000_000):
    """Yield (rows, csr) blocks of ``chunk_rows`` rows of a coordinate mtx in any entry order.

    One pass buckets entries by row block into temporary files (the sort pass), then each bucket is
    loaded and turned into CSR: memory is bounded by the read block and one row block.
    """
    n_rows, n_cols, nnz, n_header, pattern = _mtx_header(path)
    n_buckets = max(1, (n_rows + chunk_rows - 1) // chunk_rows)
    rec = np.dtype([("r", "<i4"), ("c", "<i4"), ("v", "<f8")])
    names = ["r", "c"] if pattern else ["r", "c", "v"]
    seen = 0
    for df in pd.read_csv(path, sep=r"\s+", header=None, names=names, skiprows=n_header,
                          chunksize=read_block, dtype={"r": np.int64, "c": np.int64}):
        r = df["r"].to_numpy() - 1
        c = df["c"].to_numpy() - 1
        if r.size and (r.min() < 0 or r.max() >= n_rows or c.min() < 0 or c.max() >= n_cols):
            raise InputError(f"{path}: entry index outside the declared size {n_rows} x {n_cols}")
        arr = np.empty(r.size, dtype=rec)
        arr["r"], arr["c"] = r, c
        arr["v"] = 1.0 if pattern else df["v"].to_numpy(dtype=np.float64)
        bucket = r // chunk_rows
        order = np.argsort(bucket, kind="stable")
        arr, bucket = arr[order], bucket[order]
        bounds = np.flatnonzero(np.diff(bucket)) + 1
        for part in np.split(np.arange(arr.size), bounds):
            if part.size:
                with open(tmp_dir / f"bucket{int(bucket[part[0]])}.bin", "ab") as fh:
                    arr[part].tofile(fh)
        seen += r.size
    if seen != nnz:
        raise InputError(f"{path}: {seen} entries found, header declares {nnz} (truncated file?)")
    for b in range(n_buckets):
        start, stop = b * chunk_rows, min((b + 1) * chunk_rows, n_rows)
        f = tmp_dir / f"bucket{b}.bin"
        arr = np.fromfile(f, dtype=rec) if f.exists() else np.empty(0, dtype=rec)
        f.unlink(missing_ok=True)
        m = sp.coo_matrix((arr["v"], (arr["r"] - start, arr["c"])), shape=(stop - start, n_cols)).tocsr()
        m.sum_duplicates()
        yield np.arange(start, stop), m


def _read_lines(path: Path) -> list[str]:
    with _open_text(path) as fh:
        return [line.strip() for line in fh if line.strip()]


def ingest_larry(counts, genes, metadata, clones, out_path, allow_normalized: bool = True,
                 chunk_size: int = 10_000, progress: bool = False) -> dict:
    """LARRY in-vitro files (normed counts mtx, gene names, metadata tsv, clone matrix mtx)."""
    counts = _require_file(counts, "LARRY normed counts .mtx(.gz)")
    genes = _require_file(genes, "LARRY gene names .txt(.gz)")
    metadata = _require_file(metadata, "LARRY metadata .txt(.gz)")
    clones = _require_file(clones, "LARRY clone matrix .mtx(.gz)")
    var = _check_genes(_read_lines(genes), str(genes))
    meta = pd.read_csv(metadata, sep="\t")
    missing = [c for c in LARRY_COLUMNS if c not in meta.columns]
    if missing:
        raise InputError(f"{metadata}: missing column(s) {missing} (columns present: {list(meta.columns)})")
    n_rows, n_cols, _, _, _ = _mtx_header(counts)
    if n_rows != len(meta) or n_cols != var.size:
        raise InputError(
            f"{counts}: matrix is {n_rows} x {n_cols} but {metadata} has {len(meta)} cells and {genes} "
            f"has {var.size} genes"
        )
    try:
        cm = sp.csr_matrix(scipy.io.mmread(_open_text(clones) if clones.suffix == ".gz" else clones))
    except (ValueError, OSError) as exc:
        raise InputError(f"{clones}: cannot read the clone matrix: {exc}") from exc
    if cm.shape[0] != len(meta):
        raise InputError(f"{clones}: clone matrix has {cm.shape[0]} rows, {metadata} has {len(meta)} cells")
    cm.eliminate_zeros()
    # a cell's clone = its first clone column; cells in no clone stay missing
    has = np.diff(cm.indptr) > 0
    clone = np.full(len(meta), None, dtype=object)
    clone[has] = [f"clone_{j}" for j in cm.indices[cm.indptr[:-1][has]]]
    day = pd.to_numeric(meta["Time point"], errors="coerce")
    if day.isna().any():
        raise InputError(f"{metadata}: 'Time point' must be numeric days, found {meta['Time point'][day.isna()].iloc[0]!r}")
    obs_all = pd.DataFrame({
        "clone": pd.Categorical(clone),
        "day": day.to_numpy().astype(np.int64) if np.all(day == np.round(day)) else day.to_numpy(),
        "cell_type": pd.Categorical(meta["Cell type annotation"].astype(str)),
        "well": meta["Well"].astype(str).to_numpy(),
        "spring_x": meta["SPRING-x"].to_numpy(dtype=np.float64),
        "spring_y": meta["SPRING-y"].to_numpy(dtype=np.float64),
    })
    if "Cell barcode" in meta.columns:
        lib = meta["Library"].astype(str) + ":" if "Library" in meta.columns else ""
        ids = (lib + meta["Cell barcode"].astype(str)).to_numpy()
        obs_all.index = ids if pd.Index(ids).is_unique else [f"larry_{i:06d}" for i in range(len(meta))]
    else:
        obs_all.index = [f"larry_{i:06d}" for i in range(len(meta))]
    check_signals(obs_all, "lineage", f"{metadata} + {clones}")
    uns = {"task": "lineage", "source": {"format": "larry", "counts": str(counts), "allow_normalized": allow_normalized}}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".larry-sort-") as tmp:
        summary = _convert(out_path, var, mtx_row_chunks(counts, chunk_size, Path(tmp)),
                           lambda rows: obs_all.iloc[rows], lambda rows: {}, uns, str(counts), len(meta),
                           larry=allow_normalized, progress=progress)
    summary.update(task="lineage", signals=["clone", "day"])
    return summary


# -- checks before ingesting ----------------------------------------------------------------------

SAMPLE_HEAD = 1_000  # the first rows, then SAMPLE_RUNS runs of SAMPLE_RUN rows spread over the file
SAMPLE_RUNS, SAMPLE_RUN = 20, 50


class SourceCheckError(InputError):
    """A source file refused before ingesting; ``field`` is the dataset's study field at fault
    (``paths.path``, ``options.level``, ...)."""

    def __init__(self, message: str, field: str = "paths.path"):
        super().__init__(message)
        self.field = field


def sample_rows(n: int) -> np.ndarray:
    """Rows read by ``check_source``: the head of the file and short runs spread over the rest."""
    starts = np.linspace(SAMPLE_HEAD, max(SAMPLE_HEAD, n - SAMPLE_RUN), SAMPLE_RUNS).astype(np.int64)
    runs = (starts[:, None] + np.arange(SAMPLE_RUN)).ravel()
    return np.unique(np.concatenate([np.arange(min(n, SAMPLE_HEAD)), runs[runs < n]]))


def check_source(fmt: str, options: dict, task: str | None = None, signals=None) -> dict:
    """The header and a sample of a source h5ad (formats h5ad, cite, atlas), in well under a second, so
    that a bad file is refused when the study is loaded rather than minutes into its first run: an
    HDF5 file with cells, genes and unique gene ids; the obs columns (and obsm) its task needs; integer
    counts >= 0 and no NaN in the sampled rows (``sample_rows``). LARRY and MERFISH sources get their
    headers checked (MatrixMarket size lines, CSV columns). ``signals`` (the dataset's resolved signal
    specs; default: the task's preset) name the obs columns and obsm keys an h5ad source must carry.
    Returns {"cells", "genes"} where the header gives them. The full check is the ingest's."""
    if fmt == "larry":
        return _check_larry_headers(options)
    if fmt == "merfish":
        return _check_merfish_headers(options)
    if fmt not in ("h5ad", "cite", "atlas"):
        return {}
    path = Path(options["path"])
    if not path.is_file():
        raise SourceCheckError(f"{path}: file not found (expected an .h5ad file)")
    if path.stat().st_size == 0:
        raise SourceCheckError(f"{path}: empty file (0 bytes); expected an .h5ad file written by anndata")
    matrix = "X" if fmt == "cite" else options.get("matrix", "auto")
    if fmt == "atlas" and matrix == "auto":
        with CsrReader(path, "auto") as probe:
            matrix = "raw/X" if probe.has("raw/X") else "X"
    try:
        reader = CsrReader(path, matrix)
    except InputError as exc:
        raise SourceCheckError(str(exc), "options.matrix" if "matrix must be" in str(exc) else "paths.path") from None
    with reader:
        if reader.n_obs == 0 or reader.n_vars == 0:
            raise SourceCheckError(f"{path}: {reader.matrix} has {reader.n_obs} cells x {reader.n_vars} genes; "
                                   "expected a non-empty count matrix")
        try:
            _check_genes(reader.var_names, f"{path}: var")
        except InputError as exc:
            raise SourceCheckError(str(exc)) from None
        columns = reader.obs_columns
        if fmt == "cite":
            level = str(options.get("level", "l2"))
            needed = [(f"celltype.{level if level.startswith('l') else 'l' + level}", "options.level")]
            protein_key = options.get("protein_key", "protein_counts")
            if protein_key not in reader.obsm_keys():
                raise SourceCheckError(f"{path}: no protein counts obsm[{protein_key!r}] (obsm keys: "
                                       f"{reader.obsm_keys()})", "options.protein_key")
        elif fmt == "atlas":
            needed = [(options.get("day_column", "day"), "options.day_column"),
                      (options.get("cell_type_column", "cell_type"), "options.cell_type_column")]
        else:
            specs = tuple(signals) if signals is not None else (TASKS[task].signals if task in TASKS else ())
            needed = [(c, "paths.path") for c in signal_columns(specs)]
            for key in (k for spec in specs for k in spec.obsm_keys):
                if key not in reader.obsm_keys():
                    raise SourceCheckError(f"{path}: no obsm[{key!r}], which a signal needs (obsm keys: "
                                           f"{reader.obsm_keys()})")
        for column, field in needed:
            if column not in columns:
                raise SourceCheckError(f"{path}: no obs column {column!r}, which "
                                       + (f"task {task!r}" if task else "the dataset's signals")
                                       + f" needs as a signal (columns present: {columns[:20]}"
                                       f"{' ...' if len(columns) > 20 else ''})", field)
        rows = sample_rows(reader.n_obs)
        try:
            _validate_counts(reader.read_subset(rows), rows, f"{path} ({reader.matrix}, sampled rows)", None)
        except InputError as exc:
            raise SourceCheckError(str(exc)) from None
        return {"cells": reader.n_obs, "genes": reader.n_vars}


def _csv_columns(path: Path, field: str, sep: str = ",") -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SourceCheckError(f"{path}: cannot read its header line ({exc})", field) from None


def _check_larry_headers(options: dict) -> dict:
    counts, metadata = Path(options["counts"]), Path(options["metadata"])
    try:
        rows, cols, _, _, _ = _mtx_header(counts)
    except InputError as exc:
        raise SourceCheckError(str(exc), "paths.counts") from None
    try:
        _mtx_header(Path(options["clones"]))
    except InputError as exc:
        raise SourceCheckError(str(exc), "paths.clones") from None
    columns = _csv_columns(metadata, "paths.metadata", sep="\t")
    missing = [c for c in LARRY_COLUMNS if c not in columns]
    if missing:
        raise SourceCheckError(f"{metadata}: missing column(s) {missing} (columns present: {columns})",
                               "paths.metadata")
    if rows == 0 or cols == 0:
        raise SourceCheckError(f"{counts}: the matrix is {rows} x {cols}; expected cells x genes", "paths.counts")
    return {"cells": rows, "genes": cols}


def _check_merfish_headers(options: dict) -> dict:
    cbg, meta = Path(options["cell_by_gene"]), Path(options["cell_metadata"])
    genes = [c for c in _csv_columns(cbg, "paths.cell_by_gene")[1:] if not c.startswith("Blank-")]
    if not genes:
        raise SourceCheckError(f"{cbg}: no gene columns in the header (expected cell id, then one column per gene)",
                               "paths.cell_by_gene")
    try:
        _check_genes(genes, f"{cbg}: header")
    except InputError as exc:
        raise SourceCheckError(str(exc), "paths.cell_by_gene") from None
    columns = _csv_columns(meta, "paths.cell_metadata")
    missing = [c for c in ("center_x", "center_y") if c not in columns]
    if missing:
        raise SourceCheckError(f"{meta}: missing signal column(s) {missing} (columns present: {columns[:20]})",
                               "paths.cell_metadata")
    return {"genes": len(genes)}


# -- dispatcher -----------------------------------------------------------------------------------


def ingest(fmt: str, out_path, progress: bool = False, **options) -> dict:
    """Convert a dataset in format ``fmt`` to the canonical raw h5ad at ``out_path``.

    Options per format: h5ad(path, task, matrix); larry(counts, genes, metadata, clones,
    allow_normalized); cite(path, level, protein_key, reference_filters); merfish(cell_by_gene,
    cell_metadata);
    atlas(path, day_column, cell_type_column, matrix). All accept chunk_size.
    """
    funcs = {"h5ad": ingest_h5ad, "larry": ingest_larry, "cite": ingest_cite,
             "merfish": ingest_merfish, "atlas": ingest_atlas}
    if fmt not in funcs:
        raise InputError(f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    options = {k: v for k, v in options.items() if v is not None}
    source = FORMATS[fmt]
    unknown = sorted(set(options) - set(source.options) - {"chunk_size"})
    if unknown:
        raise InputError(f"ingest --format {fmt}: does not take {', '.join(unknown)}; "
                         f"its options are {', '.join(source.options)} (and chunk_size)")
    missing = [p for p in source.paths if p not in options]
    if missing:
        raise InputError(f"ingest --format {fmt}: needs {', '.join(missing)} (the format's files: "
                         f"{', '.join(source.paths)})")
    summary = funcs[fmt](out_path=out_path, progress=progress, **options)
    summary["format"] = fmt
    return summary
