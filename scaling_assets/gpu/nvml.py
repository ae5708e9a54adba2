"""GPU inventory read live through NVML (``pynvml``), with an injectable fake for tests.

``list_gpus()`` never raises: with NVML missing or failing to initialise it returns ``[]`` (logged
once per process); a GPU whose queries fail is returned with ``healthy=False`` and its error, so
placement skips it. Callers read this every daemon tick, so it is cheap: NVML is initialised once per
process and each call is a handful of C queries.

Backends: the real one (``PynvmlBackend``), ``FakeNvml`` (in memory, or file-backed so that a daemon
or run subprocess sees the same fake), chosen by ``set_backend()`` or by the environment variable
``SCALING_ASSETS_FAKE_NVML=<path to a FakeNvml JSON file>``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scaling_assets.fs import write_json_atomic

log = logging.getLogger(__name__)

FAKE_NVML_ENV = "SCALING_ASSETS_FAKE_NVML"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    total_mib: int
    free_mib: int
    used_mib: int
    healthy: bool = True
    error: str | None = None

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


class NvmlBackend(Protocol):
    def list_gpus(self) -> list[GpuInfo]: ...

    def process_usage_mib(self) -> dict[str, dict[int, int]]:
        """GPU uuid -> {pid: MiB that NVML attributes to that pid}; {} if unknown."""
        ...


class PynvmlBackend:
    """The real NVML. Initialised lazily, once; an init failure is remembered (no retry storm)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None
        self._init_error: str | None = None

    def _get(self):
        with self._lock:
            if self._nvml is None and self._init_error is None:
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._nvml = pynvml
                except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
                    self._init_error = f"{type(exc).__name__}: {exc}"
                    log.info("NVML not available (%s): no GPUs will be used", self._init_error)
            return self._nvml

    @property
    def init_error(self) -> str | None:
        self._get()
        return self._init_error

    def list_gpus(self) -> list[GpuInfo]:
        nvml = self._get()
        if nvml is None:
            return []
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            log.warning("NVML device count failed: %s", exc)
            return []
        gpus = []
        for index in range(count):
            uuid, name = f"index-{index}", "unknown"
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(
                    GpuInfo(index, uuid, name, mem.total // _MIB, mem.free // _MIB, mem.used // _MIB)
                )
            except Exception as exc:  # lost GPU, Xid error, ...: keep it visible but unplaceable
                gpus.append(GpuInfo(index, uuid, name, 0, 0, 0, False, f"{type(exc).__name__}: {exc}"))
        return gpus

    def process_usage_mib(self) -> dict[str, dict[int, int]]:
        nvml = self._get()
        if nvml is None:
            return {}
        usage: dict[str, dict[int, int]] = {}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                usage[_text(nvml.nvmlDeviceGetUUID(handle))] = {
                    p.pid: (p.usedGpuMemory or 0) // _MIB for p in procs
                }
        except Exception as exc:
            log.debug("NVML process query failed: %s", exc)
        return usage


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FakeNvml:
    """A fake NVML for tests: several GPUs, free memory that changes between calls, failing GPUs.

    Each GPU is a dict: ``name, total_mib, free_mib`` (an int, or a list consumed one value per
    ``list_gpus()`` call, the last value sticking), optional ``error`` (the GPU raises) and
    ``processes`` ({pid: MiB}). With ``path`` the state lives in a JSON file, re-read on every call,
    so another process (the daemon, a run worker) sees the same fake and its changes.
    """

    def __init__(self, gpus: list[dict] | None = None, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        if gpus is not None:
            self._state = {"gpus": [dict(g) for g in gpus]}
            self._save()
        elif self.path is None:
            self._state = {"gpus": []}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "FakeNvml":
        return cls(path=path)

    def _load(self) -> dict:
        if self.path is not None:
            self._state = json.loads(self.path.read_text())
        return self._state

    def _save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self._state)  # a reader never sees half a file

    def update(self, index: int, **fields) -> None:
        """Change one GPU (e.g. ``free_mib=1000``, ``error="Xid 79"``, ``error=None``)."""
        state = self._load()
        state["gpus"][index].update(fields)
        self._save()

    def remove(self, index: int) -> None:
        state = self._load()
        del state["gpus"][index]
        self._save()

    def list_gpus(self) -> list[GpuInfo]:
        state = self._load()
        gpus, changed = [], False
        for index, g in enumerate(state["gpus"]):
            uuid = g.get("uuid", f"GPU-fake-{index}")
            name = g.get("name", "Fake GPU")
            if g.get("error"):
                gpus.append(GpuInfo(index, uuid, name, 0, 0, 0, False, str(g["error"])))
                continue
            free = g["free_mib"]
            if isinstance(free, list):  # one value per call, the last one sticks
                if len(free) > 1:
                    g["free_mib"], changed = free[1:], True
                free = free[0]
            total = int(g["total_mib"])
            gpus.append(GpuInfo(index, uuid, name, total, int(free), total - int(free)))
        if changed:
            self._save()
        return gpus

    def process_usage_mib(self) -> dict[str, dict[int, int]]:
        state = self._load()
        return {
            g.get("uuid", f"GPU-fake-{i}"): {int(p): int(m) for p, m in g.get("processes", {}).items()}
            for i, g in enumerate(state["gpus"])
        }


_backend: NvmlBackend | None = None
_backend_lock = threading.Lock()


def set_backend(backend: NvmlBackend | None) -> None:
    """Use ``backend`` in this process (None: back to the default, env var or real NVML)."""
    global _backend
    with _backend_lock:
        _backend = backend


def get_backend() -> NvmlBackend:
    global _backend
    with _backend_lock:
        if _backend is None:
            fake = os.environ.get(FAKE_NVML_ENV)
            _backend = FakeNvml.from_file(fake) if fake else PynvmlBackend()
        return _backend


def list_gpus() -> list[GpuInfo]:
    """All GPUs NVML sees (unhealthy ones included, flagged); [] without NVML. Never raises."""
    try:
        return get_backend().list_gpus()
    except Exception as exc:  # a broken fake file or an NVML surprise must not crash a daemon tick
        log.warning("GPU inventory failed: %s", exc)
        return []


def process_usage_mib() -> dict[str, dict[int, int]]:
    try:
        return get_backend().process_usage_mib()
    except Exception as exc:
        log.debug("GPU process usage failed: %s", exc)
        return {}
