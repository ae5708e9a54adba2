"""``data fetch``: downloads from a local HTTP server (resume, checksums, truncation, offline), the
conversion of each dataset's format, and scvi-tools' PBMC CITE-seq loader on a pre-placed file."""

from __future__ import annotations

import gzip
import hashlib
import tempfile
import re
import socket
import threading
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from scaling_assets.data import fetch as F
from scaling_assets.data.loaders import ingest, scvi_reference_filters
from scaling_assets.errors import InputError

# -- a local HTTP server with Range support that can drop or truncate a transfer --------------------


class _Files:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()  # first GET sends half the body, then closes
        self.truncate: set[str] = set()  # every GET sends half the body, then closes
        self.no_range: set[str] = set()  # Range ignored: always 200 and the whole body
        self.requests: list[tuple[str, str | None]] = []


def _handler(state: _Files):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if rng and self.path not in state.no_range:
                start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = self.path in state.truncate or self.path in state.drop_once
            state.drop_once.discard(self.path)
            if cut:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture()
def server():
    state = _Files()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _dead_url() -> str:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != F.CHECKSUM_FILE)


# -- download, resume, checksum, truncation, offline -----------------------------------------------


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    body = np.random.default_rng(0).bytes(3 << 20)
    server.files["/lineage/a.bin"] = body
    server.drop_once.add("/lineage/a.bin")
    dest = tmp_path / "a.bin"
    url = server.base + "/lineage/a.bin"
    # no retries: the first run stops with a .part holding what arrived, and no file at dest
    with pytest.raises(F.DownloadError, match=r"a\.bin\.part: truncated download, 1,572,864 of 3,145,728 bytes "
                                              r"\(Content-Length\).*run again to resume"):
        F.download(url, dest, retries=0)
    assert not dest.exists() and (tmp_path / "a.bin.part").stat().st_size == len(body) // 2
    # the next run asks only for the rest
    r = F.download(url, dest)
    assert server.requests[-1] == ("/lineage/a.bin", f"bytes={len(body) // 2}-")
    assert dest.read_bytes() == body and r["sha256"] == hashlib.sha256(body).hexdigest()
    assert r["resumed_from"] == len(body) // 2 and r["downloaded"] == len(body) - len(body) // 2
    assert not (tmp_path / "a.bin.part").exists()
    # within one run, a dropped connection is resumed by itself
    server.drop_once.add("/lineage/a.bin")
    server.requests.clear()
    F.download(url, tmp_path / "b.bin", retries=2)
    assert [r for _, r in server.requests] == [None, f"bytes={len(body) // 2}-"]
    assert (tmp_path / "b.bin").read_bytes() == body


def test_bad_checksum_names_url_and_leaves_nothing(server, tmp_path):
    server.files["/x/a.bin"] = b"published bytes\n"
    url = server.base + "/x/a.bin"
    with pytest.raises(F.DownloadError, match=rf"a\.bin: SHA-256 [0-9a-f]{{64}} does not match the expected "
                                              rf"{'0' * 64} for {re.escape(url)}; the download was removed\. hand"):
        F.download(url, tmp_path / "a.bin", sha256="0" * 64, hint="hand")
    assert _leftovers(tmp_path) == []
    good = hashlib.sha256(b"published bytes\n").hexdigest()
    assert F.download(url, tmp_path / "a.bin", sha256=good)["sha256"] == good


def test_fetch_checks_pinned_checksums_and_says_what_to_download_by_hand(server, tmp_path):
    files = _spatial_files()
    for name, data in files.items():
        server.files[f"/spatial/{name}"] = data
    (tmp_path / F.CHECKSUM_FILE).write_text(f"{'ab' * 32}  cell_by_gene_S1R1.csv\n")
    url = f"{server.base}/spatial/cell_by_gene_S1R1.csv"
    with pytest.raises(F.DownloadError) as err:
        F.fetch("spatial", tmp_path, mirror=server.base, progress=False)
    msg = str(err.value)
    assert f"does not match the expected {'ab' * 32} for {url}" in msg
    assert f"Download it by hand from {url}" in msg and "info.vizgen.com" in msg
    assert f"save it as {tmp_path / 'cell_by_gene_S1R1.csv'}" in msg
    assert "Also missing" in msg and "cell_metadata_S1R1.csv" in msg
    assert _leftovers(tmp_path) == []


def test_offline_error_names_every_url_to_fetch_by_hand(tmp_path):
    dead = _dead_url()
    with pytest.raises(F.DownloadError) as err:
        F.fetch("lineage", tmp_path, mirror=dead, retries=0, progress=False)
    msg = str(err.value)
    assert f"cannot reach {dead}/lineage/stateFate_inVitro_normed_counts.mtx.gz" in msg and "offline?" in msg
    for f in F.SOURCES["lineage"].files[1:]:
        assert f"{f.name} from {dead}/lineage/{f.name}" in msg
    assert _leftovers(tmp_path) == []


def test_truncated_download_fails_naming_file_and_field(server, tmp_path):
    server.files["/cite/pbmc_seurat_v4.h5ad"] = b"x" * 1000
    server.truncate.add("/cite/pbmc_seurat_v4.h5ad")
    # each attempt gets half of what is left: 500 bytes, then 250 more on the one resumed attempt
    with pytest.raises(F.DownloadError, match=r"pbmc_seurat_v4\.h5ad\.part: truncated download, 750 of 1,000 bytes "
                                              r"\(Content-Length\).*resume from byte 750"):
        F.fetch("cite", tmp_path, mirror=server.base, retries=1, progress=False)
    assert [r for _, r in server.requests] == [None, "bytes=500-"]
    assert not (tmp_path / "pbmc_seurat_v4.h5ad").exists() and not (tmp_path / "pbmc_cite.h5ad").exists()


def test_truncated_files_in_place_fail_before_conversion(tmp_path):
    larry = _larry_files()
    for name, data in larry.items():
        (tmp_path / name).write_bytes(data)
    whole = larry["stateFate_inVitro_normed_counts.mtx.gz"]
    (tmp_path / "stateFate_inVitro_normed_counts.mtx.gz").write_bytes(whole[: len(whole) - 40])
    with pytest.raises(InputError, match=r"stateFate_inVitro_normed_counts\.mtx\.gz: truncated or corrupt gzip file "
                                         r"\(gzip stream/trailer"):
        F.fetch("lineage", tmp_path, mirror=_dead_url(), progress=False)
    assert not (tmp_path / "larry_invitro.h5ad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "cell_metadata_S1R1.csv").write_text("cell,center_x,center_y\n1,0.5,0.")
    with pytest.raises(InputError, match=r"cell_metadata_S1R1\.csv: truncated text file \(its last line"):
        F.check_complete(tmp_path / "cell_metadata_S1R1.csv")
    (tmp_path / "pbmc_seurat_v4.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(InputError, match=r"pbmc_seurat_v4\.h5ad: not a complete HDF5 file"):
        F.fetch("cite", tmp_path, mirror=_dead_url(), progress=False)
    assert not (tmp_path / "pbmc_cite.h5ad").exists()


# -- conversion of each format, served by the local server ------------------------------------------


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def _mtx(M: np.ndarray) -> str:
    r, c = np.nonzero(M)
    lines = ["%%MatrixMarket matrix coordinate real general", f"{M.shape[0]} {M.shape[1]} {r.size}"]
    lines += [f"{i + 1} {j + 1} {M[i, j]:.7g}" for i, j in zip(r, c)]
    return "\n".join(lines) + "\n"


def _counts(n, g, seed):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(0.6, 4.0, (n, g))).astype(np.int64)
    X[np.arange(n), rng.integers(0, g, n)] = 1  # a single molecule in each cell: LARRY's row minimum
    return X


def _larry_files(n=90, g=25):
    X = _counts(n, g, 1)
    normed = X / X.sum(1, keepdims=True) * 1000.0
    rng = np.random.default_rng(2)
    meta = pd.DataFrame({"Library": "d6_2", "Cell barcode": [f"BC{i:04d}" for i in range(n)],
                         "Time point": rng.choice([2, 4, 6], n), "Starting population": "Lin-Kit+",
                         "Cell type annotation": rng.choice(["undiff", "Neutrophil", "Monocyte"], n),
                         "Well": rng.choice([0, 1, 2], n), "SPRING-x": rng.normal(size=n),
                         "SPRING-y": rng.normal(size=n)})
    clones = np.zeros((n, 12))
    clones[np.arange(n), rng.integers(0, 12, n)] = 1
    clones[::7] = 0
    return {"stateFate_inVitro_normed_counts.mtx.gz": _gz(_mtx(normed)),
            "stateFate_inVitro_gene_names.txt.gz": _gz("\n".join(f"Gene{j}" for j in range(g)) + "\n"),
            "stateFate_inVitro_metadata.txt.gz": _gz(meta.to_csv(sep="\t", index=False)),
            "stateFate_inVitro_clone_matrix.mtx.gz": _gz(_mtx(clones))}


def _spatial_files(n=80, g=15):
    X = _counts(n, g, 3)
    ids = [str(10 ** 12 + i) for i in range(n)]
    cbg = pd.DataFrame(X, index=pd.Index(ids, name="cell"), columns=[f"Gene{j}" for j in range(g)])
    cbg["Blank-1"] = 1
    rng = np.random.default_rng(4)
    meta = pd.DataFrame({"fov": 0, "volume": 100.0, "center_x": rng.uniform(0, 1000, n),
                         "center_y": rng.uniform(0, 1000, n)}, index=pd.Index(ids, name=""))
    return {"cell_by_gene_S1R1.csv": cbg.to_csv().encode(), "cell_metadata_S1R1.csv": meta.to_csv().encode()}


def _jax_files(per_part=(30, 20, 25, 15), g=18):
    """Four parts as the JAX release has them (obs: cell_id, day) and df_cell.csv with the labels."""
    rng = np.random.default_rng(5)
    out, rows, X_all = {}, [], []
    stages = ["E8.0-E8.5", "E9.25", "E13.75", "P0"]
    for p, n in enumerate(per_part, 1):
        X = _counts(n, g, 10 + p).astype(np.float32)
        ids = [f"run_{p}_P1-01A.CELL{i:05d}" for i in range(n)]
        day = rng.choice(stages, n)
        a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"cell_id": ids, "day": day}, index=ids),
                       var=pd.DataFrame(index=[f"ENSMUSG{j:011d}" for j in range(g)]))
        with tempfile.TemporaryDirectory() as tmp:
            a.write_h5ad(Path(tmp) / "part.h5ad")
            out[f"adata_JAX_dataset_{p}.h5ad"] = (Path(tmp) / "part.h5ad").read_bytes()
        rows.append(pd.DataFrame({"cell_id": ids, "day": day, "embryo_id": f"embryo_{p}",
                                  "celltype_update": rng.choice(["Neural crest", "Gut", "Hepatocytes"], n)},
                                 index=[f"{c}-{p - 1}" for c in ids]))
        X_all.append(X)
    out["df_cell.csv"] = pd.concat(rows).to_csv().encode()
    return out, np.vstack(X_all), pd.concat(rows)


def _serve(server, name, files):
    for f, data in files.items():
        server.files[f"/{name}/{f}"] = data


def test_fetch_lineage_downloads_and_converts(server, tmp_path):
    files = _larry_files()
    _serve(server, "lineage", files)
    result = F.fetch("lineage", tmp_path, mirror=server.base, progress=False, chunk_size=32)
    s = result["summary"]
    assert s["cells"] == 90 and s["genes"] == 25 and s["task"] == "lineage" and s["cells_rejected_non_integer"] == 0
    a = ad.read_h5ad(tmp_path / "larry_invitro.h5ad")
    np.testing.assert_array_equal(a.X.toarray(), _counts(90, 25, 1))  # integer counts recovered
    sums = F.read_checksums(tmp_path)
    assert sums == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    entry = yaml.safe_load(result["yaml"])["lineage"]
    assert entry == {"task": "lineage", "source": "h5ad", "cells": 90, "umis_per_cell": round(s["umis_per_cell"]),
                     "paths": {"path": str(tmp_path / "larry_invitro.h5ad")}}
    # a second run uses the files in place (verified against SHA256SUMS): no request reaches the server
    server.requests.clear()
    F.fetch("lineage", tmp_path, mirror=server.base, progress=False, convert=False)
    assert server.requests == []
    # ... and a file changed in place no longer matches what was recorded
    (tmp_path / "stateFate_inVitro_gene_names.txt.gz").write_bytes(_gz("GeneX\n"))
    with pytest.raises(F.DownloadError, match=r"stateFate_inVitro_gene_names\.txt\.gz: SHA-256 [0-9a-f]{64} does not "
                                              r"match [0-9a-f]{64} \(.*SHA256SUMS\); the file is not the published one"):
        F.fetch("lineage", tmp_path, mirror=server.base, progress=False, convert=False)


def test_server_ignoring_range_restarts_the_part(server, tmp_path):
    body = bytes(range(256)) * 64
    server.files["/x/a.bin"] = body
    server.no_range.add("/x/a.bin")
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes from elsewhere")
    r = F.download(server.base + "/x/a.bin", tmp_path / "a.bin")
    assert server.requests == [("/x/a.bin", "bytes=26-")]
    assert (tmp_path / "a.bin").read_bytes() == body and r["downloaded"] == len(body)


def test_sources_match_scvi_tools_and_progress_switch(monkeypatch):
    import inspect

    from scvi.data._built_in_data import _cite_seq

    code = inspect.getsource(_cite_seq._load_pbmc_seurat_v4_cite_seq)
    cite = F.SOURCES["cite"].file("path")
    assert f'url = "{cite.url}"' in code and f'save_fn = "{cite.name}"' in code  # the file scvi-tools reads
    assert {s.task for s in F.SOURCES.values()} == {"cite", "lineage", "spatial", "development"}
    assert all(f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256) for s in F.SOURCES.values() for f in s.files)
    monkeypatch.setenv("SCALING_ASSETS_PROGRESS", "0")
    assert not F.progress_enabled()
    monkeypatch.setenv("SCALING_ASSETS_PROGRESS", "1")
    assert F.progress_enabled() and not F.progress_enabled(quiet=True)


def test_fetch_spatial_cli_prints_the_study_lines(server, tmp_path, capsys):
    from scaling_assets.cli import main

    _serve(server, "spatial", _spatial_files())
    assert main(["data", "fetch", "spatial", "--dir", str(tmp_path), "--mirror", server.base, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cell_by_gene_S1R1.csv: " in out and "(recorded)" in out
    entry = yaml.safe_load(out.split("Study YAML (under datasets:):\n")[1])["spatial"]
    assert entry["task"] == "spatial" and entry["cells"] == 80 and entry["source"] == "h5ad"
    a = ad.read_h5ad(entry["paths"]["path"])
    assert a.n_vars == 15 and {"x", "y"} <= set(a.obs.columns)  # Blank-* columns dropped
    assert main(["data", "fetch", "spatial"]) == 2
    # the printed lines are a dataset a study loads as they are
    from scaling_assets.study.spec import load_study

    lines = out.split("Study YAML (under datasets:):\n")[1]
    study_file = tmp_path / "real.yaml"
    study_file.write_text(f"name: real\nroot: {tmp_path / 'runs'}\nbudget: test\nseeds: [42]\nalgorithms: [pca]\n"
                          f"split: {{test_cells: 20, validation_cells: 10}}\nsizes: [40]\nqualities: [1.0]\n"
                          f"datasets:\n{lines}")
    study = load_study(study_file)
    assert study.datasets["spatial"].source == "h5ad" and study.datasets["spatial"].task == "spatial"


def test_fetch_development_merges_the_parts_and_converts(server, tmp_path):
    files, X, cells = _jax_files()
    _serve(server, "development", files)
    result = F.fetch("development", tmp_path, mirror=server.base, progress=False, chunk_size=8)
    assert result["summary"]["cells"] == 90 and result["summary"]["task"] == "development"
    a = ad.read_h5ad(tmp_path / "mouse_embryo_atlas.h5ad")
    np.testing.assert_array_equal(a.X.toarray(), X.astype(np.int64))
    assert a.obs_names.tolist() == cells["cell_id"].tolist()
    assert a.obs["cell_type"].astype(str).tolist() == cells["celltype_update"].tolist()
    expected_days = cells["day"].map({"E8.0-E8.5": 8.0, "E9.25": 9.25, "E13.75": 13.75, "P0": 19.5})
    np.testing.assert_array_equal(a.obs["day"].to_numpy(), expected_days.to_numpy())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the merged intermediate is gone


def test_development_cell_table_out_of_order_is_refused(server, tmp_path):
    files, _, cells = _jax_files()
    swapped = cells.copy()
    swapped.iloc[[3, 4]] = swapped.iloc[[4, 3]].to_numpy()
    files["df_cell.csv"] = swapped.to_csv().encode()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=r"df_cell\.csv: row 4 has cell_id 'run_1_P1-01A\.CELL00004', "
                                         r".*adata_JAX_dataset_1\.h5ad row 3 has 'run_1_P1-01A\.CELL00003'"):
        F.fetch("development", tmp_path, mirror=_dead_url(), progress=False)
    assert not (tmp_path / "mouse_embryo_atlas.h5ad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- PBMC CITE-seq: scvi-tools' own loader and filters ----------------------------------------------


def _scvi_cite_file(path: Path, n=240, seed=0) -> ad.AnnData:
    """A tiny file in the layout of scvi-tools' pbmc_seurat_v4.h5ad, with cells on both sides of each filter."""
    rng = np.random.default_rng(seed)
    genes = [f"G{j}" for j in range(20)] + ["MT-CO1", "MT-ND1", "MT-ATP6"]
    lib = rng.integers(200, 3000, n)
    mt_frac = np.where(rng.random(n) < 0.2, 0.3, 0.03)  # some cells above the 12% mitochondrial cut
    X = np.zeros((n, len(genes)), dtype=np.float32)
    for i in range(n):
        X[i, :20] = rng.multinomial(int(lib[i] * (1 - mt_frac[i])), np.ones(20) / 20)
        X[i, 20:] = rng.multinomial(int(lib[i] * mt_frac[i]), np.ones(3) / 3)
    # > 150 proteins (the detection cut), pairs -1/-2 that scvi-tools sums, Notch/TCR that it keeps apart
    proteins = [f"P{j}" for j in range(150)] + ["CD4-1", "CD4-2", "CD8-1", "CD8-2", "Notch-1", "TCR-2", "CD45-1"]
    scale = np.exp(rng.normal(0, 0.8, n))  # protein library sizes on both sides of exp(7.6)
    prot = rng.poisson(np.outer(scale, rng.uniform(1, 40, len(proteins)))).astype(np.float64)
    prot[rng.random((n, len(proteins))) < np.where(rng.random(n) < 0.15, 0.6, 0.0)[:, None]] = 0
    l2 = rng.choice(["CD4 TCM", "CD8 Naive", "NK", "B naive", "Doublet"], n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    obs = pd.DataFrame({"celltype.l1": pd.Categorical(np.where(l2 == "NK", "NK", "other")),
                        "celltype.l2": pd.Categorical(l2), "celltype.l3": pd.Categorical(l2),
                        "orig.ident": pd.Categorical(rng.choice(["P1_0", "P2_0"], n))},
                       index=[f"L1_AAAC{i:05d}" for i in range(n)])
    a = ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
    a.obsm["protein_counts"] = pd.DataFrame(prot, index=obs.index, columns=proteins)
    a.write_h5ad(path)
    return a


def test_cite_preplaced_file_goes_through_scvi_tools_own_loader(tmp_path):
    import scvi

    raw = _scvi_cite_file(tmp_path / "pbmc_seurat_v4.h5ad")
    # the reference: scvi-tools' function itself on the pre-placed file (no download: it is in save_path)
    ref = scvi.data.pbmc_seurat_v4_cite_seq(save_path=str(tmp_path), apply_filters=True, aggregate_proteins=True)
    assert 0 < ref.n_obs < raw.n_obs  # the fixture has cells on both sides of the filters
    result = F.fetch("cite", tmp_path, mirror=_dead_url(), progress=False, chunk_size=50)
    s = result["summary"]
    assert s["cells"] == ref.n_obs and s["cells_filtered_reference"] == raw.n_obs - ref.n_obs
    a = ad.read_h5ad(tmp_path / "pbmc_cite.h5ad")
    assert a.obs_names.tolist() == ref.obs_names.tolist()
    np.testing.assert_array_equal(a.X.toarray(), ref.X.toarray())
    np.testing.assert_array_equal(a.obsm["protein"], ref.obsm["protein_counts"].to_numpy())
    assert list(a.uns["protein_names"]) == list(ref.obsm["protein_counts"].columns)
    assert "CD4" in a.uns["protein_names"] and "CD4-1" not in a.uns["protein_names"]  # antibodies summed
    assert a.obs["cell_type"].astype(str).tolist() == ref.obs["celltype.l3"].astype(str).tolist()
    assert "Doublet" not in set(a.obs["celltype.l2"].astype(str))
    assert a.uns["source"]["reference_filters"] and a.uns["source"]["scvi_tools"] == scvi.__version__
    assert yaml.safe_load(result["yaml"])["cite"]["cells"] == ref.n_obs
    # the loader's filters are scvi-tools' mask, computed on a bounded-memory proxy of the file
    kept, protein = scvi_reference_filters(tmp_path / "pbmc_seurat_v4.h5ad", chunk_size=17)
    assert raw.obs_names[kept].tolist() == ref.obs_names.tolist()
    # and the option turns them off: every cell, the antibodies as distributed
    off = ingest("cite", tmp_path / "all.h5ad", path=tmp_path / "pbmc_seurat_v4.h5ad", reference_filters=False)
    assert off["cells"] == raw.n_obs
    assert ad.read_h5ad(tmp_path / "all.h5ad").obsm["protein"].shape[1] == raw.obsm["protein_counts"].shape[1]


def test_corrupt_download_is_removed(server, tmp_path):
    good = gzip.compress(b"line\n" * 1000)
    server.files["/lineage/x.txt.gz"] = good[:-8] + b"\0" * 8  # whole length, bad gzip trailer
    url = server.base + "/lineage/x.txt.gz"
    with pytest.raises(F.DownloadError, match=r"x\.txt\.gz: truncated or corrupt gzip file .*all [\d,]+ bytes "
                                              r"announced by .*x\.txt\.gz arrived, so the download was removed"):
        F.download(url, tmp_path / "x.txt.gz")
    assert _leftovers(tmp_path) == []
