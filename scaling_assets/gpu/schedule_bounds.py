"""How short a schedule of GPU runs can be, and what the run queue's own plan makes of it (no Dagster).

``benchmarks/bench_scheduler.py`` compares its measured makespan with these (OR-Tools and SciPy are
imported only by the functions that need them; OR-Tools comes with the ``bench`` extra):

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
- ``optimal_makespan_s``: the shortest schedule itself, searched by a constraint solver (OR-Tools'
  CP-SAT): each run on one GPU for its whole duration, no GPU's memory over capacity at any time. The
  solver returns the best schedule it found and a lower bound it proved; they meet when it proves the
  schedule optimal. The global constraints it is given besides (all memory, and for the runs of which
  at most three fit a GPU, every valid per-GPU count inequality summed over the GPUs) change no answer;
  they let it prove the bound: without them it proves little more than the longest run.
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

    require_every_job_fits(jobs, capacity_mib)
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


def require_every_job_fits(jobs: Sequence[tuple[int, float]], capacity_mib: int) -> None:
    """No schedule exists if a job needs more than a GPU holds."""
    if any(need > capacity_mib for need, _ in jobs):
        raise ValueError(f"a job needs more than a GPU's {capacity_mib} MiB: no schedule exists")


def large_run_combinations(jobs: Sequence[tuple[int, float]], capacity_mib: int,
                           max_per_gpu: int = 3) -> tuple[list[int], list[tuple[int, ...]]]:
    """The distinct needs of the jobs of which at most ``max_per_gpu`` fit a GPU (need > capacity /
    (max_per_gpu + 1)), ascending, and every multiset of them one GPU holds (indices into that list)."""
    from itertools import combinations_with_replacement

    needs = sorted({need for need, _ in jobs if need * (max_per_gpu + 1) > capacity_mib})
    fits = [c for k in range(1, max_per_gpu + 1)
            for c in combinations_with_replacement(range(len(needs)), k) if sum(needs[i] for i in c) <= capacity_mib]
    return needs, fits


def overlap_lower_bound_s(jobs: Sequence[tuple[int, float]], capacity_mib: int, n_gpus: int,
                          max_per_gpu: int = 3) -> float:
    """The bound of the module doc for the jobs (need MiB, seconds) of which at most ``max_per_gpu`` fit
    on a GPU (need > capacity / (max_per_gpu + 1)); 0 when they all fit at once."""
    from functools import lru_cache

    needs, fits = large_run_combinations(jobs, capacity_mib, max_per_gpu)
    large = [(d, need) for need, d in jobs if need in needs]

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


def optimal_makespan_s(jobs: Sequence[tuple[int, float]], capacity_mib: int, n_gpus: int, *,
                       time_limit_s: float = 60.0, workers: int = 2, resolution_s: float = 0.01,
                       max_per_gpu: int = 3, hint: Sequence[tuple[float, int]] | None = None) -> dict:
    """The module doc's exact search on jobs (need MiB, seconds). Durations are rounded down to
    ``resolution_s``, so ``lower_bound_s`` holds for the true ones; ``makespan_s`` and the schedule are
    the rounded durations' (with the true ones a run may end up to ``resolution_s`` later). Returns ``makespan_s`` (best
    schedule found), ``lower_bound_s`` (proved), ``optimal`` (they meet), ``starts_s`` and ``gpus``
    (the schedule, a start and a GPU index a job) and ``solve_s``. ``hint``: a schedule to start from
    (a start and a GPU a job, e.g. ``replay_plan_s``'s), so what is found is never longer than it."""
    import time
    from itertools import product

    from ortools.sat.python import cp_model

    require_every_job_fits(jobs, capacity_mib)
    ticks = [int(d / resolution_s) for _, d in jobs]
    horizon = sum(ticks)
    model = cp_model.CpModel()
    makespan = model.NewIntVar(max(ticks, default=0), horizon, "makespan")
    starts, on_gpu, per_gpu, everywhere = [], [], [[] for _ in range(n_gpus)], []
    first = max(range(len(jobs)), key=lambda j: jobs[j][0] * ticks[j], default=None)
    for j, ((need, _), d) in enumerate(zip(jobs, ticks)):
        start = model.NewIntVar(0, horizon - d, f"start{j}")
        on = [model.NewBoolVar(f"job{j}_gpu{g}") for g in range(n_gpus)]
        for g in range(n_gpus):
            per_gpu[g].append((model.NewOptionalFixedSizeIntervalVar(start, d, on[g], f"job{j}_on{g}"), need))
        model.AddExactlyOne(on)
        model.Add(makespan >= start + d)
        everywhere.append((model.NewFixedSizeIntervalVar(start, d, f"job{j}"), need))
        starts.append(start)
        on_gpu.append(on)
    if first is not None:
        model.Add(on_gpu[first][0] == 1)  # the GPUs are alike: the largest job may as well be on the first
    for intervals in per_gpu:
        model.AddCumulative([iv for iv, _ in intervals], [need for _, need in intervals], capacity_mib)
    # redundant, for the proof: all memory together, and per-GPU count inequalities of the large runs
    model.AddCumulative([iv for iv, _ in everywhere], [need for _, need in everywhere], capacity_mib * n_gpus)
    large, fits = large_run_combinations(jobs, capacity_mib, max_per_gpu)
    if len(large) <= 3:  # 4^k - 1 weightings; more types would only slow the proof
        for weights in product(range(max_per_gpu + 1), repeat=len(large)):
            most = max((sum(weights[i] for i in c) for c in fits), default=0)
            weight = dict(zip(large, weights))
            chosen = [(iv, weight[need]) for iv, need in everywhere if weight.get(need)]
            if chosen and most:
                model.AddCumulative([iv for iv, _ in chosen], [w for _, w in chosen], most * n_gpus)
    if hint:
        # rename the hint's GPUs so that it agrees with the symmetry rule above (the GPUs are alike)
        rename = {hint[first][1]: 0, 0: hint[first][1]}
        for j, (start_s, gpu) in enumerate(hint):
            model.AddHint(starts[j], round(start_s / resolution_s))  # never earlier than a rounded end
            for g, on in enumerate(on_gpu[j]):
                model.AddHint(on, g == rename.get(gpu, gpu))
    model.Minimize(makespan)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    t0 = time.perf_counter()
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"no schedule found in {time_limit_s} s ({solver.StatusName(status)})")
    found = {"makespan_s": solver.ObjectiveValue() * resolution_s,
             "lower_bound_s": solver.BestObjectiveBound() * resolution_s,
             "optimal": status == cp_model.OPTIMAL,
             "starts_s": [solver.Value(s) * resolution_s for s in starts],
             "gpus": [next(g for g, on in enumerate(ons) if solver.Value(on)) for ons in on_gpu],
             "solve_s": time.perf_counter() - t0}
    hinted_ticks = max((round(s / resolution_s) + d for (s, _), d in zip(hint or (), ticks)), default=None)
    if hinted_ticks is not None and hinted_ticks * resolution_s < found["makespan_s"]:
        # a short time limit can end the search before it has used the hint: the hint is the answer
        found.update(makespan_s=hinted_ticks * resolution_s, starts_s=[s for s, _ in hint],
                     gpus=[g for _, g in hint])
    return found


def replay_plan_s(jobs: Sequence[tuple[int, float, int] | tuple[int, float, int, int]], capacity_mib: int,
                  n_gpus: int, *, reserve_after_s: float, max_reserved_gpus: int = 1, tick_s: float = 1.0,
                  schedule: list | None = None) -> float:
    """Makespan of ``plan_queue`` on jobs (need MiB, seconds, priority[, training-set size N]), all queued
    at time 0, with no launch cost: each plan launches every run it places; time moves to the next run's
    end (or the next ``tick_s``, for the reservations' clocks, while runs wait). ``schedule``, if given,
    gets (start, GPU index) for each job."""
    from scaling_assets.gpu.placement import QueuedGpuRun, plan_queue
    from scaling_assets.gpu.nvml import GpuInfo

    gpus = [GpuInfo(i, f"GPU-replay-{i}", "replay", capacity_mib, capacity_mib, 0) for i in range(n_gpus)]
    available = {g.uuid: capacity_mib for g in gpus}
    queued = {str(i): QueuedGpuRun(str(i), job[0], job[2], 0.0, *job[3:]) for i, job in enumerate(jobs)}
    running: list[tuple[float, str, str]] = []  # (end, run, GPU)
    starts: dict[int, tuple[float, int]] = {}
    now = 0.0
    while queued or running:
        placed: dict[str, str] = {}
        plan_queue(list(queued.values()), gpus, available, now=now, reserve_after_s=reserve_after_s,
                   headroom_mib=0, placed=placed, max_reserved_gpus=max_reserved_gpus)
        for run_id, uuid in placed.items():
            available[uuid] -= queued.pop(run_id).need_mib
            starts[int(run_id)] = (now, int(uuid.rsplit("-", 1)[1]))
            heapq.heappush(running, (now + jobs[int(run_id)][1], run_id, uuid))
        if not running:
            raise RuntimeError("a queued run fits no GPU: the replay cannot end")
        now = min(running[0][0], now + tick_s) if queued else running[0][0]
        while running and running[0][0] <= now:
            _, run_id, uuid = heapq.heappop(running)
            available[uuid] += jobs[int(run_id)][0]
    if schedule is not None:
        schedule[:] = [starts[j] for j in range(len(jobs))]
    return now
