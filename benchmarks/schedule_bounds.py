"""How short a schedule of GPU runs can be, and what the run queue's own plan makes of it (no Dagster).

``bench_scheduler.py`` compares its measured makespan with these:

- ``memory_area_s``: sum need x duration / total usable memory; with the longest run, the issue's bound.
  It treats GPU memory as one fluid pool. With Geneformer runs of 24-30 GB on 80 GB GPUs it is far
  from reachable: two 29,888-MiB runs leave 21,632 MiB on a GPU that no third Geneformer run can use.
- ``packing_lower_bound_s``: the configuration LP of the same runs. A GPU at any moment holds some
  multiset of runs whose needs fit in its memory (a configuration); the runs' durations must be covered
  by configurations running on ``n_gpus`` GPUs. Minimising the time spent, with runs allowed to pause
  and move (a relaxation), is a linear programme solved here by column generation (each new column is
  an unbounded knapsack over the need types). No real schedule ends sooner. It is never below the
  memory-area bound and is combined with the longest run.
- ``overlap_lower_bound_s``: what the runs that cannot share a GPU more than three at a time force,
  without letting them pause. At most ``c`` of them fit on the GPUs at once; among the ``c + 1`` longest,
  two never run at the same time (intervals that meet pairwise all meet at one point, where ``c + 1``
  would run), so the makespan is at least the sum of the two shortest of those. Neither it nor the
  bounds above is always the larger: it sees that runs do not pause, which the LP relaxes, but only the
  large runs.
- ``replay_plan_s``: the makespan of the coordinator's own ``plan_queue`` (packing order, GPU choice,
  reservations) replayed on the same runs with zero launch cost and instant ticks: the policy's result
  without Dagster, so a measured makespan above it is the machinery's cost.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Sequence

MIB_UNIT = 64  # needs are rounded up to 64 MiB for the knapsack (estimates are multiples of 64 already)


def memory_area_s(jobs: Sequence[tuple[int, float]], capacity_mib: int, n_gpus: int) -> float:
    """sum need x duration / (n_gpus x capacity): the makespan if memory were one fluid pool; jobs:
    (need MiB, seconds)."""
    return sum(need * d for need, d in jobs) / (capacity_mib * n_gpus)


def _best_configuration(sizes: list[int], values: list[float], capacity: int) -> tuple[float, list[int]]:
    """Unbounded knapsack: how many of each size to put in ``capacity`` to maximise the total value."""
    best = [0.0] * (capacity + 1)
    take = [-1] * (capacity + 1)
    for c in range(1, capacity + 1):
        best[c], take[c] = best[c - 1], -1
        for t, (size, value) in enumerate(zip(sizes, values)):
            if size <= c and best[c - size] + value > best[c]:
                best[c], take[c] = best[c - size] + value, t
    counts, c = [0] * len(sizes), capacity
    while c > 0:
        if take[c] == -1:
            c -= 1
        else:
            counts[take[c]] += 1
            c -= sizes[take[c]]
    return best[capacity], counts


def packing_lower_bound_s(jobs: Sequence[tuple[int, float]], capacity_mib: int, n_gpus: int) -> float:
    """The configuration-LP lower bound on the makespan (module doc), at least the longest job."""
    from scipy.optimize import linprog
    import numpy as np

    if any(need > capacity_mib for need, _ in jobs):
        raise ValueError(f"a job needs more than a GPU's {capacity_mib} MiB: no schedule exists")
    seconds: dict[int, float] = defaultdict(float)
    for need, d in jobs:
        seconds[max(1, math.ceil(need / MIB_UNIT))] += d
    sizes = sorted(seconds)
    demand = np.array([seconds[s] for s in sizes])
    capacity = capacity_mib // MIB_UNIT
    columns = [[int(i == j) for j in range(len(sizes))] for i in range(len(sizes))]  # one job type alone
    for _ in range(10_000):
        lp = linprog(np.ones(len(columns)), A_ub=-np.array(columns, dtype=float).T, b_ub=-demand,
                     bounds=(0, None), method="highs")
        if lp.status != 0:
            raise RuntimeError(f"configuration LP failed: {lp.message}")
        prices = [max(0.0, -m) for m in lp.ineqlin.marginals]  # seconds of GPU time per second of a job type
        value, counts = _best_configuration(sizes, prices, capacity)
        if value <= 1 + 1e-9:  # no configuration is worth more than the GPU time it takes: optimal
            return max(lp.fun / n_gpus, max((d for _, d in jobs), default=0.0))
        columns.append(counts)
    raise RuntimeError("configuration LP did not converge")


def overlap_lower_bound_s(jobs: Sequence[tuple[int, float]], capacity_mib: int, n_gpus: int,
                          max_per_gpu: int = 3) -> float:
    """The bound of the module doc for the jobs (need MiB, seconds) of which at most ``max_per_gpu`` fit
    on a GPU (need > capacity / (max_per_gpu + 1)); 0 when they all fit at once."""
    from functools import lru_cache
    from itertools import combinations_with_replacement

    large = [(d, need) for need, d in jobs if need * (max_per_gpu + 1) > capacity_mib]
    needs = sorted({need for _, need in large})
    fits = [c for k in range(1, max_per_gpu + 1)
            for c in combinations_with_replacement(range(len(needs)), k) if sum(needs[i] for i in c) <= capacity_mib]

    @lru_cache(maxsize=None)
    def most_at_once(gpus: int, left: tuple[int, ...]) -> int:  # over the GPUs, what one GPU can hold
        best = 0
        if gpus:
            best = most_at_once(gpus - 1, left)
            for c in fits:
                rest = list(left)
                for i in c:
                    rest[i] -= 1
                if min(rest) >= 0:
                    best = max(best, len(c) + most_at_once(gpus - 1, tuple(rest)))
        return best

    at_once = most_at_once(n_gpus, tuple(sum(need == n for _, need in large) for n in needs))
    longest = sorted((d for d, _ in large), reverse=True)
    return longest[at_once - 1] + longest[at_once] if len(longest) > at_once >= 1 else 0.0


def replay_plan_s(jobs: Sequence[tuple[int, float, int] | tuple[int, float, int, int]], capacity_mib: int,
                  n_gpus: int, *, reserve_after_s: float, max_reserved_gpus: int = 1, tick_s: float = 1.0) -> float:
    """Makespan of ``plan_queue`` on jobs (need MiB, seconds, priority[, training-set size N]), all queued
    at time 0, with no launch cost: each plan launches every run it places; time moves to the next run's
    end (or the next ``tick_s``, for the reservations' clocks, while runs wait)."""
    from scaling_assets.compute.coordinator import QueuedGpuRun, plan_queue
    from scaling_assets.gpu.nvml import GpuInfo

    gpus = [GpuInfo(i, f"GPU-replay-{i}", "replay", capacity_mib, capacity_mib, 0) for i in range(n_gpus)]
    available = {g.uuid: capacity_mib for g in gpus}
    queued = {str(i): QueuedGpuRun(str(i), job[0], job[2], 0.0, *job[3:]) for i, job in enumerate(jobs)}
    running: list[tuple[float, str, str]] = []  # (end, run, GPU)
    now = 0.0
    while queued or running:
        placed: dict[str, str] = {}
        plan_queue(list(queued.values()), gpus, available, now=now, reserve_after_s=reserve_after_s,
                   headroom_mib=0, placed=placed, max_reserved_gpus=max_reserved_gpus)
        for run_id, uuid in placed.items():
            available[uuid] -= queued.pop(run_id).need_mib
            heapq.heappush(running, (now + jobs[int(run_id)][1], run_id, uuid))
        if not running:
            raise RuntimeError("a queued run fits no GPU: the replay cannot end")
        now = min(running[0][0], now + tick_s) if queued else running[0][0]
        while running and running[0][0] <= now:
            _, run_id, uuid = heapq.heappop(running)
            available[uuid] += jobs[int(run_id)][0]
    return now
