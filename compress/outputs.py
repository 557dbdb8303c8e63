"""What ``pocketsize compress`` writes: DIR/model, plan.json, compress_report.json and split.json."""

from __future__ import annotations

from pathlib import Path

from pocketsize.io import write_json
from pocketsize.loading import save_model_dir
from pocketsize.splits import SPLIT_FILE, record_of


def write_outputs(pruned, dest: Path) -> None:
    """Write a :class:`~pocketsize.compress.pruning.Pruned` result into ``dest``."""
    save_model_dir(pruned.loaded, dest / "model")
    write_json(dest / "plan.json", pruned.plan)
    write_json(dest / "compress_report.json", pruned.report)
    split = record_of(pruned.data)
    if split is not None:  # export (through DIR/model) and bench evaluate exactly its test entries
        split.save(dest / SPLIT_FILE)
        split.save(dest / "model" / SPLIT_FILE)
