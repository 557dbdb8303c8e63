"""Evaluation suites: scripts that regenerate the tables in docs/results.md."""
