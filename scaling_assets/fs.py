"""Atomic file-system writes: write beside the target, then rename over it.

A reader (or a retry after a crash) sees the old file or folder or the new one whole, never half of
either. Temporary names are hidden siblings (``.<name>.tmp-<pid>-<random>``) on the same file system,
so the final ``os.replace`` is atomic; a failed write removes its temporary. No fsync: the guarantee
wanted is "no half-written file", not durability through a power cut.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden name in ``path``'s folder (its parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write(tmp)``: on success ``tmp`` replaces ``p``."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, value: Any, **dumps_options) -> None:
    write_text_atomic(path, json.dumps(value, **dumps_options))


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move folder ``src`` to ``dst``; a previous ``dst`` is moved aside first, removed after the swap."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = temporary_sibling(dst, "old")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_directory(p) as tmp: fill(tmp)``: on success the folder ``tmp`` replaces ``p``.

    A crash leaves only a hidden ``.tmp-*`` sibling, never a half-written ``p``."""
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


# What a folder the user named (a study root, DAGSTER_HOME) may fail with: the place, not the code, is wrong.
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Refuse, in one line naming the folder, one this process cannot create or write into (a read-only
    mount, no permission, an immutable folder). A file is created and removed there: ``os.access`` does
    not see every cause (as root it passes on a folder without write permission bits)."""
    from scaling_assets.errors import InputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_sibling(folder / ".write-check")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        raise InputError(f"{what} {folder} is not writable ({exc.strerror}"
                         f"{'' if exc.filename in (None, str(folder)) else f': {exc.filename}'}); "
                         f"give the {what} a folder this user can write") from None
