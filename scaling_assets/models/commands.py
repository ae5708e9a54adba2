"""``scaling-assets params --genes G [--budget paper]``: parameter counts and hyperparameters of
every algorithm for a dataset with G genes, from models built for G genes (not a formula)."""

from __future__ import annotations

import json

from scaling_assets.errors import InputError


def params_table(n_genes: int, budget: str = "paper") -> dict:
    from scaling_assets.models import get_model_class
    from scaling_assets.models.registry import ALGORITHMS

    if n_genes < 17:
        raise InputError(f"--genes must be at least 17 (PCA keeps 16 components), got {n_genes}")
    genes = [f"gene{j}" for j in range(n_genes)]
    out = {"genes": n_genes, "budget": budget, "algorithms": {}}
    for name in ALGORITHMS:
        model = get_model_class(name)(genes, budget=budget, seed=0, device="cpu")
        out["algorithms"][name] = {"n_parameters": model.n_parameters(),
                                   "embedding_dim": model.embedding_dim,
                                   "hyperparameters": model.hyperparameters()}
    return out


def _run_params(args) -> int:
    print(json.dumps(params_table(args.genes, args.budget), indent=2, default=str))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("params", help="parameter count and hyperparameters of every algorithm for G genes")
    p.add_argument("--genes", type=int, required=True, help="number of genes in the dataset")
    p.add_argument("--budget", default="paper", choices=["paper", "default", "test"],
                   help="training budget whose hyperparameters to report (counts do not depend on it)")
    p.set_defaults(func=_run_params)
