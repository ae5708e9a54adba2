"""``scaling-assets data fetch NAME --dir DIR``: the paper's four datasets from where they were published.

Each dataset is a list of files at public URLs (``SOURCES``). A file already in DIR is used as it is
(verified when a checksum is known); a missing one is downloaded into ``<file>.part`` with HTTP Range
resume (within a run after a dropped connection, and across runs after an interruption), its length
checked against Content-Length, gzip streams and HDF5 files checked whole, its SHA-256 checked when
known, and only then renamed into place. No public source publishes a SHA-256 for these files, so
the table has none: the SHA-256 of each file is computed, printed and recorded in ``DIR/SHA256SUMS``,
which later runs (and the user, to pin a copy) verify against. The files are then converted to the
canonical raw h5ad by the loaders (``loaders.ingest``, written to a temporary file and renamed) and
the study YAML lines that use it are printed.

PBMC CITE-seq is scvi-tools' file (``scvi.data.pbmc_seurat_v4_cite_seq``): DIR is its ``save_path``,
the file keeps its name there (a copy already in DIR is used without downloading) and the ``cite``
loader runs scvi-tools' own filters and protein aggregation on it.

``--mirror URL`` (or ``SCALING_ASSETS_DATA_MIRROR``) replaces every source by ``URL/<dataset>/<file>``:
a local copy of the files, or the test suite's HTTP server.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scaling_assets.errors import InputError

MIRROR_ENV = "SCALING_ASSETS_DATA_MIRROR"
CHECKSUM_FILE = "SHA256SUMS"
BLOCK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    option: str  # the loader option this file feeds (development: part_<i> / cells)
    name: str  # its name in DIR (scvi-tools' name for cite)
    url: str
    sha256: str | None = None  # None: no published checksum (computed and recorded after download)
    size: int | None = None  # bytes, when known exactly


@dataclass(frozen=True)
class Source:
    name: str
    task: str
    fmt: str  # loader format the files are converted with
    files: tuple[RemoteFile, ...]
    citation: str
    page: str  # where a person downloads the files by hand
    licence: str
    options: dict = field(default_factory=dict)  # loader options (besides the paths)
    output: str = ""  # canonical file written in DIR

    def file(self, option: str) -> RemoteFile:
        return next(f for f in self.files if f.option == option)


_LARRY = "https://kleintools.hms.harvard.edu/paper_websites/state_fate2020"
_VIZGEN = ("https://storage.googleapis.com/public-datasets-vizgen-merfish/datasets/mouse_brain_map/"
           "BrainReceptorShowcase/Slice1/Replicate1")
_JAX = "https://shendure-web.gs.washington.edu/content/members/cxqiu/public/backup/jax/download"
JAX_PARTS = 4

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source(
        "cite", "cite", "cite",
        (RemoteFile("path", "pbmc_seurat_v4.h5ad", "https://exampledata.scverse.org/scvi-tools/pbmc_seurat_v4.h5ad"),),
        citation="Hao et al. 2021, Cell 184:3573 (Seurat v4 PBMC CITE-seq, GEO GSE164378); the h5ad scvi-tools "
                 "distributes as scvi.data.pbmc_seurat_v4_cite_seq",
        page="https://docs.scvi-tools.org/en/stable/api/reference/scvi.data.pbmc_seurat_v4_cite_seq.html",
        licence="data from the public GEO deposit GSE164378 (NCBI places no restrictions on GEO data; cite the "
                "paper); the h5ad is hosted by scverse (scvi-tools, BSD-3-Clause)",
        options={"level": "l3"}, output="pbmc_cite.h5ad"),
    Source(
        "lineage", "lineage", "larry",
        (RemoteFile("counts", "stateFate_inVitro_normed_counts.mtx.gz", f"{_LARRY}/stateFate_inVitro_normed_counts.mtx.gz"),
         RemoteFile("genes", "stateFate_inVitro_gene_names.txt.gz", f"{_LARRY}/stateFate_inVitro_gene_names.txt.gz"),
         RemoteFile("metadata", "stateFate_inVitro_metadata.txt.gz", f"{_LARRY}/stateFate_inVitro_metadata.txt.gz"),
         RemoteFile("clones", "stateFate_inVitro_clone_matrix.mtx.gz", f"{_LARRY}/stateFate_inVitro_clone_matrix.mtx.gz")),
        citation="Weinreb et al. 2020, Science 367:eaaw3381 (LARRY in-vitro time course; GEO GSE140802)",
        page="https://github.com/AllonKleinLab/paper-data/tree/master/"
             "Lineage_tracing_on_transcriptional_landscapes_links_state_to_fate_during_differentiation "
             "(same files as GSM4185642_* in GEO GSE140802)",
        licence="public data release of the Klein lab (paper-data README) and GEO GSE140802 (no restrictions "
                "placed by NCBI; cite the paper)",
        output="larry_invitro.h5ad"),
    Source(
        "spatial", "spatial", "merfish",
        (RemoteFile("cell_by_gene", "cell_by_gene_S1R1.csv", f"{_VIZGEN}/cell_by_gene_S1R1.csv"),
         RemoteFile("cell_metadata", "cell_metadata_S1R1.csv", f"{_VIZGEN}/cell_metadata_S1R1.csv")),
        citation="Vizgen MERFISH Mouse Brain Receptor Map, Slice 1 Replicate 1 (Vizgen Data Release V1.0, 2021)",
        page="https://info.vizgen.com/mouse-brain-map (bucket gs://public-datasets-vizgen-merfish; Vizgen may ask "
             "for its data-release form before the download)",
        licence="Vizgen's data-release terms, accepted on the download page (not verifiable from here)",
        output="merfish_s1r1.h5ad"),
    Source(
        "development", "development", "atlas",
        (*(RemoteFile(f"part_{i}", f"adata_JAX_dataset_{i}.h5ad", f"{_JAX}/adata/adata_JAX_dataset_{i}.h5ad")
           for i in range(1, JAX_PARTS + 1)),
         RemoteFile("cells", "df_cell.csv", f"{_JAX}/adata/df_cell.csv")),
        citation="Qiu et al. 2024, Nature 626:1084 (mouse embryo time-lapse E8-P0, 11.4M nuclei; GEO GSE228590)",
        page="https://shendure-web.gs.washington.edu/content/members/cxqiu/public/backup/jax/download/adata/",
        licence="public data release of the Shendure lab and GEO GSE228590 (no restrictions placed by NCBI; cite "
                "the paper)",
        options={"day_column": "day", "cell_type_column": "cell_type"}, output="mouse_embryo_atlas.h5ad"),
)}


class DownloadError(InputError):
    """A file that could not be fetched or failed its checks; the message says what to do by hand."""


def progress_enabled(quiet: bool = False) -> bool:
    return not quiet and os.environ.get("SCALING_ASSETS_PROGRESS", "1") != "0"


def source_url(source: Source, f: RemoteFile, mirror: str | None = None) -> str:
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    return f"{mirror.rstrip('/')}/{source.name}/{f.name}" if mirror else f.url


def _by_hand(source: Source, f: RemoteFile, url: str, dest: Path) -> str:
    return (f"Download it by hand from {url} (or from {source.page}) and save it as {dest}; a file in place is "
            f"used without downloading when the command runs again")


# -- checksums ------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def read_checksums(folder: Path) -> dict[str, str]:
    """``DIR/SHA256SUMS`` in sha256sum's format (``<hex>  <name>``)."""
    path = Path(folder) / CHECKSUM_FILE
    if not path.exists():
        return {}
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *]?(.+)", line.strip())
        if m is None:
            raise InputError(f"{path}: line {n} is not '<sha256>  <file name>': {line[:80]!r}")
        sums[m.group(2)] = m.group(1).lower()
    return sums


def record_checksum(folder: Path, name: str, digest: str) -> None:
    from scaling_assets.fs import write_text_atomic

    sums = read_checksums(folder)
    sums[name] = digest
    write_text_atomic(Path(folder) / CHECKSUM_FILE, "".join(f"{v}  {k}\n" for k, v in sorted(sums.items())))


# -- whole-file checks (a truncated download fails here, naming the file and what is missing) --------


def check_complete(path: Path, label: str | None = None) -> None:
    """Raise unless a gzip stream ends with its trailer, an HDF5 file opens, a text file ends a line."""
    label = label or str(path)
    name = path.name if label == str(path) else label
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(BLOCK):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{label}: truncated or corrupt gzip file (gzip stream/trailer: {exc})") from exc
    elif name.endswith(".h5ad"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("X", "obs", "var") if k not in f]
        except OSError as exc:
            raise InputError(f"{label}: not a complete HDF5 file (truncated download? {exc})") from exc
        if missing:
            raise InputError(f"{label}: h5ad has no {', '.join(missing)} (truncated or not an anndata file)")
    elif name.endswith((".csv", ".txt", ".tsv")):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 1))
            last = fh.read(1)
        if size == 0 or last != b"\n":
            raise InputError(f"{label}: truncated text file (its last line has no end-of-line; {size:,} bytes)")


# -- download ---------------------------------------------------------------------------------------


def download(url: str, dest, sha256: str | None = None, size: int | None = None, retries: int = 3,
             timeout: float = 60.0, progress: bool = False, hint: str = "") -> dict:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming what a previous attempt left.

    Raises DownloadError (an InputError) naming the URL and ``hint`` (what to download by hand) when the
    source cannot be reached after ``retries`` resumed attempts, or when the file fails a check
    (length, integrity, SHA-256; the part is removed on a checksum mismatch). Returns
    {path, bytes, seconds, sha256, resumed_from}.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    t0 = time.perf_counter()
    fetched = 0
    bar = None
    attempt = 0
    total = size
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have == total:
            break
        headers = {"User-Agent": "scaling-assets data fetch"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing after what we hold: the part is complete
                break
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}. {hint}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            attempt += 1
            if attempt > retries:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"cannot reach {url} ({reason}; offline?). {hint}") from exc
            time.sleep(min(2.0 ** attempt, 30.0) * 0.1)
            continue
        with resp:
            length = resp.headers.get("Content-Length")
            if have and resp.status == 200:  # the server ignored Range: start again
                have = 0
                part.unlink(missing_ok=True)
            elif have and resp.status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if m is None or int(m.group(1)) != have:
                    raise DownloadError(f"cannot resume {url}: Content-Range {resp.headers.get('Content-Range')!r} "
                                        f"does not start at byte {have}. Delete {part} and run again. {hint}")
            if length is not None:
                total = have + int(length)
                if size is not None and total != size:
                    raise DownloadError(f"{url}: the server announces {total:,} bytes (Content-Length), the source "
                                        f"table expects {size:,}. {hint}")
            if progress and bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=f"download {dest.name}")
            try:
                with open(part, "ab") as out:
                    while block := resp.read(BLOCK):
                        out.write(block)
                        fetched += len(block)
                        if bar is not None:
                            bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:  # dropped mid-file: resume from what we hold
                attempt += 1
                if attempt > retries:
                    got = part.stat().st_size
                    of = f"{total:,}" if total is not None else "an unknown number of"
                    raise DownloadError(
                        f"{part}: truncated download, {got:,} of {of} bytes (Content-Length) from {url} "
                        f"({exc}); run again to resume from byte {got:,}. {hint}") from exc
                continue
        got = part.stat().st_size if part.exists() else 0
        if total is None or got == total:
            break
        attempt += 1  # the server closed the stream early without an error
        if attempt > retries:
            raise DownloadError(f"{part}: truncated download, {got:,} of {total:,} bytes (Content-Length) from "
                                f"{url}; run again to resume from byte {got:,}. {hint}")
    if bar is not None:
        bar.close()
    try:
        check_complete(part, str(dest))
    except InputError as exc:
        if total is None:  # length unknown: the server may have stopped early, keep the part to resume
            raise DownloadError(f"{exc}; {part} is kept: run again to resume. {hint}") from exc
        part.unlink(missing_ok=True)  # every announced byte arrived, so the file itself is bad
        raise DownloadError(f"{exc}; all {total:,} bytes announced by {url} arrived, so the download was "
                            f"removed. {hint}") from exc
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest}: SHA-256 {digest} does not match the expected {sha256.lower()} for {url}; "
                            f"the download was removed. {hint}")
    os.replace(part, dest)
    return {"path": str(dest), "bytes": dest.stat().st_size, "seconds": time.perf_counter() - t0,
            "sha256": digest, "downloaded": fetched, "resumed_from": resumed_from}


def obtain(source: Source, f: RemoteFile, folder: Path, mirror: str | None = None, progress: bool = False,
           retries: int = 3, timeout: float = 60.0) -> dict:
    """One file of ``source`` in ``folder``: verified if already there, else downloaded."""
    dest = folder / f.name
    url = source_url(source, f, mirror)
    hint = _by_hand(source, f, url, dest)
    recorded = read_checksums(folder).get(f.name)
    expected = f.sha256 or recorded
    where = "the source table" if f.sha256 else f"{folder / CHECKSUM_FILE}"
    if dest.exists():
        digest = sha256_of(dest)
        if expected is not None and digest != expected.lower():
            raise DownloadError(f"{dest}: SHA-256 {digest} does not match {expected.lower()} ({where}); the file is "
                                f"not the published one. Delete it to download {url} again, or fix {where}. {hint}")
        check_complete(dest)
        result = {"path": str(dest), "bytes": dest.stat().st_size, "seconds": 0.0, "sha256": digest,
                  "downloaded": 0, "resumed_from": 0, "in_place": True}
    else:
        result = download(url, dest, sha256=expected, size=f.size, retries=retries, timeout=timeout,
                          progress=progress, hint=hint)
        result["in_place"] = False
    result["url"] = url
    result["checksum"] = "verified" if expected else "recorded"
    if recorded != result["sha256"]:
        record_checksum(folder, f.name, result["sha256"])
    return result


# -- the development atlas: four h5ad parts + the cell table -> one atlas h5ad ----------------------


_JAX_DAY = re.compile(r"^([EP])(\d+(?:\.\d+)?)")
BIRTH_DAY = 19.5  # P0 = E19.5, the usual staging of birth in mouse: P<n> is day 19.5 + n


def jax_day(value) -> float:
    """'E8.0-E8.5' -> 8.0, 'E10.25' -> 10.25, 'P0' -> 19.5 (days since conception)."""
    m = _JAX_DAY.match(str(value).strip())
    if m is None:
        raise ValueError(value)
    return float(m.group(2)) + (BIRTH_DAY if m.group(1) == "P" else 0.0)


class _RowStream:
    """Consecutive row blocks of a CSV, read in chunks (the cell table is ~1.5 GB)."""

    def __init__(self, path: Path, usecols, chunk: int):
        self._it = pd.read_csv(path, usecols=usecols, chunksize=chunk, dtype=str)
        self._buf = None
        self.path = path
        self.read = 0

    def take(self, n: int) -> pd.DataFrame:
        parts, need = [], n
        while need:
            if self._buf is None or not len(self._buf):
                self._buf = next(self._it, None)
                if self._buf is None:
                    raise InputError(f"{self.path}: {self.read:,} rows, but the h5ad parts hold more cells "
                                     f"(truncated cell table?)")
            take = self._buf.iloc[:need]
            self._buf = self._buf.iloc[need:]
            parts.append(take)
            need -= len(take)
        self.read += n
        return pd.concat(parts) if len(parts) > 1 else parts[0]

    def rest(self) -> int:
        n = len(self._buf) if self._buf is not None else 0
        return n + sum(len(c) for c in self._it)


def merge_atlas(parts: list[Path], cells: Path, out_path: Path, cell_type_column: str = "celltype_update",
                day_column: str = "day", chunk_size: int = 10_000, progress: bool = False) -> dict:
    """The JAX parts as one atlas h5ad: raw counts, ``day`` (days) and ``cell_type`` from the cell table.

    The cell table's rows follow the parts' cells in order (as ``anndata.concat`` of the parts); where
    both carry ``cell_id`` they must agree row by row.
    """
    from scaling_assets.data.h5ad_io import CsrReader, CsrWriter

    header = pd.read_csv(cells, nrows=0).columns
    for col in (day_column, cell_type_column):
        if col not in header:
            raise InputError(f"{cells}: missing column {col!r} (columns present: {list(header)})")
    with_id = "cell_id" in header
    stream = _RowStream(cells, [c for c in (day_column, cell_type_column, "cell_id") if c in header], chunk_size)
    var = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="cells", desc="merge atlas parts")
    writer = None
    try:
        for part in parts:
            with CsrReader(part, "auto") as reader:
                names = [str(g) for g in reader.var_names]
                if var is None:
                    var = names
                    writer = CsrWriter(out_path, var, dtype=np.float32,
                                       uns={"source": {"format": "jax_parts", "parts": [str(p) for p in parts],
                                                       "cells": str(cells)}})
                elif names != var:
                    raise InputError(f"{part}: var names differ from {parts[0]}'s; the parts must share one gene list")
                part_ids = "cell_id" in reader.obs_columns and with_id
                for rows, X in reader.iter_chunks(chunk_size):
                    meta = stream.take(rows.size)
                    obs_part = reader.read_obs(rows, columns=["cell_id"] if part_ids else [])
                    if part_ids:
                        bad = np.flatnonzero(obs_part["cell_id"].astype(str).to_numpy() != meta["cell_id"].to_numpy())
                        if bad.size:
                            i = int(bad[0])
                            raise InputError(
                                f"{cells}: row {stream.read - rows.size + i + 1:,} has cell_id "
                                f"{meta['cell_id'].iloc[i]!r}, {part} row {int(rows[i])} has "
                                f"{obs_part['cell_id'].iloc[i]!r}; the table must list the parts' cells in order")
                    try:
                        days = np.array([jax_day(v) for v in meta[day_column]])
                    except ValueError as exc:
                        raise InputError(f"{cells}: column {day_column!r} value {exc.args[0]!r} is not a stage "
                                         f"like 'E8.5', 'E8.0-E8.5' or 'P0'") from exc
                    obs = pd.DataFrame({"day": days, "cell_type": meta[cell_type_column].astype(object).to_numpy()},
                                       index=(meta["cell_id"].to_numpy() if with_id else obs_part.index.to_numpy()))
                    writer.append(X, obs)
                    if bar is not None:
                        bar.update(rows.size)
        extra = stream.rest()
        if extra:
            raise InputError(f"{cells}: {extra:,} rows more than the {stream.read:,} cells of the h5ad parts")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return writer.summary()


# -- fetch = obtain every file, convert, print the study lines --------------------------------------


def fetch(name: str, folder, mirror: str | None = None, convert: bool = True, progress: bool | None = None,
          retries: int = 3, timeout: float = 60.0, chunk_size: int = 10_000, out=None) -> dict:
    """Obtain and convert one of the paper's datasets; returns {files, summary, yaml, ...}."""
    import sys

    from scaling_assets.data.loaders import ingest

    out = out or sys.stdout
    if name not in SOURCES:
        raise InputError(f"data fetch: unknown dataset {name!r}; expected one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    progress = progress_enabled() if progress is None else progress
    files = {}
    for f in source.files:
        try:
            r = obtain(source, f, folder, mirror, progress, retries, timeout)
        except DownloadError as exc:
            missing = [g for g in source.files if g is not f and not (folder / g.name).exists()]
            if not missing:
                raise
            also = "; ".join(f"{g.name} from {source_url(source, g, mirror)}" for g in missing)
            raise DownloadError(f"{exc}. Also missing in {folder}: {also}") from exc
        files[f.option] = r
        how = "in place" if r["in_place"] else (
            f"downloaded {r['downloaded'] / 1e6:,.1f} MB in {r['seconds']:.1f} s"
            + (f" (resumed from byte {r['resumed_from']:,})" if r["resumed_from"] else ""))
        print(f"{f.name}: {r['bytes']:,} bytes, {how}; sha256 {r['sha256']} ({r['checksum']})", file=out)
    result = {"name": name, "files": files, "dir": str(folder)}
    if not convert:
        return result
    target = folder / source.output
    t0 = time.perf_counter()
    if source.fmt == "atlas":
        from scaling_assets.fs import temporary_sibling

        merged = temporary_sibling(folder / "mouse_embryo_merged.h5ad")
        try:
            merge_atlas([Path(files[f"part_{i}"]["path"]) for i in range(1, JAX_PARTS + 1)],
                        Path(files["cells"]["path"]), merged, chunk_size=chunk_size, progress=progress)
            summary = ingest("atlas", target, progress=progress, path=str(merged), chunk_size=chunk_size,
                             **source.options)
        finally:
            merged.unlink(missing_ok=True)
    else:
        paths = {f.option: files[f.option]["path"] for f in source.files}
        summary = ingest(source.fmt, target, progress=progress, chunk_size=chunk_size, **paths, **source.options)
    summary["seconds"] = time.perf_counter() - t0
    result.update(summary=summary, yaml=study_yaml(source, summary))
    return result


def study_yaml(source: Source, summary: dict) -> str:
    """The ``datasets:`` entry of a study that reads the converted file."""
    return "\n".join([
        f"  {source.name}:",
        f"    task: {source.task}",
        "    source: h5ad",
        f"    cells: {summary['cells']}",
        f"    umis_per_cell: {summary['umis_per_cell']:.0f}",
        f"    paths: {{path: \"{summary['path']}\"}}",
    ])


def describe_sources() -> str:
    """The table of sources, for ``data fetch --list`` and the README."""
    lines = []
    for s in SOURCES.values():
        lines.append(f"{s.name} ({s.task}, loader {s.fmt}): {s.citation}")
        for f in s.files:
            check = f"sha256 {f.sha256}" if f.sha256 else "no published checksum (SHA-256 recorded after download)"
            lines.append(f"  {f.name:44s} {f.url}  [{check}]")
        lines.append(f"  by hand: {s.page}")
        lines.append(f"  licence: {s.licence}")
    return "\n".join(lines)
