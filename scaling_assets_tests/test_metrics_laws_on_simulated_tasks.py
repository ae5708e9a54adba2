"""Both laws show on a simulated task, through the core functions the assets call: thinning, PCA / SCVI,
the cell-type signal, LMI and the law fits. Small on purpose (one task, a few hundred cells)."""

import numpy as np
import pandas as pd
import pytest

from scaling_assets.data.counts import TransformedCounts
from scaling_assets.data.h5ad_io import CsrReader
from scaling_assets.data.simulate import simulate
from scaling_assets.data.splits import make_split
from scaling_assets.data.thinning import thin_counts
from scaling_assets.metrics.laws import fit_noise_laws
from scaling_assets.metrics.lmi import estimate
from scaling_assets.metrics.signals import task_signals
from scaling_assets.models import get_model_class

pytestmark = pytest.mark.slow  # trains PCA and SCVI on simulated tasks and estimates their MI

QUALITIES = (1.0, 0.05, 0.005, 0.001)
SIZES = (40, 200, 1200)  # SCVI at full quality (the size law); both models at 1,200 cells (the noise law)


def thinned(reader, q):
    return reader if q >= 1 else TransformedCounts(reader, lambda X, rows: thin_counts(X, rows, q=q, seed=42))


class Rows:
    """A CountSource over some rows of another (the training sample or the test set)."""

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows)
        self.n_obs, self.n_vars, self.var_names = len(rows), source.n_vars, source.var_names
        self.obs_names = np.asarray(source.obs_names)[self.rows]

    def iter_chunks(self, chunk_size=10_000, rows=None):
        picked = self.rows if rows is None else self.rows[np.asarray(rows)]
        for start in range(0, len(picked), chunk_size):
            part = picked[start : start + chunk_size]
            yield np.arange(start, start + len(part)), self.source.read_subset(part)


@pytest.fixture(scope="module")
def mi_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("laws") / "cite.h5ad"
    summary = simulate("cite", 2200, 200, seed=1, out_path=path)
    rows = []
    with CsrReader(path) as raw:
        split = make_split(raw, "cite", seed=42, n_test=800, n_val=0)
        test_obs = raw.read_obs(np.sort(split.test))
        for q in QUALITIES:
            data = thinned(raw, q)
            test = Rows(data, np.sort(split.test))
            for algorithm in ("pca", "scvi"):
                for n in SIZES if (algorithm, q) == ("scvi", 1.0) else SIZES[-1:]:
                    model = get_model_class(algorithm)(raw.var_names, budget="test", seed=42)
                    model.fit(Rows(data, split.train_rows(n)))
                    (sig, _) = task_signals("cite", test_obs, model.embed(test), obsm={"protein": np.zeros((800, 1))})
                    bits = estimate(sig.x, sig.y, seed=0, device="cpu")
                    rows.append(dict(dataset="cite", signal="cell_type", algorithm=algorithm, cells=n, quality=q,
                                     umis_nominal=round(q * summary["umis_per_cell"]), mi_bits_raw=bits,
                                     mi_bits=max(bits, 0.0)))
    return pd.DataFrame(rows)


def test_noise_law_fits_pca_and_scvi(mi_table):
    fits = fit_noise_laws(mi_table[mi_table.cells == SIZES[-1]])
    print(mi_table.to_string(), fits.to_string(), sep="\n")
    assert set(fits.algorithm) == {"pca", "scvi"}
    assert fits.fitted.all() and (fits.r2 >= 0.9).all(), fits[["algorithm", "i_max", "u_bar", "r2"]]


def test_mi_rises_with_cells(mi_table):
    scvi = mi_table[(mi_table.algorithm == "scvi") & (mi_table.quality == 1.0)].set_index("cells")["mi_bits_raw"]
    assert list(scvi.index) == list(SIZES)
    assert (np.diff(scvi.to_numpy()) > 0).all() and scvi[SIZES[-1]] > scvi[SIZES[0]] + 0.2, scvi
