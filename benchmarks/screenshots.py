"""Screenshots of the Dagster UI for a study that has materialisations, with Debian's headless chromium.

Starts `dagster dev` on the given DAGSTER_HOME and study, waits until the webserver answers, takes one
PNG per page (global asset lineage, a model partition, the MI table, the backfills, the runs timeline),
and stops the process group it started, also on errors or Ctrl-C:

    python benchmarks/screenshots.py --home /tmp/ui_study/home --study /tmp/ui_study/study.yaml \
        --out /tmp/screens [--model cite/model_scvi --partition n=400_q=1.0_s=42]

Needs `chromium` (`apt-get install -y chromium`). Each page gets `--virtual-time-budget` of headless
time so the UI's GraphQL queries finish before the capture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def pages(model: str, partition: str) -> dict[str, str]:
    part = urllib.parse.quote(partition, safe="")
    return {
        "lineage": "/asset-groups",  # global asset lineage
        "model_partition": f"/assets/{model}?view=partitions&partition={part}",
        "mi_table": "/assets/results/mi_table",
        "scaling_plots": "/assets/results/scaling_plots",
        "backfills": "/overview/backfills",
        "runs_timeline": "/overview/activity/timeline",
    }


def screenshot(chromium: str, url: str, png: Path, wait_ms: int) -> None:
    profile = png.parent / f".profile-{png.stem}"
    try:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=1280,900",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=wait_ms / 1000 + 90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="DAGSTER_HOME holding the study's materialisations")
    ap.add_argument("--study", required=True, help="study name or YAML path (SCALING_ASSETS_STUDY)")
    ap.add_argument("--out", default="/tmp/screens")
    ap.add_argument("--model", default="cite/model_scvi", help="asset key of the model page")
    ap.add_argument("--partition", default="n=400_q=1_s=42")
    ap.add_argument("--wait-ms", type=int, default=20000, help="headless time per page to render")
    args = ap.parse_args(argv)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found: apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=args.home, SCALING_ASSETS_STUDY=args.study,
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    dagster = Path(sys.executable).with_name("dagster")
    log = open(out / "dagster_dev.log", "w")
    server = subprocess.Popen([str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port)],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/server_info", 180)
        for name, path in pages(args.model, args.partition).items():
            png = out / f"{name}.png"
            screenshot(chromium, base + path, png, args.wait_ms)
            print(f"{png}  {base}{path}")
    finally:  # the whole group: dagster dev, its webserver, daemon and code server
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
