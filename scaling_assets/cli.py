"""The ``scaling-assets`` command. Each area registers its own sub-commands."""

from __future__ import annotations

import argparse
import errno
import sys

from scaling_assets.errors import InputError
from scaling_assets.fs import UNWRITABLE

FILE_SYSTEM_ERRORS = (*UNWRITABLE, errno.ENOSPC, errno.EDQUOT)

# (module, function) pairs; each function takes the sub-parsers object and adds its commands.
_COMMAND_MODULES = [
    "scaling_assets.data.commands",
    "scaling_assets.models.commands",
    "scaling_assets.metrics.commands",
    "scaling_assets.gpu.commands",
    "scaling_assets.study.commands",
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="scaling-assets",
        description="Scaling studies of single-cell representation models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from scaling_assets.data.h5ad_io import tune_allocator

    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()  # faster chunked reads: see scaling_assets.definitions
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a place the user named that cannot be written, or a full disk: one line, the file named
        if exc.errno not in FILE_SYSTEM_ERRORS:
            raise
        print(f"error: {exc.filename or 'a file'}: {exc.strerror} (errno {exc.errno})", file=sys.stderr)
        return 2 if exc.errno in UNWRITABLE else 1


if __name__ == "__main__":
    sys.exit(main())
