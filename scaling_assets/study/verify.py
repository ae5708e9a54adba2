"""``scaling-assets study verify``: check every fingerprint a study recorded, and mark bad partitions
for rebuilding.

Pools, pool corpora, models and embeddings record each file's bytes and BLAKE2b at write
(``fingerprint.json``, ``scaling_assets.data.integrity``). This reads every such file whole and
compares. A partition with a missing, truncated or changed file is *marked for rebuilding*, with
Dagster's own notion of it: its folder is removed (both ``study run`` modes redo a partition whose
folder is missing, and everything made from it: ``backfills.missing_partitions``), and an observation on
the partition in the instance says why (Dagster 1.13 cannot wipe one partition's materialisations on
SQLite or PostgreSQL storage, so the UI shows it materialised until rebuilt). The next ``study run``
rebuilds it from its inputs.

What was made from a bad file is marked too when it was made after the file last changed (it may have
read the changed bytes), with everything downstream of it: removed now, so nothing reads it meanwhile.
What was made before read the file as written and is not suspect; ``study run`` rebuilds it all the
same, as it rebuilds whatever was made from a partition made again (``assets.staleness``: the run
cannot tell a deterministic rebuild from one that trained other weights). A file whose bytes rotted
without a write keeps its first mtime, so everything made from it is marked. The study-wide tables are not removed: ``study run`` redoes them whenever anything
else is.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scaling_assets.data.integrity import FINGERPRINT_FILE, folder_problems, partition_name
from scaling_assets.errors import InputError
from scaling_assets.fs import temporary_sibling
from scaling_assets.layout import RESULTS, STUDY_LOCK, parse_partition_dir, partition_dir
from scaling_assets.study.spec import Study


@dataclass
class BadPartition:
    folder: Path
    asset_path: list[str]
    partition: str | None
    problems: list[tuple[Path, str]]
    changed_at: float  # when the earliest bad file last changed on disk (its mtime; the folder's if deleted)
    dependants: list[tuple[list[str], str | None]] = field(default_factory=list)  # marked with it

    @property
    def name(self) -> str:
        return partition_name(self.folder)


def fingerprinted_folders(root: Path) -> list[Path]:
    """Every partition folder under the study root that records fingerprints (not staging or work)."""
    root = Path(root)
    return sorted(p.parent for p in root.glob(f"*/*/*/{FINGERPRINT_FILE}")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts))


def find_bad_partitions(root: Path) -> tuple[int, int, list[BadPartition]]:
    """(partitions checked, bytes hashed, the bad ones)."""
    folders = fingerprinted_folders(root)
    hashed = 0
    bad = []
    for folder in folders:
        hashed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        problems = folder_problems(folder)
        if problems:
            key, partition = parse_partition_dir(root, folder)
            when = min(path.stat().st_mtime if path.exists() else folder.stat().st_mtime for path, _ in problems)
            bad.append(BadPartition(folder, key, partition, problems, when))
    return len(folders), hashed, bad


def mark_dependants(study: Study, asset_graph, bad: list[BadPartition]) -> None:
    """Fill each bad partition's ``dependants``: children made after its file changed, and everything
    below them that exists on disk."""
    from dagster import AssetKey

    def existing_children(key, partition):
        try:
            children = asset_graph.get_children_partitions(key, partition)
        except Exception:  # a partition no longer in the study's grid: nothing of the grid was made from it
            return
        for child in children:
            if child.asset_key.path[0] == RESULTS:
                continue  # redone by every study run that redoes anything
            folder = partition_dir(study.root, list(child.asset_key.path), child.partition_key)
            if folder.exists():
                yield child, folder

    seen = {(tuple(b.asset_path), b.partition) for b in bad}
    for b in bad:
        key = AssetKey(b.asset_path)
        if key not in asset_graph.materializable_asset_keys:
            continue  # an asset the study no longer has
        frontier = [c for c, folder in existing_children(key, b.partition) if folder.stat().st_mtime >= b.changed_at]
        while frontier:
            node = frontier.pop()
            ident = (tuple(node.asset_key.path), node.partition_key)
            if ident in seen:
                continue
            seen.add(ident)
            b.dependants.append((list(node.asset_key.path), node.partition_key))
            frontier.extend(c for c, _ in existing_children(node.asset_key, node.partition_key))


def remove_partition(study: Study, instance, asset_path: list[str], partition: str | None, why: str) -> None:
    """Mark a partition for rebuilding: remove its folder, and record why on the asset in the instance."""
    from dagster import AssetKey, AssetObservation

    folder = partition_dir(study.root, asset_path, partition)
    if folder.exists():
        aside = temporary_sibling(folder, "bad")  # renamed first: never a half-removed folder in place
        os.replace(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
    if instance is not None:
        # Dagster 1.13 cannot wipe one partition's materialisations on SQLite or PostgreSQL storage
        # (NotImplementedError), so the UI keeps it materialised until rebuilt; this event says why.
        instance.report_runless_asset_event(AssetObservation(
            AssetKey(asset_path), partition=partition,
            metadata={"marked_for_rebuild": why, "removed_folder": str(folder)}))


@contextmanager
def study_lock(study: Study):
    """The lock ``study run`` holds (``backfills.study_lock``): no verify while a run writes partitions."""
    path = Path(study.root) / STUDY_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"study {study.name!r} is being run by {holder} (lock {path}); verify it when the run "
                             "has finished") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def verify_study(study: Study, instance, mark: bool = True, out=None) -> dict:
    """Check every recorded fingerprint of the study; mark the bad partitions (and what was made from
    them since their files changed) for rebuilding unless ``mark`` is False. Returns what was found."""
    out = sys.stdout if out is None else out  # sys.stdout at call time (pytest and notebooks replace it)
    from scaling_assets.definitions import build_definitions

    start = time.perf_counter()
    with study_lock(study):
        checked, hashed, bad = find_bad_partitions(study.root)
        print(f"study {study.name!r}: checked {checked} partitions with recorded fingerprints (pools, pool corpora, "
              f"models, embeddings; {hashed / 1e6:,.1f} MB hashed) in {time.perf_counter() - start:.1f} s", file=out)
        if not bad:
            print("every file matches what was written", file=out)
            return {"checked": checked, "bad": [], "marked": []}
        mark_dependants(study, build_definitions(study).resolve_asset_graph(), bad)
        marked = []
        for b in bad:
            print(f"BAD {b.name}:", file=out)
            for path, problem in b.problems:
                print(f"    {path}: {problem}", file=out)
            if b.dependants:
                print(f"    made from it since it changed ({len(b.dependants)}): "
                      + ", ".join(f"{'/'.join(k)} {p}" for k, p in b.dependants[:8])
                      + (", ..." if len(b.dependants) > 8 else ""), file=out)
            first = f"{b.problems[0][0]}: {b.problems[0][1]}"
            for asset_path, partition in [(b.asset_path, b.partition), *b.dependants]:
                marked.append(("/".join(asset_path), partition))
                if mark:
                    why = first if asset_path == b.asset_path and partition == b.partition else \
                        f"made from {b.name} after its file changed ({first})"
                    remove_partition(study, instance, asset_path, partition, why)
        if mark:
            print(f"marked {len(marked)} partition(s) for rebuilding (folders removed; an observation on each in "
                  "Dagster says why); `scaling-assets study run` rebuilds them", file=out)
        else:
            print(f"{len(marked)} partition(s) would be marked for rebuilding (run without --dry-run)", file=out)
    return {"checked": checked, "bad": [b.name for b in bad], "marked": marked}
