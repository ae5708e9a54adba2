"""Inputs for the LMI benchmarks: a study's MI settings as the `mi_*` assets see them, Gaussian pairs.

A *setting* is what one MI step estimates: the signals of one dataset's test cells against one
model's embeddings at one (cells, quality, seed). Its signals are built as the asset builds them
(`metrics.signals.task_signals` on the test set's obs, in the embeddings' cell order).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Setting:
    name: str
    signals: list[tuple[str, np.ndarray, np.ndarray]]  # (signal, x, y)
    truth: list[float]  # analytic MI (bits) of each signal, nan where unknown


def gaussian_settings(bits: list[float], pairs: int, dims: list[tuple[int, int]] = ((16, 16),)) -> list[Setting]:
    """One setting per MI level and (dx, dy): a 2-d latent mapped into dx-d X and dy-d Y plus noise
    (analytic MI)."""
    from scaling_assets.metrics.synthetic import latent_gaussian_pairs

    out = []
    for dx, dy in dims:
        for b in bits:
            x, y, truth = latent_gaussian_pairs(pairs, b, dx=dx, dy=dy, seed=1)
            name = f"gaussian {b:g} bits {dx}-d" + (f" vs {dy}-d" if dy != dx else "")
            out.append(Setting(name, [("gaussian", x, y)], [truth]))
    return out


def study_settings(root: Path, algorithms: list[str], per_algorithm: int) -> list[Setting]:
    """Up to `per_algorithm` materialised settings of each dataset and algorithm of a study root: the
    largest and the smallest size at the highest and the lowest quality, in that order of preference."""
    from scaling_assets.assets.common import load_embeddings
    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.layout import eval_counts_file
    from scaling_assets.metrics.signal_mi import embedded_test_rows
    from scaling_assets.metrics.signals import task_signals
    from scaling_assets.study.spec import parse_setting_key

    settings = []
    for dataset in sorted(p for p in root.iterdir() if (p / "raw_counts" / "all" / "summary.json").exists()):
        task = json.loads((dataset / "raw_counts" / "all" / "summary.json").read_text())["task"]
        for algorithm in algorithms:
            keys = [parse_setting_key(f.name) for f in sorted((dataset / f"embeddings_{algorithm}").glob("n=*"))
                    if (f / "embeddings.npz").exists()]
            if not keys:
                continue
            sizes, qualities = sorted({k.cells for k in keys}), sorted({k.quality for k in keys})
            wanted = [(sizes[-1], qualities[-1]), (sizes[0], qualities[0]), (sizes[-1], qualities[0]),
                      (sizes[0], qualities[-1])]
            chosen = []
            for cells, quality in wanted:
                chosen += [k for k in keys if (k.cells, k.quality) == (cells, quality) and k not in chosen]
            for key in chosen[:per_algorithm]:
                values, cell_ids = load_embeddings(dataset / f"embeddings_{algorithm}" / key.key)
                path = eval_counts_file(dataset / "eval_counts" / f"s={key.seed}", key.quality, "test")
                with CsrReader(path) as test:
                    rows = embedded_test_rows(test.obs_names, cell_ids)
                    obs = test.read_obs(rows)
                    obsm = {"protein": test.read_obsm("protein", rows)} if task == "cite" else None
                signals = task_signals(task, obs, values, obsm=obsm, seed=key.seed)
                settings.append(Setting(f"{dataset.name} {algorithm} {key.key}",
                                        [(s.signal, s.x, s.y) for s in signals], [np.nan] * len(signals)))
    return settings
