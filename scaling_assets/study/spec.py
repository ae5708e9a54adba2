"""Study configuration: a YAML file -> datasets x sizes x qualities x algorithms x seeds -> partition keys.

A study names its datasets (simulated tasks or real sources), the grid, the training budget and the
storage root. Everything here is plain Python (no Dagster) so it can be loaded cheaply and tested.

Partition keys are readable strings:
  seed key          ``s=42``
  quality-seed key  ``q=0.1_s=42``
  setting key       ``n=300_q=0.1_s=42``   (cells, quality, seed)
Each Dagster asset is partitioned only by what it depends on (see ``scaling_assets.assets``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from scaling_assets.data.splits import default_test_size, quality_grid, size_grid
from scaling_assets.data.tasks import FORMATS, SIMULATED, TASKS, SignalSpec, parse_signals
from scaling_assets.errors import StudyConfigError
from scaling_assets.metrics.laws import DEFAULT_FIT_RULES, FIT_RULES
from scaling_assets.models.budget import BUDGETS
from scaling_assets.models.registry import ALGORITHMS, BUILTIN, FROZEN_CELLS, ModelEntry

SOURCES = (SIMULATED, *FORMATS)
STUDY_ENV = "SCALING_ASSETS_STUDY"
HOME_ENV = "SCALING_ASSETS_HOME"

# The keys each block of a study file takes: the parser refuses any other, and docs/studies.md documents
# exactly these (test_study_spec_keys.py compares the two). The `lmi` block takes LMIOptions' fields and
# `preset` (metrics/lmi.py), a dataset's `signals` data/tasks.py's kinds, its `paths`/`options` its
# source format's (data/tasks.py FORMATS).
STUDY_KEYS = ("name", "description", "root", "budget", "seeds", "algorithms", "sizes", "qualities", "split",
              "algorithm_grids", "lmi", "fit_rules", "chunk_size", "datasets", "models")
SPLIT_KEYS = ("test_cells", "validation_cells")
DATASET_KEYS = ("task", "source", "paths", "options", "cells", "genes", "seed", "umis_per_cell", "sizes",
                "qualities", "split", "signals")
ALGORITHM_GRID_KEYS = ("sizes", "qualities", "seeds", "label")
SIZE_GRID_KEYS = ("grid", "count", "smallest")
QUALITY_GRID_KEYS = ("grid", "count", "min_umis")


def format_quality(q: float) -> str:
    """Quality as it appears in keys and tables: 3 significant digits, no trailing zeros."""
    return f"{q:.3g}"


@dataclass(frozen=True, order=True)
class Setting:
    """One training configuration of a dataset: N cells at quality q with a seed."""

    cells: int
    quality: float
    seed: int

    @property
    def key(self) -> str:
        return f"n={self.cells}_q={format_quality(self.quality)}_s={self.seed}"

    @property
    def quality_seed_key(self) -> str:
        return quality_seed_key(self.quality, self.seed)

    @property
    def seed_key(self) -> str:
        return seed_key(self.seed)


def seed_key(seed: int) -> str:
    return f"s={seed}"


def quality_seed_key(quality: float, seed: int) -> str:
    return f"q={format_quality(quality)}_s={seed}"


_SETTING_RE = re.compile(r"^n=(\d+)_q=([0-9.eE+-]+)_s=(\d+)$")
_QS_RE = re.compile(r"^q=([0-9.eE+-]+)_s=(\d+)$")
_SEED_RE = re.compile(r"^s=(\d+)$")


def parse_setting_key(key: str) -> Setting:
    m = _SETTING_RE.match(key)
    if not m:
        raise StudyConfigError(f"partition key {key!r} is not a setting key like 'n=300_q=0.1_s=42'")
    return Setting(int(m.group(1)), float(m.group(2)), int(m.group(3)))


def parse_quality_seed_key(key: str) -> tuple[float, int]:
    m = _QS_RE.match(key)
    if not m:
        raise StudyConfigError(f"partition key {key!r} is not a quality-seed key like 'q=0.1_s=42'")
    return float(m.group(1)), int(m.group(2))


def parse_seed_key(key: str) -> int:
    m = _SEED_RE.match(key)
    if not m:
        raise StudyConfigError(f"partition key {key!r} is not a seed key like 's=42'")
    return int(m.group(1))


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    task: str | None  # a preset of signals (data/tasks.py); None: the dataset declares its own signals
    source: str
    sizes: tuple[int, ...]
    qualities: tuple[float, ...]
    cells: int | None = None  # known or simulated cell count (validates sizes)
    genes: int | None = None  # simulated gene count
    seed: int = 0  # simulator seed
    paths: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    umis_per_cell: float | None = None
    test_cells: int | None = None  # overrides the study's split.test_cells for this dataset
    validation_cells: int | None = None  # overrides the study's split.validation_cells
    # What the split, MI, results and plots read: the task's preset, then the dataset's own signals
    signals: tuple[SignalSpec, ...] = ()
    pool: int | None = None  # nominal training pool: cells - test - validation (None: cells unknown)

    def __post_init__(self):
        if not self.signals and self.task in TASKS:
            object.__setattr__(self, "signals", TASKS[self.task].signals)

    @property
    def signal_names(self) -> list[str]:
        return [s.name for s in self.signals]


@dataclass(frozen=True)
class AlgorithmGrid:
    """An algorithm's own grid: sizes and qualities picked from the dataset grids (None: all), and its
    own seeds (None: the study's), e.g. more seeds for a model whose training scatters more."""

    sizes: tuple[int, ...] | None = None
    qualities: tuple[float, ...] | None = None
    label: str = ""  # shown next to the algorithm in tables and plots (e.g. "smoke test"); none by default
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Study:
    name: str
    root: Path
    budget: str
    seeds: tuple[int, ...]
    algorithms: tuple[str, ...]
    datasets: dict[str, DatasetConfig]
    n_test: int | None  # None: default_test_size(cells)
    n_validation: int
    chunk_size: int = 10_000
    lmi: dict[str, Any] = field(default_factory=dict)
    source_file: Path | None = None
    # An algorithm's own smaller grid (a subset of every dataset's): {algorithm: AlgorithmGrid}
    algorithm_grids: dict[str, AlgorithmGrid] = field(default_factory=dict)
    fit_rules: str = DEFAULT_FIT_RULES  # the scaling-law fit rules (metrics/laws.py): reference or wide
    # Each algorithm's entry (what it reads, needs and is built from): the built-ins' and the study's own
    # models (a `models:` block, an installed package's entry point; models/user.py)
    models: dict[str, ModelEntry] = field(default_factory=dict)

    def __post_init__(self):
        missing = [a for a in self.algorithms if a not in self.models]
        self.models.update({a: BUILTIN[a] for a in missing if a in BUILTIN})  # a Study built in code

    # -- the grid -------------------------------------------------------------------------------
    def settings(self, dataset: str, algorithm: str | None = None) -> list[Setting]:
        """With an algorithm, the settings it trains at (its own grid, if it has one); without, every
        setting some algorithm trains at (the full grid when one algorithm runs on all of it)."""
        if algorithm is None and any(g.seeds is not None for g in self.algorithm_grids.values()):
            trained = {s for a in self.algorithms for s in self.settings(dataset, a)}
            return [s for s in self._grid(dataset, None, self.all_seeds()) if s in trained]
        return self._grid(dataset, algorithm, self.seeds_of(algorithm))

    def _grid(self, dataset: str, algorithm: str | None, seeds) -> list[Setting]:
        return [Setting(n, q, s) for s in seeds for q in self.qualities_of(dataset, algorithm)
                for n in self.sizes_of(dataset, algorithm)]

    def setting_keys(self, dataset: str, algorithm: str | None = None) -> list[str]:
        return [s.key for s in self.settings(dataset, algorithm)]

    def quality_seed_keys(self, dataset: str, algorithm: str | None = None) -> list[str]:
        return [quality_seed_key(q, s) for s in self.seeds_of(algorithm) for q in self.qualities_of(dataset, algorithm)]

    def seeds_of(self, algorithm: str | None = None) -> tuple[int, ...]:
        """The seeds an algorithm trains with: its own grid's, else the study's."""
        grid = self.algorithm_grids.get(algorithm)
        return self.seeds if grid is None or grid.seeds is None else grid.seeds

    def all_seeds(self) -> tuple[int, ...]:
        """Every seed some algorithm trains with (each gets its own split, pools and evaluation sets)."""
        extra = [s for g in self.algorithm_grids.values() for s in g.seeds or () if s not in self.seeds]
        return (*self.seeds, *dict.fromkeys(extra))

    def sizes_of(self, dataset: str, algorithm: str | None = None) -> tuple[int, ...]:
        """The training sizes an algorithm runs at on a dataset (all of the dataset's without one); a frozen
        pretrained model has no size axis: it runs at n=0."""
        if self.is_frozen(algorithm):
            return (FROZEN_CELLS,)
        grid = self.algorithm_grids.get(algorithm)
        sizes = self.datasets[dataset].sizes
        return sizes if grid is None or grid.sizes is None else tuple(n for n in sizes if n in grid.sizes)

    def qualities_of(self, dataset: str, algorithm: str | None = None) -> tuple[float, ...]:
        grid = self.algorithm_grids.get(algorithm)
        qualities = self.datasets[dataset].qualities
        if grid is None or grid.qualities is None:
            return qualities
        return tuple(q for q in qualities if format_quality(q) in {format_quality(g) for g in grid.qualities})

    def is_frozen(self, algorithm: str | None) -> bool:
        """A pretrained model evaluated frozen (no size axis)."""
        entry = self.models.get(algorithm) if algorithm is not None else None
        return bool(entry is not None and entry.pretrained)

    def has_own_grid(self, algorithm: str | None) -> bool:
        """The algorithm's partitions are not the dataset's settings: its own smaller grid, or n=0 (frozen)."""
        return algorithm in self.algorithm_grids or self.is_frozen(algorithm)

    def grid_label(self, algorithm: str) -> str:
        """How tables and plots label an algorithm's results ('' on the study grid)."""
        grid = self.algorithm_grids.get(algorithm)
        return grid.label if grid is not None else ""

    def seed_keys(self) -> list[str]:
        return [seed_key(s) for s in self.all_seeds()]

    def n_training_runs(self) -> int:
        return sum(len(self.settings(d, a)) for d in self.datasets for a in self.algorithms)

    def test_size(self, dataset: str) -> int | None:
        """Test cells of a dataset: its own override, the study's, or the default rule."""
        d = self.datasets[dataset]
        if d.test_cells is not None:
            return d.test_cells
        if self.n_test is not None:
            return self.n_test
        return default_test_size(d.cells) if d.cells else None

    def largest_size(self, dataset: str) -> int:
        """The largest training size any algorithm runs at on the dataset (what every seed's pool must hold)."""
        trained = [a for a in self.algorithms if not self.is_frozen(a)]
        return max(max(self.sizes_of(dataset, a)) for a in trained) if trained else max(self.datasets[dataset].sizes)

    def validation_size(self, dataset: str) -> int:
        d = self.datasets[dataset]
        return d.validation_cells if d.validation_cells is not None else self.n_validation


# -- loading -----------------------------------------------------------------------------------


def builtin_study_path(name: str) -> Path:
    return Path(str(resources.files("scaling_assets").joinpath("studies", f"{name}.yaml")))


def resolve_study_file(name_or_path: str | os.PathLike | None = None) -> Path:
    """A study name (``default``, ``paper``) or a path to a YAML file; env var when not given."""
    value = str(name_or_path or os.environ.get(STUDY_ENV) or "default")
    if value.endswith((".yaml", ".yml")) or os.sep in value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise StudyConfigError(f"study file {path} does not exist")
        return path
    path = builtin_study_path(value)
    if not path.is_file():
        raise StudyConfigError(
            f"no built-in study named {value!r} (built-in: default, paper); "
            f"set {STUDY_ENV} to a study name or to the path of a study YAML file"
        )
    return path


def load_study(name_or_path: str | os.PathLike | None = None, *, check_paths: bool = True) -> Study:
    """The study of a built-in name (``default``, ``paper``, ``example_real``) or a YAML file's path;
    without one, ``$SCALING_ASSETS_STUDY``, else ``default``. Every key is checked (docs/studies.md); an
    invalid study raises ``StudyConfigError`` naming the file and the field. ``check_paths=False``
    accepts data paths that do not exist yet."""
    path = resolve_study_file(name_or_path)
    try:
        with open(path, "rb") as stream:  # yaml decodes it: an undecodable byte is a YAMLError naming the file
            raw = yaml.safe_load(stream)
    except yaml.reader.ReaderError as exc:  # a binary file, or text in another encoding
        what = (f"character #x{exc.character:04x} is not allowed in YAML" if exc.encoding == "unicode" else
                f"byte #x{exc.character:02x} is not {exc.encoding} text")
        raise StudyConfigError(f"study file {path} is not a YAML text file: {what} (position {exc.position}); "
                               "expected a study written as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"study file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise StudyConfigError(f"study file {path} cannot be read: {exc.strerror}") from None
    return parse_study(raw, path, check_paths=check_paths)


def check_sources(study: Study, missing_ok: bool = False) -> None:
    """The header and a sample of every real dataset's source file (``data.loaders.check_source``; a
    few hundred milliseconds per file), so a bad file is refused when the study is loaded, naming the
    study field and the file, not 40-60 s into its first run. ``missing_ok``: skip absent files
    (``study show`` of a study whose data is not downloaded yet)."""
    from scaling_assets.data.loaders import SourceCheckError, check_source

    for name, d in study.datasets.items():
        if d.source == SIMULATED or (missing_ok and any(not Path(p).exists() for p in d.paths.values())):
            continue
        try:
            check_source(d.source, {**d.paths, **d.options}, d.task, d.signals)
        except SourceCheckError as exc:
            raise _err(study.source_file, f"datasets.{name}.{exc.field}", str(exc)) from None


def _err(path: Path | None, where: str, msg: str) -> StudyConfigError:
    return StudyConfigError(f"study file {path}: {where}: {msg}")


def _check_keys(block: dict, allowed: tuple[str, ...], where: str, path: Path | None) -> None:
    unknown = set(block) - set(allowed)
    if unknown:
        raise _err(path, where, f"unknown keys {sorted(unknown)}; expected some of {', '.join(allowed)}")


def _resolve_root(root: str) -> Path:
    p = Path(os.path.expandvars(str(root))).expanduser()
    if p.is_absolute():
        return p
    base = Path(os.environ.get(HOME_ENV) or os.getcwd())
    return (base / p).resolve()


def parse_study(raw: Any, path: Path | None = None, *, check_paths: bool = True) -> Study:
    if not isinstance(raw, dict):
        raise _err(path, "top level", "expected a mapping with 'name', 'datasets', ...")
    _check_keys(raw, STUDY_KEYS, "top level", path)
    name = str(raw.get("name") or (path.stem if path else "study"))
    budget = raw.get("budget", "default")
    if budget not in BUDGETS:
        raise _err(path, "budget", f"{budget!r} is not one of {list(BUDGETS)}")
    algorithms = tuple(str(a) for a in raw.get("algorithms", ALGORITHMS + tuple(raw.get("models") or ())))
    models = _study_models(raw.get("models"), algorithms, path)
    seeds = tuple(int(s) for s in raw.get("seeds", [42]))
    if not seeds:
        raise _err(path, "seeds", "at least one seed is needed")
    split = raw.get("split") or {}
    _check_keys(split, SPLIT_KEYS, "split", path)
    n_test = split.get("test_cells")
    n_validation = int(split.get("validation_cells", 1000))
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, dict) or not datasets_raw:
        raise _err(path, "datasets", "expected a non-empty mapping of dataset name -> settings")
    study_sizes = raw.get("sizes")
    study_qualities = raw.get("qualities")
    datasets = {}
    for dname, draw in datasets_raw.items():
        datasets[dname] = _parse_dataset(
            str(dname), draw or {}, study_sizes, study_qualities, n_test, n_validation, path, check_paths
        )
    algorithm_grids = _parse_algorithm_grids(raw.get("algorithm_grids"), algorithms, datasets, path, models)
    fit_rules = raw.get("fit_rules", DEFAULT_FIT_RULES)
    if fit_rules not in FIT_RULES:
        raise _err(path, "fit_rules", f"{fit_rules!r} is not one of {list(FIT_RULES)}")
    return Study(
        name=name,
        root=_resolve_root(raw.get("root", f"study_runs/{name}")),
        budget=budget,
        seeds=seeds,
        algorithms=algorithms,
        datasets=datasets,
        n_test=None if n_test is None else int(n_test),
        n_validation=n_validation,
        chunk_size=int(raw.get("chunk_size", 10_000)),
        lmi=dict(raw.get("lmi") or {}),
        source_file=path,
        algorithm_grids=algorithm_grids,
        fit_rules=fit_rules,
        models=models,
    )


def _study_models(block, algorithms, path) -> dict[str, ModelEntry]:
    """The algorithms' entries: built-in, the file's own models, installed packages' (models/user.py)."""
    from scaling_assets.models.user import ModelSpecError, study_models

    try:
        return study_models(block, algorithms, path.parent if path is not None else None)
    except ModelSpecError as exc:
        raise _err(path, exc.field, exc.message) from None


def _parse_algorithm_grids(raw, algorithms, datasets, path, models) -> dict[str, AlgorithmGrid]:
    """``{algorithm: {sizes: [...], qualities: [...], seeds: [...], label: ...}}``; sizes and qualities must be
    on each dataset's grid; seeds are the algorithm's own (any, the study's or others)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _err(path, "algorithm_grids", "expected a mapping of algorithm -> {sizes, qualities, seeds, label}")
    grids = {}
    for algorithm, spec in raw.items():
        where = f"algorithm_grids.{algorithm}"
        if algorithm not in algorithms:
            raise _err(path, where, f"{algorithm!r} is not one of the study's algorithms {list(algorithms)}")
        spec = spec or {}
        _check_keys(spec, ALGORITHM_GRID_KEYS, where, path)
        sizes = tuple(int(n) for n in spec["sizes"]) if spec.get("sizes") is not None else None
        if sizes is not None and models[algorithm].pretrained:
            raise _err(path, f"{where}.sizes", f"{algorithm!r} is a pretrained model evaluated frozen: it has no size "
                                               "axis (it runs at n=0); give it qualities only")
        qualities = tuple(float(q) for q in spec["qualities"]) if spec.get("qualities") is not None else None
        for d in datasets.values():
            missing = [n for n in sizes or () if n not in d.sizes]
            missing += [q for q in qualities or () if format_quality(q) not in {format_quality(x) for x in d.qualities}]
            if missing:
                raise _err(path, where, f"{missing} not on dataset {d.name!r}'s grid (sizes {list(d.sizes)}, "
                                        f"qualities {list(d.qualities)}); an algorithm grid picks from it")
        seeds = _parse_seeds(spec["seeds"], f"{where}.seeds", path) if spec.get("seeds") is not None else None
        grids[algorithm] = AlgorithmGrid(sizes, qualities, str(spec.get("label", "")), seeds)
    if any(g.seeds is not None for g in grids.values()):
        # An algorithm's own seeds make the dataset's settings (train_counts) the union of the algorithms';
        # every other algorithm then trains on a subset of them (the study's seeds): its own grid too.
        grids.update({a: AlgorithmGrid() for a in algorithms if a not in grids})
    return grids


def _parse_seeds(raw, where: str, path) -> tuple[int, ...]:
    """A non-empty list of distinct non-negative integers."""
    if not isinstance(raw, list) or not raw:
        raise _err(path, where, f"expected a non-empty list of integer seeds, got {raw!r}")
    bad = [s for s in raw if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise _err(path, where, f"seeds must be non-negative integers, got {bad}")
    repeated = sorted({s for s in raw if raw.count(s) > 1})
    if repeated:
        raise _err(path, where, f"seed(s) {repeated} given twice")
    return tuple(raw)


def _parse_dataset(name, d, study_sizes, study_qualities, n_test, n_val, path, check_paths) -> DatasetConfig:
    where = f"datasets.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise _err(path, where, "dataset names may use letters, digits, '_' and '-' only")
    _check_keys(d, DATASET_KEYS, where, path)
    task, source, paths = _parse_source(d, where, path, check_paths)
    signals = _parse_signals(d, task, source, where, path)
    cells = int(d["cells"]) if d.get("cells") is not None else None
    if source == SIMULATED and (not cells or not d.get("genes")):
        raise _err(path, where, "a simulated dataset needs 'cells' and 'genes'")
    umis = float(d["umis_per_cell"]) if d.get("umis_per_cell") is not None else None
    own_split = d.get("split") or {}
    _check_keys(own_split, SPLIT_KEYS, f"{where}.split", path)
    own_test, own_val = own_split.get("test_cells"), own_split.get("validation_cells")
    test = int(own_test) if own_test is not None else n_test
    n_val = int(own_val) if own_val is not None else n_val
    if test is None and cells:
        test = default_test_size(cells)
    pool = cells - test - n_val if cells is not None and test is not None else None
    if pool is not None and pool <= 0:
        raise _err(path, where, f"{cells} cells leave no training pool after {test} test and {n_val} validation cells")
    pool_note = None if pool is None else f"{pool} = {cells} cells - {test} test - {n_val} validation"
    return DatasetConfig(
        name=name, task=task, source=source, sizes=_parse_sizes(d.get("sizes", study_sizes), pool, pool_note,
                                                                f"{where}.sizes", path),
        qualities=_parse_qualities(d.get("qualities", study_qualities), umis, f"{where}.qualities", path),
        cells=cells, genes=int(d["genes"]) if d.get("genes") else None, seed=int(d.get("seed", 0)), paths=paths,
        options=dict(d.get("options") or {}), umis_per_cell=umis,
        test_cells=None if own_test is None else int(own_test),
        validation_cells=None if own_val is None else int(own_val), signals=signals, pool=pool,
    )


def _parse_signals(d, task: str | None, source: str, where: str, path) -> tuple[SignalSpec, ...]:
    """The task's preset signals, then the dataset's own ``signals:`` (at least one signal in all)."""
    preset = TASKS[task].signals if task else ()
    if d.get("signals") is None:
        if not preset:
            raise _err(path, where, f"expected a task (one of {list(TASKS)}) or signals (obs columns / obsm "
                                    "keys to measure), or both")
        return preset
    if source == SIMULATED:
        raise _err(path, f"{where}.signals", "a simulated dataset has its task's signals only; declare "
                                             "signals on a real source")
    try:
        own = parse_signals(d["signals"])
    except ValueError as exc:
        field_name, message = exc.args
        raise _err(path, f"{where}.signals" + (f".{field_name}" if field_name else ""), message) from None
    names = [s.name for s in (*preset, *own)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _err(path, f"{where}.signals", f"signal name(s) {repeated} given twice"
                   + (f" (task {task!r} already measures {list(TASKS[task].mi_signals)})" if task else ""))
    return (*preset, *own)


def _parse_source(d, where: str, path, check_paths: bool) -> tuple[str, str, dict[str, str]]:
    """The dataset's task (None: only its own signals), its source (simulated or a format of
    data/tasks.py) and the source's files."""
    source = d.get("source", SIMULATED)
    if source not in SOURCES:
        raise _err(path, f"{where}.source", f"{source!r} is not one of {list(SOURCES)}")
    held = FORMATS[source].task if source in FORMATS else None
    task = d.get("task", held)
    if task is None and source == SIMULATED:
        raise _err(path, f"{where}.task", f"a simulated dataset needs a task, one of {list(TASKS)}")
    if task is not None and task not in TASKS:
        raise _err(path, f"{where}.task", f"{task!r} is not one of {list(TASKS)}")
    if held not in (None, task):
        raise _err(path, f"{where}.task", f"source {source!r} holds {held!r} data, not {task!r}")
    paths = {k: _data_path(v, path) for k, v in (d.get("paths") or {}).items()}
    for key in FORMATS[source].paths if source in FORMATS else ():
        if key not in paths:
            raise _err(path, f"{where}.paths", f"source {source!r} needs path '{key}'")
        if check_paths and not Path(paths[key]).exists():
            raise _err(path, f"{where}.paths.{key}", f"missing data path {paths[key]}")
    return task, source, paths


def _data_path(value, study_file: Path | None) -> str:
    """A dataset file: ``$VARS`` and ``~`` expanded; a relative path is relative to the study file's folder
    (so a study beside its data runs from any working directory)."""
    p = Path(os.path.expandvars(str(value))).expanduser()
    unset_variable = "$" in str(p)  # kept as written, so a missing-path error names the variable
    if not p.is_absolute() and study_file is not None and not unset_variable:
        p = (Path(study_file).resolve().parent / p).resolve()
    return str(p)


def _parse_sizes(spec, pool: int | None, pool_note: str | None, where: str, path) -> tuple[int, ...]:
    """A list of cell counts, or a log grid {grid: log, count: 10, smallest: 100} up to the pool."""
    if spec is None:
        raise _err(path, where, "no sizes given (per dataset or at the top level)")
    if isinstance(spec, dict):
        _check_keys(spec, SIZE_GRID_KEYS, where, path)
        if pool is None:
            raise _err(path, where, "a size grid needs the dataset's 'cells' to know the pool size")
        sizes = size_grid(pool, int(spec.get("count", 10)), int(spec.get("smallest", 100)))
    else:
        sizes = sorted({int(s) for s in spec})
    if not sizes or sizes[0] < 1:
        raise _err(path, where, f"sizes must be positive integers, got {spec}")
    if pool is not None and sizes[-1] > pool:
        raise _err(path, where, f"size {sizes[-1]} is larger than the training pool ({pool_note})")
    return tuple(sizes)


def _parse_qualities(spec, umis: float | None, where: str, path) -> tuple[float, ...]:
    """A list of qualities in (0, 1], or a log grid {grid: log, count: 10, min_umis: 10} from the UMIs per cell."""
    if spec is None:
        raise _err(path, where, "no qualities given (per dataset or at the top level)")
    if isinstance(spec, dict):
        _check_keys(spec, QUALITY_GRID_KEYS, where, path)
        if umis is None:
            raise _err(path, where, "a quality grid needs the dataset's 'umis_per_cell'")
        qualities = quality_grid(umis, int(spec.get("count", 10)), float(spec.get("min_umis", 10)))
    else:
        qualities = sorted({float(q) for q in spec}, reverse=True)
    for q in qualities:
        if not (0.0 < q <= 1.0) or math.isnan(q):
            raise _err(path, where, f"quality {q} is outside (0, 1]")
    return tuple(qualities)
