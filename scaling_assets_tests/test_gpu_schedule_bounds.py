"""The makespan bounds ``benchmarks/bench_scheduler.py`` judges the GPU queue by (``gpu/schedule_bounds.py``)."""

import pytest

from scaling_assets.gpu.schedule_bounds import (
    memory_area_s, optimal_makespan_s, overlap_lower_bound_s, packing_lower_bound_s, replay_plan_s)

GPU = 81408  # an 80 GB GPU less the coordinator's 512-MiB headroom
GENEFORMER_20K, GENEFORMER_25K = 24384, 29888  # needs.py at 20,000 and 25,000 genes


def test_packing_bound_sees_that_two_thirds_of_a_gpu_cannot_hold_two_runs():
    jobs = [(int(0.6 * GPU), 1.0)] * 3
    assert memory_area_s(jobs, GPU, 1) == pytest.approx(1.8, abs=1e-3)  # memory as a fluid
    assert packing_lower_bound_s(jobs, GPU, 1) == pytest.approx(3.0)  # one at a time, in truth


def test_packing_bound_of_the_geneformer_mix_is_the_configuration_lp_optimum():
    # A GPU holds {2 x 25k-gene}, {1 x 25k + 2 x 20k} or {3 x 20k} Geneformer runs. Covering 2 s of the
    # first and 3 s of the second: 1.5 s of {25k, 20k, 20k} and 0.25 s of {25k, 25k} = 1.75 s (by hand:
    # min x1+x2+x3 s.t. 2 x1 + x2 >= 2, 2 x2 + 3 x3 >= 3), above the memory-area bound of 1.633 s.
    jobs = [(GENEFORMER_25K, 1.0)] * 2 + [(GENEFORMER_20K, 1.0)] * 3
    assert memory_area_s(jobs, GPU, 1) == pytest.approx((2 * GENEFORMER_25K + 3 * GENEFORMER_20K) / GPU)
    assert packing_lower_bound_s(jobs, GPU, 1) == pytest.approx(1.75)
    # the queue's plan (largest first) runs the two 25k runs, then the three 20k ones: 2 s, no pausing
    assert replay_plan_s([(need, d, 0) for need, d in jobs], GPU, 1, reserve_after_s=60) == pytest.approx(2.0)


def test_packing_bound_is_the_area_bound_when_runs_tile_the_gpus_and_the_longest_run_when_it_dominates():
    assert packing_lower_bound_s([(GPU // 4, 2.0)] * 16, GPU, 2) == pytest.approx(4.0)
    assert packing_lower_bound_s([(1024, 10.0)] + [(1024, 1.0)] * 5, GPU, 2) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="more than a GPU"):
        packing_lower_bound_s([(GPU + 64, 1.0)], GPU, 1)


def test_replay_runs_the_plan_in_its_priority_order():
    # on 2 GPUs, four half-GPU runs of priority 1 and a 5-s whole-GPU run of priority 0: the plan
    # spreads the four over both GPUs first, so the big one starts at 1 s and ends at 6 s (taken first
    # it would have ended at 5 s, the small runs sharing the other GPU)
    jobs = [(GPU // 2, 1.0, 1)] * 4 + [(GPU, 5.0, 0)]
    assert replay_plan_s(jobs, GPU, 2, reserve_after_s=60) == pytest.approx(6.0)
    assert replay_plan_s([(n, d, 1 - p) for n, d, p in jobs], GPU, 2, reserve_after_s=60) == pytest.approx(5.0)


def test_replay_starts_the_largest_training_set_first():
    """Two GPUs, three runs that each fill one: the 10-s run of the largest N starts first and the two
    1-s runs share the other GPU (10 s); without N (FIFO) the short runs take both GPUs first (11 s)."""
    jobs = [(GPU, 1.0, 0, 100), (GPU, 1.0, 0, 200), (GPU, 10.0, 0, 25600)]
    assert replay_plan_s(jobs, GPU, 2, reserve_after_s=60) == pytest.approx(10.0)
    assert replay_plan_s([job[:3] for job in jobs], GPU, 2, reserve_after_s=60) == pytest.approx(11.0)


def test_overlap_bound_counts_the_geneformer_runs_that_fit_at_once():
    # 2 GPUs hold at most 5 of these 6 at once (e.g. {25k, 20k, 20k} and {25k, 25k}; no GPU holds three 25k
    # runs): two of them run one after the other, so at least the two shortest, 4 + 3 s
    jobs = [(GENEFORMER_25K, 5.0), (GENEFORMER_25K, 5.0), (GENEFORMER_25K, 4.0),
            (GENEFORMER_20K, 5.0), (GENEFORMER_20K, 4.0), (GENEFORMER_20K, 3.0)]
    assert overlap_lower_bound_s(jobs, GPU, 2) == pytest.approx(4.0 + 3.0)
    # the configuration LP lets runs pause and move: it sees only the longest run
    assert packing_lower_bound_s(jobs, GPU, 2) == pytest.approx(5.0)
    assert overlap_lower_bound_s(jobs[:5], GPU, 2) == 0.0  # all fit at once: nothing forced
    assert overlap_lower_bound_s([(1216, 100.0)] * 50, GPU, 1) == 0.0  # small runs are not its business


def assert_schedule_fits(jobs, result, capacity_mib, n_gpus):
    """No GPU holds more than its memory at any start, and the last run ends at the makespan."""
    assert all(0 <= g < n_gpus for g in result["gpus"])
    spans = [(start, start + d, need, g) for (need, d), start, g in zip(jobs, result["starts_s"], result["gpus"])]
    for t, _, _, gpu in spans:
        held = sum(need for s, e, need, g in spans if g == gpu and s <= t + 1e-9 and e > t + 1e-9)
        assert held <= capacity_mib, f"{held} MiB on GPU {gpu} at {t} s"
    assert max(e for _, e, _, _ in spans) == pytest.approx(result["makespan_s"])


def test_optimal_makespan_is_proven_where_every_bound_falls_short():
    # One GPU holds {25k, 25k}, {25k, 20k, 20k} or {20k, 20k, 20k}. Two 3-s 25k runs and 20k runs of 3, 1, 1
    # and 1 s: while the 25k runs overlap nothing else fits, so the 3-s 20k run runs before the later one
    # starts (which then ends at >= 6 s) or after the earlier one ends (>= 6 s); apart they take 6 s too.
    jobs = [(GENEFORMER_25K, 3.0)] * 2 + [(GENEFORMER_20K, 1.0)] * 3 + [(GENEFORMER_20K, 3.0)]
    result = optimal_makespan_s(jobs, GPU, 1, time_limit_s=30)
    assert result["optimal"]
    assert result["makespan_s"] == pytest.approx(6.0) and result["lower_bound_s"] == pytest.approx(6.0)
    assert_schedule_fits(jobs, result, GPU, 1)
    assert packing_lower_bound_s(jobs, GPU, 1) == pytest.approx(4.5)  # runs may pause there
    assert overlap_lower_bound_s(jobs, GPU, 1) == pytest.approx(4.0)  # it sees only the two longest
    # the queue's plan without durations (FIFO among equals) starts the 1-s runs first: 7 s; the search
    # started from that schedule still finds 6 s
    plan: list = []
    assert replay_plan_s([(need, d, 0) for need, d in jobs], GPU, 1, reserve_after_s=60, schedule=plan) == pytest.approx(7.0)
    assert_schedule_fits(jobs, {"starts_s": [s for s, _ in plan], "gpus": [g for _, g in plan], "makespan_s": 7.0}, GPU, 1)
    assert optimal_makespan_s(jobs, GPU, 1, time_limit_s=30, hint=plan)["makespan_s"] == pytest.approx(6.0)


def test_optimal_makespan_runs_whole_waves_of_runs_that_fit_a_gpu_alone():
    # five 1-s runs of 60% of a GPU on two GPUs: two at a time, three waves, though the LP (2.5 s) and the
    # overlap bound (2 s: it sees two of the three longest in sequence) would allow less
    jobs = [(int(0.6 * GPU), 1.0)] * 5
    result = optimal_makespan_s(jobs, GPU, 2, time_limit_s=30)
    assert result["optimal"] and result["makespan_s"] == pytest.approx(3.0)
    assert_schedule_fits(jobs, result, GPU, 2)
    assert packing_lower_bound_s(jobs, GPU, 2) == pytest.approx(2.5)
    assert overlap_lower_bound_s(jobs, GPU, 2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="more than a GPU"):
        optimal_makespan_s([(GPU + 64, 1.0)], GPU, 1)
