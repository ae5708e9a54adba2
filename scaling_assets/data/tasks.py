"""The study's signals, its tasks (named presets of signals) and the source formats that feed them.

A study dataset resolves to a list of ``SignalSpec`` (a task's preset, its own ``signals:``, or both);
the split, MI, results and layout code read only that list. The study parser, the loaders, the
simulator, the ``data`` commands and the MI stage all read these tables, so a new task or format starts
here (its loader or signal builder is then the only other code to write).
Models have their own table: ``scaling_assets.models.registry``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# What a signal is made of. The MI stage builds each kind's (X, Y) pairs in metrics/signals.py; the
# split stage holds out whole clones (sisters) or spatial tiles (neighbours) in data/splits.py.
LABEL = "label"            # a categorical obs column; Y = its one-hot code
MATRIX = "matrix"          # an obsm matrix; Y = its rows (continuous MI)
NEIGHBOURS = "neighbours"  # two coordinate columns; Y = the embedding of one of a cell's k nearest cells
SISTERS = "sisters"        # a clone and a time column; (X, Y) = embeddings of an early and a late sister
SIGNAL_KINDS = (LABEL, MATRIX, NEIGHBOURS, SISTERS)
SPATIAL_NEIGHBOURS = 4  # the partner is one of a cell's 4 nearest spatial neighbours, as the reference


@dataclass(frozen=True)
class SignalSpec:
    """One signal of a dataset: its name in the MI table, its kind and the obs columns / obsm key it reads."""

    name: str
    kind: str
    columns: tuple[str, ...] = ()  # label: (column,); neighbours: (x, y); sisters: (clone, time)
    key: str | None = None  # matrix: the obsm key
    k: int = SPATIAL_NEIGHBOURS  # neighbours: the partner is one of the k nearest cells
    early: tuple[float, ...] | None = None  # sisters: times of the early cell (None: every time but the last)
    late: tuple[float, ...] | None = None  # sisters: times of the late cell (None: the last time)

    @property
    def obsm_keys(self) -> tuple[str, ...]:
        return (self.key,) if self.kind == MATRIX and self.key else ()

    @property
    def stored(self) -> list[str]:
        """What a file must carry for it: obs columns, then ``obsm:<key>``."""
        return [*self.columns, *(f"obsm:{key}" for key in self.obsm_keys)]


def signal_columns(signals) -> list[str]:
    """The obs columns a list of signals reads, each once, in order."""
    return list(dict.fromkeys(c for s in signals for c in s.columns))


def signal_obsm_keys(signals) -> list[str]:
    return list(dict.fromkeys(k for s in signals for k in s.obsm_keys))


@dataclass(frozen=True)
class Task:
    """A named preset of signals (the reference's four tasks); a study dataset may also declare its own."""

    name: str
    signals: tuple[SignalSpec, ...]

    @property
    def obs_columns(self) -> tuple[str, ...]:  # obs columns an ingested file must carry
        return tuple(signal_columns(self.signals))

    @property
    def obsm_keys(self) -> tuple[str, ...]:  # obsm matrices its files carry
        return tuple(signal_obsm_keys(self.signals))

    @property
    def mi_signals(self) -> tuple[str, ...]:  # what the MI stage measures (built by metrics/signals.py)
        return tuple(s.name for s in self.signals)

    @property
    def stored_signals(self) -> list[str]:
        """The signals as a dataset's summary lists them: obs columns, then ``obsm:<key>``."""
        return [*self.obs_columns, *(f"obsm:{key}" for key in self.obsm_keys)]


# The order is part of the simulator's seeds (each task's stream is keyed by its position).
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cite", (SignalSpec("cell_type", LABEL, ("cell_type",)), SignalSpec("protein", MATRIX, key="protein"))),
    # one (early, late) sister pair per clone: early = day 2 or 4, late = day 6 (LARRY's time points)
    Task("lineage", (SignalSpec("clone", SISTERS, ("clone", "day"), early=(2, 4), late=(6,)),)),
    Task("spatial", (SignalSpec("neighbour", NEIGHBOURS, ("x", "y"), k=SPATIAL_NEIGHBOURS),)),
    Task("development", (SignalSpec("day", LABEL, ("day",)), SignalSpec("cell_type", LABEL, ("cell_type",)))),
)}


_SIGNAL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SPEC_KINDS = {"obs": LABEL, "obsm": MATRIX, "neighbours": NEIGHBOURS, "sisters": SISTERS}
_SPEC_OPTIONS = {LABEL: set(), MATRIX: set(), NEIGHBOURS: {"k"}, SISTERS: {"early", "late"}}


def parse_signals(raw: Any) -> tuple[SignalSpec, ...]:
    """A study dataset's ``signals:`` -> specs. Raises ``ValueError(field, message)``.

    Either a list (``[cell_type, obsm:protein]``: obs columns as labels, ``obsm:<key>`` as matrices),
    or a mapping of signal name -> one of ``{obs: COLUMN}``, ``{obsm: KEY}``,
    ``{neighbours: [X, Y], k: 4}``, ``{sisters: [CLONE, TIME], early: [...], late: [...]}``.
    """
    if isinstance(raw, list):
        items = {}
        for entry in raw:
            if not isinstance(entry, str) or not entry:
                raise ValueError("", f"list entry {entry!r} is not an obs column name or 'obsm:<key>'")
            if entry.startswith("obsm:"):
                items[_safe_name(entry[5:])] = {"obsm": entry[5:]}
            else:
                items[_safe_name(entry)] = {"obs": entry}
        raw = items
    if not isinstance(raw, dict) or not raw:
        raise ValueError("", "expected a list of obs columns / 'obsm:<key>', or a mapping of signal name -> "
                             "{obs: COLUMN} | {obsm: KEY} | {neighbours: [X, Y], k} | {sisters: [CLONE, TIME], early, late}")
    return tuple(_parse_signal(str(name), spec) for name, spec in raw.items())


def _safe_name(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", column)


def _parse_signal(name: str, spec: Any) -> SignalSpec:
    if not _SIGNAL_NAME.fullmatch(name):
        raise ValueError(name, "signal names may use letters, digits, '_' and '-' only")
    if isinstance(spec, str):
        spec = {"obsm": spec[5:]} if spec.startswith("obsm:") else {"obs": spec}
    if not isinstance(spec, dict):
        raise ValueError(name, f"expected a mapping with one of {list(_SPEC_KINDS)}, got {spec!r}")
    kinds = [k for k in spec if k in _SPEC_KINDS]
    if len(kinds) != 1:
        raise ValueError(name, f"expected exactly one of {list(_SPEC_KINDS)}, got {sorted(spec)}")
    kind = _SPEC_KINDS[kinds[0]]
    value = spec[kinds[0]]
    unknown = set(spec) - {kinds[0]} - _SPEC_OPTIONS[kind]
    if unknown:
        raise ValueError(name, f"unknown keys {sorted(unknown)} for a {kinds[0]} signal "
                               f"(options: {sorted(_SPEC_OPTIONS[kind]) or 'none'})")
    if kind in (LABEL, MATRIX):
        if not isinstance(value, str) or not value:
            raise ValueError(name, f"{kinds[0]}: expected a column / key name, got {value!r}")
        return SignalSpec(name, LABEL, (value,)) if kind == LABEL else SignalSpec(name, MATRIX, key=value)
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(c, str) and c for c in value)):
        what = "[X, Y] coordinate columns" if kind == NEIGHBOURS else "[CLONE, TIME] columns"
        raise ValueError(name, f"{kinds[0]}: expected two obs column names {what}, got {value!r}")
    if kind == NEIGHBOURS:
        k = spec.get("k", SPATIAL_NEIGHBOURS)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(name, f"k: expected a whole number >= 1 of nearest neighbours, got {k!r}")
        return SignalSpec(name, NEIGHBOURS, tuple(value), k=k)
    times = {}
    for option in ("early", "late"):
        t = spec.get(option)
        if t is not None:
            t = t if isinstance(t, list) else [t]
            if not t or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in t):
                raise ValueError(name, f"{option}: expected a list of time values (numbers), got {spec[option]!r}")
            times[option] = tuple(t)
    if set(times.get("early", ())) & set(times.get("late", ())):
        raise ValueError(name, f"early {list(times['early'])} and late {list(times['late'])} share a time")
    return SignalSpec(name, SISTERS, tuple(value), early=times.get("early"), late=times.get("late"))


def describe_signal(spec: SignalSpec) -> str:
    """One line for listings: ``cell_type (label of obs['cell_type'])``."""
    if spec.kind == LABEL:
        return f"{spec.name} (label of obs[{spec.columns[0]!r}])"
    if spec.kind == MATRIX:
        return f"{spec.name} (obsm[{spec.key!r}] matrix)"
    if spec.kind == NEIGHBOURS:
        return f"{spec.name} ({spec.k} nearest in obs{list(spec.columns)})"
    return f"{spec.name} (sister pairs of obs[{spec.columns[0]!r}] over obs[{spec.columns[1]!r}])"


@dataclass(frozen=True)
class SourceFormat:
    name: str
    task: str | None  # the task its files hold; None: the file or the study names it (h5ad)
    paths: tuple[str, ...]  # the file options a study's dataset must give
    options: tuple[str, ...]  # every option its loader takes (besides the output path and chunk size)


FORMATS: dict[str, SourceFormat] = {f.name: f for f in (
    SourceFormat("h5ad", task=None, paths=("path",), options=("path", "task", "matrix", "signals")),
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
