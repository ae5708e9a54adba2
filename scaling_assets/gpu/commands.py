"""``scaling-assets gpus``: per GPU free/total memory, promised memory and the runs placed there."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gpus", help="show GPUs: free/total memory, memory promised to runs, runs/pids placed there"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--lease-dir", default=None, help="lease dir (default: $SCALING_ASSETS_LEASE_DIR, "
                   "else $DAGSTER_HOME/leases, else ~/.scaling_assets/leases)")
    p.set_defaults(func=_gpus)


def gpu_report(lease_dir: str | None = None) -> list[dict]:
    from scaling_assets.gpu import nvml
    from scaling_assets.gpu.leases import Ledger

    gpus = nvml.list_gpus()
    if not gpus:
        return []
    ledger = Ledger(lease_dir)
    with ledger.locked():
        records = ledger.records()
    usage = nvml.process_usage_mib()
    rows = []
    for g in gpus:
        mine = [r for r in records if r.gpu_uuid == g.uuid]
        promised = sum(r.outstanding_mib(usage) for r in mine)
        rows.append({
            "device": g.device, "uuid": g.uuid, "name": g.name, "healthy": g.healthy, "error": g.error,
            "free_mib": g.free_mib, "total_mib": g.total_mib, "promised_mib": promised,
            "placed": [
                {"kind": r.kind, "run_id": r.run_id, "pid": r.pid, "need_mib": r.need_mib,
                 "outstanding_mib": r.outstanding_mib(usage)}
                for r in mine
            ],
        })
    return rows


def _gpus(args: argparse.Namespace) -> int:
    rows = gpu_report(args.lease_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no GPU / NVML not available: GPU steps run on CPU")
        return 0
    for r in rows:
        if not r["healthy"]:
            print(f"{r['device']}  {r['name']}  UNUSABLE: {r['error']}")
            continue
        print(f"{r['device']}  {r['name']}  free {r['free_mib']} / {r['total_mib']} MiB, "
              f"promised {r['promised_mib']} MiB, {len(r['placed'])} run(s)")
        for p in r["placed"]:
            who = f"pid {p['pid']}" if p["pid"] else "launching"
            print(f"    {p['kind']:8s} run {p['run_id'] or '-'}  {who}  need {p['need_mib']} MiB, "
                  f"still promised {p['outstanding_mib']} MiB")
    return 0
