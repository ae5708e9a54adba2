"""``scaling-assets study ...``: show the grid of a study, or run it end to end through Dagster."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    study = subparsers.add_parser("study", help="show or run a study (default: the embedded default study)")
    sub = study.add_subparsers(dest="study_command", required=True)

    show = sub.add_parser("show", help="print the study's datasets and grid")
    show.add_argument("--study", default=None, help="study name (default, paper) or YAML path")
    show.add_argument("--remove-stale", action="store_true", help="delete the folders under the study root "
                      "that the study no longer has (grid points, assets or datasets removed from the study file); not for a "
                      "root that another study shares: its folders would count as stale")
    show.set_defaults(func=_show)

    plan = sub.add_parser("plan", help="what the study costs before it runs: training runs, cells read, bytes "
                          "on disk by asset, GPU hours (from the study file; no data needed)")
    plan.add_argument("--study", default=None, help="study name (default, paper) or YAML path")
    plan.add_argument("--gpu", default="h200", help="whose rates price the GPU steps: h200 (measured) or h100 "
                      "(derived from the H200's, not measured; the plan says how)")
    plan.add_argument("--throughput", action="append", default=[], metavar="NAME=RATE",
                      help="measured throughput replacing one of the GPU's: scvi=cells/s, geneformer=tokens/s, "
                      "embed=cells/s, lmi=estimates/s, or a study's own model's training cells/s (repeatable)")
    plan.set_defaults(func=_plan)

    run = sub.add_parser("run", help="submit the study to the Dagster instance (an asset backfill run by the "
                         "daemon, the run queue and the launcher) and watch it to the end")
    run.add_argument("--study", default=None, help="study name (default, paper) or YAML path; "
                     "default: $SCALING_ASSETS_STUDY, else 'default'")
    run.add_argument("--refresh", action="store_true", help="re-materialise partitions that already exist")
    run.add_argument("--serial", action="store_true", help="debugging: materialise in this one process, "
                     "one partition group after another, bypassing the run queue")
    run.set_defaults(func=_run)

    verify = sub.add_parser("verify", help="check every file of the study against the bytes and BLAKE2b recorded "
                            "at write (pools, corpora, models, embeddings); bad partitions, and what was made from "
                            "them since they changed, are marked for rebuilding by the next `study run`")
    verify.add_argument("--study", default=None, help="study name (default, paper) or YAML path; "
                        "default: $SCALING_ASSETS_STUDY, else 'default'")
    verify.add_argument("--dry-run", action="store_true", help="report only: mark nothing")
    verify.set_defaults(func=_verify)


def _show(args: argparse.Namespace) -> int:
    from scaling_assets.study.pairs import check_test_pairs
    from scaling_assets.study.spec import check_sources, load_study

    s = load_study(args.study, check_paths=False)
    check_sources(s, missing_ok=True)  # a bad data file is refused here, in seconds
    check_test_pairs(s)  # a test set too small for an MI estimate, before anything trains
    print(f"study {s.name!r} ({s.source_file}); budget {s.budget}; seeds {list(s.seeds)}; algorithms {list(s.algorithms)}")
    print(f"storage root: {s.root}")
    from scaling_assets.study.planner import sizes_report

    for name, d in s.datasets.items():
        print(f"  {name}: task {d.task or '-'} (signals {', '.join(d.signal_names)}), source {d.source}, "
              f"cells {d.cells}, qualities {list(d.qualities)}")
        for line in sizes_report(s, name):  # the sizes it really gets, and each seed's pool once split
            print(f"    {line}")
    for algorithm, entry in s.models.items():
        if entry.origin != "built-in":  # the study's own models: what runs, from where, with what
            print(f"  {algorithm}: {entry.origin}; reads {entry.reads}, embedding width {entry.embedding_dim}"
                  + ("; pretrained, frozen: no size axis (n=0)" if entry.pretrained else "")
                  + (f"; params {dict(entry.params)}" if entry.params else ""))
    for algorithm, grid in s.algorithm_grids.items():
        print(f"  {algorithm}{f' ({grid.label})' if grid.label else ''}: sizes {list(grid.sizes) if grid.sizes else 'all'}, "
              f"qualities {list(grid.qualities) if grid.qualities else 'all'}, seeds {list(s.seeds_of(algorithm))}")
    print(f"{s.n_training_runs()} training runs")
    _show_stale(s, remove=args.remove_stale)
    return 0


def _show_stale(study, remove: bool, shown: int = 20) -> None:
    """List (or remove) the folders under the study root that the study no longer has."""
    import shutil
    from pathlib import Path

    from scaling_assets.layout import stale_folders

    if not Path(study.root).is_dir():
        return
    from scaling_assets.definitions import build_definitions

    graph = build_definitions(study).resolve_asset_graph()
    expected = {}
    for key in graph.materializable_asset_keys:
        partitions_def = graph.get(key).partitions_def
        expected[tuple(key.path)] = set(partitions_def.get_partition_keys()) if partitions_def else {None}
    stale = stale_folders(study.root, expected)
    if not stale:
        return
    size = sum(f.stat().st_size for folder in stale for f in folder.rglob("*") if f.is_file())
    what = f"{len(stale)} folder(s), {size / 1e6:.1f} MB, under {study.root} that the study no longer has"
    if not remove:
        print(f"stale: {what} (--remove-stale deletes them):")
        for folder in stale[:shown]:
            print(f"  {folder.relative_to(study.root)}")
        if len(stale) > shown:
            print(f"  ... {len(stale) - shown} more")
        return
    from scaling_assets.study.backfills import study_lock

    with study_lock(study):  # never under a running `study run` of this study
        for folder in stale:
            shutil.rmtree(folder)
    print(f"removed {what}")


def _plan(args: argparse.Namespace) -> int:
    from scaling_assets.errors import InputError
    from scaling_assets.study.planner import THROUGHPUTS, format_plan, plan_study
    from scaling_assets.study.spec import load_study

    from scaling_assets.models.registry import BUILTIN

    study = load_study(args.study, check_paths=False)
    names = sorted(THROUGHPUTS) + [a for a in study.algorithms if a not in BUILTIN]
    given = {}
    for item in args.throughput:
        name, _, rate = item.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if name not in names or not value > 0:
            raise InputError(f"--throughput {item!r}: expected NAME=RATE with NAME one of {names} "
                             "and a positive rate")
        given[name] = value
    print(format_plan(study, plan_study(study, given, args.gpu), given, args.gpu))
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TQDM_MININTERVAL", "5")
    from scaling_assets.fs import check_writable
    from scaling_assets.study.pairs import check_test_pairs
    from scaling_assets.study.spec import STUDY_ENV, check_sources, load_study

    study = load_study(args.study)
    check_sources(study)  # header and a sample of each data file: refused now (before importing Dagster)
    check_test_pairs(study)  # a test set too small for an MI estimate, before anything trains
    check_writable(study.root, "study root")

    from dagster import DagsterInstance

    from scaling_assets.study.serial import ensure_dagster_home, run_study
    from scaling_assets.study.backfills import run_study_queued
    if args.study:
        os.environ[STUDY_ENV] = args.study  # so the daemon (and the UI later) load the same study
    check_writable(ensure_dagster_home(), "DAGSTER_HOME")
    with DagsterInstance.get() as instance:
        if args.serial:
            result = run_study(study, instance, refresh=args.refresh)
        else:
            result = run_study_queued(study, instance, refresh=args.refresh)
    return 1 if result["failed"] else 0


def _verify(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from scaling_assets.fs import check_writable
    from scaling_assets.study.serial import ensure_dagster_home
    from scaling_assets.study.spec import load_study
    from scaling_assets.study.verify import verify_study

    study = load_study(args.study, check_paths=False)  # the stored partitions are checked, not the sources
    check_writable(study.root, "study root")  # its lock is written even by a dry run
    if args.dry_run:
        return 1 if verify_study(study, None, mark=False)["bad"] else 0
    check_writable(ensure_dagster_home(), "DAGSTER_HOME")
    with DagsterInstance.get() as instance:
        return 1 if verify_study(study, instance)["bad"] else 0
