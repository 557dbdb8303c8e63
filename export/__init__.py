"""export: phone-ready ExecuTorch, ONNX and Core ML artifacts, each checked against eager.

``export(model, out_dir, ExportConfig(...)) -> manifest``. Importing this
package loads no export toolchain: executorch, onnxruntime and coremltools are
imported inside the target modules when a target runs.
"""

from __future__ import annotations

from .api import artifact_name, check_precision, export
from .config import ExportConfig
from .source import Source
from .targets import get_target, target_names

__all__ = ["export", "ExportConfig", "Source", "get_target", "target_names", "artifact_name", "check_precision"]
