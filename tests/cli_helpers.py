"""Run the pocketsize CLI in-process, as a user would from the shell."""

from __future__ import annotations

from pocketsize.cli import main


def cli(argv, capsys) -> tuple[int, str, str]:
    """``pocketsize ARGV`` in this process: (exit code, stdout, stderr); argparse's own exits included."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
