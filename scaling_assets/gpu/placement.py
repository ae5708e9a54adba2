"""Where queued GPU runs go: the run queue's plan, without Dagster (``compute/coordinator.py`` applies it
to Dagster's queue; ``benchmarks/schedule_bounds.py`` replays it).

Queue order and starvation: the plan walks queued GPU runs by ``dagster/priority`` descending (the
cost rank of the model a run trains: Geneformer's first), then the largest training set N first (its
setting partition ``n=<N>_...``: larger sets train longer, as the H200 fits measured, 2 s at N = 100
and 80-110 s at 25,600 for SCVI, so the longest runs start first and do not end the study alone),
then the largest need, then oldest first, and notes the GPU it packs each on; the launcher puts the
run there if it still fits (so the daemon's FIFO launch order does not undo the packing). Where a run
goes (``pick_gpu``): every run goes to the fullest GPU it fits on (best fit), into the gaps beside the
runs already there, keeping room whole for the next large run; but while the queue holds no more large
runs (``PACK_BELOW_MIB`` or more: Geneformer's at the paper's gene counts) than there are idle GPUs
(``IDLE_FRACTION`` of their memory available), each large run takes an idle GPU of its own, so that a
few of them do not share one GPU's compute while others idle (the launcher, for a run whose planned
GPU filled up, spreads a large run the same way). Against the previous order (largest need first,
every run to the emptiest GPU), the plan replayed on 20 draws of the 200-run bench
(``bench_scheduler.py --bounds-only 20``) ends 1.43x -> 1.32x the memory-area bound on average (1.25x ->
1.15x the packing bound), with 83% -> 89% of GPU memory promised while runs queued.
A run that does not fit is skipped, so smaller runs behind it may use the room (backfill). Once a
skipped run has waited ``reserve_after_s`` (the coordinator's ``reserve_after_seconds``), the GPU
closest to fitting it is reserved: no run after it in the order is placed there, so that GPU drains
until it fits. At most ``max_reserved_gpus`` GPUs (default 1) are reserved at once, for the first such
runs in the order; the others wait their turn. Reserving one GPU per waiting run stopped the whole box:
with the calibrated Geneformer needs (24-30 GB), the 200-run bench had 20+ Geneformer runs waiting, each
reserved a GPU, all 8 were reserved and 125 runs, most of them small enough to fit, waited ~7 minutes at
77% of GPU memory promised. Runs larger than every GPU are held with a reason and reserve nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scaling_assets.gpu import nvml
from scaling_assets.gpu.leases import HEADROOM_MIB, Ledger, available_mib, choose_gpu
from scaling_assets.gpu.nvml import GpuInfo

# Large runs (this or more) get an idle GPU each while they are no more than the idle GPUs (module
# doc). At the paper's ~20,000 genes PCA, random projection and SCVI runs need 1.2-2.8 GiB and
# Geneformer's 24 GiB (needs.py); under ~3,000 genes a Geneformer run is small too and is packed.
PACK_BELOW_MIB = 4096
IDLE_FRACTION = 0.95  # a GPU with this share of its usable memory available counts as idle


@dataclass(frozen=True)
class QueuedGpuRun:
    run_id: str
    need_mib: int
    priority: int = 0
    queued_at: float = 0.0
    cells: int = 0  # the training-set size N of the run's setting partition (0: not a setting run)


def idle_gpus(gpus: Sequence[GpuInfo], available: Mapping[str, int], headroom_mib: int) -> list[GpuInfo]:
    """The GPUs with at least ``IDLE_FRACTION`` of their usable memory available."""
    return [g for g in gpus if available.get(g.uuid, 0) >= IDLE_FRACTION * (g.total_mib - headroom_mib)]


def pick_gpu(gpus: Sequence[GpuInfo], available: Mapping[str, int], need_mib: int, headroom_mib: int,
             exclude: set[str] = frozenset(), spread_large: bool = True) -> GpuInfo | None:
    """Where a run goes (module doc): with ``spread_large``, a large run (``PACK_BELOW_MIB`` or more) to
    the idle GPU with the most room while there is one; otherwise the fullest GPU it fits on (best
    fit); None if none fits."""
    if spread_large and need_mib >= PACK_BELOW_MIB:
        gpu = choose_gpu(idle_gpus(gpus, available, headroom_mib), available, need_mib, exclude=exclude)
        if gpu is not None:
            return gpu
    return choose_gpu(gpus, available, need_mib, exclude=exclude, fill=True)


def plan_queue(
    queued: Sequence[QueuedGpuRun],
    gpus: Sequence[GpuInfo],
    available: Mapping[str, int],
    *,
    now: float,
    reserve_after_s: float,
    headroom_mib: int = HEADROOM_MIB,
    placed: dict[str, str] | None = None,
    max_reserved_gpus: int = 1,
) -> dict[str, str]:
    """Which queued GPU runs must wait now: ``{run_id: reason}``; the others fit and may launch
    (``placed``, if given, gets ``{run_id: GPU uuid}`` for them: where the launcher should put them).
    Pure function of the queue, the inventory and the per-GPU available MiB (see module doc)."""
    avail = dict(available)
    reserved: set[str] = set()
    held: dict[str, str] = {}
    healthy = [g for g in gpus if g.healthy]
    # large runs get a GPU each only while the idle GPUs are enough for all of them (module doc)
    spread_large = sum(r.need_mib >= PACK_BELOW_MIB for r in queued) <= len(idle_gpus(healthy, avail, headroom_mib))
    # Priority (the model's cost rank) desc, then the largest training set first, then the largest
    # need, then FIFO: see the module doc.
    for run in sorted(queued, key=lambda r: (-r.priority, -r.cells, -r.need_mib, r.queued_at)):
        gpu = pick_gpu(healthy, avail, run.need_mib, headroom_mib, exclude=reserved, spread_large=spread_large)
        if gpu is not None:
            avail[gpu.uuid] -= run.need_mib
            if placed is not None:
                placed[run.run_id] = gpu.uuid
            continue
        could_fit = [
            g for g in healthy if g.uuid not in reserved and g.total_mib - headroom_mib >= run.need_mib
        ]
        if not could_fit:
            biggest = max((g.total_mib - headroom_mib for g in healthy), default=0)
            held[run.run_id] = f"needs {run.need_mib} MiB, more than any usable GPU ({biggest} MiB)"
            continue
        waited = now - run.queued_at
        if waited >= reserve_after_s and len(reserved) < max_reserved_gpus:
            target = max(could_fit, key=lambda g: avail.get(g.uuid, 0))
            reserved.add(target.uuid)
            held[run.run_id] = (
                f"waiting for {run.need_mib} MiB; {target.device} reserved for it "
                f"(queued {waited:.0f} s)"
            )
        elif waited >= reserve_after_s:
            held[run.run_id] = (f"waiting for {run.need_mib} MiB; queued {waited:.0f} s, behind the "
                                f"run(s) that {len(reserved)} reserved GPU(s) drain for")
        else:
            held[run.run_id] = f"waiting for a GPU with {run.need_mib} MiB free"
    return held


def place_run(run_id: str, need_mib: int, headroom_mib: int = HEADROOM_MIB, ledger: Ledger | None = None,
              planned_uuid: str | None = None):
    """Pick the GPU for a run about to launch and write its promise. Returns (GpuInfo|None, reason).
    ``planned_uuid``: the GPU the queue's plan packed the run on, taken if it still has room."""
    gpus = [g for g in nvml.list_gpus() if g.healthy]
    if not gpus:
        return None, "no usable GPU: the run's GPU steps will run on CPU"
    ledger = ledger or Ledger()
    with ledger.locked():
        records = [r for r in ledger.records() if r.run_id != run_id]
        available = available_mib(gpus, ledger.promised_by_gpu(records), headroom_mib)
        planned = [g for g in gpus if g.uuid == planned_uuid and available[g.uuid] >= need_mib]
        gpu = planned[0] if planned else pick_gpu(gpus, available, need_mib, headroom_mib)
        if gpu is not None:
            reason = f"{available[gpu.uuid]} MiB available, need {need_mib}" + (" (as planned)" if planned else "")
        else:  # admitted by the queue but overtaken by a CLI run: take the roomiest, its lease waits
            gpu = max(gpus, key=lambda g: available[g.uuid])
            reason = f"no GPU fits {need_mib} MiB right now; best is {available[gpu.uuid]} MiB"
        ledger.promise(gpu, need_mib, run_id)
    return gpu, reason
