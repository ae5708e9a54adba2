"""``scaling-assets study ...``: show the grid of a study, or run it end to end through Dagster."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    study = subparsers.add_parser("study", help="show or run a study (default: the embedded default study)")
    sub = study.add_subparsers(dest="study_command", required=True)

    show = sub.add_parser("show", help="print the study's datasets and grid")
    show.add_argument("--study", default=None, help="study name (default, paper) or YAML path")
    show.set_defaults(func=_show)

    plan = sub.add_parser("plan", help="what the study costs before it runs: training runs, cells read, bytes "
                          "on disk by asset, GPU hours (from the study file; no data needed)")
    plan.add_argument("--study", default=None, help="study name (default, paper) or YAML path")
    plan.add_argument("--throughput", action="append", default=[], metavar="NAME=RATE",
                      help="measured throughput replacing a configured one: scvi=cells/s, geneformer=tokens/s, "
                      "embed=cells/s (repeatable)")
    plan.set_defaults(func=_plan)

    run = sub.add_parser("run", help="submit the study to the Dagster instance (an asset backfill run by the "
                         "daemon, the run queue and the launcher) and watch it to the end")
    run.add_argument("--study", default=None, help="study name (default, paper) or YAML path; "
                     "default: $SCALING_ASSETS_STUDY, else 'default'")
    run.add_argument("--refresh", action="store_true", help="re-materialise partitions that already exist")
    run.add_argument("--serial", action="store_true", help="debugging: materialise in this one process, "
                     "one partition group after another, bypassing the run queue")
    run.set_defaults(func=_run)


def _show(args: argparse.Namespace) -> int:
    from scaling_assets.study import load_study

    s = load_study(args.study, check_paths=False)
    print(f"study {s.name!r} ({s.source_file}); budget {s.budget}; seeds {list(s.seeds)}; algorithms {list(s.algorithms)}")
    print(f"storage root: {s.root}")
    from scaling_assets.planner import sizes_report

    for name, d in s.datasets.items():
        print(f"  {name}: task {d.task}, source {d.source}, cells {d.cells}, qualities {list(d.qualities)}")
        for line in sizes_report(s, name):  # the sizes it really gets, and each seed's pool once split
            print(f"    {line}")
    for algorithm, grid in s.algorithm_grids.items():
        print(f"  {algorithm} ({grid.label}): sizes {list(grid.sizes) if grid.sizes else 'all'}, "
              f"qualities {list(grid.qualities) if grid.qualities else 'all'}")
    print(f"{s.n_training_runs()} training runs")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from scaling_assets.errors import InputError
    from scaling_assets.planner import THROUGHPUTS, format_plan, plan_study
    from scaling_assets.study import load_study

    given = {}
    for item in args.throughput:
        name, _, rate = item.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if name not in THROUGHPUTS or not value > 0:
            raise InputError(f"--throughput {item!r}: expected NAME=RATE with NAME one of {sorted(THROUGHPUTS)} "
                             "and a positive rate")
        given[name] = value
    study = load_study(args.study, check_paths=False)
    print(format_plan(study, plan_study(study, given), given))
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TQDM_MININTERVAL", "5")
    from dagster import DagsterInstance

    from scaling_assets.run_study import ensure_dagster_home, run_study
    from scaling_assets.study import STUDY_ENV, load_study
    from scaling_assets.study_queue import run_study_queued

    study = load_study(args.study)
    if args.study:
        os.environ[STUDY_ENV] = args.study  # so the daemon (and the UI later) load the same study
    ensure_dagster_home()
    with DagsterInstance.get() as instance:
        if args.serial:
            result = run_study(study, instance, refresh=args.refresh)
        else:
            result = run_study_queued(study, instance, refresh=args.refresh)
    return 1 if result["failed"] else 0
