"""Screenshots of the Dagster UI for a study that has materialisations, with Debian's chromium.

Starts `dagster dev` on the given DAGSTER_HOME and study, waits until the webserver answers, drives
the system chromium through Playwright (`pip install '.[screenshots]'`; no `playwright install`: it
uses /usr/bin/chromium), takes one PNG per page, clicks where a view needs it, and stops the process
group it started, also on errors or Ctrl-C:

    python benchmarks/tools/screenshots.py --home /tmp/ui_study/home --study /tmp/ui_study/study.yaml \
        --out /tmp/screens [--model cite/model_scvi --partition n=400_q=1.0_s=42]

Pages: global asset lineage, a model partition (its loss curve in place), the MI table, the
`scaling_plots` overview (its per-dataset figures in place), the backfills, the runs list and the runs
timeline (also with its chip of overlapping runs opened, which lists them).
Where an image is embedded instead (no local compute logs), "[Show Markdown]" is clicked and the
opened dialog captured (`*_dialog.png`).
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
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WINDOW = {"width": 1280, "height": 1600}  # the UI scrolls inside its panes: full_page adds nothing
DIALOG_LINK = "[Show Markdown]"  # how the UI shows a Markdown entry too long to render in place


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


# the timeline draws runs too close to tell apart as one chip with their count; clicked, it lists them
TIMELINE_BATCH = "css=[class^='RunTimeline_batchCount']"


def pages(model: str, partition: str) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    """name -> (path, text that shows the page has loaded its data, what to click before the shot: a
    text, or a ``css=`` selector)."""
    part = urllib.parse.quote(partition, safe="")
    return {
        "lineage": ("/asset-groups", None, ()),  # global asset lineage
        "model_partition": (f"/assets/{model}?view=partitions&partition={part}", "loss_curve", ()),
        "mi_table": ("/assets/results/mi_table", "preview", ()),
        "scaling_plots": ("/assets/results/scaling_plots", "Metadata", ()),
        "backfills": ("/overview/backfills", None, ()),
        "runs": ("/runs", None, ("Show runs within backfills",)),  # every run: target, tags, duration
        "runs_timeline": ("/overview/activity/timeline", None, ("1hr",)),  # a study is minutes long
        "runs_timeline_batch": ("/overview/activity/timeline", None, ("1hr", TIMELINE_BATCH)),
    }


def capture(page, url: str, png: Path, ready_text: str | None, clicks: tuple[str, ...], settle_ms: int) -> list[Path]:
    """The page after its queries and images settle; plus each opened image dialog."""
    page.goto(url, wait_until="networkidle")
    if ready_text:
        page.get_by_text(ready_text, exact=True).first.wait_for(timeout=60_000)
    for click in clicks:
        target = page.locator(click) if click.startswith("css=") else page.get_by_text(click, exact=True)
        target.first.click()
        page.wait_for_load_state("networkidle")
    page.wait_for_timeout(settle_ms)  # lazy Markdown renderer and images
    page.screenshot(path=str(png))
    shots = [png]
    links = page.get_by_text(DIALOG_LINK, exact=True)
    for i in range(links.count()):
        links.nth(i).click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        page.wait_for_timeout(settle_ms)
        shot = png.with_name(f"{png.stem}_dialog{i + 1}.png")
        page.screenshot(path=str(shot))
        shots.append(shot)
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")
    return shots


def chromium_path() -> str:
    """Debian's chromium, driven through Playwright's ``executable_path`` (no browser download)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        sys.exit("playwright not installed: pip install '.[screenshots]' (uses the system chromium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found: apt-get install -y chromium")
    return chromium


@contextmanager
def webserver(home: str, study: str, log_path: Path, dev: bool = False):
    """The base URL of a Dagster webserver (with ``dev``: ``dagster dev``, its daemon too) showing the study
    of DAGSTER_HOME ``home``; stops the process group it started when the block ends, also on errors."""
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_STUDY=str(study),
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = ["dagster", "dev"] if dev else ["dagster-webserver"]
    command[0] = str(Path(sys.executable).with_name(command[0]))
    with open(log_path, "w") as log:
        server = subprocess.Popen([*command, "-w", str(REPO / "workspace.yaml"), "-p", str(port)], cwd=REPO, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/server_info", 180)
            yield base
        finally:  # the whole group: the webserver and its code server (and with ``dev`` its daemon)
            try:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            except ProcessLookupError:
                pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="DAGSTER_HOME holding the study's materialisations")
    ap.add_argument("--study", required=True, help="study name or YAML path (SCALING_ASSETS_STUDY)")
    ap.add_argument("--out", default="/tmp/screens")
    ap.add_argument("--model", default="cite/model_scvi", help="asset key of the model page")
    ap.add_argument("--partition", default="n=400_q=1_s=42")
    ap.add_argument("--settle-ms", type=int, default=2000, help="wait after the network is idle")
    args = ap.parse_args(argv)

    chromium = chromium_path()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with webserver(args.home, args.study, out / "dagster_dev.log", dev=True) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=WINDOW)
            for name, (path, ready, clicks) in pages(args.model, args.partition).items():
                for png in capture(page, base + path, out / f"{name}.png", ready, clicks, args.settle_ms):
                    print(f"{png}  {base}{path}")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
