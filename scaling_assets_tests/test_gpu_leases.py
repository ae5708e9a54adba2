"""GPU inventory, needs table, device leases and placement, all against a fake NVML (CPU only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scaling_assets.gpu import nvml
from scaling_assets.gpu.leases import (
    GpuUnavailableError,
    Ledger,
    gpu_step,
    is_oom,
)
from scaling_assets.gpu.needs import (
    GPU_NEEDS,
    TAG_DEVICE,
    asset_need_mib,
    gpu_need_mib,
)
from scaling_assets.gpu.nvml import FakeNvml, PynvmlBackend
from scaling_assets.models.spec import CUDA_CONTEXT_MIB, geneformer_train_mib, scvi_train_mib


@pytest.fixture
def fake(tmp_path):
    """GPU0 10000 free of 16000, GPU1 6000 free of 16000, GPU2 erroring."""
    f = FakeNvml(
        [
            {"uuid": "GPU-a", "total_mib": 16000, "free_mib": 10000},
            {"uuid": "GPU-b", "total_mib": 16000, "free_mib": 6000},
            {"uuid": "GPU-c", "total_mib": 16000, "free_mib": 16000, "error": "NVMLError_GpuIsLost"},
        ],
        path=tmp_path / "fake_nvml.json",
    )
    nvml.set_backend(f)
    yield f
    nvml.set_backend(None)


def _logs():
    lines: list[str] = []
    return lines, lines.append


# -- inventory ---------------------------------------------------------------------------------
def test_inventory_reports_errors_and_changing_memory(tmp_path):
    f = FakeNvml([{"total_mib": 8000, "free_mib": [8000, 3000]}, {"total_mib": 8000, "free_mib": 1, "error": "Xid 79"}])
    nvml.set_backend(f)
    try:
        first, second, third = nvml.list_gpus(), nvml.list_gpus(), nvml.list_gpus()
    finally:
        nvml.set_backend(None)
    assert [g.free_mib for g in (first[0], second[0], third[0])] == [8000, 3000, 3000]
    assert first[0].healthy and first[0].device == "cuda:0" and first[0].used_mib == 0
    assert not first[1].healthy and "Xid 79" in first[1].error


def test_real_nvml_absent_gives_empty_inventory_without_crash():
    backend = PynvmlBackend()  # this machine has no NVIDIA driver
    nvml.set_backend(backend)
    try:
        gpus = nvml.list_gpus()
    finally:
        nvml.set_backend(None)
    if backend.init_error is None:
        pytest.skip("NVML is available on this machine")
    assert gpus == [] and nvml.process_usage_mib() is not None


def test_file_backed_fake_is_shared_through_env(tmp_path, monkeypatch):
    FakeNvml([{"total_mib": 4000, "free_mib": 2500}], path=tmp_path / "f.json")
    monkeypatch.setenv(nvml.FAKE_NVML_ENV, str(tmp_path / "f.json"))
    out = subprocess.run(
        [sys.executable, "-c", "from scaling_assets.gpu import nvml; print(nvml.list_gpus()[0].free_mib)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "2500"


# -- needs -------------------------------------------------------------------------------------
def test_needs_table_and_run_need():
    assert set(GPU_NEEDS) == {
        "model_scvi", "model_geneformer", "embeddings_scvi", "embeddings_geneformer",
        "mi_pca", "mi_random_projection", "mi_scvi", "mi_geneformer",
    }
    assert asset_need_mib("splits", 2000) == 0
    assert gpu_need_mib(["splits", "thinned"], 2000) == 0
    assert gpu_need_mib(["model_scvi", "model_geneformer", "mi_scvi"], 2000) == geneformer_train_mib(2000)
    # grows with genes and batch size; Geneformer (BERT + AdamW + 64x512 tokens) >> SCVI
    assert scvi_train_mib(20000) > scvi_train_mib(2000) > CUDA_CONTEXT_MIB
    assert scvi_train_mib(2000, batch_size=4096) > scvi_train_mib(2000)
    assert geneformer_train_mib(20000) > geneformer_train_mib(2000) > 3 * scvi_train_mib(2000)
    assert asset_need_mib("prefix/model_scvi", 2000) == scvi_train_mib(2000)


# What one process of each GPU step held at its peak on a real GPU, read through NVML (one H200, driver
# 580, CUDA 13.0, torch 2.11, transformers 5.17, 2026-12-04; benchmarks/gpu_check.py): (asset, genes, MiB),
# extracted from its results into golden/gpu_check_h200_peaks.json.
MEASURED_H200_PEAKS = [
    (row["asset"], row["genes"], row["nvml_peak_mib"])
    for row in json.loads((Path(__file__).with_name("golden") / "gpu_check_h200_peaks.json").read_text())["peaks"]
]


@pytest.mark.parametrize("asset, genes, peak_mib", MEASURED_H200_PEAKS)
def test_gpu_needs_cover_what_a_real_gpu_measured_without_wasting_it(asset, genes, peak_mib):
    """The run queue packs a GPU by these estimates: under the real peak a full GPU runs out of memory
    (the estimates before this calibration: SCVI 576-1,984 MiB and Geneformer at 20,000 genes 14,336 MiB,
    all under these peaks), far over it the GPU idles. At most 40% over, at least 10% over."""
    need = asset_need_mib(asset, genes)
    assert 1.10 * peak_mib <= need <= 1.40 * peak_mib, (asset, genes, need, peak_mib)


# -- leases and placement ----------------------------------------------------------------------
def test_no_gpu_runs_on_cpu_and_says_so(lease_dir):
    nvml.set_backend(FakeNvml([]))
    lines, log = _logs()
    try:
        with gpu_step({}, 4000, log=log) as p:
            assert p.device == "cpu" and p.lease is None
    finally:
        nvml.set_backend(None)
    assert any("running on CPU" in line for line in lines)


def test_cpu_only_step_takes_no_lease(fake, lease_dir):
    with gpu_step({}, 0) as p:
        assert p.device == "cpu"
    assert not list(lease_dir.glob("lease-*"))


def test_packing_counts_promised_memory_and_skips_erroring_gpu(fake, lease_dir):
    lines, log = _logs()
    # headroom 512: GPU-a offers 9488, GPU-b 5488; GPU-c errors and is never chosen
    with gpu_step({}, 5000, log=log, run_id="r1") as p1:
        assert p1.device == "cuda:0"
        with gpu_step({}, 4000, log=log, run_id="r2") as p2:
            assert p2.device == "cuda:1"  # GPU-a: 9488 - 5000 promised = 4488 < 5488 on GPU-b
            with gpu_step({}, 4000, log=log, run_id="r3") as p3:
                assert p3.device == "cuda:0"  # two leases packed on one GPU
                records = Ledger().records()
                assert sorted((r.run_id, r.device, r.need_mib) for r in records) == [
                    ("r1", "cuda:0", 5000), ("r2", "cuda:1", 4000), ("r3", "cuda:0", 4000)]
                assert all(r.pid == os.getpid() for r in records)
                with pytest.raises(GpuUnavailableError, match="within"):
                    with gpu_step({}, 2000, log=log, timeout_s=0.2, poll_s=0.05):
                        pass
    assert any(line.startswith("waiting for a GPU with 2000 MiB") for line in lines)
    assert not list(lease_dir.glob("lease-*"))  # all released


def test_allocated_memory_stops_counting_as_promised(fake, lease_dir):
    with gpu_step({}, 9000, run_id="big") as p:
        assert p.device == "cuda:0"
        ledger = Ledger()
        assert ledger.promised_by_gpu(ledger.records(), usage={}) == {"GPU-a": 9000}
        # NVML attributes 6000 MiB to the holder's pid: only 3000 is still promised
        usage = {"GPU-a": {os.getpid(): 6000}}
        assert ledger.promised_by_gpu(ledger.records(), usage=usage) == {"GPU-a": 3000}
        # where NVML cannot see pids, the holder reports what it allocated
        p.note_allocated(8500)
        assert ledger.promised_by_gpu(ledger.records(), usage={}) == {"GPU-a": 500}


def test_a_gpu_step_reports_what_torch_holds_while_it_runs(fake, lease_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 7000 * 1024 * 1024)
    with gpu_step({}, 9000, run_id="reporting") as p, p.reporting(every_s=0.05):
        ledger = Ledger()
        deadline = time.monotonic() + 5
        while ledger.promised_by_gpu(ledger.records(), usage={}) != {"GPU-a": 2000}:
            assert time.monotonic() < deadline, ledger.records()
            time.sleep(0.05)


def test_a_gpu_step_returns_torchs_cached_memory_before_its_lease_ends(fake, lease_dir, monkeypatch):
    import torch

    events = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("empty_cache", len(Ledger().records()))))
    with gpu_step({}, 9000, run_id="train") as p:
        assert p.device == "cuda:0"
    assert events == [("empty_cache", 1)]  # while the lease still stood
    assert Ledger().records() == []
    with gpu_step({}, 0, run_id="cpu-only"):
        pass
    assert len(events) == 1  # a CPU step has no GPU memory to return


def test_waits_until_memory_frees(fake, lease_dir):
    fake.update(0, free_mib=[1000, 1000, 1000, 12000])
    fake.update(1, free_mib=1000)
    lines, log = _logs()
    t0 = time.monotonic()
    with gpu_step({}, 6000, log=log, poll_s=0.05, timeout_s=10) as p:
        assert p.device == "cuda:0"
    assert time.monotonic() - t0 < 5
    assert any("waiting" in line for line in lines)


def test_pinned_device_is_used_and_a_lost_pin_is_replaced(fake, lease_dir):
    with gpu_step({TAG_DEVICE: "cuda:1"}, 3000, run_id="p") as p:
        assert p.device == "cuda:1" and "pinned" in p.reason
    fake.update(1, error="NVMLError_GpuIsLost")
    with gpu_step({TAG_DEVICE: "cuda:1"}, 3000, run_id="p") as p:
        assert p.device == "cuda:0" and "not usable now" in p.reason


def test_step_replaces_the_launchers_promise(fake, lease_dir):
    ledger = Ledger()
    gpu = nvml.list_gpus()[0]
    ledger.promise(gpu, 7000, "run-x")
    with ledger.locked():
        assert [r.kind for r in ledger.records()] == ["promise"]
    # another run (e.g. a CLI materialisation) sees GPU-a as taken and goes to GPU-b
    with gpu_step({}, 3000, run_id="cli") as other:
        assert other.device == "cuda:1"
    with gpu_step({TAG_DEVICE: "cuda:0"}, 7000, run_id="run-x") as p:
        assert p.device == "cuda:0"
        assert [(r.kind, r.run_id) for r in ledger.records()] == [("lease", "run-x")]
    assert ledger.records() == []


def test_oom_is_recorded_and_retry_avoids_that_gpu(fake, lease_dir):
    class OutOfMemoryError(RuntimeError):
        pass

    lines, log = _logs()
    with pytest.raises(OutOfMemoryError):
        with gpu_step({TAG_DEVICE: "cuda:0"}, 3000, log=log, run_id="r") as p:
            assert p.device == "cuda:0"
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert Ledger().oom_gpus("r") == {"GPU-a"}
    assert any("out of memory on cuda:0" in line for line in lines)
    with gpu_step({TAG_DEVICE: "cuda:0"}, 3000, log=log, run_id="r") as p:  # the retried step
        assert p.device == "cuda:1"
    fake.update(1, error="lost")  # OOM'd on every usable GPU: retry on the same one later
    with gpu_step({TAG_DEVICE: "cuda:0"}, 3000, log=log, run_id="r") as p:
        assert p.device == "cuda:0"


def test_need_larger_than_any_gpu_fails_fast(fake, lease_dir):
    with pytest.raises(GpuUnavailableError, match="largest usable GPU"):
        with gpu_step({}, 50000, timeout_s=60):
            pass


def test_oom_helpers():
    from dagster import RetryRequested

    from scaling_assets.assets.devices import oom_retry

    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_oom(ValueError("bad shape"))
    first, third = oom_retry(0, max_retries=3, delay_s=10), oom_retry(2, max_retries=3, delay_s=10)
    assert isinstance(first, RetryRequested) and first.max_retries == 3
    assert 5 <= first.seconds_to_wait <= 15 and 20 <= third.seconds_to_wait <= 60  # doubling, +-50% jitter


def test_gpu_steps_retry_out_of_memory_only_and_no_asset_has_a_retry_policy(fake, lease_dir, monkeypatch):
    """A Dagster RetryPolicy retries every failure and an interrupted (cancelled) step too; the GPU
    steps ask for a retry on out-of-memory errors only (step_device), and the retry avoids that GPU."""
    from types import SimpleNamespace

    from dagster import RetryRequested

    from scaling_assets.assets.devices import step_device
    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.spec import load_study

    monkeypatch.setenv(nvml.FAKE_NVML_ENV, str(fake.path))
    context = SimpleNamespace(run=SimpleNamespace(tags={}, run_id="r"), retry_number=0, log=SimpleNamespace(info=print))
    with pytest.raises(RetryRequested):
        with step_device(context, "model_scvi", asset_need_mib("model_scvi", 1000)):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert Ledger().oom_gpus("r") == {"GPU-a"}
    with pytest.raises(ValueError, match="bad shape"):
        with step_device(context, "model_scvi", asset_need_mib("model_scvi", 1000)):
            raise ValueError("bad shape")
    for node in build_definitions(load_study("default")).resolve_asset_graph().asset_nodes:
        assert node.assets_def.op.retry_policy is None, node.key


HOLDER = textwrap.dedent(
    """
    import sys, time
    from scaling_assets.gpu.leases import gpu_step
    with gpu_step({}, 8000, run_id="doomed", log=lambda m: None) as p:
        print(p.device, flush=True)
        time.sleep(60)
    """
)


def test_lease_of_killed_holder_is_recovered(fake, lease_dir, monkeypatch):
    monkeypatch.setenv(nvml.FAKE_NVML_ENV, str(fake.path))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "cuda:0"
        ledger = Ledger()
        with ledger.locked():
            live = ledger.records()
        assert [(r.run_id, r.pid) for r in live] == [("doomed", proc.pid)]
        # while it lives, its 8000 MiB are promised: another 8000 MiB step cannot fit anywhere
        with pytest.raises(GpuUnavailableError):
            with gpu_step({}, 8000, timeout_s=0.1, poll_s=0.05):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with gpu_step({}, 8000, run_id="next") as p:  # the OS dropped the lock; the file is cleaned up
        assert p.device == "cuda:0"
        assert [r.run_id for r in Ledger().records()] == ["next"]
    assert not list(lease_dir.glob("lease-*"))


def test_later_step_of_a_pinned_run_checks_room_on_its_gpu(fake, lease_dir):
    # the run's first GPU step already replaced the launcher's promise; meanwhile another run took
    # GPU-a, so the second step must not blindly trust the pin
    with gpu_step({}, 8000, run_id="other") as other:
        assert other.device == "cuda:0"
        with gpu_step({TAG_DEVICE: "cuda:0"}, 3000, run_id="mine") as p:
            assert p.device == "cuda:1" and "not usable now" in p.reason
        with gpu_step({TAG_DEVICE: "cuda:0"}, 1000, run_id="mine") as p:  # fits: pin honoured
            assert p.device == "cuda:0" and "pinned" in p.reason


def test_step_on_a_simulated_gpu_holds_the_lease_and_computes_on_cpu(tmp_path, lease_dir, monkeypatch):
    """Under the fake NVML (benchmarks), step_device leases the simulated GPU but yields "cpu": there is no
    such CUDA device to compute on."""
    from types import SimpleNamespace

    from scaling_assets.assets.devices import step_device
    from scaling_assets.gpu.leases import Ledger

    f = FakeNvml([{"uuid": "GPU-sim", "total_mib": 80000, "free_mib": 80000}], path=tmp_path / "f.json")
    monkeypatch.setenv(nvml.FAKE_NVML_ENV, str(f.path))
    nvml.set_backend(f)
    try:
        context = SimpleNamespace(run=SimpleNamespace(tags={}, run_id="r1"), log=SimpleNamespace(info=lambda m: None))
        with step_device(context, "model_scvi", asset_need_mib("model_scvi", 2000)) as device:
            assert device == "cpu"
            records = Ledger(lease_dir).records()
            assert [(r.kind, r.gpu_uuid) for r in records] == [("lease", "GPU-sim")]
        assert Ledger(lease_dir).records() == []
    finally:
        nvml.set_backend(None)
