"""``scaling-assets gpus``: the operator's view of GPUs, promised memory and placed runs."""

from __future__ import annotations

import json

import pytest

from scaling_assets.cli import main
from scaling_assets.gpu import nvml
from scaling_assets.gpu.leases import Ledger, gpu_step
from scaling_assets.gpu.nvml import FakeNvml

pytestmark = pytest.mark.usefixtures("lease_dir")  # conftest.py: every test its own ledger


def test_gpus_without_nvml(capsys):
    nvml.set_backend(FakeNvml([]))
    assert main(["gpus"]) == 0
    assert "no GPU / NVML not available" in capsys.readouterr().out
    assert main(["gpus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_gpus_shows_memory_promises_and_runs(capsys):
    nvml.set_backend(FakeNvml([
        {"uuid": "GPU-a", "name": "H100", "total_mib": 80000, "free_mib": 70000},
        {"uuid": "GPU-b", "name": "H100", "total_mib": 80000, "free_mib": 0, "error": "NVMLError_GpuIsLost"},
    ]))
    gpu = nvml.list_gpus()[0]
    Ledger().promise(gpu, 6000, "queued-run")  # launched by the coordinator, not started yet
    with gpu_step({}, 2000, run_id="cli-run", log=lambda m: None):
        assert main(["gpus"]) == 0
        text = capsys.readouterr().out
        assert main(["gpus", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
    assert "cuda:0  H100  free 70000 / 80000 MiB, promised 8000 MiB, 2 run(s)" in text
    assert "run cli-run" in text and "run queued-run  launching" in text
    assert "cuda:1  H100  UNUSABLE: NVMLError_GpuIsLost" in text
    assert rows[0]["promised_mib"] == 8000
    assert sorted(p["run_id"] for p in rows[0]["placed"]) == ["cli-run", "queued-run"]
    assert rows[1]["healthy"] is False
