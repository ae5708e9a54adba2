"""Do the platform's images fit the Dagster UI? Measured in Chromium at 1,280 x 900.

Starts a Dagster webserver on a DAGSTER_HOME that holds a materialised study and asks it (GraphQL) which
assets' latest materialisation carries an image: a Markdown metadata entry ``![title](url)`` (loss
curves, scaling plots). For each, opens its Overview, Partitions (the latest materialised partition) and
Events tabs in Debian's chromium, waits until the images have loaded, and measures every one:

- ``room``: the right edge of the space it can be seen in (its table cell's content box, and the nearest
  ancestor that clips: a scrolling pane, the window) minus the image's right edge; negative = cut off;
- ``shown`` against ``natural`` width: the plots draw no text under 9 px at their natural size
  (scaling_assets_tests/test_assets_ui_fit.py), so an image shown at its natural width shows none under 9 px.

Prints one row per image and tab, saves screenshots with ``--shots``, exits 1 if an image is cut, scaled
down or not shown in place:

    python benchmarks/tools/ui_fit.py --home /tmp/ui_study/home --study /tmp/ui_study/study.yaml \
        [--assets model_scvi scaling_plots] [--shots benchmarks/results --shot-prefix 2026-12-07_cpu2_ui] \
        [--json fits.json]

``--json`` writes every measurement (asset, tab, title, natural, shown, room, clipper, ok) for a caller such
as ``scaling_assets_tests/test_assets_ui_fit.py``, which runs this script as a process.

Only reads the DAGSTER_HOME (point it at a copy of a study's home, not at one a study is running in).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import chromium_path, webserver  # noqa: E402

WINDOW = {"width": 1280, "height": 900}
IMAGE = re.compile(r"!\[[^\]]*\]\([^)]+\)")  # a Markdown image: how the platform attaches PNGs

LATEST = """{ assetNodes { assetKey { path }
  assetMaterializations(limit: 1) { partition metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } }"""

# Every image of the page's metadata tables, measured against its cell and whatever clips it.
MEASURE = """() => [...document.querySelectorAll('td img')].map(img => {
  const box = img.getBoundingClientRect();
  const cell = img.closest('td'), cellBox = cell.getBoundingClientRect();
  let right = cellBox.right - parseFloat(getComputedStyle(cell).paddingRight), clipper = 'cell';
  for (let el = cell; el; el = el.parentElement) {
    if (getComputedStyle(el).overflowX === 'visible') continue;
    const edge = el.getBoundingClientRect().left + el.clientLeft + el.clientWidth;
    if (edge < right) { right = edge; clipper = el.className.toString().split(/\\s+/)[0] || el.tagName; }
  }
  if (window.innerWidth < right) { right = window.innerWidth; clipper = 'window'; }
  return {title: img.alt, natural: img.naturalWidth, shown: box.width, right: box.right, limit: right, clipper};
})"""

# Scrolls the pane the image is in vertically only (scrollIntoView would also scroll the metadata table's
# clipping container sideways and hide what is cut off), so that the image is centred or its top in view.
SCROLL_TO = """img => {
  let pane = img.parentElement;
  while (pane && !(/(auto|scroll)/.test(getComputedStyle(pane).overflowY) && pane.scrollHeight > pane.clientHeight))
    pane = pane.parentElement;
  const box = img.getBoundingClientRect(), top = pane ? pane.getBoundingClientRect().top : 0;
  const shift = box.top - top - Math.max(0, (window.innerHeight - top - box.height) / 2);
  if (pane) pane.scrollTop += shift; else window.scrollBy(0, shift);
}"""

LOADED = """n => { const imgs = [...document.querySelectorAll('td img')];
  return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }"""


@dataclass
class Fit:
    asset: str
    tab: str
    title: str
    natural: int
    shown: float
    room: float
    clipper: str

    @property
    def ok(self) -> bool:
        return self.room >= 0 and self.shown >= self.natural


def image_assets(base: str) -> list[tuple[str, str | None, int]]:
    """(asset path, partition or None, images) of every asset whose latest materialisation has images."""
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": LATEST}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        nodes = json.load(r)["data"]["assetNodes"]
    found = []
    for node in nodes:
        for event in node["assetMaterializations"]:
            images = sum(len(IMAGE.findall(e.get("mdStr") or "")) for e in event["metadataEntries"])
            if images:
                found.append(("/".join(node["assetKey"]["path"]), event["partition"], images))
    return sorted(found)


def tabs(asset: str, partition: str | None) -> dict[str, str]:
    path = "/assets/" + "/".join(urllib.parse.quote(p, safe="") for p in asset.split("/"))
    pages = {"overview": path, "events": f"{path}?view=events"}
    if partition is not None:
        pages["partitions"] = f"{path}?view=partitions&partition={urllib.parse.quote(partition, safe='')}"
    return pages


def measure(page, url: str, images: int) -> list[dict]:
    """The page's images once ``images`` of them have loaded; [] when they do not show in place."""
    page.goto(url, wait_until="networkidle")
    try:
        page.wait_for_function(LOADED, arg=images, timeout=60_000)
    except Exception:  # playwright's TimeoutError: shown behind "[Show Markdown]", or not at all
        return []
    return page.evaluate(MEASURE)


def screenshot(page, shots: Path, name: str, image: bool) -> None:
    """The window as it is (the description at the top of the Overview), or with the first image centred."""
    from PIL import Image  # matplotlib's dependency

    if image:
        page.locator("td img").first.evaluate(SCROLL_TO)
    page.screenshot(path=str(shots / name))
    # 64 colours: a third of the bytes, and a UI with its plots has few colours
    Image.open(shots / name).convert("RGB").quantize(64).save(shots / name, optimize=True)
    print(f"saved {shots / name}")


def run(home: str, study: str, filters: list[str], shots: Path | None, prefix: str, log: Path) -> list[Fit]:
    """Every image of every matching asset on each tab; with ``shots``, screenshots of the first asset of
    each name (``model_scvi`` of one dataset): its description, and its Overview and Partitions tabs."""
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    fits: list[Fit] = []
    shot_names: set[str] = set()
    with webserver(home, study, log) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=WINDOW)
            for asset, partition, images in image_assets(base):
                if filters and not any(f in asset for f in filters):
                    continue
                shoot = shots is not None and asset.split("/")[-1] not in shot_names
                shot_names.add(asset.split("/")[-1])
                for tab, url in tabs(asset, partition).items():
                    shown = measure(page, base + url, images)
                    fits += [Fit(asset, tab, m["title"], m["natural"], m["shown"], m["limit"] - m["right"],
                                 m["clipper"]) for m in shown]
                    if len(shown) < images:
                        fits.append(Fit(asset, tab, f"{images - len(shown)} image(s) not shown in place", 0, 0,
                                        float("-inf"), "-"))
                    if shoot and shown and tab in ("overview", "partitions"):
                        stem = f"{prefix}_{asset.replace('/', '_')}"
                        if tab == "overview" and partition is not None:
                            screenshot(page, shots, f"{stem}_description.png", image=False)
                        screenshot(page, shots, f"{stem}_{tab}.png", image=True)
        finally:
            browser.close()
    return fits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="DAGSTER_HOME holding the study's materialisations")
    ap.add_argument("--study", required=True, help="study name or YAML path (SCALING_ASSETS_STUDY)")
    ap.add_argument("--assets", nargs="*", default=[], help="only assets whose key contains one of these")
    ap.add_argument("--shots", type=Path, help="save the Overview and Partitions tabs here, image in view")
    ap.add_argument("--shot-prefix", default="ui", help="file names: <prefix>_<asset>_<tab>.png")
    ap.add_argument("--log", type=Path, default=Path("/tmp/ui_fit_webserver.log"))
    ap.add_argument("--json", type=Path, help="write every measurement here as a JSON list")
    args = ap.parse_args(argv)
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    fits = run(args.home, args.study, args.assets, args.shots, args.shot_prefix, args.log)
    print(f"{'asset':34} {'tab':10} {'natural':>7} {'shown':>6} {'room':>6}  {'edge':28} image")
    for f in fits:
        print(f"{f.asset:34} {f.tab:10} {f.natural:7d} {f.shown:6.0f} {f.room:6.0f}  {f.clipper[:28]:28} "
              f"{f.title}{'' if f.ok else '  <- DOES NOT FIT'}")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(f), "ok": f.ok} for f in fits], indent=1))
    bad = [f for f in fits if not f.ok]
    print(f"{len(fits) - len(bad)} of {len(fits)} images fit at {WINDOW['width']} x {WINDOW['height']}")
    return 1 if bad or not fits else 0


if __name__ == "__main__":
    sys.exit(main())
