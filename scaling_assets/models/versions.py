"""A short fingerprint of an algorithm's settings, read without importing the algorithm.

The fingerprint covers what a trained model records as its hyperparameters: the source of the model
class's ``hyperparameters()`` method, the module-level constants it reads, followed through aliases
and imports from the package (``BERT_CONFIG`` -> ``spec.GENEFORMER_BERT`` -> ``corpus.MAX_LEN``), and
the algorithm's section of the training budget. Comments, docstrings and formatting do not count (the
source is normalised through ``ast``), nor does the rest of the module, so refactoring ``fit`` leaves
trained models current while changing a setting or the budget does not. Parsing instead of importing
keeps torch, scvi-tools and transformers out of definition loading.

A user's model (``scaling_assets.models.user``) is fingerprinted the same way from its own class (the
class in its method resolution order that defines ``hyperparameters``, imports followed within the
class's own top-level package), plus its ``params`` and, for a checkpoint, the checkpoint's files
(``ModelEntry.fingerprint``): changing one model's ``params`` marks that model's partitions stale and
no others.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from scaling_assets.models.budget import get_budget
from scaling_assets.models.registry import BUILTIN, ModelEntry

PACKAGE = "scaling_assets."


def _read_module(name: str) -> str:
    return Path(importlib.util.find_spec(name).origin).read_text()


def _names_read(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _module_scope(source: str, package: str = PACKAGE) -> tuple[ast.Module, dict[str, ast.stmt], dict[str, tuple[str, str]]]:
    """The parsed module, its top-level assignments by name, and names imported from ``package``."""
    tree = ast.parse(source)
    assigned: dict[str, ast.stmt] = {}
    imported: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        assigned[name.id] = node
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package):
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
    return tree, assigned, imported


def settings_source(module_source: str, class_name: str,
                    read_module: Callable[[str], str] = _read_module, package: str = PACKAGE) -> str:
    """Normalised source of ``class_name.hyperparameters`` and of every constant it reads (followed into
    the modules of ``package`` it imports them from)."""
    tree, assigned, imported = _module_scope(module_source, package)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    method = next((f for f in getattr(cls, "body", []) if isinstance(f, ast.FunctionDef)
                   and f.name == "hyperparameters"), None)
    if method is None:
        raise ValueError(f"class {class_name} has no hyperparameters() method")
    if ast.get_docstring(method) is not None:
        method.body = method.body[1:]
    parts = [ast.unparse(method)]
    seen: set[tuple[str, str]] = set()
    pending = [("", name, assigned, imported) for name in sorted(_names_read(method))]
    while pending:  # follow each name to the statement that defines it, here or in a package module
        module, name, assigned, imported = pending.pop()
        if (module, name) in seen:
            continue
        seen.add((module, name))
        if name in assigned:
            statement = assigned[name]
            if ast.unparse(statement) not in parts:  # ``A, B = ...`` defines two names at once
                parts.append(ast.unparse(statement))
            pending += [(module, n, assigned, imported) for n in sorted(_names_read(statement.value))]
        elif name in imported:
            source_module, source_name = imported[name]
            _, other_assigned, other_imported = _module_scope(read_module(source_module), package)
            pending.append((source_module, source_name, other_assigned, other_imported))
    return "\n".join(parts)


def settings_version(algorithm: str | ModelEntry, budget: str) -> str:
    """12 hex digits that change when the model's recorded settings, its ``params``, its checkpoint or its
    budget section change."""
    entry = BUILTIN[algorithm] if isinstance(algorithm, str) else algorithm
    module_name, class_name = _hyperparameters_owner(entry)
    section = getattr(get_budget(budget), entry.name, None) if entry.name in BUILTIN else None  # SCVI's, Geneformer's
    package = PACKAGE if module_name.startswith(PACKAGE) else module_name.split(".")[0] + "."
    text = settings_source(_read_module(module_name), class_name, package=package)
    text += json.dumps(asdict(section) if section else None, sort_keys=True)
    if entry.params:  # a built-in has none: its versions are those of studies written before user models
        text += json.dumps(dict(entry.params), sort_keys=True, default=str) + entry.fingerprint
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _hyperparameters_owner(entry: ModelEntry) -> tuple[str, str]:
    """(module, class name) of the class that defines the model's ``hyperparameters``: for a built-in,
    read from the entry's "module:Class" without importing it; for a user's class, up its MRO."""
    if isinstance(entry.model_class, str):
        module_name, class_name = entry.model_class.split(":")
        return module_name, class_name
    owner = next(k for k in entry.model_class.__mro__ if "hyperparameters" in vars(k))
    return owner.__module__, owner.__qualname__
