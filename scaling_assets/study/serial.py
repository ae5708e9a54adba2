"""``scaling-assets study run --serial``: the whole study in this one process, for debugging.

The main job submits the study to the Dagster instance instead (``scaling_assets.study.backfills``),
where the daemon, the run queue and the launcher execute it as separate processes. This in-process
path plans the partitions in dependency order itself, groups the assets that share a partition into
one ``dagster.materialize`` call, skips what is materialised (unless ``refresh``), skips the
dependants of a failed partition, and ends with the same summary (shared with the main job).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from scaling_assets.compute.dagster_compat import AssetKeyPartitionKey
from scaling_assets.layout import RESULTS as GROUP
from scaling_assets.layout import result_paths
from scaling_assets.definitions import build_definitions
from scaling_assets.gpu.needs import TAG_STUDY
from scaling_assets.study.spec import Study, parse_quality_seed_key

QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class Batch:
    """Assets of one dataset that share a partition key: materialised together in one Dagster run."""

    label: str
    keys: list[AssetKey]
    partition: str | None
    blocks: str  # what a failure blocks downstream (a dataset, a seed, a quality-seed)
    blocked_by: list[str] = field(default_factory=list)


def _algorithm_assets(study: Study, algorithm: str) -> list[str]:
    entry = study.models[algorithm]
    return (["train_corpus"] if entry.reads_corpus and not entry.pretrained else []) + [
        f"model_{algorithm}", f"embeddings_{algorithm}", f"mi_{algorithm}"]


def plan(study: Study) -> list[Batch]:
    batches: list[Batch] = []
    models = study.models
    corpus_readers = [a for a in study.algorithms if models[a].reads_corpus]
    # An algorithm on its own smaller grid (or a frozen one, at n=0) has other partitions: its assets run
    # in batches of their own (one Dagster run materialises assets of one partitions definition).
    own = [a for a in study.algorithms if study.has_own_grid(a)]
    shared = [a for a in study.algorithms if a not in own]
    for ds in study.datasets:
        k = lambda name: AssetKey([ds, name])  # noqa: E731
        batches.append(Batch(f"{ds} raw_counts", [k("raw_counts")], None, blocks=ds))
        for s in study.all_seeds():  # an algorithm's own seeds need their shared data too
            names = (["split", "pool_counts", "eval_counts"] + (["gene_medians"] if corpus_readers else [])
                     + (["pca_genes"] if any(models[a].hvg_genes for a in study.algorithms) else []))
            batches.append(Batch(f"{ds} s={s}", [k(n) for n in names], f"s={s}", blocks=f"{ds}|s={s}", blocked_by=[ds]))
        grid = corpus_readers[0] if len(corpus_readers) == 1 else None  # DatasetAssets.corpus_grid
        corpus_at = set(study.quality_seed_keys(ds, grid)) if corpus_readers else set()
        pool_corpus = ["pool_corpus"] if any(not models[a].pretrained for a in corpus_readers) else []
        for qs in sorted(corpus_at):  # the corpora: one per quality x seed of their readers' grid
            _, seed = parse_quality_seed_key(qs)
            batches.append(Batch(f"{ds} {qs}", [k(n) for n in ["eval_corpus", *pool_corpus]], qs, blocks=f"{ds}|{qs}",
                                 blocked_by=[ds, f"{ds}|s={seed}"]))
        settings = set(study.setting_keys(ds))
        for setting in study.settings(ds):
            names = ["train_counts"] + [n for a in shared for n in _algorithm_assets(study, a)]
            upstream = [ds, f"{ds}|{setting.seed_key}"] + (
                [f"{ds}|{setting.quality_seed_key}"] if any(models[a].reads_corpus for a in shared) else [])
            batches.append(Batch(f"{ds} {setting.key}", [k(n) for n in names], setting.key, blocks=f"{ds}|{setting.key}",
                                 blocked_by=upstream))
        for a in own:
            for setting in study.settings(ds, a):
                upstream = [ds, f"{ds}|{setting.seed_key}"] + ([f"{ds}|{setting.key}"] if setting.key in settings else [])
                corpus = [f"{ds}|{setting.quality_seed_key}"] if models[a].reads_corpus else []
                batches.append(Batch(f"{ds} {setting.key} {a}", [k(n) for n in _algorithm_assets(study, a)],
                                     setting.key, blocks=f"{ds}|{setting.key}|{a}", blocked_by=upstream + corpus))
    results = ["mi_table", "parameter_table", "hyperparameter_table", "noise_law_fits", "size_law_fits", "scaling_plots"]
    batches.append(Batch("results", [AssetKey([GROUP, n]) for n in results], None, blocks="results"))
    return batches


def run_study(study: Study, instance: DagsterInstance, refresh: bool = False, out=None) -> dict:
    """Materialise every partition of the study; returns counts and the failures."""
    out = sys.stdout if out is None else out
    defs = build_definitions(study)
    assets = list(defs.assets)
    resources = dict(defs.resources)
    batches = plan(study)
    from scaling_assets.study.backfills import missing_partitions  # (it imports this module)

    # what the queued mode would submit: not materialised, stale, or made from a partition that was deleted
    wanted = missing_partitions(study, instance, defs.resolve_asset_graph(), refresh)
    failed: dict[str, str] = {}
    blocked: set[str] = set()
    done = skipped = 0
    start = time.perf_counter()
    print(f"study {study.name!r}: {len(study.datasets)} datasets, {study.n_training_runs()} training runs "
          f"in {len(batches)} Dagster runs; storage {study.root}; Dagster home {os.environ.get('DAGSTER_HOME')}",
          file=out, flush=True)
    for i, batch in enumerate(batches, 1):
        prefix = f"[{i:>3}/{len(batches)}] {batch.label:<40}"
        is_results = batch.blocks == "results"
        if any(b in blocked for b in batch.blocked_by):
            blocked.add(batch.blocks)
            print(f"{prefix} skipped: an upstream partition failed", file=out, flush=True)
            continue
        if not (is_results and done) and not any(AssetKeyPartitionKey(k, batch.partition) in wanted for k in batch.keys):
            skipped += 1
            print(f"{prefix} already materialised", file=out, flush=True)
            continue
        t0 = time.perf_counter()
        result = materialize(
            assets, selection=batch.keys, partition_key=batch.partition, instance=instance, resources=resources,
            run_config=QUIET_LOGGERS, raise_on_error=False, tags={TAG_STUDY: study.name},
        )
        elapsed = time.perf_counter() - t0
        total = time.perf_counter() - start
        if result.success:
            done += 1
            print(f"{prefix} done in {elapsed:6.1f} s  (total {total / 60:5.1f} min)", file=out, flush=True)
        else:
            blocked.add(batch.blocks)
            failed[batch.label] = root_cause(result.all_events)
            print(f"{prefix} FAILED after {elapsed:.1f} s: {failed[batch.label]}", file=out, flush=True)
    wall = time.perf_counter() - start
    print_summary(study, out, wall, done, skipped, failed)
    return {"materialised": done, "skipped": skipped, "failed": failed, "wall_time_s": wall}


def root_cause(events) -> str:
    """The root cause of the first failed step among Dagster events, e.g. 'cite__model_scvi: InputError: ...'."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None:  # Dagster wraps user errors; the cause says what went wrong
                err = err.cause
            return f"{event.step_key}: {one_line(err.message) if err.message else err.cls_name}"
    for event in events:  # no step failed: the run itself did (launch, worker crash, termination)
        if event.event_type_value == "PIPELINE_FAILURE" and event.message:
            return event.message.strip().splitlines()[0]
    return "run failed (see the Dagster UI for the run's logs)"


def one_line(message: str) -> str:
    """An error message on one line. Some span lines: HDF5's write errors put a newline after their
    ``time = <ctime>`` field, so a full disk read ", filename = '...', ... errno = 28 ..." when cut to a line."""
    return " ".join(message.split()).replace(" ,", ",")


def print_summary(study: Study, out, wall: float, done: int, skipped: int, failed: dict,
                  unit: str = "runs materialised", extra: str = "") -> None:
    import pandas as pd

    paths = result_paths(study)
    print("", file=out)
    print(f"=== study {study.name!r}: {done} {unit}, {skipped} already done, {len(failed)} failed; "
          f"{wall / 60:.1f} min{'; ' + extra if extra else ''} ===", file=out)
    if paths["mi_table"].exists():
        mi = pd.read_parquet(paths["mi_table"])
        if len(mi):
            # each algorithm at its own largest size: an algorithm grid may stop below the study's
            largest = mi.groupby(["dataset", "algorithm"])["cells"].transform("max")
            view = mi[mi["cells"] == largest]
            table = view.pivot_table(index=["dataset", "signal", "algorithm", "cells"], columns="quality",
                                     values="mi_bits", aggfunc="mean").sort_index(axis=1, ascending=False)
            table.columns = [f"q={c:g}" for c in table.columns]
            print("MI (bits) at each algorithm's largest training size (cells), by quality:", file=out)
            print(table.round(3).to_string(), file=out)
        print(results_coverage(study, mi), file=out)
    if paths["noise_law_fits"].exists() and paths["size_law_fits"].exists():
        print_law_counts(pd.read_parquet(paths["noise_law_fits"]), pd.read_parquet(paths["size_law_fits"]), out)
    width = max(len(name) for name in paths)
    for name, path in paths.items():
        print(f"{name:>{width}}: {path}{'' if path.exists() else '  (not written)'}", file=out)
    for label, message in failed.items():
        print(f"FAILED {label}: {message}", file=out)
    print("Browse the assets, lineage and metadata: dagster dev -w workspace.yaml", file=out, flush=True)


def print_law_counts(noise, size, out) -> None:
    """Per law and algorithm: how many fits are identified (the laws the plots draw), with R^2 >= 0.9, and for
    the size law how many series depend on N and the share of those identified with R^2 >= 0.9."""
    import pandas as pd

    from scaling_assets.metrics.law_report import summary_text

    text = summary_text(noise, size, ["algorithm"])
    if text:
        rules = ", ".join(sorted(set(noise.get("fit_rules", pd.Series(["?"])).dropna())))
        print(f"Scaling-law fits identified ({rules} fit rules; the plots draw only these as laws; size law: "
              "of the series whose MI depends on N):", file=out)
        print(text, file=out)


def results_coverage(study: Study, mi) -> str:
    """Which datasets the written results cover, and which are missing or partial."""
    from scaling_assets.assets.results import coverage_groups, dataset_coverage, mi_partitions_done

    _, partial, missing = coverage_groups(dataset_coverage(study, mi_partitions_done(mi)))
    if not partial and not missing:
        return f"results cover every dataset: {', '.join(study.datasets)}"
    covered = [d for d in study.datasets if d not in missing]
    return (f"results cover {', '.join(covered) or 'no dataset'}"
            + (f"; partial: {', '.join(f'{d} ({done} of {total} settings)' for d, done, total in partial)}"
               if partial else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + "; run the study again to complete them once what failed is fixed")


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to the current directory when it holds the repo's dagster.yaml."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        if not Path("dagster.yaml").is_file():
            from scaling_assets.errors import InputError

            raise InputError("DAGSTER_HOME is not set and the current directory has no dagster.yaml; "
                             "run from the repository root or export DAGSTER_HOME")
        home = os.getcwd()
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    return Path(home)
