"""Small helpers shared by the asset factories (no science here)."""

from __future__ import annotations

import base64
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import MetadataValue

from scaling_assets.assets.storage import SUMMARY_FILE, stage_dir, write_json_atomic

COUNTS_FILE = "counts.h5ad"


def new_stage(study, label: str) -> Path:
    return stage_dir(study.root, label)


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    write_json_atomic(folder / SUMMARY_FILE, summary)


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SUMMARY_FILE).read_text())


def show_progress() -> bool:
    """Progress bars for interactive runs; quiet when SCALING_ASSETS_PROGRESS=0 (tests, CI logs)."""
    return os.environ.get("SCALING_ASSETS_PROGRESS", "1") != "0"


def image_metadata(png: Path, title: str = "plot") -> MetadataValue:
    """A PNG shown inline in the Dagster UI's metadata panel."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{data})")


def plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (Dagster metadata wants plain types)."""
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return value


def count_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("cells", "genes", "umis_per_cell", "total_umis", "cells_dropped")
    return {k: plain(summary[k]) for k in keys if k in summary and summary[k] is not None}


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t()`` gives the seconds spent."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())
