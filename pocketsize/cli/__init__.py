"""``pocketsize`` command line: parses flags and calls the stages' verbs.

Exit codes (docs/interfaces.md): 0 ok, 2 bad input, 3 parity failure, 4 target not
met, 1 anything else. Errors are one line on stderr; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback

from pocketsize import __version__
from pocketsize.errors import PocketsizeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep it one line
        # self.prog is "pocketsize" or "pocketsize compress": it already starts with the program name
        self.exit(2, f"pocketsize: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import bench, compress, export, run

    parser = _Parser(prog="pocketsize", description="Personalized pruning + phone export + on-device benchmarks.")
    parser.add_argument("--version", action="version", version=f"pocketsize {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    compress.register(sub)
    compress.register_models(sub)
    export.register(sub)
    bench.register(sub)
    run.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # first of all: a SIGTERM while the parser's imports load (seconds on a busy
    # machine) is reported and unwound like one that arrives mid-run
    previous = _catch_termination()
    try:
        return _main(argv)
    except Terminated as e:  # SIGTERM/SIGHUP: unwound like Ctrl-C, so every finally block cleaned up
        print(f"pocketsize: terminated by {e.name}; no output was written", file=sys.stderr)
        return 128 + e.signum
    finally:
        _restore(previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("torch", "executorch", "coremltools", "onnxscript", "httpx", "urllib3", "filelock", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not args.debug else logging.DEBUG)
    # getLogger("root") *is* the root logger, whose level every unset logger inherits:
    # give pocketsize's own packages the chosen level explicitly so their warnings show
    for ours in ("pocketsize",):
        logging.getLogger(ours).setLevel(level)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return int(args.func(args) or 0)
    except Terminated:
        raise  # reported by main()
    except PocketsizeError as e:
        if args.debug:
            traceback.print_exc()
        print(f"pocketsize: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pocketsize: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment problem: one line unless --debug
        if args.debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"pocketsize: error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (timeout, a CI cancel, docker stop, a closed terminal).

    A KeyboardInterrupt, so it unwinds exactly like Ctrl-C: atomic folders and
    temporary folders are removed in their finally blocks, runner process groups
    are killed (benchmarks.devices.process.run_checked).
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"terminated by {self.name}")


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _on_signal(signum: int, frame) -> None:
    # one clean unwind: a second TERM/HUP must not interrupt the cleanup the first one started
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Terminated(signum)


def _catch_termination() -> dict:
    """Install the handlers (main thread only; elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for s in _SIGNALS:
        old = signal.getsignal(s)
        if old == signal.SIG_IGN:  # e.g. started under nohup: keep ignoring
            continue
        previous[s] = old
        signal.signal(s, _on_signal)
    return previous


def _restore(previous: dict) -> None:
    for s, old in previous.items():
        signal.signal(s, old if old is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
