"""Bounded-memory CSR row-range I/O on h5ad files, with h5py only (no anndata at run time).

Reads slice ``indptr`` first and then only the matching part of ``indices``/``data``, so peak memory
depends on the rows asked for, never on the file size. The writer appends chunks to resizable
datasets and writes the anndata encoding attributes so that ``anndata.read_h5ad`` reads the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scaling_assets.errors import InputError
from scaling_assets.fs import temporary_sibling

# Above this many elements between two wanted rows, a subset read issues a new h5py read instead of
# reading through the gap (an h5py call costs about as much as reading ~100 KB from page cache).
_GAP_ELEMENTS = 16_384
_GAP_ELEMENTS_DIRECT = 2_048  # a direct pread costs only a few microseconds
# Largest span of rows whose indptr (or obs column) one subset read loads at once.
_MAX_SPAN = 1 << 20

_STR = h5py.string_dtype()


def _open_h5(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found (expected an .h5ad file)")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (expected an .h5ad file written by anndata)")
    return h5py.File(path, "r")


def _decode_strings(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)
    return values


def _take(ds: h5py.Dataset, rows: np.ndarray | None) -> np.ndarray:
    """Rows of a dataset (any order, duplicates allowed) reading bounded spans of sorted rows."""
    if rows is None:
        return ds[()]
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return ds[0:0]
    order = np.argsort(rows, kind="stable")
    srows = rows[order]
    parts, lo = [], 0
    while lo < srows.size:
        # group sorted rows whose span is bounded, read the span once and pick the wanted rows
        hi = int(np.searchsorted(srows, srows[lo] + _MAX_SPAN, side="left"))
        first, last = int(srows[lo]), int(srows[hi - 1])
        block = ds[first : last + 1]
        parts.append(block[srows[lo:hi] - first])
        lo = hi
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    result = np.empty_like(out)
    result[order] = out
    return result


def _read_column(node: h5py.Dataset | h5py.Group, rows: np.ndarray | None, where: str):
    """One obs/var column in anndata's encoding (categorical, nullable, string or numeric)."""
    enc = node.attrs.get("encoding-type", "")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if isinstance(node, h5py.Group):
        if enc == "categorical":
            codes = _take(node["codes"], rows)
            categories = _decode_strings(node["categories"][()])
            ordered = bool(node.attrs.get("ordered", False))
            return pd.Categorical.from_codes(codes, categories=categories, ordered=ordered)
        if enc in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
            values = _take(node["values"], rows)
            mask = _take(node["mask"], rows).astype(bool)
            if enc == "nullable-integer":
                return pd.arrays.IntegerArray(values, mask)
            if enc == "nullable-boolean":
                return pd.arrays.BooleanArray(values.astype(bool), mask)
            values = _decode_strings(values)
            values[mask] = pd.NA
            return pd.array(values, dtype="string")
        raise InputError(f"{node.file.filename}: {where} has unsupported encoding {enc!r}")
    values = _take(node, rows)
    if values.dtype.kind in "SO":
        return _decode_strings(values)
    return values


def _read_dataframe(group: h5py.Group, rows: np.ndarray | None, columns: list[str] | None) -> pd.DataFrame:
    index_key = group.attrs.get("_index", "_index")
    order = [c.decode() if isinstance(c, bytes) else str(c) for c in group.attrs.get("column-order", [])]
    if columns is None:
        columns = order
    missing = [c for c in columns if c not in group]
    if missing:
        raise InputError(
            f"{group.file.filename}: {group.name} has no column(s) {missing}; columns present: {order}"
        )
    index = _decode_strings(_take(group[index_key], rows)) if index_key in group else None
    data = {c: _read_column(group[c], rows, f"{group.name}/{c}") for c in columns}
    df = pd.DataFrame(data, index=pd.Index(index, dtype=object) if index is not None else None)
    return df


def _read_uns(group: h5py.Group) -> dict:
    out = {}
    for key, node in group.items():
        enc = node.attrs.get("encoding-type", "")
        if isinstance(node, h5py.Group):
            if enc in ("dict", ""):
                out[key] = _read_uns(node)
            continue  # dataframes, sparse matrices etc. are not needed by the platform
        value = node[()]
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.ndarray) and value.dtype.kind in "SO":
            value = _decode_strings(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def tune_allocator(max_reuse_bytes: int = 1 << 30) -> bool:
    """Opt-in, process-wide: let glibc serve large arrays from its heap and keep freed ones.

    Chunk arrays of tens of MB are otherwise fresh ``mmap`` pages each time, and the page faults
    cost about as much as reading the data (a full row-range pass runs ~2x faster with this). The
    price: up to ``max_reuse_bytes`` of freed memory stays with the process. Returns False where
    glibc's ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    if os.environ.get("SCALING_ASSETS_TUNE_ALLOCATOR", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, max_reuse_bytes)) and bool(
            libc.mallopt(m_trim_threshold, max_reuse_bytes)
        )
    except (OSError, AttributeError):
        return False


class _RawArray:
    """A 1-d dataset read by element range; uncompressed data is read with ``os.preadv`` straight
    from the file at the chunk addresses HDF5 reports (several times faster than an h5py call per
    range); compressed or unusual layouts go through h5py."""

    def __init__(self, ds: h5py.Dataset, fd: int | None):
        self.ds, self.fd, self.dtype = ds, fd, ds.dtype
        self.size = int(ds.shape[0])
        self.chunk = self.size or 1
        self.offsets = None  # byte offset of each chunk in the file
        try:
            self._init_direct()
        except Exception:  # any surprise in the layout: fall back to h5py reads
            self.offsets = None

    def _init_direct(self) -> None:
        ds = self.ds
        plist = ds.id.get_create_plist()
        if (self.fd is None or ds.ndim != 1 or plist.get_nfilters() != 0 or ds.file.userblock_size != 0
                or not self.dtype.isnative or self.size == 0):
            return
        if plist.get_layout() == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is not None:
                self.offsets = np.array([offset], dtype=np.int64)
            return
        if plist.get_layout() != h5py.h5d.CHUNKED:
            return
        self.chunk = int(ds.chunks[0])
        n_chunks = -(-self.size // self.chunk)
        found = []
        ds.id.chunk_iter(lambda info: found.append((info.chunk_offset[0], info.byte_offset)))
        if len(found) != n_chunks:  # unallocated chunks (fill values): let h5py handle them
            return
        found.sort()
        self.offsets = np.array([b for _, b in found], dtype=np.int64)

    def read_into(self, out: np.ndarray, lo: int, hi: int, at: int = 0) -> None:
        """Elements [lo, hi) into out[at : at + hi - lo]."""
        if hi <= lo:
            return
        if self.offsets is None:
            self.ds.read_direct(out, np.s_[lo:hi], np.s_[at : at + hi - lo])
            return
        item = self.dtype.itemsize
        view = memoryview(out[at : at + hi - lo]).cast("B")
        pos = 0
        c = lo // self.chunk
        while lo < hi:
            # extend over chunks that follow each other in the file: one read
            end_c = c
            while ((end_c + 1) * self.chunk < hi and end_c + 1 < self.offsets.size
                   and self.offsets[end_c + 1] == self.offsets[end_c] + self.chunk * item):
                end_c += 1
            stop = min(hi, (end_c + 1) * self.chunk)
            nbytes = (stop - lo) * item
            got = os.preadv(self.fd, [view[pos : pos + nbytes]], int(self.offsets[c]) + (lo - c * self.chunk) * item)
            if got != nbytes:
                raise InputError(f"{self.ds.file.filename}: short read in {self.ds.name} (truncated file?)")
            pos += nbytes
            lo, c = stop, end_c + 1

    def __getitem__(self, sl: slice) -> np.ndarray:
        lo, hi, _ = sl.indices(self.size)
        out = np.empty(max(0, hi - lo), dtype=self.dtype)
        self.read_into(out, lo, hi)
        return out


class CsrReader:
    """Read row ranges / row subsets of an h5ad count matrix as CSR without loading the file.

    ``matrix``: "X", "raw/X", or "auto" (``X`` if present, else ``raw/X``).
    """

    def __init__(self, path: str | os.PathLike, matrix: str = "auto"):
        self._path = Path(path)
        self._fd: int | None = None
        self._file = _open_h5(self._path)
        try:
            self._init_matrix(matrix)
        except BaseException:
            self.close()
            raise

    def _init_matrix(self, matrix: str) -> None:
        f, path = self._file, self._path
        if matrix == "auto":
            matrix = "X" if "X" in f else "raw/X"
        if matrix not in ("X", "raw/X"):
            raise InputError(f"{path}: matrix must be 'X', 'raw/X' or 'auto', got {matrix!r}")
        if matrix not in f:
            raise InputError(f"{path}: no count matrix at {matrix!r} (an h5ad needs X or raw/X)")
        self.matrix = matrix
        self._var_group = f["raw/var"] if matrix == "raw/X" else f["var"]
        node = f[matrix]
        self._dense = isinstance(node, h5py.Dataset)
        if self._dense:
            if node.ndim != 2:
                raise InputError(f"{path}: {matrix} is a {node.ndim}-d array, expected cells x genes")
            self._shape = tuple(int(s) for s in node.shape)
            self._X = node
            return
        enc = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
        if isinstance(enc, bytes):
            enc = enc.decode()
        if enc in ("csc_matrix", "csc"):
            raise InputError(
                f"{path}: {matrix} is stored as CSC (column-major); row reads need CSR. Convert once on a "
                f"machine with enough memory: adata = anndata.read_h5ad(path); adata.X = adata.X.tocsr(); "
                f"adata.write_h5ad(new_path)"
            )
        if enc not in ("csr_matrix", "csr"):
            raise InputError(f"{path}: {matrix} has encoding {enc!r}, expected csr_matrix")
        self._shape = tuple(int(s) for s in node.attrs.get("shape", node.attrs.get("h5sparse_shape")))
        self._fd = os.open(path, os.O_RDONLY)
        self._data, self._indices = _RawArray(node["data"], self._fd), _RawArray(node["indices"], self._fd)
        self._indptr = _RawArray(node["indptr"], self._fd)
        if self._indptr.size != self._shape[0] + 1:
            raise InputError(
                f"{path}: {matrix}/indptr has {self._indptr.size} entries, expected n_obs + 1 = "
                f"{self._shape[0] + 1}"
            )

    # -- context manager -------------------------------------------------------------------------
    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._file.close()

    def __enter__(self) -> CsrReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shape and names -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def n_obs(self) -> int:
        return self._shape[0]

    @property
    def n_vars(self) -> int:
        return self._shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self._X.dtype if self._dense else self._data.dtype

    @property
    def var_names(self) -> np.ndarray:
        g = self._var_group
        return _decode_strings(g[g.attrs.get("_index", "_index")][()])

    @property
    def obs_names(self) -> np.ndarray:
        g = self._file["obs"]
        return _decode_strings(g[g.attrs.get("_index", "_index")][()])

    @property
    def obs_columns(self) -> list[str]:
        return [str(c) for c in self._file["obs"].attrs.get("column-order", [])]

    def has(self, key: str) -> bool:
        """Whether the file holds ``key`` (e.g. "raw/X")."""
        return key in self._file

    def obsm_keys(self) -> list[str]:
        return list(self._file["obsm"].keys()) if "obsm" in self._file else []

    # -- counts ----------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        start, stop = max(0, int(start)), min(self.n_obs, int(stop))
        stop = max(start, stop)
        if self._dense:
            return sp.csr_matrix(self._X[start:stop])
        ip = self._indptr[start : stop + 1].astype(np.int64)
        lo, hi = int(ip[0]), int(ip[-1])
        data = self._data[lo:hi]
        indices = self._indices[lo:hi]
        return sp.csr_matrix((data, indices, ip - lo), shape=(stop - start, self.n_vars))

    def read_subset(self, rows: np.ndarray) -> sp.csr_matrix:
        """Rows in the order given (duplicates allowed); nearby rows are read in one call."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_obs):
            raise InputError(f"{self._path}: row index out of range 0..{self.n_obs - 1}")
        if rows.size == 0:
            return sp.csr_matrix((0, self.n_vars), dtype=self.dtype)
        if rows.size == rows[-1] - rows[0] + 1 and np.all(np.diff(rows) == 1):
            return self.read_rows(int(rows[0]), int(rows[-1]) + 1)
        if self._dense:
            return sp.csr_matrix(_take(self._X, rows))
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        parts, lo = [], 0
        while lo < srows.size:
            hi = int(np.searchsorted(srows, srows[lo] + _MAX_SPAN, side="left"))
            parts.append(self._read_sorted(srows[lo:hi]))
            lo = hi
        out = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
        if np.any(order != np.arange(order.size)):
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            out = out[inverse]
        return out

    def _read_sorted(self, srows: np.ndarray) -> sp.csr_matrix:
        first, last = int(srows[0]), int(srows[-1])
        ip = self._indptr[first : last + 2].astype(np.int64)
        starts, ends = ip[srows - first], ip[srows - first + 1]
        lengths = ends - starts
        # merge wanted rows into segments of the data arrays, bridging small gaps
        new_seg = np.ones(srows.size, dtype=bool)
        gap = _GAP_ELEMENTS if self._data.offsets is None else _GAP_ELEMENTS_DIRECT
        new_seg[1:] = starts[1:] - ends[:-1] > gap
        seg_id = np.cumsum(new_seg) - 1
        seg_first = np.flatnonzero(new_seg)
        seg_lo = starts[seg_first]
        seg_hi = np.maximum.reduceat(ends, seg_first)
        seg_len = seg_hi - seg_lo
        seg_off = np.concatenate([[0], np.cumsum(seg_len)])
        data = np.empty(int(seg_off[-1]), dtype=self._data.dtype)
        indices = np.empty(int(seg_off[-1]), dtype=self._indices.dtype)
        for s in range(seg_lo.size):
            a, b, at = int(seg_lo[s]), int(seg_hi[s]), int(seg_off[s])
            self._data.read_into(data, a, b, at)
            self._indices.read_into(indices, a, b, at)
        # position of each wanted row's entries inside the concatenated segment buffer
        buf_start = seg_off[seg_id] + (starts - seg_lo[seg_id])
        out_ptr = np.zeros(srows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_ptr[1:])
        take = np.repeat(buf_start - out_ptr[:-1], lengths) + np.arange(out_ptr[-1])
        if take.size != data.size or np.any(take != np.arange(data.size)):
            data, indices = data[take], indices[take]
        return sp.csr_matrix((data, indices, out_ptr), shape=(srows.size, self.n_vars))

    def iter_chunks(
        self, chunk_size: int = 10_000, rows: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
        if rows is None:
            for start in range(0, self.n_obs, chunk_size):
                stop = min(start + chunk_size, self.n_obs)
                yield np.arange(start, stop), self.read_rows(start, stop)
            return
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, rows.size, chunk_size):
            chunk = rows[start : start + chunk_size]
            yield chunk, self.read_subset(chunk)

    # -- annotations -----------------------------------------------------------------------------
    def read_obs(self, rows: np.ndarray | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        if "obs" not in self._file:
            raise InputError(f"{self._path}: no obs group (not an anndata h5ad?)")
        return _read_dataframe(self._file["obs"], rows, columns)

    def read_var(self, columns: list[str] | None = None) -> pd.DataFrame:
        return _read_dataframe(self._var_group, None, columns)

    def read_obsm(self, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        if "obsm" not in self._file or key not in self._file["obsm"]:
            raise InputError(f"{self._path}: obsm has no key {key!r}; keys present: {self.obsm_keys()}")
        node = self._file["obsm"][key]
        if isinstance(node, h5py.Dataset):
            return _take(node, rows)
        enc = node.attrs.get("encoding-type", "")
        if enc == "dataframe":  # e.g. protein counts distributed as a DataFrame
            df = _read_dataframe(node, rows, None)
            return df.to_numpy(dtype=np.float64)
        if enc == "csr_matrix":
            shape = tuple(int(s) for s in node.attrs["shape"])
            m = sp.csr_matrix((node["data"][()], node["indices"][()], node["indptr"][()]), shape=shape)
            return (m if rows is None else m[np.asarray(rows)]).toarray()
        raise InputError(f"{self._path}: obsm/{key} has unsupported encoding {enc!r}")

    def obsm_columns(self, key: str) -> list[str] | None:
        """Column names of a DataFrame-valued obsm entry (e.g. protein names), else None."""
        node = self._file["obsm"][key]
        if isinstance(node, h5py.Group) and node.attrs.get("encoding-type", "") == "dataframe":
            return [str(c) for c in node.attrs.get("column-order", [])]
        return None

    def read_uns(self) -> dict:
        return _read_uns(self._file["uns"]) if "uns" in self._file else {}


# ---------------------------------------------------------------------------------------------------
# Writer


def _set_enc(node, kind: str, version: str) -> None:
    node.attrs["encoding-type"] = kind
    node.attrs["encoding-version"] = version


def _set_column_order(group: h5py.Group, names: list[str]) -> None:
    # anndata writes an empty float array when there are no columns (h5py cannot store empty vlen str)
    if names:
        group.attrs.create("column-order", np.array(names, dtype=object), dtype=_STR)
    else:
        group.attrs["column-order"] = np.array([], dtype=np.float64)


def _write_string_array(group: h5py.Group, name: str, values) -> None:
    ds = group.create_dataset(name, data=np.asarray([str(v) for v in values], dtype=object), dtype=_STR)
    _set_enc(ds, "string-array", "0.2.0")


def _write_uns(group: h5py.Group, uns: dict) -> None:
    for key, value in uns.items():
        key = str(key)
        if isinstance(value, dict):
            sub = group.create_group(key)
            _set_enc(sub, "dict", "0.1.0")
            _write_uns(sub, value)
        elif isinstance(value, str):
            ds = group.create_dataset(key, data=value, dtype=_STR)
            _set_enc(ds, "string", "0.2.0")
        elif isinstance(value, (bool, int, float, np.number, np.bool_)):
            ds = group.create_dataset(key, data=value)
            _set_enc(ds, "numeric-scalar", "0.2.0")
        else:
            arr = np.asarray(value)
            if arr.dtype.kind in "OUS":
                _write_string_array(group, key, arr)
            else:
                ds = group.create_dataset(key, data=arr)
                _set_enc(ds, "array", "0.2.0")


class _Column:
    """An obs column written incrementally: numeric as an array, anything else as a categorical."""

    def __init__(self, group: h5py.Group, name: str, sample: pd.Series, chunk: int):
        self.name = name
        self.numeric = sample.dtype.kind in "iufb" and not isinstance(sample.dtype, pd.CategoricalDtype)
        if self.numeric:
            self.ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=sample.dtype, chunks=(chunk,))
            _set_enc(self.ds, "array", "0.2.0")
            return
        self.group = group.create_group(name)
        _set_enc(self.group, "categorical", "0.2.0")
        self.ordered = bool(getattr(sample.dtype, "ordered", False))
        self.codes = self.group.create_dataset(
            "codes", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,)
        )
        _set_enc(self.codes, "array", "0.2.0")
        self.lookup: dict = {}
        # keep declared category order for categoricals (e.g. ordered labels)
        if isinstance(sample.dtype, pd.CategoricalDtype):
            for c in sample.cat.categories:
                self.lookup.setdefault(str(c), len(self.lookup))

    def append(self, values: pd.Series) -> None:
        if self.numeric:
            arr = np.asarray(values.to_numpy(), dtype=self.ds.dtype)
            n = self.ds.shape[0]
            self.ds.resize((n + arr.size,))
            self.ds[n:] = arr
            return
        obj = values.astype(object).to_numpy()
        missing = pd.isna(obj)
        codes = np.full(obj.size, -1, dtype=np.int32)
        uniq, inv = np.unique(obj[~missing].astype(str), return_inverse=True)
        ucodes = np.array([self.lookup.setdefault(u, len(self.lookup)) for u in uniq], dtype=np.int32)
        codes[~missing] = ucodes[inv] if uniq.size else codes[~missing]
        n = self.codes.shape[0]
        self.codes.resize((n + codes.size,))
        self.codes[n:] = codes

    def finish(self) -> None:
        if not self.numeric:
            cats = sorted(self.lookup, key=self.lookup.get)
            _write_string_array(self.group, "categories", cats)
            self.group.attrs["ordered"] = self.ordered


class CsrWriter:
    """Write a canonical h5ad (CSR counts in X, obs, var, obsm, uns) chunk by chunk.

    Writes a hidden temporary sibling (``fs.temporary_sibling``) and renames it over ``path`` only on a successful ``close``; an
    exception inside the ``with`` block removes the temporary file. Counts are stored as int32
    (float32 when ``dtype`` says so), ``indptr`` as int64, in resizable chunked datasets.
    ``compression``: None (default: fastest reads), "gzip" or "lzf".
    """

    def __init__(
        self,
        path: str | os.PathLike,
        var_names,
        dtype=np.int32,
        compression: str | None = None,
        uns: dict | None = None,
        chunk_elements: int = 1 << 16,
        row_digests=None,
    ):
        self.path = Path(path)
        self.row_digests = row_digests  # an integrity.RowDigests fed the counts exactly as stored
        var_names = np.asarray([str(v) for v in var_names], dtype=object)
        if len(set(var_names)) != var_names.size:
            dup = pd.Index(var_names)[pd.Index(var_names).duplicated()][:5].tolist()
            raise InputError(f"{self.path}: duplicate gene ids in var_names, e.g. {dup}")
        self.var_names = var_names
        self.uns = dict(uns or {})
        self.tmp = temporary_sibling(self.path)
        self._f = h5py.File(self.tmp, "w")
        self._closed = False
        self.n_obs = 0
        self.nnz = 0
        self.total_counts = 0.0
        f = self._f
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        x = f.create_group("X")
        _set_enc(x, "csr_matrix", "0.1.0")
        comp = dict(compression=compression) if compression else {}
        ch = (chunk_elements,)
        self._data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=dtype, chunks=ch, **comp)
        self._indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=ch, **comp)
        self._indptr = x.create_dataset("indptr", shape=(1,), maxshape=(None,), dtype=np.int64, chunks=(1 << 14,))
        self._indptr[0] = 0
        self._obs = f.create_group("obs")
        self._obs_index = self._obs.create_dataset(
            "_index", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1 << 14,)
        )
        _set_enc(self._obs_index, "string-array", "0.2.0")
        self._columns: list[_Column] | None = None
        self._obsm_group = f.create_group("obsm")
        _set_enc(self._obsm_group, "dict", "0.1.0")
        self._obsm: dict[str, h5py.Dataset] = {}

    def __enter__(self) -> CsrWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def append(self, X: sp.spmatrix, obs: pd.DataFrame, obsm: dict[str, np.ndarray] | None = None) -> None:
        X = sp.csr_matrix(X)
        n = X.shape[0]
        if X.shape[1] != self.var_names.size:
            raise InputError(f"{self.path}: chunk has {X.shape[1]} genes, expected {self.var_names.size}")
        if len(obs) != n:
            raise InputError(f"{self.path}: obs chunk has {len(obs)} rows for {n} cells")
        obsm = obsm or {}
        if self._columns is None:
            self._columns = [_Column(self._obs, str(c), obs[c], 1 << 14) for c in obs.columns]
            _set_column_order(self._obs, [c.name for c in self._columns])
            for key, arr in obsm.items():
                arr = np.asarray(arr)
                ds = self._obsm_group.create_dataset(
                    key, shape=(0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]), dtype=arr.dtype,
                    chunks=(max(1, min(4096, (1 << 16) // max(1, int(np.prod(arr.shape[1:]))))), *arr.shape[1:]),
                )
                _set_enc(ds, "array", "0.2.0")
                self._obsm[key] = ds
        if [c.name for c in self._columns] != [str(c) for c in obs.columns]:
            raise InputError(f"{self.path}: obs columns changed between chunks: {list(obs.columns)}")
        if set(obsm) != set(self._obsm):
            raise InputError(f"{self.path}: obsm keys changed between chunks: {sorted(obsm)}")
        # counts
        X.sort_indices()
        nnz = X.nnz
        data = X.data
        if self._data.dtype.kind in "iu" and data.dtype.kind == "f":
            data = np.rint(data)
        data = data.astype(self._data.dtype, copy=False)
        indices = X.indices.astype(np.int32, copy=False)
        self._data.resize((self.nnz + nnz,))
        self._data[self.nnz :] = data
        self._indices.resize((self.nnz + nnz,))
        self._indices[self.nnz :] = indices
        if self.row_digests is not None:
            self.row_digests.update(sp.csr_matrix((data, indices, X.indptr), shape=X.shape))
        self._indptr.resize((self.n_obs + n + 1,))
        self._indptr[self.n_obs + 1 :] = X.indptr[1:].astype(np.int64) + self.nnz
        self.total_counts += float(data.sum(dtype=np.float64))
        # annotations
        self._obs_index.resize((self.n_obs + n,))
        self._obs_index[self.n_obs :] = np.asarray([str(v) for v in obs.index], dtype=object)
        for col in self._columns:
            col.append(obs[col.name])
        for key, ds in self._obsm.items():
            arr = np.asarray(obsm[key])
            if arr.shape[0] != n or arr.shape[1:] != ds.shape[1:]:
                raise InputError(f"{self.path}: obsm[{key!r}] chunk has shape {arr.shape}, expected ({n}, *{ds.shape[1:]})")
            ds.resize((self.n_obs + n, *ds.shape[1:]))
            ds[self.n_obs :] = arr
        self.n_obs += n
        self.nnz += nnz

    def close(self) -> None:
        if self._closed:
            return
        try:
            f = self._f
            f["X"].attrs["shape"] = np.array([self.n_obs, self.var_names.size], dtype=np.int64)
            for col in self._columns or []:
                col.finish()
            self._obs.attrs["_index"] = "_index"
            _set_enc(self._obs, "dataframe", "0.2.0")
            if self._columns is None:
                _set_column_order(self._obs, [])
            var = f.create_group("var")
            _set_enc(var, "dataframe", "0.2.0")
            var.attrs["_index"] = "_index"
            _set_column_order(var, [])
            _write_string_array(var, "_index", self.var_names)
            for name in ("layers", "obsp", "varm", "varp"):
                _set_enc(f.create_group(name), "dict", "0.1.0")
            uns = f.create_group("uns")
            _set_enc(uns, "dict", "0.1.0")
            _write_uns(uns, self.uns)
            f.close()
            os.replace(self.tmp, self.path)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file: nothing is left at ``path``."""
        self._closed = True
        try:
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "cells": self.n_obs,
            "genes": int(self.var_names.size),
            "total_umis": self.total_counts,
            "umis_per_cell": self.total_counts / self.n_obs if self.n_obs else 0.0,
        }


# ---------------------------------------------------------------------------------------------------


def obsm_keys(source) -> list[str]:
    """obsm keys of a CountSource (CsrReader or InMemoryCounts)."""
    if hasattr(source, "obsm_keys"):
        return list(source.obsm_keys())
    return list(getattr(source, "_obsm", {}).keys())


def write_rows(
    source,
    rows: np.ndarray | None,
    out_path: str | os.PathLike,
    transform: Callable[[sp.csr_matrix, np.ndarray], sp.csr_matrix] | None = None,
    chunk_size: int = 10_000,
    uns: dict | None = None,
    progress: bool = False,
    compression: str | None = None,
    row_digests=None,
) -> dict:
    """Stream rows of ``source`` (all rows if None) with their obs and obsm rows to a new h5ad.

    ``transform(csr_chunk, row_indices)`` rewrites each chunk (e.g. thinning). ``row_digests`` (an
    ``integrity.RowDigests``) is fed the counts as written. Returns a summary.
    """
    rows = np.arange(source.n_obs) if rows is None else np.asarray(rows, dtype=np.int64)
    base_uns = dict(source.read_uns()) if hasattr(source, "read_uns") else {}
    base_uns.update(uns or {})
    keys = obsm_keys(source)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rows.size, unit="cells", desc=f"write {Path(out_path).name}")
    with CsrWriter(out_path, source.var_names, uns=base_uns, compression=compression,
                   row_digests=row_digests) as writer:
        for chunk_rows, X in source.iter_chunks(chunk_size, rows=rows):
            if transform is not None:
                X = transform(X, chunk_rows)
            obs = source.read_obs(chunk_rows)
            obsm = {k: source.read_obsm(k, chunk_rows) for k in keys}
            writer.append(X, obs, obsm)
            if bar is not None:
                bar.update(chunk_rows.size)
    if bar is not None:
        bar.close()
    return writer.summary()
