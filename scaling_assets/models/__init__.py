"""Representation models behind one interface (see base.RepresentationModel).

Algorithm modules import their heavy libraries (scvi-tools, transformers) only when used.
"""

from __future__ import annotations

import os

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, read_model_json
from scaling_assets.models.budget import BUDGETS, geneformer_max_epochs, get_budget, scvi_max_epochs
from scaling_assets.models.registry import BUILTIN, MODEL_OVERRIDE_ENV, ModelEntry, import_object


def get_model_class(name: str) -> type[RepresentationModel]:
    """A built-in algorithm's class (``SCALING_ASSETS_MODEL_OVERRIDE`` may put another behind it)."""
    if name not in BUILTIN:
        raise InputError(f"unknown algorithm {name!r}; expected one of {list(BUILTIN)}")
    return BUILTIN[name].model_cls()


def load_model(directory: str | os.PathLike, algorithm: str | None = None) -> RepresentationModel:
    """Load a saved model: a built-in by its name, another by the class its model.json records (the
    platform's own output: importing that class runs its module, as the study that named it did);
    with ``algorithm``, refuse a directory holding another algorithm."""
    meta = read_model_json(directory)
    found = meta.get("algorithm")
    if algorithm is not None and found != algorithm:
        raise InputError(f"{directory} holds a {found!r} model, not {algorithm!r}")
    if found not in BUILTIN and not meta.get("class"):
        raise InputError(f"{directory}: model.json names algorithm {found!r}, which is not built in, and no class")
    cls = BUILTIN[found].model_cls() if found in BUILTIN else import_object(meta["class"])
    return cls.load(directory, algorithm=found)


__all__ = ["BUDGETS", "FitReport", "MODEL_OVERRIDE_ENV", "ModelEntry", "RepresentationModel",
           "geneformer_max_epochs", "get_budget", "get_model_class", "load_model", "scvi_max_epochs"]
