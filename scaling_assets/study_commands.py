"""``scaling-assets study ...``: show the grid of a study, or run it end to end through Dagster."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    study = subparsers.add_parser("study", help="show or run a study (default: the embedded default study)")
    sub = study.add_subparsers(dest="study_command", required=True)

    show = sub.add_parser("show", help="print the study's datasets and grid")
    show.add_argument("--study", default=None, help="study name (default, paper) or YAML path")
    show.set_defaults(func=_show)

    run = sub.add_parser("run", help="materialise every partition of the study through Dagster")
    run.add_argument("--study", default=None, help="study name (default, paper) or YAML path; "
                     "default: $SCALING_ASSETS_STUDY, else 'default'")
    run.add_argument("--refresh", action="store_true", help="re-materialise partitions that already exist")
    run.set_defaults(func=_run)


def _show(args: argparse.Namespace) -> int:
    from scaling_assets.study import load_study

    s = load_study(args.study, check_paths=False)
    print(f"study {s.name!r} ({s.source_file}); budget {s.budget}; seeds {list(s.seeds)}; algorithms {list(s.algorithms)}")
    print(f"storage root: {s.root}")
    for name, d in s.datasets.items():
        print(f"  {name}: task {d.task}, source {d.source}, cells {d.cells}, sizes {list(d.sizes)}, "
              f"qualities {list(d.qualities)}")
    print(f"{s.n_training_runs()} training runs")
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TQDM_MININTERVAL", "5")
    from dagster import DagsterInstance

    from scaling_assets.run_study import ensure_dagster_home, run_study
    from scaling_assets.study import STUDY_ENV, load_study

    study = load_study(args.study)
    if args.study:
        os.environ[STUDY_ENV] = args.study  # so the UI later shows the same study
    ensure_dagster_home()
    with DagsterInstance.get() as instance:
        result = run_study(study, instance, refresh=args.refresh)
    return 1 if result["failed"] else 0
