"""The study's tasks and the source formats that feed them, in one table.

The study parser, the loaders, the simulator, the ``data`` commands and the MI stage all read it, so a
new task or format starts here (its loader or signal builder is then the only other code to write).
Models have their own table: ``scaling_assets.models.registry``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    obs_columns: tuple[str, ...]  # obs columns an ingested file must carry, each with >= 2 distinct values
    obsm_keys: tuple[str, ...]  # obsm matrices its files carry (checked by the format's loader)
    mi_signals: tuple[str, ...]  # what the MI stage measures (built by metrics/signals.py)

    @property
    def stored_signals(self) -> list[str]:
        """The signals as a dataset's summary lists them: obs columns, then ``obsm:<key>``."""
        return [*self.obs_columns, *(f"obsm:{key}" for key in self.obsm_keys)]


# The order is part of the simulator's seeds (each task's stream is keyed by its position).
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cite", obs_columns=("cell_type",), obsm_keys=("protein",), mi_signals=("cell_type", "protein")),
    Task("lineage", obs_columns=("clone", "day"), obsm_keys=(), mi_signals=("clone",)),
    Task("spatial", obs_columns=("x", "y"), obsm_keys=(), mi_signals=("neighbour",)),
    Task("development", obs_columns=("day", "cell_type"), obsm_keys=(), mi_signals=("day", "cell_type")),
)}


@dataclass(frozen=True)
class SourceFormat:
    name: str
    task: str | None  # the task its files hold; None: the file or the study names it (h5ad)
    paths: tuple[str, ...]  # the file options a study's dataset must give
    options: tuple[str, ...]  # every option its loader takes (besides the output path and chunk size)


FORMATS: dict[str, SourceFormat] = {f.name: f for f in (
    SourceFormat("h5ad", task=None, paths=("path",), options=("path", "task", "matrix")),
    SourceFormat("larry", task="lineage", paths=("counts", "genes", "metadata", "clones"),
                 options=("counts", "genes", "metadata", "clones", "allow_normalized")),
    SourceFormat("cite", task="cite", paths=("path",),
                 options=("path", "level", "protein_key", "reference_filters")),
    SourceFormat("merfish", task="spatial", paths=("cell_by_gene", "cell_metadata"),
                 options=("cell_by_gene", "cell_metadata")),
    SourceFormat("atlas", task="development", paths=("path",),
                 options=("path", "day_column", "cell_type_column", "matrix")),
)}

SIMULATED = "simulated"  # a study dataset's source when the platform simulates it (data/simulate.py)
