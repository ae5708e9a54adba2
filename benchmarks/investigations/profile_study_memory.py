"""Peak RSS per Dagster run of an in-process study (what `run_study` does), sampled every 50 ms.

    python benchmarks/investigations/profile_study_memory.py [--datasets cite] [--no-tune-allocator]

Prints, per batch (one Dagster run), the wall time and the process's peak RSS while it ran, so the
stage that grows the process shows itself. Uses the default study's grid on a throw-away root.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared harness
from harness import ProcessSampler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="cite")
    ap.add_argument("--no-tune-allocator", action="store_true")
    args = ap.parse_args()
    if args.no_tune_allocator:
        os.environ["SCALING_ASSETS_TUNE_ALLOCATOR"] = "0"
    os.environ["SCALING_ASSETS_PROGRESS"] = "0"
    import yaml
    from dagster import DagsterInstance

    import scaling_assets.study.serial as rs
    from scaling_assets.study.spec import load_study

    root = Path(tempfile.mkdtemp(prefix="profile-study-"))
    default = yaml.safe_load((Path(rs.__file__).parent / "studies" / "default.yaml").read_text())
    default["root"] = str(root / "root")
    default["datasets"] = {k: v for k, v in default["datasets"].items() if k in args.datasets.split(",")}
    (root / "study.yaml").write_text(yaml.safe_dump(default))
    study = load_study(root / "study.yaml")

    sampler, rows = ProcessSampler(lambda: [os.getpid()], 0.05), []
    sampler.start()
    real = rs.materialize

    def measured(assets, selection, partition_key=None, **kw):
        before = psutil.Process().memory_info().rss
        t0, wall0 = time.time(), time.perf_counter()
        result = real(assets, selection=selection, partition_key=partition_key, **kw)
        during = [max(s["max_one_mib"].values(), default=0) * 2**20 for s in list(sampler.samples) if s["t"] >= t0]
        rows.append((",".join(k.path[-1] for k in selection)[:60], partition_key or "",
                     time.perf_counter() - wall0, before, max([before, *during])))
        return result

    rs.materialize = measured
    print(f"start RSS {psutil.Process().memory_info().rss / 2**20:.0f} MiB; tune_allocator "
          f"{'off' if args.no_tune_allocator else 'on'}")
    rs.run_study(study, DagsterInstance.ephemeral(), out=io.StringIO())
    print(f"{'assets':<62}{'partition':<20}{'wall s':>8}{'RSS before MiB':>16}{'peak MiB':>10}")
    for name, part, wall, before, peak in rows:
        print(f"{name:<62}{part:<20}{wall:8.1f}{before / 2**20:16.0f}{peak / 2**20:10.0f}")
    print(f"overall peak RSS {max(r[4] for r in rows) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
