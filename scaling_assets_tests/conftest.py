"""Shared fixtures and helpers. ``lease_dir``: a GPU lease ledger of the test's own. ``postgres_url``: a
fresh database on a real PostgreSQL server (Debian's ``postgresql`` package) started on localhost for the
test session, in a temporary directory. ``write_tiny_study`` / ``study_jobs``: a tiny simulated study and
runs of its named jobs on an instance."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_STUDY = {
    "budget": "test",
    "seeds": [42],
    "algorithms": ["pca"],
    "split": {"validation_cells": 50},
    "sizes": [100],
    "qualities": [1.0, 0.5],
    "datasets": {"cite": {"task": "cite", "source": "simulated", "cells": 400, "genes": 60, "seed": 1}},
}


def write_tiny_study(path: Path, root: Path, name: str, **fields) -> Path:
    """A study file: one small simulated CITE dataset, PCA, the ``test`` budget; ``fields`` replace
    top-level keys (``algorithms=[...]``, ``datasets={...}``, ``lmi={"epochs": 10}``)."""
    path.write_text(yaml.safe_dump({"name": name, "root": str(root), **TINY_STUDY, **fields}, sort_keys=False))
    return path


class StudyJobs:
    """Runs of the repository's named jobs (``cite_raw``, ``cite_by_seed``, ...) for the study of
    ``$SCALING_ASSETS_STUDY``, created on ``instance`` with the origins its launcher needs."""

    def __init__(self, instance, context):
        from scaling_assets.definitions import load_definitions

        self.instance, self.context = instance, context
        self.defs = load_definitions()  # the same code location in this process, to create the runs
        self.workspace = context.create_request_context()
        self.repository = self.workspace.get_code_location(STUDY_LOCATION).get_repository("__repository__")

    def create(self, job: str, partition: str | None = None, tags: dict | None = None) -> str:
        remote_job = self.repository.get_full_job(job)
        run = self.instance.create_run_for_job(
            self.defs.resolve_job_def(job),
            tags={**remote_job.tags, **({"dagster/partition": partition} if partition else {}), **(tags or {})},
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        return run.run_id

    def submit(self, job: str, partition: str | None = None, tags: dict | None = None) -> str:
        """Through the instance's run queue (a daemon dequeues it)."""
        run_id = self.create(job, partition, tags)
        self.instance.submit_run(run_id, self.workspace)
        return run_id

    def launch(self, job: str, partition: str | None = None, tags: dict | None = None) -> str:
        """Straight to the instance's run launcher."""
        run_id = self.create(job, partition, tags)
        self.instance.launch_run(run_id, self.workspace)
        return run_id


STUDY_LOCATION = "scaling_assets.definitions"


@contextmanager
def study_jobs(instance):
    """``StudyJobs`` for ``instance`` in a test workspace holding the repository's code location."""
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget

    target = ModuleTarget(module_name=STUDY_LOCATION, attribute=None, working_directory=str(REPO),
                          location_name=STUDY_LOCATION)
    with create_test_daemon_workspace_context(target, instance) as context:
        yield StudyJobs(instance, context)


def _postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb, else the directory of initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a temp dir, trust auth on 127.0.0.1 only. PostgreSQL refuses to run as root,
    so as root the server runs as the ``postgres`` user (created by the Debian package)."""

    def __init__(self, bin_dir: Path, run_as: str | None):
        self.bin_dir, self.run_as = bin_dir, run_as
        self.dir = Path(tempfile.mkdtemp(prefix="scaling-assets-pg-"))
        self.data, self.log, self.port = self.dir / "data", self.dir / "server.log", _free_port()
        self.user = run_as or pwd.getpwuid(os.getuid()).pw_name
        if run_as:
            entry = pwd.getpwnam(run_as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db_name: str = "postgres") -> str:
        """SQLAlchemy URL (what Dagster's ``postgres_url`` takes). The driver is explicit because
        SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, and dagster-postgres ships psycopg2."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db_name}"

    def create_database(self) -> str:
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(libpq_url(self.url()))
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            conn.cursor().execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return self.url(name)


def libpq_url(url: str) -> str:
    """The same URL for psycopg2/libpq, which do not know SQLAlchemy's ``+driver`` suffix."""
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


@pytest.fixture
def lease_dir(tmp_path, monkeypatch) -> Path:
    """A GPU lease ledger of this test's own (``SCALING_ASSETS_LEASE_DIR``, not yet created); the NVML
    backend a test set is put back to the real one afterwards."""
    from scaling_assets.gpu import nvml

    path = tmp_path / "leases"
    monkeypatch.setenv("SCALING_ASSETS_LEASE_DIR", str(path))
    yield path
    nvml.set_backend(None)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session; skips (with the reason) where it cannot be had."""
    try:
        import dagster_postgres  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"dagster-postgres is not installed ({exc}): pip install -e '.[test]'")
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (no initdb under /usr/lib/postgresql/*/bin or on "
                    "PATH): apt-get install postgresql")
    run_as = None
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        run_as = "postgres"
    server = PostgresServer(bin_dir, run_as)
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.skip(f"could not start PostgreSQL from {bin_dir}: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """``postgresql+psycopg2://user@127.0.0.1:port/db`` (for Dagster's ``postgres_url``) of a
    database made for this test alone; ``libpq_url()`` turns it into a psycopg2 DSN."""
    return postgres_server.create_database()
