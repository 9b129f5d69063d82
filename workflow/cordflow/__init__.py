"""cordflow: CORD (arXiv 2601.16547) as a reproducible Snakemake workflow.

One module (or subpackage) per stage; rules call into them through ``python -m cordflow``.
"""

__version__ = "0.1.0"
