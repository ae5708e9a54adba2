"""``scaling-assets simulate`` and ``scaling-assets ingest``: write a canonical raw h5ad."""

from __future__ import annotations

import argparse

from scaling_assets.data.loaders import ingest
from scaling_assets.data.simulate import simulate
from scaling_assets.data.tasks import FORMATS, TASKS


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate a task in the canonical layout")
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--cells", type=int, required=True, help="number of cells")
    p.add_argument("--genes", type=int, default=2000, help="number of genes (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--median-umis", type=float, default=3000.0, help="median UMIs per cell (default 3000)")
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_simulate)

    p = subparsers.add_parser("ingest", help="convert a real dataset to the canonical layout")
    p.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--path", help="input .h5ad (h5ad, cite, atlas)")
    p.add_argument("--task", help="h5ad: task whose signal columns must be present")
    p.add_argument("--signals", help="h5ad: comma-separated obs columns (labels) and obsm:<key> matrices "
                   "the file must carry as signals, e.g. cell_type,obsm:protein")
    p.add_argument("--matrix", choices=["auto", "X", "raw/X"], help="h5ad/atlas: which matrix holds counts")
    p.add_argument("--counts", help="larry: stateFate_inVitro_normed_counts.mtx(.gz)")
    p.add_argument("--genes", help="larry: stateFate_inVitro_gene_names.txt(.gz)")
    p.add_argument("--metadata", help="larry: stateFate_inVitro_metadata.txt(.gz)")
    p.add_argument("--clones", help="larry: stateFate_inVitro_clone_matrix.mtx(.gz)")
    p.add_argument("--allow-normalized", action=argparse.BooleanOptionalAction, default=None,
                   help="larry: recover integer counts from per-cell normalised values (default: on)")
    p.add_argument("--level", help="cite: cell-type level l1, l2 or l3 (default l2)")
    p.add_argument("--protein-key", help="cite: obsm key of protein counts (default protein_counts)")
    p.add_argument("--cell-by-gene", help="merfish: cell_by_gene.csv")
    p.add_argument("--cell-metadata", help="merfish: cell_metadata.csv")
    p.add_argument("--day-column", help="atlas: obs column with the developmental day")
    p.add_argument("--cell-type-column", help="atlas: obs column with the cell type")
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_ingest)


def _simulate(args) -> int:
    summary = simulate(args.task, args.cells, args.genes, args.seed, args.out, chunk_size=args.chunk_size,
                       progress=not args.quiet, median_umis=args.median_umis)
    print_summary(summary)
    return 0


def _ingest(args) -> int:
    allowed = FORMATS[args.fmt].options
    options = {k: getattr(args, k) for k in allowed}
    if options.get("signals"):
        from scaling_assets.data.tasks import parse_signals
        from scaling_assets.errors import InputError

        try:
            options["signals"] = parse_signals([c.strip() for c in options["signals"].split(",") if c.strip()])
        except ValueError as exc:
            raise InputError(f"--signals: {exc.args[1]}") from None
    every = {o for f in FORMATS.values() for o in f.options}
    unused = [k for k in every - set(allowed) if getattr(args, k) is not None]
    if unused:
        from scaling_assets.errors import InputError

        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(unused))
        raise InputError(f"ingest --format {args.fmt} does not take {flags}")
    summary = ingest(args.fmt, args.out, progress=not args.quiet, chunk_size=args.chunk_size, **options)
    print_summary(summary)
    return 0


def print_summary(s: dict) -> None:
    lines = [
        f"wrote      {s['path']}",
        f"task       {s.get('task') or '-'}",
        f"cells      {s['cells']:,}",
        f"genes      {s['genes']:,}",
        f"UMIs/cell  {s['umis_per_cell']:,.1f}  (total {s['total_umis']:,.0f})",
        f"signals    {', '.join(s.get('signals') or []) or '-'}",
    ]
    if "cells_dropped_zero" in s:
        lines.append(f"dropped    {s['cells_dropped_zero']:,} cells with zero counts (of {s['cells_input']:,})")
    if "cells_rejected_non_integer" in s:
        lines.append(f"rejected   {s['cells_rejected_non_integer']:,} cells whose counts did not recover to integers")
    print("\n".join(lines))
