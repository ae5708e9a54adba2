"""Small helpers shared by the asset factories (no science here)."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import shutil
import time
import urllib.parse
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import MetadataValue

from scaling_assets.assets.storage import stage_dir, write_json_atomic
from scaling_assets.fs import atomic_file
from scaling_assets.layout import (DICTIONARY_FILE, EMBEDDINGS_FILE, MEDIANS_FILE, SPLIT_FILE, SUMMARY_FILE,
                                   partition_dir)
from scaling_assets.study.spec import format_quality

# Partitioned asset checks (so the UI shows each check's partition) are a preview in Dagster 1.13;
# we rely on them knowingly, so one warning per check spec is noise.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")

SETTING_KEY_NOTE = (" Partition key `n=…_q=…_s=…`: n training cells, q the quality (fraction of UMIs kept by "
                    "binomial thinning; 1 = full depth), s the seed of the split and thinning.")


# Grids of more partitions show their seeds without links: each link costs ~90 bytes of the description, which
# Dagster copies into every job snapshot holding the asset (the paper's 300-partition grids: +1.4 MB, 67%)
GRID_LINKS_MAX = 100


def setting_grid(study, dataset: str, asset: str, algorithm: str | None = None) -> str:
    """Markdown for an asset's description: its setting partitions laid out as the study's grid, a row
    per training size n, a column per quality q, each cell its seeds linked to their partition pages (in
    grids of more than GRID_LINKS_MAX partitions, the number of seeds).

    Dagster's multi-partitions would draw this grid with each partition's status, but they take two
    dimensions: with the seed inside one (n x q_s), the seed-level assets upstream (split, pool_counts,
    pca_genes) reach a model only through a custom PartitionMapping, which the webserver's snapshot drops
    (DESIGN §8). So the keys stay flat and the grid is drawn here."""
    settings = study.settings(dataset, algorithm)
    linked = len(settings) <= GRID_LINKS_MAX
    path = f"/assets/{urllib.parse.quote(dataset)}/{urllib.parse.quote(asset)}?view=partitions&partition="
    cells: dict[tuple[int, float], list[str]] = {}
    for s in settings:
        cells.setdefault((s.cells, s.quality), []).append(f"[s={s.seed}]({path}{urllib.parse.quote(s.key, safe='')})")
    sizes, qualities = sorted({n for n, _ in cells}), sorted({q for _, q in cells}, reverse=True)

    def cell(n: int, q: float) -> str:
        return " ".join(cells[n, q]) if linked else f"{len(cells[n, q])} seed{'s' * (len(cells[n, q]) > 1)}"

    rows = [f"| n \\ q | {' | '.join(format_quality(q) for q in qualities)} |", f"|---:|{'---|' * len(qualities)}"]
    rows += [f"| {n:,} | {' | '.join(cell(n, q) for q in qualities)} |" for n in sizes]
    how = ("a link opens the partition" if linked else
           f"the Partitions tab's filter finds a row, `n={sizes[0]}_`, or a column, `_q={format_quality(qualities[-1])}_`")
    return f"\n\nPartitions as the study's grid (training cells n x quality q; {how}):\n\n" + "\n".join(rows)


def new_stage(study, label: str) -> Path:
    return stage_dir(study.root, label)


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    write_json_atomic(folder / SUMMARY_FILE, summary)


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SUMMARY_FILE).read_text())


def eval_summary(eval_counts: Path, quality: float) -> dict:
    """One quality's entry of a seed's ``eval_counts`` summary (its test and validation sets)."""
    return read_summary(eval_counts)[f"q={format_quality(quality)}"]


def tokenize_source(source, out_dir: Path, gene_medians: Path, chunk_size: int) -> dict:
    """Rank-value corpus of a count source (a file reader or a thinned pool range), chunk by chunk,
    with the medians and token dictionary of a ``gene_medians`` partition."""
    import numpy as np

    from scaling_assets.data.corpus import TokenDictionary, build_corpus

    medians = np.load(gene_medians / MEDIANS_FILE)
    dictionary = TokenDictionary.load(gene_medians / DICTIONARY_FILE)
    return build_corpus(source, out_dir, medians, dictionary, chunk_size=chunk_size, progress=show_progress())


def load_split(folder: Path):
    from scaling_assets.data.splits import Split

    return Split.load(folder / SPLIT_FILE)


# What reading a damaged saved file raises (zip, pickle, JSON, torch and HDF5 readers), besides our own errors.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError)


def _unreadable_errors() -> tuple:
    """``UNREADABLE`` and, where installed, the safetensors reader's error (Geneformer's weights)."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return UNREADABLE
    return (*UNREADABLE, SafetensorError)


def unreadable(folder: Path, path: Path, exc: BaseException):
    """The error for a file of ``folder`` that cannot be read: names the file and the partition to rebuild."""
    from scaling_assets.data.integrity import CorruptFileError, rebuild_hint

    return CorruptFileError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); {rebuild_hint(folder)}")


def seal_folder(stage: Path) -> None:
    """Record the bytes and BLAKE2b of every file of a staged partition (its last write), so that a reader
    and ``scaling-assets study verify`` can tell a changed or damaged file from the one written."""
    from scaling_assets.data.integrity import FINGERPRINT_FILE, record_fingerprints

    names = sorted(str(p.relative_to(stage)) for p in Path(stage).rglob("*")
                   if p.is_file() and p.name != FINGERPRINT_FILE)
    record_fingerprints(stage, names)


def load_embeddings(folder: Path):
    """(embeddings, cell ids) of an ``embeddings_*`` partition, its file's BLAKE2b checked on the bytes read
    (a partition written before fingerprints were recorded is read unchecked)."""
    import numpy as np

    from scaling_assets.data.integrity import CorruptFileError, read_verified_bytes, recorded_fingerprints

    path = folder / EMBEDDINGS_FILE
    try:
        data = read_verified_bytes(folder, EMBEDDINGS_FILE, recorded_fingerprints(folder) or {})
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return f["embeddings"], f["cell_ids"].astype(str)
    except CorruptFileError:
        raise
    except UNREADABLE as exc:
        raise unreadable(folder, path, exc) from None  # as a cause, `study run` reports the bare error


def verify_partition(folder: Path) -> None:
    """Check every file of a partition read whole anyway (a model) against its recorded bytes and BLAKE2b;
    a partition written before fingerprints were recorded passes unchecked."""
    from scaling_assets.data.integrity import recorded_fingerprints, verify_folder

    if recorded_fingerprints(folder) is not None:
        verify_folder(folder, full_hash=True)


def load_trained_model(folder: Path, entry):
    """The model saved in a ``model_*`` partition by ``entry``'s class (``verify_partition`` it first); a file
    that cannot be read names the partition to rebuild instead of surfacing as the reader's bare error."""
    from scaling_assets.data.integrity import CorruptFileError
    from scaling_assets.layout import MODEL_DIR

    try:
        return entry.load(folder / MODEL_DIR)
    except CorruptFileError:
        raise
    except _unreadable_errors() as exc:
        raise unreadable(folder, folder / MODEL_DIR, exc) from None  # as a cause, `study run` reports the bare error


def show_progress() -> bool:
    """Progress bars for interactive runs; quiet when SCALING_ASSETS_PROGRESS=0 (tests, CI logs)."""
    return os.environ.get("SCALING_ASSETS_PROGRESS", "1") != "0"


def image_metadata(context, png: Path, title: str = "plot") -> MetadataValue:
    """A PNG shown in place in the UI's metadata tables (asset overview, partition, event).

    Dagster 1.13 has no image metadata type (dagster#15468). Its UI renders a Markdown entry in place
    only when it is under 1,000 characters (ui-core `MetadataEntry.tsx`, `expandSmallValues`), longer
    ones behind "[Show Markdown]" in a dialog, and its Markdown sanitiser allows http(s) and data image
    sources. So the PNG is copied next to the run's compute logs, which the webserver serves at
    `/logs/<run id>/.../png` (its compute-log download route), and the entry is a short Markdown image
    linking there. Where the instance's compute logs are not local files, the PNG is embedded as
    base64 (opens in the dialog)."""
    url = _served_copy(context, Path(png))
    if url is None:
        url = "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode()
    return MetadataValue.md(f"![{title}]({url})")


def _served_copy(context, png: Path) -> str | None:
    """Copy `png` under this run's compute-log folder; the URL the webserver serves it at, or None."""
    # the webserver's /logs route serves files of exactly these managers (dagster_webserver/webserver.py)
    from scaling_assets.compute.dagster_compat import LocalComputeLogManager

    logs = context.instance.compute_log_manager
    if not isinstance(logs, LocalComputeLogManager):
        return None
    key = [context.run.run_id, "images", *context.asset_key.path]
    if context.has_partition_key:
        key.append(context.partition_key)
    key.append(png.stem)
    target = Path(logs.get_captured_local_path(key, "png"))  # deleted with the run's logs
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as tmp:
        shutil.copyfile(png, tmp)
    return "/logs/" + "/".join(urllib.parse.quote(part, safe="") for part in key) + "/png"


def plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (Dagster metadata wants plain types)."""
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return value


def rounded(key: str, value: Any) -> Any:
    """A float rounded to what is meaningful for its kind: seconds to 0.1 s, MI bits to 0.001 bit,
    anything else (losses, UMIs per cell, fractions) to 4 significant digits."""
    value = plain(value)
    if not isinstance(value, float) or value != value or value in (float("inf"), float("-inf")):
        return value
    if key.endswith("_s") or key.endswith("_seconds"):
        return round(value, 1)
    if "bits" in key:
        return round(value, 3)
    return float(f"{value:.4g}")


def readable(metadata: dict[str, Any]) -> dict[str, Any]:
    """Asset metadata with every float rounded by ``rounded`` (other values untouched)."""
    return {k: rounded(k, v) for k, v in metadata.items()}


def count_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("cells", "genes", "umis_per_cell", "total_umis", "cells_dropped")
    meta = readable({k: summary[k] for k in keys if k in summary and summary[k] is not None})
    if "cells" in meta:
        meta["dagster/row_count"] = int(meta["cells"])  # Dagster's standard row count: cells are rows
    return meta


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t()`` gives the seconds spent."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def budget_smoke_of(study, dataset: str, algorithm: str, setting_key: str) -> bool | None:
    """Whether the setting's model trained below the study's own stopping rules (its budget's cap
    ended training), from the model partition's summary; None when the model is not materialised."""
    from scaling_assets.models.budget import trained_below_rules

    folder = partition_dir(study.root, [dataset, f"model_{algorithm}"], setting_key)
    if not (folder / SUMMARY_FILE).exists():
        return None
    r = read_summary(folder)
    return trained_below_rules(algorithm, r["budget"], int(r["cells"]), r.get("stop_reason"))
