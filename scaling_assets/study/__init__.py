"""A study, from its file to its results: what it is, what it costs, and how it is run and checked.

- ``spec``: the study file (YAML) -> datasets, grid, budget, root and partition keys (no Dagster)
- ``planner``: what a study costs before it runs, from its file alone (``study plan``; no Dagster)
- ``pairs``: enough test-set pairs for every signal's MI estimate, checked before anything trains
- ``backfills``: the main ``study run``: submit the study to the Dagster instance as asset backfills,
  watch them, cancel on Ctrl-C, report
- ``daemon``: the Dagster daemon a ``study run`` starts, adopts or refuses, and stops
- ``serial``: ``study run --serial``, the whole study in this one process (debugging), and the
  summary both modes print
- ``verify``: ``study verify``, every recorded fingerprint checked, bad partitions marked for rebuilding
- ``commands``: the ``scaling-assets study ...`` sub-commands

The YAML study files themselves are package data in ``scaling_assets/studies/``. Nothing is imported
here, so ``spec`` stays as cheap to import as it was alone.
"""
