"""scaling-assets: scaling studies of single-cell representation models as Dagster assets.

The functional core (``fs``, ``data``, ``models``, ``metrics``, ``compute``, ``study.spec``) never
imports Dagster; ``assets`` and ``definitions`` wrap it. ``dagster ... -m scaling_assets`` finds the
code location's ``defs`` here; it is built on first access so that importing the core stays cheap.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "defs":
        from scaling_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'scaling_assets' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + ["defs"])
