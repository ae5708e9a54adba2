"""The GPU-aware run queue: the pure queue plan, and the coordinator + launcher inside a real Dagster
instance whose QueuedRunCoordinatorDaemon dequeues real runs (each its own subprocess) against a
file-backed fake NVML shared with those subprocesses."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from dagster import Definitions, job, op

from scaling_assets.gpu import nvml
from scaling_assets.compute.coordinator import TAG_GATE, GpuAwareRunCoordinator, GpuAwareRunLauncher, _cells
from scaling_assets.compute.run_labels import TAG_RUN, TAG_STEPS
from scaling_assets.gpu.leases import Ledger, choose_gpu, gpu_step
from scaling_assets.gpu.needs import TAG_DEVICE, TAG_GPU_NEED, TAG_PRIORITY, gpu_need_mib
from scaling_assets.gpu.nvml import FakeNvml, GpuInfo
from scaling_assets.gpu.placement import PACK_BELOW_MIB, QueuedGpuRun, pick_gpu, place_run, plan_queue

INSTANCE_YAML = Path(__file__).parents[1] / "dagster.yaml"  # the instance the README's commands use


# -- a tiny job whose step takes a device lease, as the lead's GPU assets will -------------------
@op
def gpu_op(context):
    need = int(context.run.tags.get(TAG_GPU_NEED, "0"))
    out = Path(os.environ["COMPUTE_TEST_OUT"])
    with gpu_step(context.run.tags, need, log=context.log.info, run_id=context.run_id, timeout_s=60) as p:
        (out / f"{context.run_id}.placed").write_text(p.device)
        deadline = time.time() + 60  # hold the lease until the test says go
        while not (out / "go").exists() and time.time() < deadline:
            time.sleep(0.1)


@job
def gpu_job():
    gpu_op()


defs = Definitions(jobs=[gpu_job])


# -- the plan ----------------------------------------------------------------------------------
def _gpu(i, total, free=None, healthy=True):
    free = total if free is None else free
    return GpuInfo(i, f"G{i}", "fake", total, free, total - free, healthy, None if healthy else "lost")


def test_the_gpu_package_and_the_queue_plan_import_no_dagster():
    """``gpu/`` (placement included) is Dagster-free: the benchmarks that replay the plan need no Dagster."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, scaling_assets.gpu as gpu\n"
            "for m in pkgutil.iter_modules(gpu.__path__): importlib.import_module('scaling_assets.gpu.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "[]", out.stdout


def test_plan_places_in_priority_order_and_backfills():
    gpus = [_gpu(0, 16000), _gpu(1, 8000), _gpu(2, 80000, healthy=False)]
    available = {"G0": 10000, "G1": 6000}
    queued = [
        QueuedGpuRun("big", 12000, 0, queued_at=100),
        QueuedGpuRun("a", 5000, 0, queued_at=101),
        QueuedGpuRun("b", 5000, 0, queued_at=102),
        QueuedGpuRun("c", 3000, 0, queued_at=103),
        QueuedGpuRun("urgent", 4000, 5, queued_at=104),
    ]
    held = plan_queue(queued, gpus, available, now=110, reserve_after_s=600, headroom_mib=0)
    # urgent first -> G0 (6000 left); big does not fit (young: no reservation); a -> G0; b -> G1;
    # c fits nowhere (G0 1000, G1 1000)
    assert set(held) == {"big", "c"}
    assert "waiting for a GPU with 12000 MiB" in held["big"]


def test_plan_reserves_a_gpu_for_a_long_waiting_large_run():
    gpus = [_gpu(0, 16000), _gpu(1, 16000)]
    available = {"G0": 9000, "G1": 4000}
    queued = [QueuedGpuRun("big", 12000, 0, queued_at=0)] + [
        QueuedGpuRun(f"small{i}", 3000, 0, queued_at=1 + i) for i in range(5)
    ]
    young = plan_queue(queued, gpus, available, now=10, reserve_after_s=600, headroom_mib=0)
    assert set(young) == {"big", "small4"}  # small runs backfill what big cannot use yet
    old = plan_queue(queued, gpus, available, now=1000, reserve_after_s=600, headroom_mib=0)
    # G0 (closest to fitting) is reserved for "big": small runs may only use G1
    assert "G0" not in str(old) and "cuda:0 reserved" in old["big"]
    assert set(old) == {"big", "small1", "small2", "small3", "small4"}


def test_plan_reserves_one_gpu_at_a_time_so_the_others_keep_packing():
    """8 GPUs each with room for small runs but not for a 24-GB Geneformer run, 10 of those waiting long:
    one GPU drains for the first of them, the small runs use the other seven (before: all 8 reserved,
    nothing placed: bench_scheduler.py's 200-run workload stood 7 minutes at 77% promised)."""
    gpus = [_gpu(i, 81920) for i in range(8)]
    available = {f"G{i}": 18000 for i in range(8)}
    queued = ([QueuedGpuRun(f"gf{i}", 24384, 0, queued_at=i) for i in range(10)]
              + [QueuedGpuRun(f"pca{i}", 1216, 0, queued_at=100 + i) for i in range(40)])
    placed: dict[str, str] = {}
    held = plan_queue(queued, gpus, available, now=1000, reserve_after_s=60, headroom_mib=0, placed=placed)
    assert "reserved for it" in held["gf0"] and all(f"gf{i}" in held for i in range(10))
    assert "behind the run(s) that 1 reserved GPU(s) drain for" in held["gf1"]
    # every PCA run, none on the reserved GPU; best fit: as many on a GPU as fit (18000 // 1216 = 14)
    assert Counter(placed.values()) == {"G1": 14, "G2": 14, "G3": 12}
    everyone_reserves = plan_queue(queued, gpus, available, now=1000, reserve_after_s=60, headroom_mib=0,
                                   max_reserved_gpus=8)
    assert all(f"pca{i}" in everyone_reserves for i in range(40))  # the old behaviour: the box stands still


def test_plan_starts_the_largest_training_sets_first():
    """Within a priority, N (the setting's training-set size) before FIFO: the longest fits start first."""
    queued = [QueuedGpuRun(f"gf-n{n}", 29888, 3, queued_at=i, cells=n) for i, n in enumerate([100, 25600, 3200, 12800])]
    placed: dict[str, str] = {}
    held = plan_queue(queued, [_gpu(0, 81920)], {"G0": 60000}, now=1, reserve_after_s=600, headroom_mib=0,
                      placed=placed)
    assert set(placed) == {"gf-n25600", "gf-n12800"} and set(held) == {"gf-n100", "gf-n3200"}


def test_plan_gives_large_runs_idle_gpus_and_fills_gaps_with_small_ones():
    """A Geneformer-sized run goes to an idle GPU (it is the only large run queued), an SCVI-sized one to
    the fullest GPU it fits on; once no GPU is idle, a large run packs like a small one."""
    gpus = [_gpu(0, 81920), _gpu(1, 81920), _gpu(2, 81920)]
    available = {"G0": 81920, "G1": 30000, "G2": 2000}
    queued = [QueuedGpuRun("gf", 29888, 3, 0, cells=1000), QueuedGpuRun("scvi", 2000, 2, 1, cells=1000),
              QueuedGpuRun("pca", 2500, 1, 2, cells=1000)]
    placed: dict[str, str] = {}
    assert plan_queue(queued, gpus, available, now=1, reserve_after_s=600, headroom_mib=0, placed=placed) == {}
    # gf: G0, the emptiest; scvi: G2, exactly its 2000 left; pca: G1 (30000 left, G0 52032 after gf)
    assert placed == {"gf": "G0", "scvi": "G2", "pca": "G1"}
    # at the paper's gene counts the small models' runs are packed and Geneformer's spread
    for genes in (15000, 20000, 30000):
        need = {a: gpu_need_mib([f"{stage}_{a}" for stage in ("model", "embeddings", "mi")], genes)
                for a in ("pca", "random_projection", "scvi", "geneformer")}
        assert max(need["pca"], need["random_projection"], need["scvi"]) < PACK_BELOW_MIB <= need["geneformer"]
    assert choose_gpu(gpus, available, 2500) == gpus[0] and choose_gpu(gpus, available, 2500, fill=True) == gpus[1]
    assert choose_gpu(gpus, available, 90000, fill=True) is None
    # no GPU idle (G0 has a run): the 29,888-MiB run goes beside the run it packs best with, on G1
    busy = {"G0": 60000, "G1": 40000, "G2": 2000}
    assert pick_gpu(gpus, busy, 29888, headroom_mib=0) == gpus[1]
    assert pick_gpu(gpus, dict(busy, G2=81920), 29888, headroom_mib=0) == gpus[2]  # G2 idle: there
    assert pick_gpu(gpus, busy, 29888, headroom_mib=0, exclude={"G1"}) == gpus[0]


def test_plan_packs_large_runs_when_they_outnumber_the_idle_gpus():
    """Two idle 80 GB GPUs: two 24,384-MiB runs get one each (their compute is their own); three are more
    than the idle GPUs, so they pack by best fit, all three on one GPU (73,152 MiB), the other left whole."""
    gpus = [_gpu(0, 81920), _gpu(1, 81920)]
    idle = {"G0": 81920, "G1": 81920}
    for count, expected in ((2, {"G0", "G1"}), (3, {"G0"})):
        placed: dict[str, str] = {}
        queued = [QueuedGpuRun(f"gf{i}", 24384, 3, i, cells=1000) for i in range(count)]
        assert plan_queue(queued, gpus, idle, now=1, reserve_after_s=600, headroom_mib=0, placed=placed) == {}
        assert set(placed.values()) == expected


def test_queued_run_cells_come_from_the_setting_partition():
    assert _cells({"dagster/partition": "n=300_q=0.1_s=42"}) == 300
    assert _cells({"dagster/partition": "q=0.1_s=42"}) == 0 and _cells({}) == 0


def test_plan_holds_runs_larger_than_any_gpu_without_blocking_others():
    gpus = [_gpu(0, 8000)]
    held = plan_queue(
        [QueuedGpuRun("huge", 40000, 9, 0), QueuedGpuRun("ok", 1000, 0, 1)],
        gpus, {"G0": 7000}, now=10_000, reserve_after_s=1, headroom_mib=512,
    )
    assert list(held) == ["huge"] and "more than any usable GPU" in held["huge"]


def test_coordinator_config_round_trip():
    config = yaml.safe_load(INSTANCE_YAML.read_text())["run_coordinator"]["config"]
    coordinator = GpuAwareRunCoordinator.from_config_value(None, config)
    assert coordinator.gpu_headroom_mib == 512 and coordinator.reserve_after_seconds == 600
    assert coordinator.get_run_queue_config().max_concurrent_runs == 16
    assert set(config) <= set(GpuAwareRunCoordinator.config_type())


# -- the real instance -------------------------------------------------------------------------
@pytest.fixture
def dagster_env(tmp_path, monkeypatch):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir(), out.mkdir()
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    config["telemetry"] = {"enabled": False}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    fake = FakeNvml(
        [
            {"uuid": "GPU-a", "total_mib": 16000, "free_mib": 10000},
            {"uuid": "GPU-b", "total_mib": 16000, "free_mib": 6000},
            {"uuid": "GPU-c", "total_mib": 16000, "free_mib": 16000, "error": "NVMLError_GpuIsLost"},
        ],
        path=tmp_path / "fake_nvml.json",
    )
    # inherited by the code server and by every run subprocess it starts
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(nvml.FAKE_NVML_ENV, str(fake.path))
    monkeypatch.setenv("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("COMPUTE_TEST_OUT", str(out))
    nvml.set_backend(None)
    yield home, out, fake
    nvml.set_backend(None)


@pytest.mark.slow
def test_daemon_holds_gpu_runs_until_a_gpu_has_room_and_pins_the_rest(dagster_env):
    from dagster import DagsterInstance
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import create_test_daemon_workspace_context, poll_for_finished_run
    from dagster._core.workspace.load_target import PythonFileTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    home, out, fake = dagster_env
    target = PythonFileTarget(
        python_file=__file__, attribute="defs", working_directory=str(Path(__file__).parents[1]),
        location_name="compute_test",
    )
    with DagsterInstance.from_config(str(home)) as instance, create_test_daemon_workspace_context(
        target, instance
    ) as context:
        assert isinstance(instance.run_coordinator, GpuAwareRunCoordinator)
        assert isinstance(instance.run_launcher, GpuAwareRunLauncher)
        instance.run_coordinator._plan_cache_seconds = 0  # every tick re-plans (the test ticks fast)
        workspace = context.create_request_context()
        remote_job = (
            workspace.get_code_location("compute_test").get_repository("__repository__").get_full_job("gpu_job")
        )

        def submit(name, need=None, priority=0):
            tags = {"name": name, TAG_PRIORITY: str(priority)}
            if need:
                tags[TAG_GPU_NEED] = str(need)
            run = instance.create_run_for_job(
                gpu_job, tags=tags, remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
            )
            instance.submit_run(run.run_id, workspace)
            return run.run_id

        # GPU-a offers 10000-512 = 9488 MiB, GPU-b 5488, GPU-c errors
        ids = {
            "r1": submit("r1", 5000),
            "r2": submit("r2", 5000),
            "r3": submit("r3", 4000),
            "r4": submit("r4", 4000),
            "cpu": submit("cpu"),
            "urgent": submit("urgent", 2000, priority=10),
        }
        assert instance.get_run_by_id(ids["r1"]).tags[TAG_GATE] == ids["r1"]
        assert TAG_GATE not in instance.get_run_by_id(ids["cpu"]).tags

        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)

        def tick():
            list(daemon.run_iteration(context))
            runs = {name: instance.get_run_by_id(rid) for name, rid in ids.items()}
            return {n: r.status for n, r in runs.items()}, {n: r.tags.get(TAG_DEVICE) for n, r in runs.items()}

        status, device = tick()
        # plan: urgent (small: best fit) -> b (3488 left), r1 (large: most room) -> a (4488), r2 fits
        # nowhere, r3 -> a (488), r4 fits nowhere
        launched = {n for n, s in status.items() if s != DagsterRunStatus.QUEUED}
        assert launched == {"urgent", "r1", "r3", "cpu"}
        assert device == {
            "urgent": "cuda:1", "r1": "cuda:0", "r2": "pending", "r3": "cuda:0", "r4": "pending", "cpu": None
        }
        assert set(instance.run_coordinator.last_held) == {ids["r2"], ids["r4"]}

        # promised memory counts even though NVML free has not dropped: a second tick still holds
        status, _ = tick()
        assert status["r2"] == status["r4"] == DagsterRunStatus.QUEUED

        # memory frees up on GPU-b (another user exits): 16000-512-2000 = 13488 -> r2 and r4 fit
        fake.update(1, free_mib=16000)
        status, device = tick()
        assert status["r2"] != DagsterRunStatus.QUEUED and status["r4"] != DagsterRunStatus.QUEUED
        assert device["r2"] == device["r4"] == "cuda:1"

        (out / "go").write_text("")
        for name, rid in ids.items():
            run = poll_for_finished_run(instance, rid, timeout=90)
            assert run.status == DagsterRunStatus.SUCCESS, name
            placed = (out / f"{rid}.placed").read_text()
            assert placed == (run.tags.get(TAG_DEVICE) or "cpu"), name
            messages = [e.message or "" for e in instance.all_logs(rid)]
            if name == "cpu":
                assert TAG_DEVICE not in run.tags
            else:  # the device is in the run's event log (UI) and in the step's own log
                assert any(f"Placed on {placed}" in m for m in messages), name
                assert any(f"GPU step on {placed}: pinned" in m for m in messages), name

        # every lease and promise is gone once the runs are done
        ledger = Ledger()
        with ledger.locked():
            assert ledger.records() == []


# -- the gate as the daemon reads it (no runs launched) --------------------------------------------
@pytest.fixture
def gate_instance(tmp_path, monkeypatch):
    from dagster._core.test_utils import instance_for_test

    monkeypatch.setenv("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases"))
    nvml.set_backend(FakeNvml([{"uuid": "GPU-a", "total_mib": 16000, "free_mib": 8000}]))
    overrides = {
        "run_coordinator": {
            "module": "scaling_assets.compute.coordinator",
            "class": "GpuAwareRunCoordinator",
            "config": {
                "max_concurrent_runs": 3,
                "tag_concurrency_limits": [{"key": "dataset", "limit": 2}],
                "default_n_genes": 2000,
            },
        },
        "telemetry": {"enabled": False},
    }
    (tmp_path / "home").mkdir()
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "home")) as instance:
        instance.run_coordinator._plan_cache_seconds = 0
        yield instance
    nvml.set_backend(None)


def _submit(instance, tags=None, asset_selection=None):
    from dagster._core.run_coordinator import SubmitRunContext
    from dagster._core.test_utils import create_run_for_test

    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("loc"), "__repository__"), "gpu_job"
    )
    run = create_run_for_test(
        instance, tags=tags or {}, asset_selection=asset_selection, remote_job_origin=origin
    )
    return instance.run_coordinator.submit_run(SubmitRunContext(run, None))


def _gated(instance):
    config = instance.get_concurrency_config().run_queue_config
    assert config.max_concurrent_runs == 3
    assert {"key": "dataset", "limit": 2} in config.tag_concurrency_limits  # configured limits kept
    return {limit.get("value") for limit in config.tag_concurrency_limits if limit["key"] == TAG_GATE}


def test_gate_sizes_runs_from_their_assets_and_holds_what_does_not_fit(gate_instance):
    from dagster import AssetKey

    from scaling_assets.models.spec import geneformer_train_mib, scvi_train_mib

    scvi = _submit(gate_instance, asset_selection={AssetKey("model_scvi")})
    gf = _submit(gate_instance, asset_selection={AssetKey("model_geneformer"), AssetKey("splits")})
    gf2 = _submit(gate_instance, tags={TAG_GPU_NEED: str(geneformer_train_mib(2000))})
    cpu = _submit(gate_instance, asset_selection={AssetKey("splits")})
    assert scvi.tags[TAG_GPU_NEED] == str(scvi_train_mib(2000))
    assert gf.tags[TAG_GPU_NEED] == str(geneformer_train_mib(2000))
    assert TAG_GPU_NEED not in cpu.tags and TAG_GATE not in cpu.tags
    # 8000 - 512 headroom = 7488 MiB: one Geneformer (~5.8 GiB) + SCVI fit, the second Geneformer waits
    assert _gated(gate_instance) == {gf2.run_id}


def test_gate_without_gpus_lets_gpu_runs_fall_back_to_cpu(gate_instance):
    _submit(gate_instance, tags={TAG_GPU_NEED: "4000"})
    nvml.set_backend(FakeNvml([]))
    assert _gated(gate_instance) == set()
    gate_instance.run_coordinator.cpu_fallback = False
    assert len(_gated(gate_instance)) == 1


def test_gate_fails_closed_when_planning_breaks(gate_instance, monkeypatch):
    run = _submit(gate_instance, tags={TAG_GPU_NEED: "1000"})
    assert _gated(gate_instance) == set()

    def broken(*args, **kwargs):
        raise OSError("lease dir not writable")

    monkeypatch.setattr("scaling_assets.compute.coordinator.Ledger", broken)
    config = gate_instance.get_concurrency_config().run_queue_config
    assert {"key": TAG_GATE, "limit": 0} in config.tag_concurrency_limits
    assert run.tags[TAG_GATE] == run.run_id  # the key-only limit blocks every gated run


def test_retried_run_is_regated_and_replaced(gate_instance):
    from scaling_assets.compute.coordinator import DEVICE_PENDING

    # a re-executed run inherits its parent's tags, gate and device pin included
    run = _submit(gate_instance, tags={TAG_GPU_NEED: "1000", TAG_GATE: "parent-id", TAG_DEVICE: "cuda:3"})
    assert run.tags[TAG_GATE] == run.run_id and run.tags[TAG_DEVICE] == DEVICE_PENDING


def test_promise_of_a_run_that_is_no_longer_active_is_dropped(gate_instance):
    ledger = Ledger()
    ledger.promise(nvml.list_gpus()[0], 6000, "gone-run")  # no such active run
    assert [r.run_id for r in ledger.records()] == ["gone-run"]
    _gated(gate_instance)  # any daemon tick cleans up, even with no GPU run queued
    assert ledger.records() == []


def test_runs_get_cpu_slots_threads_and_the_study_gene_count(gate_instance, tmp_path, monkeypatch):
    from dagster import AssetKey

    from scaling_assets.gpu.needs import TAG_CPU_SLOT, TAG_N_GENES, TAG_STUDY, TAG_THREADS
    from scaling_assets.models.spec import scvi_train_mib

    study = tmp_path / "s.yaml"
    study.write_text(
        "name: tagged\nroot: " + str(tmp_path / "root") + "\nsizes: [10]\nqualities: [1.0]\n"
        "split: {validation_cells: 50}\ndatasets:\n  cite: {task: cite, source: simulated, cells: 500, genes: 123}\n"
    )
    monkeypatch.setenv("SCALING_ASSETS_STUDY", str(study))
    coordinator = gate_instance.run_coordinator
    coordinator.max_cpu_runs, coordinator.threads_per_run = 3, 2
    gpu = _submit(gate_instance, asset_selection={AssetKey(["cite", "model_scvi"])})
    cpu = _submit(gate_instance, asset_selection={AssetKey(["cite", "split"])})
    # the UI's asset job carries no study tags: the coordinator adds them from the code location's study
    assert gpu.tags[TAG_STUDY] == "tagged" and gpu.tags[TAG_N_GENES] == "123"
    assert gpu.tags[TAG_GPU_NEED] == str(scvi_train_mib(123))  # sized from 123 genes, not default_n_genes
    assert gpu.tags[TAG_CPU_SLOT] == "gpu" and cpu.tags[TAG_CPU_SLOT] == "cpu"  # the fake NVML has a GPU
    assert gpu.tags[TAG_THREADS] == cpu.tags[TAG_THREADS] == "2"
    # what each run makes, for the UI's run list (test_compute_run_labels.py)
    assert (gpu.tags[TAG_RUN], gpu.tags[TAG_STEPS]) == ("cite: scvi (model)", "cite: model_scvi")
    # the slowest training runs dequeue first: Geneformer over SCVI over the rest (no priority tag)
    geneformer = _submit(gate_instance, asset_selection={AssetKey(["cite", "model_geneformer"]),
                                                         AssetKey(["cite", "model_scvi"])})
    assert (geneformer.tags[TAG_PRIORITY], gpu.tags[TAG_PRIORITY]) == ("2", "1") and TAG_PRIORITY not in cpu.tags
    # a run writing Geneformer's corpora gates its chain: it goes ahead of SCVI's runs too
    corpora = _submit(gate_instance, asset_selection={AssetKey(["cite", "pool_corpus"]), AssetKey(["cite", "eval_corpus"])})
    assert corpora.tags[TAG_PRIORITY] == "2"
    limits = gate_instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": TAG_CPU_SLOT, "value": "cpu", "limit": 3} in limits
    nvml.set_backend(FakeNvml([]))  # no GPU: GPU runs compute on CPU and take CPU slots
    assert _submit(gate_instance, asset_selection={AssetKey(["cite", "model_scvi"])}).tags[TAG_CPU_SLOT] == "cpu"


def test_cpu_slot_defaults_follow_the_cores(monkeypatch):
    from scaling_assets.compute import coordinator as module

    monkeypatch.setattr(module, "cpu_cores", lambda: 8)
    c = GpuAwareRunCoordinator.from_config_value(None, {})
    assert (c.max_cpu_runs, c.threads_per_run) == (8, 1)
    c = GpuAwareRunCoordinator.from_config_value(None, {"max_cpu_runs": 2})
    assert (c.max_cpu_runs, c.threads_per_run) == (2, 4)


def test_gate_reads_only_the_runs_new_to_the_queue(gate_instance, monkeypatch):
    """A tick reads the queued run ids, and the records of runs it has not seen queued before (with
    thousands queued, deserialising every queued run each tick cost seconds of daemon CPU)."""
    from dagster._core.storage.dagster_run import DagsterRunStatus

    first = _submit(gate_instance, tags={TAG_GPU_NEED: "5000"})
    second = _submit(gate_instance, tags={TAG_GPU_NEED: "5000"})
    assert _gated(gate_instance) == {second.run_id}  # 7488 MiB usable: one fits
    read = []
    real = gate_instance.get_run_records
    monkeypatch.setattr(gate_instance, "get_run_records",
                        lambda filters=None, **kw: read.append(filters.run_ids) or real(filters, **kw))
    third = _submit(gate_instance, tags={TAG_GPU_NEED: "5000"})
    assert _gated(gate_instance) == {second.run_id, third.run_id}
    assert read == [[third.run_id]]
    gate_instance.report_run_canceled(first)  # leaves the queue: forgotten, its room goes to the next
    assert _gated(gate_instance) == {third.run_id}
    assert set(gate_instance.run_coordinator._queued_cache) == {second.run_id, third.run_id}
    assert gate_instance.get_run_by_id(first.run_id).status == DagsterRunStatus.CANCELED


def test_plan_packs_the_largest_runs_first_and_the_launcher_follows_its_packing(tmp_path, monkeypatch):
    """Within a priority the plan packs the largest needs first (decreasing-size packing; in the
    200-run bench, queue order left 3 of 45 Geneformer runs out); the launcher, called in the
    daemon's FIFO order, puts each run on the GPU the plan chose while it still has room."""
    gpus = [_gpu(0, 40000), _gpu(1, 40000)]
    queued = [QueuedGpuRun("a14", 14000, 0, 1), QueuedGpuRun("b14", 14000, 0, 2),
              QueuedGpuRun("c16", 16000, 0, 3), QueuedGpuRun("d16", 16000, 0, 4), QueuedGpuRun("e6", 6000, 0, 5)]
    placed: dict[str, str] = {}
    held = plan_queue(queued, gpus, {"G0": 40000, "G1": 40000}, now=10, reserve_after_s=600, headroom_mib=0,
                      placed=placed)
    # five large runs for two idle GPUs: best fit, in size order: c16, d16 -> G0 (8000 left), a14, b14 ->
    # G1 (12000 left), e6 -> G0, the fuller GPU it fits on
    assert held == {} and placed == {"c16": "G0", "d16": "G0", "a14": "G1", "b14": "G1", "e6": "G0"}
    monkeypatch.setenv("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases"))
    nvml.set_backend(FakeNvml([{"uuid": f"G{i}", "total_mib": 40000, "free_mib": 40000} for i in range(2)]))
    try:
        for run in queued:  # the daemon's FIFO launch order
            gpu, reason = place_run(run.run_id, run.need_mib, headroom_mib=0, planned_uuid=placed[run.run_id])
            assert gpu.uuid == placed[run.run_id] and "as planned" in reason
        # a planned GPU without room any more: the GPU the plan's rule picks now (G1, the only fit)
        gpu, reason = place_run("late", 10000, headroom_mib=0, planned_uuid="G0")
        assert "as planned" not in reason and gpu.uuid == "G1"
    finally:
        nvml.set_backend(None)
