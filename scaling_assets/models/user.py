"""A study's own models: a ``models:`` block in the study file, or an installed package's entry point.

    models:
      nmf16:                                  # any scikit-learn transformer (models/sklearn_model.py)
        sklearn: sklearn.decomposition.NMF
        params: {n_components: 16, max_iter: 300, init: nndsvda}
        input: log1p                          # raw | log1p | hvg_log1p
      mine:                                   # a RepresentationModel subclass (models/base.py)
        class: my_package.models:MyModel
        params: {latent: 32}
      gf_frozen:                              # a pretrained checkpoint, evaluated frozen (models/pretrained.py)
        pretrained: checkpoints/geneformer
    algorithms: [pca, nmf16, mine, gf_frozen]

An algorithm the study names that is neither built in nor in the block is looked up among the installed
packages' entry points of group ``scaling_assets.models`` (``mine = "my_package.models:MyModel"``), built
with the class's default parameters. Built-in names come first: the block may not reuse them, and an
entry point with a built-in's name is never used.

Naming a class runs its module's code when the study is loaded, as a Python config file would: load
only study files you trust. A module beside the study file can be named (``my_models:MyModel``): the
study file's folder is appended to ``sys.path`` (after every installed package, so it shadows none),
the same in every process that loads the study (the CLI, the daemon, run workers, the webserver).

Everything is checked here, when the study is loaded, before anything is written or submitted; a
problem raises ``ModelSpecError(field, message)`` (``study/spec.py`` adds the file).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from scaling_assets.models import spec
from scaling_assets.models.registry import BUILTIN, COUNTS, CORPUS, ModelEntry, import_object

ENTRY_POINT_GROUP = "scaling_assets.models"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a part of the asset keys model_<name>, embeddings_<name>, mi_<name>
KEYS = {"sklearn": {"params", "input", "learns_from_cells"}, "class": {"params"},
        "pretrained": {"params", "token_dictionary", "gene_medians", "allow_pickle"}}
PRETRAINED_PARAMS = ("layer", "max_tokens")


class ModelSpecError(ValueError):
    """A model the study cannot have: ``field`` (e.g. ``models.nmf16.params``) and what was expected."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message)
        self.field, self.message = field, message


def study_models(block: Any, algorithms: tuple[str, ...], study_dir: Path | None) -> dict[str, ModelEntry]:
    """The entry of each algorithm of the study, in its order: built-in, from the block, or an entry point.
    Every model of the block is checked, named in ``algorithms`` or not."""
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ModelSpecError("models", "expected a mapping of model name -> {sklearn: ... | class: ... | "
                                       "pretrained: ..., params: {...}}")
    own = {str(name): model_entry(str(name), spec_, study_dir) for name, spec_ in block.items()}
    return {a: BUILTIN.get(a) or own.get(a) or entry_point_model(a, list(own)) for a in algorithms}


def model_entry(name: str, spec_: Any, study_dir: Path | None) -> ModelEntry:
    """The entry of one model of a study's ``models:`` block."""
    where = f"models.{name}"
    if name in BUILTIN:
        raise ModelSpecError(where, f"{name!r} is a built-in algorithm ({', '.join(BUILTIN)}); give your model "
                                    "another name")
    if not NAME.fullmatch(name):
        raise ModelSpecError(where, "a model name starts with a letter and has letters, digits and '_' only")
    if not isinstance(spec_, dict) or len(set(spec_) & set(KEYS)) != 1:
        raise ModelSpecError(where, "expected exactly one of 'sklearn: <estimator class>', 'class: <module:Class>' "
                                    "or 'pretrained: <checkpoint directory>'")
    kind = next(k for k in KEYS if k in spec_)
    unknown = sorted(set(spec_) - KEYS[kind] - {kind})
    if unknown:
        raise ModelSpecError(where, f"unknown keys {unknown}; a {kind} model takes {sorted(KEYS[kind] | {kind})}")
    params = spec_.get("params") or {}
    if not isinstance(params, dict):
        raise ModelSpecError(f"{where}.params", f"expected a mapping of parameter -> value, got {params!r}")
    _study_dir_on_path(study_dir)
    if kind == "sklearn":
        return _sklearn_entry(name, spec_, params, where)
    if kind == "class":
        cls = _import(spec_["class"], f"{where}.class")
        return entry_from_class(name, cls, params, f"class {spec_['class']} (study file)", where)
    return _pretrained_entry(name, spec_, params, study_dir, where)


def _study_dir_on_path(study_dir: Path | None) -> None:
    folder = str(Path(study_dir).resolve()) if study_dir is not None else None
    if folder and folder not in sys.path:
        sys.path.append(folder)


def _import(path: Any, field: str):
    if not isinstance(path, str) or not path.strip():
        raise ModelSpecError(field, f"expected 'package.module:Class', got {path!r}")
    try:
        return import_object(path.strip())
    except Exception as exc:  # whatever importing the user's module raised
        raise ModelSpecError(field, f"cannot import {path} ({type(exc).__name__}: {exc}); expected "
                                    "'package.module:Class' importable here: installed, on PYTHONPATH, or a "
                                    "module beside the study file") from None


def _sklearn_entry(name: str, spec_: dict, params: dict, where: str) -> ModelEntry:
    from scaling_assets.models.sklearn_model import INPUTS, SklearnModel, check_params, estimator_class, output_width

    path = spec_["sklearn"]
    _import(path, f"{where}.sklearn")  # an import error, said as such
    try:
        cls = estimator_class(path)
    except TypeError as exc:
        raise ModelSpecError(f"{where}.sklearn", str(exc)) from None
    if spec_.get("input") not in INPUTS:
        raise ModelSpecError(f"{where}.input", f"{spec_.get('input')!r} is not one of {list(INPUTS)} (raw counts; "
                                               "log1p: normalised to 10,000 then log1p; hvg_log1p: log1p on the "
                                               "seed's highly variable genes)")
    try:
        check_params(cls, params)
        width = output_width(cls, params)
    except Exception as exc:  # the estimator's own complaint (scikit-learn's InvalidParameterError, TypeError)
        raise ModelSpecError(f"{where}.params", f"{cls.__name__}: {exc}") from None
    learns = spec_.get("learns_from_cells", True)
    if not isinstance(learns, bool):
        raise ModelSpecError(f"{where}.learns_from_cells", f"expected true or false, got {learns!r}")
    model_params = {"estimator": path, "params": params, "input": spec_["input"]}
    return ModelEntry(name, SklearnModel, COUNTS, SklearnModel.dagster_kind, width, gpu_mib={"mi": spec.lmi_train_mib},
                      parameters=functools.partial(SklearnModel.parameter_count, params=model_params),
                      hvg_genes=spec_["input"] == "hvg_log1p", learns_from_cells=learns, params=model_params,
                      origin=f"scikit-learn {path} (study file)")


def _pretrained_entry(name: str, spec_: dict, params: dict, study_dir: Path | None, where: str) -> ModelEntry:
    from scaling_assets.models.pretrained import PickleRefused, PretrainedBertModel, read_checkpoint

    unknown = sorted(set(params) - set(PRETRAINED_PARAMS))
    if unknown:
        raise ModelSpecError(f"{where}.params", f"unknown parameter(s) {unknown}; a pretrained model takes "
                                                f"{list(PRETRAINED_PARAMS)}")
    allow_pickle = spec_.get("allow_pickle", False)
    if not isinstance(allow_pickle, bool):
        raise ModelSpecError(f"{where}.allow_pickle", f"expected true or false, got {allow_pickle!r}")
    paths = {k: _relative_to(spec_[k], study_dir) for k in ("pretrained", "token_dictionary", "gene_medians")
             if spec_.get(k) is not None}
    try:
        checkpoint = read_checkpoint(paths["pretrained"], paths.get("token_dictionary"), paths.get("gene_medians"),
                                     allow_pickle)
    except PickleRefused as exc:
        raise ModelSpecError(f"{where}.pretrained", f"{exc}") from None
    except (ValueError, OSError) as exc:
        raise ModelSpecError(f"{where}.pretrained", str(exc)) from None
    model_params = {"checkpoint": paths["pretrained"], **({"token_dictionary": paths["token_dictionary"]}
                                                            if "token_dictionary" in paths else {}),
                    **({"gene_medians": paths["gene_medians"]} if "gene_medians" in paths else {}),
                    "allow_pickle": allow_pickle, **params}
    layers = int(checkpoint.config["num_hidden_layers"])
    layer = params.get("layer", -1)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -layers <= layer <= 0:
        raise ModelSpecError(f"{where}.params.layer", f"expected an integer in [-{layers}, 0] (Geneformer's "
                                                      f"emb_layer: 0 the last layer, -1 the second-to-last), got {layer!r}")
    entry = entry_from_class(name, PretrainedBertModel, model_params, f"pretrained {paths['pretrained']} (study file)",
                             where)
    return dataclasses.replace(entry, fingerprint=checkpoint.fingerprint())


def _relative_to(value: Any, study_dir: Path | None) -> str:
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and study_dir is not None:
        path = Path(study_dir).resolve() / path
    return str(path)


def entry_from_class(name: str, cls: Any, params: dict, origin: str, where: str) -> ModelEntry:
    """The entry of a ``RepresentationModel`` subclass, from its declarations (class attributes)."""
    from scaling_assets.models.base import RepresentationModel
    from scaling_assets.models.versions import settings_version

    if not (inspect.isclass(cls) and issubclass(cls, RepresentationModel)):
        raise ModelSpecError(where, f"{cls!r} is not a model: expected a subclass of "
                                    "scaling_assets.models.RepresentationModel (docs/models.md)")
    if inspect.isabstract(cls):
        raise ModelSpecError(where, f"{cls.__name__} does not implement {sorted(cls.__abstractmethods__)} of "
                                    "RepresentationModel")
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(params) - set(accepted) - {"self"})
        if unknown:
            own = [p for p in accepted if p not in ("self", "gene_ids", "budget", "seed", "device")]
            raise ModelSpecError(f"{where}.params", f"unknown parameter(s) {unknown} for {cls.__name__}; it takes {own}")
    if cls.reads not in (COUNTS, CORPUS):
        raise ModelSpecError(where, f"{cls.__name__}.reads is {cls.reads!r}; expected {COUNTS!r} or {CORPUS!r}")
    try:
        width = cls.embedding_width(params)
    except Exception as exc:
        raise ModelSpecError(f"{where}.params", f"{cls.__name__}.embedding_width: {type(exc).__name__}: {exc}") from None
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelSpecError(where, f"{cls.__name__} declares an embedding width of {width!r}; expected a positive "
                                    "integer (class attribute embedding_dim, or embedding_width(params))")
    declared = lambda fn: functools.lru_cache(maxsize=64)(fn)  # noqa: E731 - asked for every run the queue sizes
    gpu = {stage: declared(functools.partial(_stage_mib, cls, stage, params)) for stage in ("model", "embeddings")}
    entry = ModelEntry(name, cls, cls.reads, cls.dagster_kind, width, gpu_mib={**gpu, "mi": spec.lmi_train_mib},
                       parameters=declared(functools.partial(_parameters, cls, params)),
                       learns_from_cells=bool(cls.learns_from_cells and not cls.pretrained),
                       pretrained=bool(cls.pretrained), params=dict(params), origin=origin)
    try:
        settings_version(entry, "default")  # its code version is readable: the source of hyperparameters()
    except (ValueError, OSError, TypeError) as exc:
        raise ModelSpecError(where, f"{cls.__name__}: its code version cannot be read ({exc}); define the class at "
                                    "the top level of an importable module, with a hyperparameters() method") from None
    return entry


def _stage_mib(cls, stage: str, params: dict, n_genes: int) -> int:
    return int(cls.gpu_mib(stage, n_genes, params))


def _parameters(cls, params: dict, n_genes: int) -> int:
    return int(cls.parameter_count(n_genes, params))


def entry_point_model(name: str, own: list[str] | None = None) -> ModelEntry:
    """The model an installed package registers under ``name`` (entry point group ``scaling_assets.models``)."""
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        installed = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)} - set(BUILTIN))
        raise ModelSpecError("algorithms", f"unknown algorithm {name!r}; expected a built-in {list(BUILTIN)}, a model "
                                           f"of the study's models block {own or []} or an installed package's entry "
                                           f"point in group {ENTRY_POINT_GROUP!r} {installed}")
    if len(found) > 1:
        raise ModelSpecError("algorithms", f"{name!r} is registered by several installed packages: "
                                           f"{[f'{ep.value} ({_dist(ep)})' for ep in found]}")
    ep = found[0]
    if not NAME.fullmatch(name):
        raise ModelSpecError("algorithms", f"entry point {name!r} ({_dist(ep)}): a model name starts with a letter "
                                           "and has letters, digits and '_' only")
    try:
        cls = ep.load()
    except Exception as exc:
        raise ModelSpecError("algorithms", f"entry point {name} = {ep.value} ({_dist(ep)}) does not import "
                                           f"({type(exc).__name__}: {exc})") from None
    return entry_from_class(name, cls, {}, f"entry point {ep.value} ({_dist(ep)})", f"algorithms ({name})")


def _dist(ep) -> str:
    return f"package {ep.dist.name}" if getattr(ep, "dist", None) is not None else "an installed package"
