"""A UI that fits (issue 43, item 4): the images the platform attaches show whole and legible in the Dagster
UI at 1,280 x 900, descriptions agree with the metadata, and a model's partitions read as the study's grid.

The figures' own checks (text size, nothing drawn outside them) and the metadata names are fast; the slow
test materialises a tiny study, starts the webserver and measures every image in Chromium
(benchmarks/ui_fit.py)."""

import io
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
from matplotlib.text import Text

from scaling_assets_tests.conftest import REPO, write_tiny_study
from scaling_assets_tests.test_metrics_laws import grid

MIN_TEXT_PX = 9  # the smallest legible text at 1,280 x 900 (issue 43)
# The asset Overview's value column at 1,280 x 900 beside metadata names of NAME_CHARS characters, measured in
# Chromium by benchmarks/ui_fit.py (Dagster 1.13): 307 px on "Dec 7, 7:51 PM" (8.43 px more for each character
# fewer), 12.4 px less on the widest dates ("Dec 17, 12:36 PM"), whose Timestamp column is wider
NAME_CHARS, VALUE_COLUMN_PX = 22, 294
TIMESTAMP_SLACK_PX = 13  # room an Overview image needs today to fit on any date


def drawn_texts(monkeypatch) -> list:
    """Collects (text, font size in points, extent in pixels) of every text a figure draws when saved."""
    drawn = []
    draw = Text.draw

    def recording(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_fontsize(), self.get_window_extent(renderer)))

    monkeypatch.setattr(Text, "draw", recording)
    return drawn


def assert_fits(png: Path, drawn: list) -> None:
    from scaling_assets.metrics.plots import DPI

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width <= VALUE_COLUMN_PX, png
    assert drawn, png
    for text, points, box in drawn:
        assert points * DPI / 72 >= MIN_TEXT_PX, (png.name, text, points)
        assert box.x0 >= -1 and box.x1 <= width + 1 and box.y0 >= -1 and box.y1 <= height + 1, (png.name, text, box)


def test_loss_curve_text_is_legible_and_inside_the_image(tmp_path, monkeypatch):
    import pandas as pd

    from scaling_assets.assets.models import loss_title
    from scaling_assets.metrics.plots import plot_loss_curves

    drawn = drawn_texts(monkeypatch)
    history = pd.DataFrame({"step": [100, 200, 300, 400], "train_loss": [9.1, 8.2, 7.9, 7.7],
                            "validation_loss": [9.3, 8.6, 8.4, 8.35]})
    # the longest title the model assets give: algorithm, dataset and setting key of the default study
    title = loss_title("geneformer", "development", "n=3200_q=0.03_s=42")
    png = plot_loss_curves(history, tmp_path / "loss.png", title=title)
    assert_fits(png, drawn)


def test_scaling_plot_text_is_legible_and_inside_the_image(tmp_path, monkeypatch):
    from scaling_assets.metrics.laws import fit_noise_laws, fit_size_laws
    from scaling_assets.metrics.plots import plot_signal_laws

    mi = grid().assign(dataset="development")  # the longest dataset name of the default study
    mi["budget_smoke"] = mi.algorithm == "scvi"  # the longest legend entries: "(budget smoke)" notes
    noise, size = fit_noise_laws(mi), fit_size_laws(mi)
    drawn = drawn_texts(monkeypatch)
    for signal in ("cell_type", "protein"):  # fitted laws in every panel; one size, too few points to fit
        drawn.clear()
        assert_fits(plot_signal_laws(mi, noise, size, "development", signal, tmp_path / f"{signal}.png").path, drawn)


def test_metadata_names_beside_images_leave_them_room():
    """The Overview's key column is as wide as the asset's longest metadata name: the image column beside it
    holds a figure only while every name stays within NAME_CHARS."""
    from scaling_assets.assets.models import METADATA_FIELDS, SHORT_LABELS
    from scaling_assets.data.tasks import TASKS
    from scaling_assets.study.spec import load_study

    model_names = [SHORT_LABELS.get(k, k) for k in METADATA_FIELDS] + ["loss_curve", "hyperparameters", "path"]
    assert max(map(len, model_names)) <= NAME_CHARS, max(model_names, key=len)
    study = load_study("default")
    plot_names = [f"{d}/{s}" for d, cfg in study.datasets.items() for s in TASKS[cfg.task].mi_signals]
    assert max(map(len, plot_names)) <= NAME_CHARS, max(plot_names, key=len)


GRID_STUDY = dict(seeds=[42, 7], algorithms=["pca", "scvi"], sizes=[100, 150, 200], qualities=[1.0, 0.5, 0.25],
                  algorithm_grids={"scvi": {"sizes": [150, 200], "qualities": [1.0, 0.25]}})


def test_model_description_lays_its_partitions_out_as_the_study_grid(tmp_path):
    from dagster import AssetKey

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.spec import load_study

    study = load_study(write_tiny_study(tmp_path / "s.yaml", tmp_path / "root", "grid", **GRID_STUDY))
    graph = build_definitions(study).resolve_asset_graph()
    for algorithm, sizes, qualities in (("pca", ["100", "150", "200"], ["1", "0.5", "0.25"]),
                                        ("scvi", ["150", "200"], ["1", "0.25"])):
        node = graph.get(AssetKey(["cite", f"model_{algorithm}"]))
        table = [line for line in node.description.splitlines() if line.startswith("|")]
        assert [c.strip() for c in table[0].strip("|").split("|")] == ["n \\ q", *qualities]
        assert [row.strip("|").split("|")[0].strip() for row in table[2:]] == sizes
        links = [(row.strip("|").split("|")[0].strip(), col, link) for row in table[2:]
                 for col, cell in zip(qualities, row.strip("|").split("|")[1:])
                 for link in re.findall(r"\[s=\d+\]\(([^)]+)\)", cell)]
        keys = [urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["partition"][0] for _, _, link in links]
        assert sorted(keys) == sorted(node.partitions_def.get_partition_keys())  # each partition once
        assert all(key.startswith(f"n={n}_q={q}_s=") for (n, q, _), key in zip(links, keys))  # in its row and column
        assert all(link.startswith(f"/assets/cite/model_{algorithm}?view=partitions&partition=") for _, _, link in links)


def test_a_large_grid_names_its_seeds_without_links(tmp_path, monkeypatch):
    import scaling_assets.assets.common as common
    from scaling_assets.study.spec import load_study

    study = load_study(write_tiny_study(tmp_path / "s.yaml", tmp_path / "root", "grid", **GRID_STUDY))
    monkeypatch.setattr(common, "GRID_LINKS_MAX", 17)  # pca's grid: 3 sizes x 3 qualities x 2 seeds = 18
    grid_md = common.setting_grid(study, "cite", "model_pca", "pca")
    assert "](" not in grid_md and "filter finds a row, `n=100_`, or a column, `_q=0.25_`" in grid_md
    assert grid_md.splitlines()[-1] == "| 200 | 2 seeds | 2 seeds | 2 seeds |"
    assert "](" in common.setting_grid(study, "cite", "model_scvi", "scvi")  # 2 x 2 x 2: linked


def test_multi_partitions_cannot_reach_a_model_from_its_seed(tmp_path):
    """Why the grid is drawn in the description instead of Dagster's multi-partitions: with a model
    partitioned (n) x (q, s), the seed-level assets upstream (split, pool_counts, pca_genes: `s=42`) map to it
    only by a custom PartitionMapping, which the webserver's snapshot drops (DESIGN §8); Dagster's built-in
    StaticPartitionMapping refuses a multi-partitioned side. When this stops raising, reconsider."""
    from dagster import (AssetIn, DagsterInvalidDefinitionError, Definitions, MultiPartitionsDefinition,
                         StaticPartitionMapping, StaticPartitionsDefinition, asset)

    grid_ = MultiPartitionsDefinition({"n": StaticPartitionsDefinition(["100", "200"]),
                                       "q_s": StaticPartitionsDefinition(["q=1_s=42", "q=0.5_s=42"])})

    @asset(partitions_def=StaticPartitionsDefinition(["s=42"]))
    def split():
        return 1

    @asset(partitions_def=grid_, ins={"split": AssetIn(partition_mapping=StaticPartitionMapping(
        {"s=42": [str(k) for k in grid_.get_partition_keys()]}))})
    def model(split):
        return split

    with pytest.raises(DagsterInvalidDefinitionError, match="Invalid partition mapping from model to split") as err:
        Definitions.validate_loadable(Definitions(assets=[split, model]))
    assert "Downstream partitions definition must be a StaticPartitionsDefinition" in str(err.value.__cause__)


def _browser_or_skip() -> str:
    """Debian's chromium through Playwright, or skip saying what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install '.[screenshots]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    try:
        with sync_playwright() as pw:
            pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]).close()
    except Exception as exc:  # playwright's Error: the browser did not start here
        pytest.skip(f"chromium cannot start here: {exc}")
    return chromium


@pytest.mark.slow
def test_every_image_fits_its_column_in_chromium(tmp_path, monkeypatch):
    """A tiny study (PCA and SCVI on one dataset, 2 sizes x 2 qualities), materialised on a DAGSTER_HOME with
    local compute logs; its loss curves and scaling plots on the Overview, Partitions and Events tabs."""
    from dagster import AssetKey, DagsterInstance

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.serial import run_study
    from scaling_assets.study.spec import load_study

    _browser_or_skip()
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    path = write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "ui", algorithms=["pca", "scvi"],
                            sizes=[100, 200])
    study = load_study(path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SCALING_ASSETS_PROGRESS", "0")
    with DagsterInstance.get() as instance:
        result = run_study(study, instance, out=io.StringIO())
        assert not result.get("failed"), result
        # descriptions agree with the metadata: a loss curve exactly where the description does not deny one
        graph = build_definitions(study).resolve_asset_graph()
        for algorithm in ("pca", "scvi"):
            key = AssetKey(["cite", f"model_{algorithm}"])
            event = instance.get_latest_materialization_event(key)
            has_curve = "loss_curve" in event.asset_materialization.metadata
            assert has_curve == ("no loss curve" not in graph.get(key).description), algorithm

    # the maintained tool, run as a user runs it (tests import nothing from benchmarks/)
    report = tmp_path / "fits.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tools" / "ui_fit.py"), "--home", str(home),
                           "--study", str(path), "--json", str(report), "--log", str(tmp_path / "webserver.log")],
                          capture_output=True, text=True, timeout=900)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    fits = [SimpleNamespace(**f) for f in json.loads(report.read_text())]
    assert {(f.asset, f.tab) for f in fits} == {(a, t) for a in ("cite/model_scvi", "results/scaling_plots")
                                                for t in ("overview", "events", "partitions")} - {
        ("results/scaling_plots", "partitions")}
    overview = [f for f in fits if f.tab == "overview"]
    assert min(f.room for f in overview) >= TIMESTAMP_SLACK_PX, [(f.title, f.room) for f in overview]
    assert all(f.ok for f in fits), "\n".join(f"{f.asset} {f.tab}: {f.title} room {f.room:.0f} px, shown "
                                              f"{f.shown:.0f} of {f.natural} px" for f in fits if not f.ok)
