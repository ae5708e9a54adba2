"""``scaling-assets laws fit``: both scaling laws fitted on any MI table (a finished study's, or one
computed elsewhere), written as fit tables and plots."""

from __future__ import annotations

import argparse

from scaling_assets.metrics.laws import DEFAULT_FIT_RULES, FIT_RULES


def register(subparsers) -> None:
    laws = subparsers.add_parser("laws", help="fit the noise and size scaling laws on an MI table")
    sub = laws.add_subparsers(dest="laws_command", required=True)
    fit = sub.add_parser("fit", help="fit both laws on an MI table (CSV or Parquet with the study's mi_table "
                         "columns) and write the fit tables and one plot per (dataset, signal)")
    fit.add_argument("--mi", required=True, help="MI table: .csv or .parquet (e.g. a study's "
                     "results/mi_table/all/table.parquet)")
    fit.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    fit.add_argument("--rules", choices=list(FIT_RULES), default=DEFAULT_FIT_RULES,
                     help="fit rules: the reference study's bounds (default) or the wide bounds, for comparison")
    fit.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling_assets.errors import InputError
    from scaling_assets.metrics.law_report import read_mi_table, summary_text, write_law_report

    mi_path, out = Path(args.mi).resolve(), Path(args.out).resolve()
    if out == mi_path.parent and mi_path.stem in ("noise_law_fits", "size_law_fits"):
        raise InputError(f"--out {out} would overwrite the table being read")
    mi = read_mi_table(mi_path)
    report = write_law_report(mi, out, args.rules)
    print(f"fitted {len(report.noise)} noise-law and {len(report.size)} size-law groups of {mi_path} "
          f"({len(mi):,} rows) with the {args.rules} rules")
    print("fits identified (and with R^2 >= 0.9; size law: of the series whose MI depends on N) per law, "
          "dataset and algorithm:")
    print(summary_text(report.noise, report.size))
    for name, path in report.paths.items():
        print(f"{name:>24}: {path}")
    return 0
