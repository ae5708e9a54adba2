#!/usr/bin/env bash
# Issue 42 item 6: the `laws_gpu` study (PCA and SCVI, simulated cite, 1,000-100,000 cells) on a lent GPU
# machine in one go, through `scaling-assets study run` (daemon, run queue, GPU leases), then its fit tables.
#
# Here, once, with a package registry (fills the git-ignored .whl: Dagster, scvi-tools, anndata, ... for the
# device's Python 3.12):            bash benchmarks/device_wheels.sh
# On the device (the run tool, carry [".whl"], timeout_s ~600):
#                                   bash benchmarks/gpu_laws_study.sh
# Prints the GPU, the plan's price (`study plan --gpu h100`), the study's wall time and the tail of its log, the
# noise- and size-law fit tables (identified fits, R^2, reasons) and per-setting SCVI training (epochs, steps,
# stop reason, seconds); copies the MI table, the fit tables, the plots and study_run.log to $OUT/laws_gpu.
# LIMIT_S (default 480) stops `study run` (SIGTERM: it cancels its backfills and stops its daemon) so that the
# tables of what finished are still printed inside a 10-minute call.
# TINY=1 runs the same path on a CPU in a few minutes: laws_gpu with 1,700 cells x 200 genes, sizes 100-800, the
# `test` budget and 5 LMI epochs (its numbers mean nothing; it shows the study, the script and the tables work).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}/laws_gpu
LIMIT_S=${LIMIT_S:-480}
mkdir -p "$OUT"
if ! python3 -c 'import dagster, scvi' 2>/dev/null; then
  [ -d .whl ] || { echo "no Dagster/scvi-tools here and no .whl to install (run benchmarks/device_wheels.sh first)"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
work=$(mktemp -d)
# a fresh instance with the repository's run queue; scvi-tools must not let JAX preallocate the GPU
export DAGSTER_HOME=$work/home SCALING_ASSETS_HOME=$work SCALING_ASSETS_PROGRESS=0 \
       XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cpu
python3 -c "import sys; from scaling_assets.compute.instance import write_instance_yaml as w; w(sys.argv[1])" "$DAGSTER_HOME"
study=laws_gpu
if [ "${TINY:-0}" = 1 ]; then
  study=$work/laws_gpu_tiny.yaml
  python3 - "$study" <<'EOF'
import sys

import yaml

from scaling_assets.study.spec import builtin_study_path

raw = yaml.safe_load(builtin_study_path("laws_gpu").read_text())
raw.update(budget="test", sizes=[100, 200, 400, 800], split={"test_cells": 500, "validation_cells": 200}, lmi={"epochs": 5})
for d in raw["datasets"].values():
    d.update(cells=1700, genes=200)
open(sys.argv[1], "w").write(yaml.safe_dump(raw, sort_keys=False))
EOF
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi)"
python3 -m scaling_assets.cli study plan --study "$study" --gpu h100 | grep -E '^(GPU|== total)'
start=$(date +%s)
timeout "$LIMIT_S" python3 -m scaling_assets.cli study run --study "$study" > "$OUT/study_run.log" 2>&1
echo "study run: exit $? after $(( $(date +%s) - start )) s (limit ${LIMIT_S} s)"
tail -25 "$OUT/study_run.log"
root=$work/study_runs/laws_gpu
python3 - "$root" "$OUT" <<'EOF'
import json, shutil, sys
from pathlib import Path

import pandas as pd

root, out = Path(sys.argv[1]), Path(sys.argv[2])
pd.set_option("display.width", 250, "display.max_columns", 30, "display.max_rows", 200)
# how SCVI trained at each setting (the model step's summary: epochs, steps, stop reason, budget smoke)
rows = []
for summary in sorted((root / "cite" / "model_scvi").glob("*/summary.json")):
    s = json.loads(summary.read_text())
    rows.append({k: s.get(k) for k in ("cells", "quality", "seed", "epochs", "steps", "stop_reason", "wall_time_s",
                                       "device", "budget_smoke")})
print("\nSCVI training:\n" + (pd.DataFrame(rows).sort_values(["quality", "cells"]).round(1).to_string(index=False)
                             if rows else "none"))
results = root / "results"
for name in ("mi_table", "noise_law_fits", "size_law_fits"):
    table = results / name / "all" / "table.parquet"
    if not table.exists():
        print(f"\n{name}: not written (the study did not reach its results)")
        continue
    df = pd.read_parquet(table)
    df.to_csv(out / f"{name}.csv", index=False)
    if name != "mi_table":
        keep = [c for c in ("dataset", "signal", "algorithm", "cells", "quality", "i_max", "u_bar", "i_inf", "n0", "s",
                            "r2", "identified", "reason", "budget_smoke") if c in df.columns]
        print(f"\n{name} ({len(df)} fits, {int(df['identified'].sum()) if 'identified' in df else '?'} identified):")
        print(df[keep].to_string(index=False))
    else:
        print(f"\nmi_table: {len(df)} rows")
        print(df.pivot_table(index=["algorithm", "signal", "cells"], columns="quality", values="mi_bits").round(2))
plots = results / "scaling_plots" / "all"
if plots.exists():
    shutil.copytree(plots, out / "plots", dirs_exist_ok=True)
EOF
echo "files: $OUT"
rm -rf "$work"
