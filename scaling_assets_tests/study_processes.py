"""Running ``scaling-assets study run`` as a user does, for the tests of the main job and its faults: a tiny
study file with its own DAGSTER_HOME, the command as a subprocess, and the instance it writes to."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance

from conftest import REPO, write_tiny_study

CITE = {"task": "cite", "source": "simulated", "cells": 500, "genes": 40, "seed": 1}


def make_study(tmp_path: Path, name: str, datasets: dict | None = None, **fields) -> tuple[Path, Path, dict]:
    """A study file (the cite dataset and ``datasets``; ``fields``: other top-level keys), a fresh
    DAGSTER_HOME holding the repo's dagster.yaml, and the CLI environment."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    path = write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", name, sizes=[100, 200], lmi={"epochs": 10},
                            datasets={"cite": CITE, **(datasets or {})}, **fields)
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_PROGRESS="0", SCALING_ASSETS_HOME=str(tmp_path))
    return path, home, env


def study_run(path: Path, env: dict, cwd: Path, **kwargs):
    cmd = [sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", str(path)]
    # Ctrl-C as from a terminal: a suite started in the background by a shell without job control
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def instance_at(home: Path) -> DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(home)  # DagsterInstance.get() reads it
    return DagsterInstance.get()


def recorded_daemon_pid(home: Path) -> int:
    from scaling_assets.study.daemon import read_record

    return read_record(home / ".scaling_assets" / "daemon.json").pid
