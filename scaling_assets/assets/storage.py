"""The IO manager that stores every asset partition in its folder, and the staging it writes through.

The folders and file names are ``scaling_assets.layout``'s (the tree is drawn there). Staging:
``<root>/.staging/<label>-<id>/`` is work in progress, renamed into place when done; beside it
``<label>-<id>.owner`` names its writer, so folders of killed writers are swept when a run starts.

Assets write their files into a fresh staging folder (``stage_dir``) and return it as a ``Path``;
the IO manager renames it to the partition folder, so a failed or interrupted step never leaves a
half-written partition, and re-materialising replaces the old folder whole. Downstream an input gets
what its annotation asks for: a layout handle (``ModelFolder``, ``EvalCountsFolder``, ...) of the
partition folder, or what the folder stores (a record, a row-range handle, a DataFrame, else the
folder as a ``Path``); assets read what they need with the core readers (row-range CSR reads for
counts, memmapped corpora, ``.npz`` embeddings), never a whole dataset in memory. Small records
(dicts) are stored as JSON and DataFrames as Parquet + CSV.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, DagsterInvariantViolationError, InputContext, MetadataValue, OutputContext

from scaling_assets import fs
from scaling_assets.fs import write_text_atomic
from scaling_assets.processes import identity_host, process_identity, running_process
from scaling_assets.layout import RECORD_FILE, PartitionFolder, TableFolder, partition_dir, staging_root

OWNER_SUFFIX = ".owner"  # beside each staging folder: "<host> <pid> <process start time>" of its writer


def stage_dir(root: Path | str, label: str = "stage") -> Path:
    """A fresh folder on the same file system as the study root (so the final rename is atomic).

    Its writer (host, pid, process start time) is recorded beside it *before* the folder exists, so
    every staging folder has an owner record and one left by a killed writer can be told apart from
    one a live run is still writing (``sweep_staging``)."""
    staging = staging_root(root)
    staging.mkdir(parents=True, exist_ok=True)
    folder = staging / f"{label}-{uuid.uuid4().hex[:12]}"
    write_text_atomic(_owner_file(folder), process_identity(os.getpid()))  # never seen half-written by a sweep
    folder.mkdir()
    return folder


def _owner_file(folder: Path) -> Path:
    return folder.with_name(folder.name + OWNER_SUFFIX)


def _writer_alive(recorded: str) -> bool:
    """Is the recorded writer still running? A writer on another host (a Ray node sharing the study
    root) cannot be checked from here, so it counts as alive: only its own host sweeps it."""
    host = identity_host(recorded)
    if host is None:
        return False  # unreadable record: no process can be writing under it
    if host != socket.gethostname():
        return True
    return running_process(recorded) is not None


def sweep_staging(root: Path | str) -> list[Path]:
    """Remove staging folders whose writer process is gone (killed or crashed); keep live ones.

    Returns the folders removed. Safe to call from any run at any time: a folder is removed only when
    the process recorded for it no longer exists (same host, pid and start time), or when it has no
    owner record at all (``stage_dir`` writes the record before creating the folder, so only a folder
    from an older version of the platform lacks one)."""
    staging = staging_root(root)
    if not staging.is_dir():
        return []
    removed = []
    for entry in sorted(staging.iterdir()):
        if entry.name.startswith("."):  # an owner record being written (tiny; left alone)
            continue
        if entry.name.endswith(OWNER_SUFFIX):
            folder, owner = entry.with_name(entry.name[: -len(OWNER_SUFFIX)]), entry
            try:
                if _writer_alive(owner.read_text().strip()):
                    continue
            except FileNotFoundError:
                continue  # its writer put the folder in place meanwhile
        elif _owner_file(entry).exists():
            continue  # judged through its owner record
        else:
            folder, owner = entry, None
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        if owner is not None:
            owner.unlink(missing_ok=True)
    return removed


def replace_dir(src: Path, dst: Path) -> None:
    """Move staged ``src`` to ``dst``, replacing any previous ``dst`` folder whole."""
    fs.replace_dir(src, dst)
    _owner_file(src).unlink(missing_ok=True)  # after the rename: the folder was owned until it was in place


def _annotated_type(context: InputContext) -> type | None:
    """The class an input's annotation asks for (a folder ``Path``, a ``CountsRange``, a ``DataFrame``,
    a ``dict``), or None for an unannotated input."""
    try:
        wanted = getattr(context.dagster_type, "typing_type", None)
    except DagsterInvariantViolationError:  # a context built without a type (tests, direct loads)
        return None
    return wanted if isinstance(wanted, type) and wanted not in (object, Any) else None  # Any: ``**inputs``


def read_record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / RECORD_FILE).read_text())


def write_json_atomic(path: Path, value: Any) -> None:
    fs.write_json_atomic(path, value, indent=2, sort_keys=True, default=_json_default)


def _json_default(value: Any):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


class StudyIOManager(ConfigurableIOManager):
    """Persists every asset partition under the study root (see the module docstring)."""

    root: str

    def setup_for_execution(self, context) -> None:
        # Each run worker clears what killed runs left in staging (never a live run's folder).
        sweep_staging(self.root)

    def _folder(self, context: InputContext | OutputContext) -> Path:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return partition_dir(self.root, list(context.asset_key.path), partition)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        folder = self._folder(context)
        if isinstance(obj, Path):  # a staged folder written by the asset
            replace_dir(obj, folder)
        elif isinstance(obj, pd.DataFrame):
            stage = stage_dir(self.root, "table")
            table = TableFolder(stage)
            obj.to_parquet(table.parquet, index=False)
            obj.to_csv(table.csv, index=False)
            replace_dir(stage, folder)
        elif isinstance(obj, dict):
            stage = stage_dir(self.root, "record")
            write_json_atomic(stage / RECORD_FILE, obj)
            replace_dir(stage, folder)
        else:
            raise TypeError(
                f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; the study IO "
                "manager stores staged folders (Path), DataFrames and dicts"
            )
        context.add_output_metadata({"path": MetadataValue.path(str(folder))})

    def load_input(self, context: InputContext) -> Any:
        folder = self._existing_folder(context)
        wanted = _annotated_type(context)
        if wanted is not None and issubclass(wanted, PartitionFolder):
            return wanted(folder)  # the layout handle the input's annotation asks for
        stored = self._load(folder)
        if wanted is not None and not isinstance(stored, wanted):
            raise TypeError(
                f"an input annotated {wanted.__name__} reads {context.asset_key.to_user_string()}, which is "
                f"stored as a {type(stored).__name__} ({folder}); annotate the input with the type the asset "
                "stores (Path or a layout handle for a folder, DataFrame for a table, dict or a range handle "
                "for a record)")
        return stored

    def _existing_folder(self, context: InputContext) -> Path:
        if context.has_asset_partitions and len(context.asset_partition_keys) != 1:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: expected one upstream partition, got "
                f"{len(context.asset_partition_keys)}; this input should map one partition to one"
            )
        folder = self._folder(context)
        if not folder.exists():
            raise FileNotFoundError(
                f"upstream asset {context.asset_key.to_user_string()} partition "
                f"{context.asset_partition_key if context.has_asset_partitions else '(all)'} has not been "
                f"materialised yet (no folder {folder}); materialise it first"
            )
        return folder

    @staticmethod
    def _load(folder: Path) -> Any:
        """What the folder stores: a record (or the row-range handle it describes), a table, else the folder."""
        if (folder / RECORD_FILE).exists():
            from scaling_assets.data.pools import handle_from_record

            record = read_record(folder)
            handle = handle_from_record(record)  # a row-range handle (training counts / corpus) or a plain record
            return record if handle is None else handle
        table = TableFolder(folder)
        if table.parquet.exists():
            return pd.read_parquet(table.parquet)
        return folder
