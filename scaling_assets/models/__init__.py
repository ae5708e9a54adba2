"""Representation models behind one interface (see base.RepresentationModel).

Algorithm modules import their heavy libraries (scvi-tools, transformers) only when used.
"""

from __future__ import annotations

import importlib
import os

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, read_model_json
from scaling_assets.models.budget import BUDGETS, geneformer_max_epochs, get_budget, scvi_max_epochs
from scaling_assets.models.registry import MODELS

# Benchmarks only (benchmarks/bench_paper_shape.py): "scvi=module:Class,geneformer=module:Class" puts
# another class behind an algorithm's name (a synthetic GPU workload instead of training). Unset, as in
# every real study, the registry's classes are used.
MODEL_OVERRIDE_ENV = "SCALING_ASSETS_MODEL_OVERRIDE"


def _override(name: str) -> str | None:
    for item in filter(None, os.environ.get(MODEL_OVERRIDE_ENV, "").split(",")):
        algorithm, _, target = item.partition("=")
        if algorithm.strip() == name:
            return target.strip()
    return None


def get_model_class(name: str) -> type[RepresentationModel]:
    if name not in MODELS:
        raise InputError(f"unknown algorithm {name!r}; expected one of {list(MODELS)}")
    module, cls = (_override(name) or MODELS[name].model_class).split(":")
    return getattr(importlib.import_module(module), cls)


def load_model(directory: str | os.PathLike, algorithm: str | None = None) -> RepresentationModel:
    """Load a saved model; with ``algorithm``, refuse a directory holding another algorithm."""
    found = read_model_json(directory).get("algorithm")
    if algorithm is not None and found != algorithm:
        raise InputError(f"{directory} holds a {found!r} model, not {algorithm!r}")
    return get_model_class(found).load(directory)


__all__ = ["BUDGETS", "FitReport", "RepresentationModel", "geneformer_max_epochs",
           "get_budget", "get_model_class", "load_model", "scvi_max_epochs"]
