"""What ``pocketsize compress`` writes: DIR/model, plan.json and compress_report.json."""

from __future__ import annotations

from pathlib import Path

from pocketsize.io import write_json
from pocketsize.loading import save_model_dir


def write_outputs(pruned, dest: Path) -> None:
    """Write a :class:`~pocketsize.compress.pruning.Pruned` result into ``dest``."""
    save_model_dir(pruned.loaded, dest / "model")
    write_json(dest / "plan.json", pruned.plan)
    write_json(dest / "compress_report.json", pruned.report)
