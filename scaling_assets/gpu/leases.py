"""Cross-process GPU device leases: the ledger of memory promised on each GPU.

Files under the lease dir (``$SCALING_ASSETS_LEASE_DIR``, else ``$DAGSTER_HOME/leases``, else
``~/.scaling_assets/leases``):

- ``ledger.lock``: held (``flock``) for the few milliseconds of "read NVML + ledger, decide, write".
- ``lease-<pid>-<n>.json``: a GPU step holding a device. The holder keeps an exclusive ``flock`` on it
  for the step's life; the OS drops that lock when the process dies (even ``kill -9``), and whoever
  next reads the ledger finds the file unlocked and deletes it. Records pid, run id, GPU, promised MiB.
- ``promise-<run_id>.json``: written by the run launcher when it pins a queued run to a GPU, before
  the run's process exists. The run's GPU step replaces it with its lease; the coordinator deletes
  promises of runs that are no longer active, and anyone ignores promises older than ``PROMISE_TTL_S``.
- ``oom-<run_id>.json``: GPUs on which this run hit out-of-memory, so a retried step avoids them.

Accounting rule ("promised memory counts as used until allocated"), per GPU:
    available = NVML free - headroom - sum(outstanding of live leases and promises)
    outstanding(lease) = max(0, promised - max(NVML usage of the holder pid, allocated reported by
                          the holder via Placement.note_allocated(), every 10 s in each GPU step))
    outstanding(promise) = promised (its process has not started its GPU step yet).
When NVML cannot attribute memory to pids (containers with a separate pid namespace) and the holder
does not report, a lease counts fully: conservative (may under-pack) but never oversubscribes.
Several leases per GPU are normal: packing many runs per GPU is the point.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scaling_assets.fs import write_json_atomic
from scaling_assets.gpu import nvml
from scaling_assets.gpu.needs import TAG_DEVICE
from scaling_assets.gpu.nvml import GpuInfo

LEASE_DIR_ENV = "SCALING_ASSETS_LEASE_DIR"
WAIT_ENV = "SCALING_ASSETS_GPU_WAIT_S"
HEADROOM_MIB = 512  # kept free on every GPU: other users, NVML lag, allocator slack
PROMISE_TTL_S = 12 * 3600.0  # backstop only: the coordinator drops promises of ended runs
DEFAULT_WAIT_S = 6 * 3600.0


class GpuUnavailableError(RuntimeError):
    """No GPU could take the step within the wait limit, or the need exceeds every GPU."""


def lease_dir() -> Path:
    if os.environ.get(LEASE_DIR_ENV):
        return Path(os.environ[LEASE_DIR_ENV])
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]) / "leases"
    return Path.home() / ".scaling_assets" / "leases"


@dataclass(frozen=True)
class LeaseRecord:
    """A live lease (kind="lease") or a launcher's promise (kind="promise") on one GPU."""

    kind: str
    path: Path
    gpu_uuid: str
    device: str
    need_mib: int
    run_id: str | None
    pid: int | None
    created: float
    allocated_mib: int = 0

    def outstanding_mib(self, usage: Mapping[str, Mapping[int, int]]) -> int:
        if self.kind == "promise":
            return self.need_mib
        used = usage.get(self.gpu_uuid, {}).get(self.pid or -1, 0)
        return max(0, self.need_mib - max(used, self.allocated_mib))


_counter = itertools.count()


class Lease:
    """A held lease: the open, flock'ed file. ``release()`` (idempotent) deletes it."""

    def __init__(self, path: Path, fd: int, record: LeaseRecord):
        self.path, self._fd, self.record = path, fd, record

    def note_allocated(self, mib: int) -> None:
        data = _record_json(self.record) | {"allocated_mib": int(mib)}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(data).encode(), 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            self.path.unlink()  # while still locked: nobody can mistake it for a dead holder
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1


def _record_json(r: LeaseRecord) -> dict:
    return {
        "gpu_uuid": r.gpu_uuid,
        "device": r.device,
        "need_mib": r.need_mib,
        "run_id": r.run_id,
        "pid": r.pid,
        "created": r.created,
        "allocated_mib": r.allocated_mib,
    }


class Ledger:
    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory else lease_dir()
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator["Ledger"]:
        fd = os.open(self.dir / "ledger.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing drops the flock

    # -- reading -------------------------------------------------------------------------------
    def records(self, now: float | None = None) -> list[LeaseRecord]:
        """Live leases and fresh promises; deletes leases of dead holders and stale promises.
        Call under ``locked()`` so no lease is caught between creation and locking."""
        now = time.time() if now is None else now
        out = []
        for path in sorted(self.dir.glob("lease-*.json")):
            record = self._probe_lease(path)
            if record is not None:
                out.append(record)
        for path in sorted(self.dir.glob("promise-*.json")):
            record = _read(path, "promise")
            if record is None or now - record.created > PROMISE_TTL_S:
                _unlink(path)
            else:
                out.append(record)
        return out

    def _probe_lease(self, path: Path) -> LeaseRecord | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):  # holder alive
                    return _read(path, "lease")
                raise
            _unlink(path)  # we got the lock: the holder is gone (exited or killed)
            return None
        finally:
            os.close(fd)

    def promised_by_gpu(
        self, records: Iterable[LeaseRecord], usage: Mapping[str, Mapping[int, int]] | None = None
    ) -> dict[str, int]:
        usage = nvml.process_usage_mib() if usage is None else usage
        promised: dict[str, int] = {}
        for r in records:
            promised[r.gpu_uuid] = promised.get(r.gpu_uuid, 0) + r.outstanding_mib(usage)
        return promised

    # -- writing -------------------------------------------------------------------------------
    def acquire(self, gpu: GpuInfo, need_mib: int, run_id: str | None) -> Lease:
        """Take a lease (call under ``locked()``); replaces this run's promise, if any."""
        path = self.dir / f"lease-{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}.json"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        record = LeaseRecord(
            "lease", path, gpu.uuid, gpu.device, int(need_mib), run_id, os.getpid(), time.time()
        )
        os.write(fd, json.dumps(_record_json(record)).encode())
        if run_id:
            _unlink(self._promise_path(run_id))
        return Lease(path, fd, record)

    def promise(self, gpu: GpuInfo, need_mib: int, run_id: str) -> None:
        record = LeaseRecord(
            "promise", self._promise_path(run_id), gpu.uuid, gpu.device, need_mib, run_id, None, time.time()
        )
        write_json_atomic(record.path, _record_json(record))

    def drop_promise(self, run_id: str) -> None:
        _unlink(self._promise_path(run_id))

    def _promise_path(self, run_id: str) -> Path:
        return self.dir / f"promise-{run_id}.json"

    def record_oom(self, run_id: str, gpu_uuid: str) -> None:
        path = self.dir / f"oom-{run_id}.json"
        uuids = sorted(self.oom_gpus(run_id) | {gpu_uuid})
        write_json_atomic(path, {"run_id": run_id, "gpu_uuids": uuids, "updated": time.time()})

    def oom_gpus(self, run_id: str | None) -> set[str]:
        if not run_id:
            return set()
        try:
            return set(json.loads((self.dir / f"oom-{run_id}.json").read_text())["gpu_uuids"])
        except (FileNotFoundError, ValueError, KeyError):
            return set()


def _read(path: Path, kind: str) -> LeaseRecord | None:
    try:
        d = json.loads(path.read_text())
        return LeaseRecord(
            kind, path, d["gpu_uuid"], d["device"], int(d["need_mib"]), d.get("run_id"),
            d.get("pid"), float(d["created"]), int(d.get("allocated_mib") or 0),
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None  # half-written (holder killed mid-write) or gone: the probe deletes it next time


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -- placement (shared by the coordinator, the launcher and gpu_step) ------------------------------
def available_mib(gpus: Iterable[GpuInfo], promised: Mapping[str, int], headroom_mib: int) -> dict[str, int]:
    """Healthy GPU uuid -> MiB that can still be promised now."""
    return {
        g.uuid: g.free_mib - headroom_mib - promised.get(g.uuid, 0) for g in gpus if g.healthy
    }


def choose_gpu(
    gpus: Iterable[GpuInfo],
    available: Mapping[str, int],
    need_mib: int,
    exclude: Iterable[str] = (),
    fill: bool = False,
) -> GpuInfo | None:
    """The healthy, non-excluded GPU with the most room that fits ``need_mib`` (spreads load
    across GPUs so concurrent runs share compute evenly), or with ``fill`` the one with the least
    room that fits (best fit: fills the gaps larger runs leave); None if none fits now."""
    excluded = set(exclude)
    fitting = [
        g for g in gpus
        if g.healthy and g.uuid not in excluded and available.get(g.uuid, -1) >= need_mib
    ]
    if fill:
        return min(fitting, key=lambda g: (available[g.uuid], g.index), default=None)
    return max(fitting, key=lambda g: (available[g.uuid], -g.index), default=None)


@dataclass
class Placement:
    device: str  # "cuda:N" or "cpu"
    reason: str
    need_mib: int = 0
    gpu: GpuInfo | None = None
    lease: Lease | None = field(default=None, repr=False)

    def note_allocated(self, mib: int | None = None) -> None:
        """Tell the ledger this step now holds its memory (default: torch's reserved bytes), so its
        promise stops counting twice where NVML cannot attribute memory to pids."""
        if self.lease is None:
            return
        if mib is None:
            import torch

            mib = torch.cuda.memory_reserved(self.device) // (1024 * 1024)
        self.lease.note_allocated(mib)

    @contextmanager
    def reporting(self, every_s: float = 10.0) -> Iterator[None]:
        """While the step runs on its GPU, report what torch holds every ``every_s`` seconds
        (``note_allocated``), so the ledger stops counting that memory as still promised."""
        if self.lease is None or not self.device.startswith("cuda:"):
            yield
            return
        import threading

        stop = threading.Event()

        def report() -> None:
            while not stop.wait(every_s):
                self.note_allocated()

        thread = threading.Thread(target=report, name="gpu-allocation-report", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return "OutOfMemoryError" in text or "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text


@contextmanager
def gpu_step(
    run_tags: Mapping[str, str],
    need_mib: int,
    log: Callable[[str], object] = print,
    *,
    run_id: str | None = None,
    timeout_s: float | None = None,
    poll_s: float = 5.0,
    headroom_mib: int = HEADROOM_MIB,
    ledger: Ledger | None = None,
) -> Iterator[Placement]:
    """Hold a device for one GPU step; yields a ``Placement`` (``.device`` is "cuda:N" or "cpu").

    Pass ``run_id=context.run_id``: it ties the step to its run's promise and OOM history.
    Coordinator-launched runs use the GPU pinned by the run tag ``TAG_DEVICE``; other runs (CLI
    ``dagster asset materialize``) pick a GPU with room by the ledger, waiting (polling every
    ``poll_s``, up to ``timeout_s``, default ``$SCALING_ASSETS_GPU_WAIT_S`` or 6 h) while none has.
    No NVML / no healthy GPU -> "cpu", said in the log. On out-of-memory the GPU is recorded for
    ``run_id`` so the retried step (``assets/devices.py: oom_retry_policy``) prefers another GPU. The lease is released
    at exit; if the process dies, the OS releases it.
    """
    if need_mib <= 0:
        yield Placement("cpu", "the step declares no GPU need")
        return
    gpus = nvml.list_gpus()
    healthy = [g for g in gpus if g.healthy]
    if not healthy:
        why = "no GPU / NVML not available" if not gpus else "all GPUs report errors"
        log(f"{why}: running on CPU (step needs ~{need_mib} MiB of GPU memory)")
        yield Placement("cpu", why, need_mib)
        return
    # cuda:N must mean NVML index N; set before torch initialises CUDA.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        log(f"warning: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} renumbers devices")

    ledger = ledger or Ledger()
    placement = _place(ledger, run_tags, need_mib, log, run_id, timeout_s, poll_s, headroom_mib)
    log(f"GPU step on {placement.device}: {placement.reason}")
    try:
        yield placement
    except BaseException as exc:
        if placement.gpu is not None and run_id and is_oom(exc):
            ledger.record_oom(run_id, placement.gpu.uuid)
            log(f"out of memory on {placement.device}: a retry of this run will avoid it if it can")
        raise
    finally:
        if placement.lease is not None:
            return_cached_memory(placement.device)
            placement.lease.release()


def return_cached_memory(device: str) -> None:
    """Give the GPU back what torch's caching allocator still holds for tensors no longer used, before
    the lease that promised that memory ends. Otherwise the run's next step (its embeddings after its
    model, in the same process) keeps the training's blocks under a smaller lease: measured on an H200,
    Geneformer's embedding step still held the 17,596 MiB its training had reserved, under a 1,984 MiB lease."""
    torch = sys.modules.get("torch")  # a step that never imported torch holds no CUDA memory
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_initialized():
        return
    gc.collect()  # the step's tensors that only a reference cycle still holds
    torch.cuda.empty_cache()


def _place(ledger, run_tags, need_mib, log, run_id, timeout_s, poll_s, headroom_mib) -> Placement:
    if timeout_s is None:
        timeout_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    deadline = time.monotonic() + timeout_s
    pinned = run_tags.get(TAG_DEVICE, "")
    last_wait_msg = None
    while True:
        gpus = [g for g in nvml.list_gpus() if g.healthy]
        if not gpus:
            raise GpuUnavailableError("all GPUs disappeared or report errors while waiting")
        excluded = ledger.oom_gpus(run_id)
        if excluded >= {g.uuid for g in gpus}:
            excluded = set()  # OOM'd everywhere: retry "later" anywhere rather than never
        largest = max(g.total_mib for g in gpus if g.uuid not in excluded) - headroom_mib
        if need_mib > largest:
            raise GpuUnavailableError(
                f"step needs {need_mib} MiB but the largest usable GPU offers {largest} MiB"
            )
        with ledger.locked():
            records = ledger.records()
            others = [r for r in records if not (run_id and r.run_id == run_id)]
            available = available_mib(gpus, ledger.promised_by_gpu(others), headroom_mib)
            pin = next((g for g in gpus if g.device == pinned and g.uuid not in excluded), None)
            # The pin holds if the launcher's promise for this run still reserves the memory, or if
            # the GPU has room now (a later GPU step of the same run, after the first one's lease
            # replaced the promise). Without run_id the promise can't be told apart: trust the pin.
            own_promise = any(r.kind == "promise" and r.run_id == run_id for r in records)
            if pin is not None and (not run_id or own_promise or available[pin.uuid] >= need_mib):
                return Placement(
                    pin.device, f"pinned by the run coordinator ({TAG_DEVICE}={pinned})", need_mib,
                    pin, ledger.acquire(pin, need_mib, run_id),
                )
            gpu = choose_gpu(gpus, available, need_mib, excluded)
            if gpu is not None:
                why = f"{available[gpu.uuid]} MiB available (free minus promised), need {need_mib}"
                if pinned.startswith("cuda:"):
                    why += f"; pinned {pinned} not usable now (no room, lost, erroring or OOM before)"
                return Placement(gpu.device, why, need_mib, gpu, ledger.acquire(gpu, need_mib, run_id))
        msg = "waiting for a GPU with %d MiB: %s" % (
            need_mib, ", ".join(f"{g.device} {available.get(g.uuid, 0)} MiB" for g in gpus)
        )
        if msg != last_wait_msg:
            log(msg)
            last_wait_msg = msg
        if time.monotonic() + poll_s > deadline:
            raise GpuUnavailableError(f"no GPU had {need_mib} MiB free within {timeout_s:.0f} s")
        time.sleep(poll_s)

