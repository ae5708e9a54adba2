"""A short fingerprint of an algorithm's settings, read without importing the algorithm.

The fingerprint covers what a trained model records as its hyperparameters: the source of the model
class's ``hyperparameters()`` method, the module-level constants that method reads (``BERT_CONFIG``,
``MODEL_KWARGS``, ...) and the algorithm's section of the training budget. Comments, docstrings and
formatting do not count (the source is normalised through ``ast``), nor does the rest of the module,
so refactoring ``fit`` leaves trained models current while changing a setting or the budget does not.
Parsing instead of importing keeps torch, scvi-tools and transformers out of definition loading.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

from scaling_assets.models.budget import get_budget


def settings_source(module_source: str, class_name: str) -> str:
    """Normalised source of ``class_name.hyperparameters`` and of the module constants it reads."""
    tree = ast.parse(module_source)
    constants = {}
    method = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            constants[node.targets[0].id] = node
        elif isinstance(node, ast.ClassDef) and node.name == class_name:
            method = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "hyperparameters"), None)
    if method is None:
        raise ValueError(f"class {class_name} has no hyperparameters() method")
    if ast.get_docstring(method) is not None:
        method.body = method.body[1:]
    read = sorted({n.id for n in ast.walk(method) if isinstance(n, ast.Name)} & set(constants))
    return "\n".join([ast.unparse(method)] + [ast.unparse(constants[name]) for name in read])


def settings_version(algorithm: str, budget: str) -> str:
    """12 hex digits that change when the algorithm's recorded settings or its budget section change."""
    from scaling_assets.models import _CLASSES

    module_name, class_name = _CLASSES[algorithm]
    source = Path(importlib.util.find_spec(module_name).origin).read_text()
    section = getattr(get_budget(budget), algorithm, None)  # PCA and random projection ignore the budget
    text = settings_source(source, class_name) + json.dumps(asdict(section) if section else None, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
