"""``scaling-assets simulate``, ``scaling-assets ingest`` and ``scaling-assets data fetch``: write a
canonical raw h5ad."""

from __future__ import annotations

import argparse

from scaling_assets.data.loaders import ingest
from scaling_assets.data.simulate import MEDIAN_UMIS, simulate
from scaling_assets.data.tasks import FORMATS, TASKS


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate a task in the canonical layout")
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--cells", type=int, required=True, help="number of cells")
    p.add_argument("--genes", type=int, default=2000, help="number of genes (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--median-umis", type=float, default=MEDIAN_UMIS, help=f"median UMIs per cell (default {MEDIAN_UMIS:,.0f})")
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
    p.add_argument("--reference-filters", action=argparse.BooleanOptionalAction, default=None,
                   help="cite: keep the cells and proteins scvi-tools' pbmc_seurat_v4_cite_seq(apply_filters=True, "
                        "aggregate_proteins=True) keeps (default: on); --no-reference-filters reads the file as it is")
    p.add_argument("--cell-by-gene", help="merfish: cell_by_gene.csv")
    p.add_argument("--cell-metadata", help="merfish: cell_metadata.csv")
    p.add_argument("--day-column", help="atlas: obs column with the developmental day")
    p.add_argument("--cell-type-column", help="atlas: obs column with the cell type")
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_ingest)

    data = subparsers.add_parser("data", help="the paper's datasets: fetch them from their public sources")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "fetch", help="download one of the paper's datasets (resumable, checksummed) and convert it",
        description="Download a dataset of the reference study from where it was published (HTTP Range resume, "
                    "SHA-256 recorded in DIR/SHA256SUMS and verified on later runs), convert it to the canonical "
                    "h5ad with the loaders, and print the study YAML lines that read it. Files already in DIR are "
                    "used without downloading.")
    p.add_argument("name", nargs="?", choices=["cite", "lineage", "spatial", "development"])
    p.add_argument("--dir", help="folder for the downloads and the converted file (cite: scvi-tools' save_path)")
    p.add_argument("--mirror", help="base URL replacing the sources: files at MIRROR/<name>/<file> "
                                    "(default: $SCALING_ASSETS_DATA_MIRROR, else the public sources)")
    p.add_argument("--no-convert", action="store_true", help="download and verify only")
    p.add_argument("--retries", type=int, default=3, help="resumed attempts after a dropped connection (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry (default 60)")
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--list", action="store_true", help="print the sources, checksums and licences and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_fetch)


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


def _fetch(args) -> int:
    from scaling_assets.data.fetch import describe_sources, fetch, progress_enabled
    from scaling_assets.errors import InputError

    if args.list:
        print(describe_sources())
        return 0
    if args.name is None or args.dir is None:
        raise InputError("data fetch: give a dataset (cite, lineage, spatial, development) and --dir DIR")
    result = fetch(args.name, args.dir, mirror=args.mirror, convert=not args.no_convert,
                   progress=progress_enabled(args.quiet), retries=args.retries, timeout=args.timeout,
                   chunk_size=args.chunk_size)
    if "summary" in result:
        print_summary(result["summary"])
        print(f"converted in {result['summary']['seconds']:.1f} s. Study YAML (under datasets:):")
        print(result["yaml"])
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
    if "cells_filtered_reference" in s:
        lines.append(f"filtered   {s['cells_filtered_reference']:,} cells by scvi-tools' reference filters")
    if "cells_rejected_non_integer" in s:
        lines.append(f"rejected   {s['cells_rejected_non_integer']:,} cells whose counts did not recover to integers")
    print("\n".join(lines))
