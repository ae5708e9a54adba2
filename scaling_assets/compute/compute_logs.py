"""Step stdout/stderr capture without helper processes (``dagster.yaml``'s ``compute_logs``).

Dagster's ``LocalComputeLogManager`` writes each step's stdout and stderr to files under
``$DAGSTER_HOME/storage`` (what the UI shows) and *mirrors* them to the run's own stdout: per stream a
``tail -F`` process and a Python interpreter watching for its orphaning (``watch_orphans.py``), four
processes per run. A forked run worker's stdout is the daemon's log, so the mirror only copied every
step's output into ``daemon.log`` (log growth), and at 256 runs in flight it was 1,024 extra processes,
512 of them Python interpreters (~11 MB RSS each) started and stopped with every run
(``benchmarks/bench_scheduler.py``). ``FileComputeLogManager`` keeps the files, and so the UI's logs,
and drops the mirror.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dagster import Field, StringSource

from scaling_assets.compute.dagster_compat import (IO_TYPE_EXTENSION, CapturedLogContext, ComputeIOType,
                                                   LocalComputeLogManager, redirect_to_file)


class FileComputeLogManager(LocalComputeLogManager):
    """``LocalComputeLogManager`` that captures to its files only; ``base_dir`` defaults to the
    instance's ``storage`` folder, as Dagster's default compute log manager does."""

    def __init__(self, base_dir: str | None = None, polling_timeout: float | None = None, inst_data=None):
        super().__init__(base_dir or "", polling_timeout, inst_data)
        self._base_dir_default = base_dir is None

    @classmethod
    def config_type(cls):
        return {**LocalComputeLogManager.config_type(), "base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        if self._base_dir_default:
            self._base_dir = os.path.join(instance.root_directory, "storage")

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        _touch(outpath)
        _touch(errpath)
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        _touch(self.complete_artifact_path(log_key))  # the capture is complete


def _touch(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).touch()
