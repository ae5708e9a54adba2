"""Instance files (``dagster.yaml``) for a ``DAGSTER_HOME``: the repository's run queue (its root
``dagster.yaml``: GPU-aware coordinator and launcher) with SQLite storage (the zero-setup default) or
PostgreSQL storage (``pip install -e '.[postgres]'``; for many concurrent runs and daemons).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from scaling_assets.fs import write_text_atomic

REPO_INSTANCE_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def instance_config(
    *, postgres_url: str | None = None, coordinator: Mapping[str, Any] | None = None
) -> dict:
    """The repository's instance settings; ``coordinator`` overrides keys of the coordinator's config;
    ``postgres_url`` (``postgresql://user:password@host:port/db``) puts runs, events and schedules
    in that database instead of SQLite files under ``DAGSTER_HOME``."""
    if not REPO_INSTANCE_YAML.exists():
        raise FileNotFoundError(f"{REPO_INSTANCE_YAML}: the repository's dagster.yaml is needed (run from a checkout)")
    config = yaml.safe_load(REPO_INSTANCE_YAML.read_text())
    config["run_coordinator"]["config"].update(coordinator or {})
    config["telemetry"] = {"enabled": False}
    if postgres_url:
        config["storage"] = {"postgres": {"postgres_url": postgres_url}}
    return config


def write_instance_yaml(home: str | os.PathLike, **settings: Any) -> Path:
    """Write ``<home>/dagster.yaml`` (see ``instance_config`` for ``settings``); returns its path."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    write_text_atomic(path, yaml.safe_dump(instance_config(**settings), sort_keys=False))
    return path
