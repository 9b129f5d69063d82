"""Stage ``evaluate`` and its benchmarks. Importing this package loads nothing heavy.

- :mod:`cordflow.evaluate.run`: the stage (rule evaluate, ``cordflow evaluate``): one
  model on one benchmark, text and audio prompt, one table of per-item predictions.
- :mod:`cordflow.evaluate.items`: one ``evaluate.benchmarks`` entry -> a checked items
  frame and the items excluded, with reasons (``load``, ``find``, ``ITEMS_SCHEMA``).
- :mod:`cordflow.evaluate.kinds`: one adapter per benchmark kind, the ``KINDS`` registry
  (light: rules/common.smk imports it to plan jobs).
- :mod:`cordflow.evaluate.staged`: staged datasets (voicebench, mmau) read offline into
  items.

(The top-level ``benchmarks/`` folder of the repository holds timing scripts, not these.)
"""
