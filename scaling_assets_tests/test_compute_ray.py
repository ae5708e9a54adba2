"""Study runs on a real local Ray cluster (head + GPU worker nodes on localhost, logical GPUs) through
``StudyRayRunLauncher``: a small study gives the local launcher's results, fractional GPU packing,
refusal of too-large runs, node loss, a node that does not see the study root, cleanup."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from dagster import Definitions, job, op

from scaling_assets.gpu.needs import TAG_DEVICE, TAG_GPU_NEED, TAG_THREADS
from scaling_assets.compute.ray_launcher import TAG_RAY_CONFIG, RunTooLargeError, ray_request

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
pytest.importorskip("dagster_ray", reason="dagster-ray is not installed (pip install -e '.[ray]')")

GPU_MIB = 16000


# -- a run that holds its GPU until the test says go -----------------------------------------------
@op
def hold_op(context):
    out = Path(os.environ["RAY_TEST_OUT"])
    staging, final = out / ".staging" / context.run_id, out / "done" / context.run_id
    staging.mkdir(parents=True)
    (out / f"{context.run_id}.started").write_text("")
    deadline = time.time() + 60
    while not (out / "go").exists() and time.time() < deadline:
        time.sleep(0.1)
    final.parent.mkdir(exist_ok=True)
    staging.rename(final)  # as the study IO manager does: the partition appears whole or not at all


@job
def hold_job():
    hold_op()


defs = Definitions(jobs=[hold_job])


# -- the pure request --------------------------------------------------------------------------
def test_ray_request_is_the_gpu_fraction_of_the_need():
    assert ray_request(4800, 16000, 1) == {"num_cpus": 1, "num_gpus": 0.3}
    assert ray_request(4801, 16000, 2) == {"num_cpus": 2, "num_gpus": 0.31}  # rounded up, never down
    assert ray_request(0, 16000, 1) == {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(RunTooLargeError, match="needs 20000 MiB"):
        ray_request(20000, 16000, 1)


def test_the_ray_instance_file_loads_with_the_queue_and_the_ray_launcher(monkeypatch):
    import yaml
    from dagster._core.test_utils import instance_for_test

    from scaling_assets.compute.coordinator import GpuAwareRunCoordinator
    from scaling_assets.compute.ray_launcher import StudyRayRunLauncher

    monkeypatch.setenv("RAY_ADDRESS", "http://ray-head:8265")
    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "ray" / "dagster.yaml").read_text())
    with instance_for_test(overrides=config) as instance:
        assert isinstance(instance.run_coordinator, GpuAwareRunCoordinator)
        assert not instance.run_coordinator.local_gpu_gate
        assert isinstance(instance.run_launcher, StudyRayRunLauncher)
        assert instance.run_launcher.address == "http://ray-head:8265"
        assert instance.run_launcher.gpu_memory_mib == 81559


# -- the real cluster --------------------------------------------------------------------------
def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def cluster():
    from scaling_assets.compute.ray_local import start_local_cluster, stop_local_cluster

    before = _descendants()
    try:
        c, url, (gpu_node,) = start_local_cluster(head_cpus=1, nodes=({"num_cpus": 4, "num_gpus": 1},))
    except Exception as exc:  # no Ray cluster on this machine: say why, never pass silently
        print(f"SKIP: a local Ray cluster could not start: {exc!r}")
        pytest.skip(f"a local Ray cluster could not start: {exc!r}")
    started = _descendants() - before
    yield c, gpu_node, url
    stop_local_cluster(c)
    deadline = time.time() + 20
    while time.time() < deadline and any(psutil.pid_exists(p) for p in started):
        time.sleep(0.2)
    alive = [p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"Ray processes left running: {alive}"


def ray_launcher(url: str, study_root: Path, env_vars: list[str]) -> dict:
    return {
        "module": "scaling_assets.compute.ray_launcher",
        "class": "StudyRayRunLauncher",
        "config": {
            "ray": {"address": url, "env_vars": [*env_vars, "PYTHONPATH"]},
            "gpu_memory_mib": GPU_MIB,
            "cpus_per_run": 0.25,
            "study_root": str(study_root),
        },
    }


@pytest.fixture
def ray_instance(cluster, tmp_path, monkeypatch):
    from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test
    from dagster._core.workspace.load_target import PythonFileTarget

    _, _, url = cluster
    out = tmp_path / "out"
    (tmp_path / "home").mkdir()
    out.mkdir()
    monkeypatch.setenv("RAY_TEST_OUT", str(out))
    overrides = {"run_launcher": ray_launcher(url, out, ["RAY_TEST_OUT"]), "telemetry": {"enabled": False}}
    target = PythonFileTarget(
        python_file=__file__, attribute="defs", working_directory=str(Path(__file__).parents[1]),
        location_name="ray_test",
    )
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "home")) as instance, \
            create_test_daemon_workspace_context(target, instance) as context:
        workspace = context.create_request_context()
        remote = workspace.get_code_location("ray_test").get_repository("__repository__").get_full_job("hold_job")

        def launch(need: int, ray_resources: dict | None = None) -> str:
            tags = {TAG_GPU_NEED: str(need)}
            if ray_resources:  # a custom Ray resource pins the run to the node that has it
                tags[TAG_RAY_CONFIG] = json.dumps({"resources": ray_resources})
            run = instance.create_run_for_job(
                hold_job, tags=tags, remote_job_origin=remote.get_remote_origin(),
                job_code_origin=remote.get_python_origin(),
            )
            instance.launch_run(run.run_id, workspace)
            return run.run_id

        yield instance, launch, out, context


def _wait(predicate, timeout=25.0, what="condition", logs=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (_job_logs(*logs) if logs else ""))


def _job_logs(url, run_ids) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    return "".join(
        f"\n--- {r}: {client.get_job_status(f'dagster-run-{r}')}\n{client.get_job_logs(f'dagster-run-{r}')[:1500]}"
        for r in run_ids
    )


@pytest.mark.slow
def test_small_runs_share_one_gpu_three_at_a_time_and_too_large_runs_are_refused(cluster, ray_instance):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run

    instance, launch, out, _ = ray_instance
    _, gpu_node, url = cluster
    big = launch(20000)
    assert instance.get_run_by_id(big).status == DagsterRunStatus.FAILURE
    assert any("needs 20000 MiB" in (e.message or "") for e in instance.all_logs(big))

    ids = [launch(4800) for _ in range(4)]  # 0.3 GPU each: three fit on the one logical GPU
    started = lambda: [r for r in ids if (out / f"{r}.started").exists()]  # noqa: E731
    _wait(lambda: len(started()) == 3, what="three runs on the GPU", logs=(url, ids))
    time.sleep(3)
    assert len(started()) == 3, "a fourth 0.3-GPU run must wait for room on the GPU"
    (out / "go").write_text("")
    table = [(big[:8], "20000", "-", "refused", "-")]
    for rid in ids:
        run = poll_for_finished_run(instance, rid, timeout=300)
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["scaling_assets/ray_node"] == gpu_node.node_id
        assert run.tags["scaling_assets/ray_gpu"] == "0" and run.tags[TAG_DEVICE] == "cuda:0"
        table.append((rid[:8], run.tags[TAG_GPU_NEED], str(json.loads(run.tags[TAG_RAY_CONFIG])["num_gpus"]),
                      run.tags["scaling_assets/ray_node"][:8], run.tags["scaling_assets/ray_gpu"]))
    print(f"\nplacement on {GPU_MIB} MiB logical GPUs (pytest -s shows it)")
    print("run       need MiB  Ray GPUs  node      GPU")
    for row in table:
        print("%-9s %-9s %-9s %-9s %s" % row)


@pytest.mark.slow
def test_a_lost_node_fails_its_run_and_the_retry_completes_on_the_remaining_node(cluster, ray_instance):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run
    import logging

    c, gpu_node, _ = cluster
    instance, launch, out, context = ray_instance
    from scaling_assets.compute.ray_local import add_node

    spare = add_node(c, num_cpus=4, num_gpus=1)
    c.wait_for_nodes()
    try:
        rid = launch(8000)
        _wait(lambda: (out / f"{rid}.started").exists(), what="the run to start")
        victim_id = instance.get_run_by_id(rid).tags["scaling_assets/ray_node"]
        victim = gpu_node if victim_id == gpu_node.node_id else spare
        survivor = spare if victim is gpu_node else gpu_node
        _kill_node(c, victim)
        # run monitoring (the daemon's check) sees the Ray job die with its node
        workspace = context.create_request_context()
        deadline = time.time() + 60
        while instance.get_run_by_id(rid).status == DagsterRunStatus.STARTED and time.time() < deadline:
            monitor_started_run(instance, workspace, instance.get_run_record_by_id(rid), logging.getLogger())
            time.sleep(0.5)
        assert instance.get_run_by_id(rid).status == DagsterRunStatus.FAILURE
        assert not (out / "done" / rid).exists(), "no half-written output of the lost run"

        retry = launch(8000)
        (out / "go").write_text("")
        run = poll_for_finished_run(instance, retry, timeout=300)
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["scaling_assets/ray_node"] == survivor.node_id
        assert (out / "done" / retry).is_dir()
    finally:
        if spare in c.worker_nodes:
            c.remove_node(spare)


def _kill_node(c, node):
    """Node loss: every process of the node dies at once (raylet, workers, their subprocesses)."""
    procs = []
    for infos in node.all_processes.values():
        for info in infos:
            try:
                p = psutil.Process(info.process.pid)
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    c.remove_node(node, allow_graceful=False)


@pytest.mark.slow
def test_a_node_that_cannot_see_the_study_root_refuses_the_run(ray_instance):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run

    from scaling_assets.compute.ray_launcher import MARKER_NAME

    instance, launch, out, _ = ray_instance
    (out / "go").write_text("")
    assert poll_for_finished_run(instance, launch(0), timeout=300).status == DagsterRunStatus.SUCCESS
    # the node now sees another file system at that path: the submitter's token is not there
    (out / MARKER_NAME).write_text("another-volume")
    rid = launch(0)
    run = poll_for_finished_run(instance, rid, timeout=300)
    assert run.status == DagsterRunStatus.FAILURE
    messages = " ".join(e.message or "" for e in instance.all_logs(rid))
    assert f"study root {out} is not shared storage" in messages
    assert not (out / f"{rid}.started").exists()


@pytest.fixture
def blind_node(cluster, ray_instance):
    """A real Ray node (``ray start``) in its own mount namespace, where the study root is an empty tmpfs:
    the node does not see the submitter's files. It has the custom resource ``blind`` to pin a run to it."""
    c, _, _ = cluster
    _, _, out, _ = ray_instance
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node with its own view of the study root needs unshare -m as root")
    from scaling_assets.compute.ray_local import _free_port

    ray_cli = Path(sys.executable).with_name("ray")
    start = (f"mount -t tmpfs tmpfs {out} && exec {ray_cli} start --address={c.address} --num-cpus=1 "
             f"--num-gpus=1 --resources='{{\"blind\": 1}}' --dashboard-agent-listen-port={_free_port()} --block")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", start],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: any(n["Alive"] and "blind" in n["Resources"] for n in ray.nodes()), 60, "the blind node")
        yield
    finally:
        members = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))] \
            if psutil.pid_exists(proc.pid) else []
        os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops its node's processes
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs([psutil.Process(p) for p in members if psutil.pid_exists(p)], timeout=20)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"processes of the blind node outlived it: {[p.pid for p in alive]}"


@pytest.mark.slow
def test_a_node_that_mounts_another_file_system_at_the_root_refuses_the_run(ray_instance, blind_node):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run

    instance, launch, out, _ = ray_instance
    (out / "go").write_text("")
    rid = launch(0, ray_resources={"blind": 1})
    run = poll_for_finished_run(instance, rid, timeout=300)
    assert run.status == DagsterRunStatus.FAILURE
    messages = " ".join(e.message or "" for e in instance.all_logs(rid))
    assert f"study root {out} is not shared storage" in messages and "FileNotFoundError" in messages, messages
    assert not (out / f"{rid}.started").exists()
    # the same run on a node that sees the root completes
    assert poll_for_finished_run(instance, launch(0), timeout=300).status == DagsterRunStatus.SUCCESS


# -- a small study: the same results through Ray as through the local launcher ------------------
SMALL_STUDY = {
    "algorithms": ["pca", "random_projection", "scvi"],
    "qualities": [1.0],
    "lmi": {"epochs": 10},
    "datasets": {"cite": {"task": "cite", "source": "simulated", "cells": 500, "genes": 30, "seed": 1}},
}


def _materialise(tmp: Path, name: str, launcher: dict, monkeypatch) -> tuple[Path, dict, set]:
    """The small study's raw, per-seed and per-setting runs, one after another, through ``launcher``.
    Returns the study root, the materialised partitions per asset and the Ray nodes the runs got."""
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from conftest import study_jobs, write_tiny_study  # not at the top: Dagster loads this file as code too
    from dagster._core.test_utils import instance_for_test, poll_for_finished_run

    from scaling_assets.study.spec import load_study

    path = write_tiny_study(tmp / f"{name}.yaml", tmp / name, "small", **SMALL_STUDY)
    monkeypatch.setenv("SCALING_ASSETS_STUDY", str(path))
    study = load_study(path)
    (tmp / f"{name}_home").mkdir()
    overrides = {"run_launcher": launcher, "telemetry": {"enabled": False}}
    with instance_for_test(overrides=overrides, temp_dir=str(tmp / f"{name}_home")) as instance, \
            study_jobs(instance) as jobs:
        nodes = set()
        for job_name, partitions in [("cite_raw", [None]), ("cite_by_seed", study.seed_keys()),
                                     ("cite_by_setting", study.setting_keys("cite"))]:
            # one torch/BLAS thread in both: a thread count can change float reduction order
            for run_id in [jobs.launch(job_name, p, tags={TAG_THREADS: "1"}) for p in partitions]:
                run = poll_for_finished_run(instance, run_id, timeout=300)
                assert run.status == DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(run_id)][-5:]
                nodes.add(run.tags.get("scaling_assets/ray_node"))
        materialised = {k.to_user_string(): set(instance.get_materialized_partitions(k))
                        for k in instance.get_asset_keys()}
    return study.root, materialised, nodes


def _record(path: Path, root: Path):
    """A JSON record without its wall times, its study root and staging folder names made neutral."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not k.startswith("wall_time")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return re.sub(r"\.staging/[^/]+", ".staging/X", value.replace(str(root), "ROOT"))
        return value

    return clean(json.loads(path.read_text()))


def _weights(path: Path) -> dict:
    import torch

    state = torch.load(path, weights_only=False, map_location="cpu")["model_state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.mark.slow
def test_a_small_study_through_ray_gives_the_local_launchers_results(cluster, tmp_path, monkeypatch):
    from scaling_assets.compute.ray_launcher import MARKER_NAME

    _, _, url = cluster
    monkeypatch.setenv("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases"))
    local_root, local_parts, _ = _materialise(
        tmp_path, "local", {"module": "scaling_assets.compute.coordinator", "class": "GpuAwareRunLauncher"},
        monkeypatch)
    ray_root, ray_parts, nodes = _materialise(
        tmp_path, "ray", ray_launcher(url, tmp_path / "ray", ["SCALING_ASSETS_STUDY", "SCALING_ASSETS_LEASE_DIR"]),
        monkeypatch)
    assert None not in nodes and nodes <= {n["NodeID"] for n in ray.nodes()}, "every run ran as a Ray job"
    assert ray_parts == local_parts and len(ray_parts) == 15  # raw, 4 per seed, (train + 3 x 3) per setting
    assert ray_parts["cite/mi_scvi"] == {"n=100_q=1_s=42"}

    files = lambda root: {p.relative_to(root) for p in root.rglob("*") if p.is_file()}  # noqa: E731
    local_files = files(local_root)
    assert files(ray_root) == local_files | {Path(MARKER_NAME)}
    # Every output is compared exactly, SCVI's included: with a fixed seed, on CPU and one thread
    # (TAG_THREADS above), SCVI training is deterministic across processes on this machine (weights,
    # embeddings and MI came out bit-identical through both launchers). Torch does not promise that
    # across CPU types or thread counts; on a mixed cluster compare SCVI within ~1e-5 instead.
    for rel in sorted(local_files):
        a, b = local_root / rel, ray_root / rel
        if rel.name == "fingerprint.json":  # hashes of files holding wall times: the files are compared
            assert _record(a, local_root).keys() == _record(b, ray_root).keys(), rel
        elif rel.suffix == ".json":  # MI values, model and count summaries
            assert _record(a, local_root) == _record(b, ray_root), rel
        elif rel.suffix == ".pt":  # torch's archive holds a serialisation id, SCVI a run name: compare weights
            wa, wb = _weights(a), _weights(b)
            assert wa and wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa), rel
        else:  # splits, counts, genes, PCA / random projection models, embeddings, histories: bit for bit
            assert a.read_bytes() == b.read_bytes(), rel
    mi = _record(local_root / "cite" / "mi_scvi" / "n=100_q=1_s=42" / "record.json", local_root)
    assert {s["signal"] for s in mi["signals"]} == {"cell_type", "protein"}
    # an estimate per signal; 100 cells of 60 genes carry little of the simulator's signal (v2), so no
    # lower bound: the values are compared exactly above, learnability in test_data_simulate.py
    assert all(np.isfinite(s["mi_bits_raw"]) and 0 <= s["mi_bits"] <= np.log2(s["pairs"]) for s in mi["signals"]), mi
