"""Plots are written as valid PNGs, including groups without a fit."""

import numpy as np
import pandas as pd
import pytest

from scaling_assets.errors import InputError
from scaling_assets.metrics.laws import fit_noise_laws, fit_size_laws
from scaling_assets.metrics.plots import loss_points, plot_loss_curves, plot_signal_laws
from scaling_assets_tests.test_metrics_laws import grid
from scaling_assets_tests.test_assets_ui_fit import VALUE_COLUMN_PX

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def two_datasets():
    """The laws' test grid as dataset `sim`, plus a copy as dataset `other` with one signal only."""
    df = grid()
    return pd.concat([df, df[df.signal == "cell_type"].assign(dataset="other")], ignore_index=True)


def test_one_figure_per_dataset_and_signal_with_points_in_every_panel(tmp_path):
    df = two_datasets()
    noise, size = fit_noise_laws(df), fit_size_laws(df)
    assert not noise.fitted.all() and not size.fitted.all()  # unfitted groups still plot their points
    cell_type = plot_signal_laws(df, noise, size, "sim", "cell_type", tmp_path / "plots" / "sim_cell_type.png")
    protein = plot_signal_laws(df, noise, size, "sim", "protein", tmp_path / "plots" / "sim_protein.png")
    assert_png(cell_type.path) and assert_png(protein.path)
    # MI vs UMIs (pca and scvi at the largest N: 5 qualities each), then MI vs cells per algorithm
    # (4 sizes x 5 qualities); protein has one size: no size-law panel
    assert cell_type.points == {"noise law at n = 1,000,000": 10, "size law, pca": 20, "size law, scvi": 20}
    assert protein.points == {"noise law at n = 1,000": 2}
    assert protein.curves == {"noise law at n = 1,000": 0}  # 2 qualities: not fitted, no curve
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left
    # no fits at all (e.g. before the fit assets ran) still plots the points, and draws no law
    bare = plot_signal_laws(df, noise.iloc[0:0], size.iloc[0:0], "sim", "cell_type", tmp_path / "bare.png")
    assert all(bare.points.values()) and not any(bare.curves.values())
    with pytest.raises(InputError, match="no rows for dataset 'missing', signal 'cell_type'"):
        plot_signal_laws(df, noise, size, "missing", "cell_type", tmp_path / "x.png")


def test_only_identified_fits_are_drawn_and_the_others_say_why(tmp_path):
    from scaling_assets.metrics.laws import fit_status

    df = grid()
    size = fit_size_laws(df)
    pca = size[(size.signal == "cell_type") & (size.algorithm == "pca") & size.identified]
    assert len(pca) >= 2
    size.loc[pca.index[0], "identified"] = False  # as if one quality's fit were not identified
    size.loc[pca.index[0], "reason"] = "n0 at its lower bound 10"
    drawn = plot_signal_laws(df, fit_noise_laws(df), size, "sim", "cell_type", tmp_path / "p.png")
    assert drawn.curves["size law, pca"] == len(pca) - 1
    unidentified = drawn.markers[(drawn.markers.panel == "size law, pca")
                                 & (drawn.markers.series == size.loc[pca.index[0], "quality"])]
    assert len(unidentified) == 4 and set(unidentified.marker) == {"s"}  # a square: fitted, not identified
    assert fit_status(size.loc[pca.index[0]]) == "not identified"
    assert fit_status(pd.Series({"fitted": False, "reason": "no dependence on N: MI spread ..."})) == "no N dependence"
    assert fit_status(pd.Series({"fitted": False, "reason": "too few points: 3 distinct cell counts"})) == \
        "too few points"
    assert fit_status(pd.Series({"fitted": False, "reason": "fit failed: curve_fit did not converge"})) == "not fitted"
    assert fit_status(None) == "not fitted"


def study_like_table():
    """The default study's shape in small: PCA rising with N, a random projection flat in N (its estimates
    the same at every N), SCVI with one budget-smoke model (n = 1,000, q = 0.03), Geneformer at one
    setting on its own grid ("smoke test"), and a signal whose PCA size series is too short (3 sizes)."""
    from scaling_assets_tests.test_metrics_laws import noise_law, size_law

    rng = np.random.default_rng(8)
    rows = []
    grid_of = {"pca": [(n, q) for n in (100, 300, 1000, 3000) for q in (1.0, 0.3, 0.1, 0.03)],
               "random_projection": [(n, q) for n in (100, 1000, 3000) for q in (1.0, 0.3, 0.1, 0.03)],
               "scvi": [(n, q) for n in (100, 300, 1000, 3000) for q in (1.0, 0.3, 0.1, 0.03)],
               "geneformer": [(3000, 0.03)]}
    for algorithm, settings in grid_of.items():
        for n, q in settings:
            u = round(q * 2000)
            ceiling = {"pca": size_law(n, 2.5, 30.0, 0.5), "scvi": size_law(n, 2.8, 60.0, 0.4),
                       "random_projection": 1.4, "geneformer": 0.5}[algorithm]
            mi = noise_law(u, ceiling, 200.0) + (0.0 if algorithm == "random_projection" else rng.normal(0, 0.01))
            rows.append(dict(dataset="sim", task="cite", signal="cell_type", algorithm=algorithm, cells=n, quality=q,
                             umis_nominal=u, umis_per_cell=float(u), seed=42, mi_bits_raw=mi, mi_bits=max(mi, 0.0),
                             grid="smoke test" if algorithm == "geneformer" else "study",
                             budget_smoke=algorithm == "scvi" and n == 1000 and q == 0.03,
                             learns_from_cells=algorithm != "random_projection"))
    df = pd.DataFrame(rows)
    short = df[(df.algorithm == "pca") & (df.cells < 3000)].assign(signal="protein")
    return pd.concat([df, short], ignore_index=True)


def test_each_point_drawn_has_the_marker_of_its_fit_row_and_hollow_only_where_it_is_budget_smoke(tmp_path):
    from scaling_assets.metrics.laws import fit_status
    from scaling_assets.metrics.plots import MARKERS

    df = study_like_table()
    noise, size = fit_noise_laws(df), fit_size_laws(df)
    drawn = plot_signal_laws(df, noise, size, "sim", "cell_type", tmp_path / "p.png")
    m = drawn.markers
    noise_panel = "noise law at n = 3,000"
    assert list(drawn.points) == [noise_panel, "size law, pca", "size law, random_projection", "size law, scvi"]
    # size panels: every point of a quality's series carries the marker of that (algorithm, quality) fit row
    for row in size[(size.signal == "cell_type") & (size.algorithm != "geneformer")].itertuples():  # one size: no panel
        pts = m[(m.panel == f"size law, {row.algorithm}") & (m.series == row.quality)]
        assert len(pts) == (row.n_points if row.learns_from_cells else row.sizes_pooled)  # a point per size
        assert set(pts.status) == {fit_status(size.loc[row.Index])} and set(pts.marker) == {
            MARKERS[fit_status(size.loc[row.Index])]}
    assert set(m[m.panel == "size law, random_projection"].status) == {"no N dependence"}
    # the plateau lines: one per flat series, at the fit table's I_inf
    plateaus = drawn.lines[drawn.lines.kind == "plateau"]
    flat = size[(size.signal == "cell_type") & ~size.depends_on_n.fillna(True)]
    assert sorted(zip(plateaus.series, plateaus.level)) == sorted(zip(flat.quality, flat.i_inf)) and len(flat) == 4
    # hollow: exactly the budget-smoke point, not its whole series
    smoke = m[m.hollow]
    assert smoke[["panel", "series", "x"]].values.tolist() == [["size law, scvi", 0.03, 1000.0]]
    assert not m[(m.panel == "size law, scvi") & (m.series == 0.03) & (m.x != 1000)].hollow.any()
    # noise panel: one series per algorithm; random projection pooled over N (one point per quality)
    noise_pts = m[m.panel == noise_panel]
    assert noise_pts.groupby("series").size().to_dict() == {"geneformer": 1, "pca": 4, "random_projection": 4,
                                                           "scvi": 4}
    assert set(noise_pts[noise_pts.series == "geneformer"].status) == {"too few points"}
    nrow = noise[noise.algorithm == "random_projection"]
    assert len(nrow) == 1 and set(noise_pts[noise_pts.series == "random_projection"].status) == {fit_status(nrow.iloc[0])}
    # the short signal: 3 sizes, too few points for a size law
    protein = plot_signal_laws(df, noise, size, "sim", "protein", tmp_path / "q.png").markers
    assert set(protein[protein.panel == "size law, pca"].status) == {"too few points"}


def test_figures_are_legible_at_the_ui_width_and_no_legend_covers_data():
    """Text >= 9 pt at DPI 100 (12.5-px lines, ~9-px capitals) with the image WIDTH_PX wide; every text inside
    the image; legends in axes of their own, clear of every data axes. On the default study's shape (also with
    the algorithms' largest sizes apart, as SCVI's stops below PCA's, which titles the noise panel "each at its
    largest n") and on the real-data example's (3 algorithms x 5 sizes x 5 qualities)."""
    import matplotlib.pyplot as plt
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    from scaling_assets.metrics.plots import MIN_TEXT_PT, WIDTH_PX, draw_signal_laws

    cbmc = study_like_table()
    cbmc = cbmc[(cbmc.algorithm != "geneformer") & (cbmc.signal == "cell_type")].assign(dataset="cbmc")
    apart = study_like_table()
    apart = apart[(apart.algorithm != "scvi") | (apart.cells <= 300)]
    for df, dataset in ((study_like_table(), "sim"), (apart, "sim"), (cbmc, "cbmc")):
        fig, drawn = draw_signal_laws(df, fit_noise_laws(df), fit_size_laws(df), dataset, "cell_type")
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            width, height = fig.bbox.width, fig.bbox.height
            assert width == WIDTH_PX
            texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
            assert len(texts) > 20
            for t in texts:
                assert t.get_fontsize() >= MIN_TEXT_PT, t.get_text()
                box = t.get_window_extent(renderer)
                assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, t.get_text()
            data_axes = [ax for ax in fig.axes if ax.axison]
            legends = fig.findobj(Legend)
            assert len(data_axes) == len(drawn.points) and len(legends) == len(data_axes) + 1
            for legend in legends:
                box = legend.get_window_extent(renderer)
                assert not legend.axes.axison  # in an axes of its own
                assert box.x0 >= 0 and box.x1 <= width
                assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in data_axes)
        finally:
            plt.close(fig)


def test_law_report_writes_tables_and_a_figure_per_signal(tmp_path):
    from scaling_assets.metrics.law_report import read_mi_table, write_law_report

    df = two_datasets()
    df.to_csv(tmp_path / "mi.csv", index=False)
    report = write_law_report(read_mi_table(tmp_path / "mi.csv"), tmp_path / "out", "wide")
    assert pd.read_parquet(report.paths["size_law_fits.parquet"]).fit_rules.eq("wide").all()
    assert pd.read_csv(report.paths["noise_law_fits.csv"]).shape[0] == len(report.noise)
    assert sorted(p for p in report.paths if p.startswith("plot_")) == [
        "plot_other_cell_type", "plot_sim_cell_type", "plot_sim_protein"]
    summary = report.summary.set_index(["law", "dataset", "algorithm"])
    assert summary.loc[("noise", "sim", "pca"), "fits"] == 5  # 4 sizes of cell_type, 1 of protein


def test_loss_curves_with_missing_values(tmp_path):
    history = pd.DataFrame({
        "step": np.arange(0, 5000, 100),
        "train_loss": np.linspace(5, 2, 50),
        "validation_loss": [np.nan if i % 10 else 5 - i / 20 for i in range(50)],
    })
    assert_png(plot_loss_curves(history, tmp_path / "loss.png", title="geneformer n=1000"))
    epochs = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5], "validation_loss": [np.nan] * 3})
    assert_png(plot_loss_curves(epochs, tmp_path / "loss_epochs.png"))
    with pytest.raises(InputError, match="'step' or 'epoch'"):
        plot_loss_curves(pd.DataFrame({"train_loss": [1.0]}), tmp_path / "bad.png")


def test_loss_curves_use_the_axis_that_was_recorded(tmp_path):
    # SCVI: per-epoch losses with an all-empty step column (this was drawn as "no loss values")
    scvi = pd.DataFrame({"epoch": [0, 1, 2, 3, 4], "step": [np.nan] * 5,
                         "train_loss": [9.0, 8.0, 7.5, 7.2, 7.1], "validation_loss": [9.5, 8.4, 7.9, 7.7, 7.6]})
    x, series = loss_points(scvi)
    assert x == "epoch" and [len(p) for p in series.values()] == [5, 5]
    assert_png(plot_loss_curves(scvi, tmp_path / "scvi.png"))
    # Geneformer under a one-step budget: one evaluation, one point (drawn with a marker)
    one = pd.DataFrame({"epoch": [0.1], "step": [1], "train_loss": [np.nan], "validation_loss": [7.3]})
    x, series = loss_points(one)
    assert x == "step" and len(series["validation_loss"]) == 1 and len(series["train_loss"]) == 0
    assert_png(plot_loss_curves(one, tmp_path / "one.png"))


def test_images_fit_the_ui_metadata_column_and_mark_budget_smoke(tmp_path):
    import matplotlib.image

    df = grid()
    df["budget_smoke"] = df["algorithm"] == "scvi"  # as if SCVI had been capped by its budget
    noise = fit_noise_laws(df)
    assert set(noise.loc[noise.budget_smoke, "algorithm"]) == {"scvi"}  # fits inherit the marker
    path = plot_signal_laws(df, noise, fit_size_laws(df), "sim", "cell_type", tmp_path / "sim.png").path
    from scaling_assets.metrics.plots import WIDTH_PX

    assert matplotlib.image.imread(path).shape[1] == WIDTH_PX <= VALUE_COLUMN_PX  # uncut in the asset Overview's value column
    loss = plot_loss_curves(pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0]}), tmp_path / "loss.png")
    assert matplotlib.image.imread(loss).shape[1] == WIDTH_PX


def test_trained_below_rules_and_rounding():
    from scaling_assets.assets.common import readable
    from scaling_assets.models.budget import trained_below_rules

    assert trained_below_rules("geneformer", "default", 2000, "max_steps")  # one capped step
    assert not trained_below_rules("geneformer", "paper", 2000, "max_epochs")
    assert trained_below_rules("scvi", "default", 2000, "max_epochs")  # rule 5,000 epochs, cap 100
    assert not trained_below_rules("scvi", "default", 2000, "early_stopping")
    assert not trained_below_rules("scvi", "paper", 2000, "max_epochs")
    assert not trained_below_rules("pca", "default", 2000, "closed_form")
    assert readable({"train_loss": 1105.694580078125, "wall_time_s": 2.4076101430000563,
                     "mi_cell_type_bits": 3.37812, "cells": 300, "device": "cpu"}) == \
        {"train_loss": 1106.0, "wall_time_s": 2.4, "mi_cell_type_bits": 3.378, "cells": 300, "device": "cpu"}


def test_closed_form_loss_point_carries_a_note(tmp_path):
    one = pd.DataFrame({"step": [1], "train_loss": [0.03]})
    plain = plot_loss_curves(one, tmp_path / "plain.png").read_bytes()
    noted = plot_loss_curves(one, tmp_path / "noted.png", note="closed-form fit: one evaluation").read_bytes()
    assert plain != noted  # the note is drawn on the image


def test_a_small_grid_is_labelled_with_its_own_values():
    import matplotlib.pyplot as plt

    from scaling_assets.metrics.plots import compact_number, label_log_axis

    assert [compact_number(v) for v in (100, 400, 2709, 3000, 1e5, 1.5e6, 0.25)] == \
        ["100", "400", "2.71k", "3k", "100k", "1.5M", "0.25"]
    fig, ax = plt.subplots()
    # one decade: matplotlib's log axis alone would label only 10^2
    assert label_log_axis(ax, [100, 400, 400, 200, np.nan]) == ["100", "200", "400"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "200", "400"]
    assert label_log_axis(ax, np.geomspace(10, 1e7, 7)) == []  # long grids keep decade labels
    plt.close(fig)
