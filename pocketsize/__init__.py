"""pocketsize: personalized pruning + phone export + on-device benchmarks.

The three stages live in the top-level packages ``compress``, ``export`` and
``benchmarks``; this package holds what joins them: errors with exit codes,
atomic output folders, the CLI and the ``run`` pipeline.
"""

__version__ = "0.1.0"
