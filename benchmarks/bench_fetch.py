"""``data fetch`` throughput on a local HTTP server: download (with its checks) and conversion.

    .venv/bin/python benchmarks/bench_fetch.py [--mb 256] [--cells 20000] [--genes 2000]

The public sources cannot be reached from the development machine, so this serves synthetic files in
each dataset's published layout from 127.0.0.1 and runs ``fetch`` on them: a ``--mb`` file for the
download rate (HTTP + writing the ``.part`` + SHA-256 + rename), then lineage (LARRY mtx.gz), spatial
(MERFISH csv) and cite (scvi-tools' h5ad layout, with scvi-tools' filters) of ``--cells`` cells for the
conversion rate. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _sparse_counts(n, g, nnz_per_cell, seed):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), nnz_per_cell)
    cols = rng.integers(0, g, rows.size)
    vals = rng.geometric(0.5, rows.size)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n, g))
    X.sum_duplicates()
    return X


def _write_mtx_gz(path, X, normed=False):
    X = sp.coo_matrix(X)
    vals = X.data / np.asarray(X.tocsr().sum(1)).ravel()[X.row] * 1000.0 if normed else X.data
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write("%%MatrixMarket matrix coordinate real general\n")
        fh.write(f"{X.shape[0]} {X.shape[1]} {X.nnz}\n")
        np.savetxt(fh, np.column_stack([X.row + 1, X.col + 1, vals]), fmt=["%d", "%d", "%.7g"])


def build(root: Path, n: int, g: int, mb: int) -> None:
    rng = np.random.default_rng(0)
    (root / "blob").mkdir(parents=True, exist_ok=True)
    with open(root / "blob" / "blob.bin", "wb") as fh:
        for _ in range(mb):
            fh.write(rng.bytes(1 << 20))
    # lineage: ~150 genes detected per cell
    d = root / "lineage"
    d.mkdir(exist_ok=True)
    X = _sparse_counts(n, g, 150, 1)
    X = X.tolil()
    X[np.arange(n), 0] = 1  # a single molecule per cell: LARRY's row minimum
    X = X.tocsr()
    _write_mtx_gz(d / "stateFate_inVitro_normed_counts.mtx.gz", X, normed=True)
    with gzip.open(d / "stateFate_inVitro_gene_names.txt.gz", "wt") as fh:
        fh.write("\n".join(f"Gene{j}" for j in range(g)) + "\n")
    meta = pd.DataFrame({"Library": "L", "Cell barcode": [f"BC{i}" for i in range(n)],
                         "Time point": rng.choice([2, 4, 6], n), "Cell type annotation": rng.choice(["a", "b"], n),
                         "Well": 0, "SPRING-x": 0.0, "SPRING-y": 0.0})
    with gzip.open(d / "stateFate_inVitro_metadata.txt.gz", "wt") as fh:
        meta.to_csv(fh, sep="\t", index=False)
    clones = sp.csr_matrix((np.ones(n), (np.arange(n), rng.integers(0, n // 5, n))), shape=(n, n // 5))
    _write_mtx_gz(d / "stateFate_inVitro_clone_matrix.mtx.gz", clones)
    # spatial: a MERFISH panel of 500 genes, dense csv
    d = root / "spatial"
    d.mkdir(exist_ok=True)
    Xs = _sparse_counts(n, 500, 60, 2).toarray()
    ids = pd.Index([str(10 ** 12 + i) for i in range(n)], name="cell")
    pd.DataFrame(Xs, index=ids, columns=[f"Gene{j}" for j in range(500)]).to_csv(d / "cell_by_gene_S1R1.csv")
    pd.DataFrame({"center_x": rng.uniform(0, 1e4, n), "center_y": rng.uniform(0, 1e4, n)},
                 index=ids).to_csv(d / "cell_metadata_S1R1.csv")
    # cite: scvi-tools' layout, 228 antibodies, libraries and detection that pass its filters
    import anndata as ad

    d = root / "cite"
    d.mkdir(exist_ok=True)
    genes = [f"G{j}" for j in range(g - 13)] + [f"MT-{j}" for j in range(13)]
    Xc = _sparse_counts(n, g, 400, 3).astype(np.float32)
    l2 = rng.choice(["CD4 TCM", "NK", "B naive", "Doublet"], n, p=[0.4, 0.3, 0.25, 0.05])
    obs = pd.DataFrame({"celltype.l1": l2, "celltype.l2": l2, "celltype.l3": l2},
                       index=[f"C{i}" for i in range(n)]).astype("category")
    a = ad.AnnData(Xc, obs=obs, var=pd.DataFrame(index=genes))
    names = [f"P{j}" for j in range(200)] + [f"R{j}-{k}" for j in range(14) for k in (1, 2)]
    a.obsm["protein_counts"] = pd.DataFrame(rng.poisson(20, (n, len(names))).astype(np.float64),
                                            index=obs.index, columns=names)
    a.write_h5ad(d / "pbmc_seurat_v4.h5ad")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=2_000)
    args = ap.parse_args()
    os.environ["SCALING_ASSETS_PROGRESS"] = "0"
    from scaling_assets.data import fetch as F

    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        served, work = Path(tmp) / "served", Path(tmp) / "work"
        t0 = time.perf_counter()
        build(served, args.cells, args.genes, args.mb)
        print(json.dumps({"built_s": round(time.perf_counter() - t0, 1)}), flush=True)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            r = F.download(f"{base}/blob/blob.bin", work / "blob.bin")
            print(json.dumps({"what": "download", "bytes": r["bytes"], "s": round(r["seconds"], 2),
                              "MB_per_s": round(r["bytes"] / 1e6 / r["seconds"], 1)}), flush=True)
            for name in ("lineage", "spatial", "cite"):
                t0 = time.perf_counter()
                res = F.fetch(name, work / name, mirror=base, progress=False, out=open(os.devnull, "w"))
                total = time.perf_counter() - t0
                size = sum(v["bytes"] for v in res["files"].values())
                dl = sum(v["seconds"] for v in res["files"].values())
                s = res["summary"]
                print(json.dumps({"what": name, "input_MB": round(size / 1e6, 1), "download_s": round(dl, 2),
                                  "convert_s": round(s["seconds"], 2), "cells_in": s.get("cells_input"),
                                  "cells_out": s["cells"], "genes": s["genes"],
                                  "cells_per_s": round(s.get("cells_input", s["cells"]) / s["seconds"]),
                                  "total_s": round(total, 2)}), flush=True)
        finally:
            httpd.shutdown()


if __name__ == "__main__":
    main()
