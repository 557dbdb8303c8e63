"""Progress bars for the CLI layer (library code only calls a callback)."""

from __future__ import annotations

import sys


class StageBars:
    """A ``progress(stage, done, total)`` callback showing one tqdm bar per stage."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._bar = tqdm(total=total, desc=stage, unit="step", leave=False, file=sys.stderr)
            self._stage = stage
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None
