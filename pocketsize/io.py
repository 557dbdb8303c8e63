"""Small I/O helpers shared by every stage: atomic output folders and JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import BadInput


def _jsonable(obj: Any) -> Any:
    """Make numpy/torch scalars, paths and non-finite floats JSON-safe."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; None reads as "not measured"
    return obj


_FALLBACK_UMASK: list[int] = []


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux exposes it in /proc/self/status (thread-safe, always current);
    elsewhere it is read once with the set-and-restore dance and cached.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if not _FALLBACK_UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _FALLBACK_UMASK.append(mask)
    return _FALLBACK_UMASK[0]


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs are shared like any file
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(data), f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist; pass the folder that pocketsize wrote") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); re-create it") from None


def check_out_dir(out: str | os.PathLike) -> Path:
    """Validate an output folder before any work starts.

    We refuse a non-empty existing folder rather than overwrite it: nothing the
    user had may be lost. An empty folder is accepted (CI jobs pre-create them).
    """
    out = Path(out)
    if out.is_symlink():
        raise BadInput(f"--out {out} is a symbolic link; pass a new folder name (the link is left alone)")
    if out.name in ("", ".", "..") or (out.is_dir() and out.resolve() == Path.cwd().resolve()):
        raise BadInput(f"--out {out} is the current or a parent folder, which cannot be replaced; "
                       "pass a new folder name (e.g. --out results)")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()):
        raise BadInput(f"--out {out} already exists and is not empty; pass a new folder or remove it")
    parent = out.resolve().parent
    if not parent.exists():
        raise BadInput(f"--out {out}: parent folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"--out {out}: cannot write into {parent}; pick a writable folder")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``out`` only on success.

    A failed or interrupted run leaves no half-written ``out`` behind.
    """
    out = check_out_dir(out)
    tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.partial-"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the output is an ordinary folder
        yield tmp
        if out.is_dir():  # empty by check_out_dir; rmdir fails loudly if not
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a directory's files in sorted order
    (relative path and contents both hashed, so a rename changes the digest)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return path.stat().st_size, h.hexdigest()
    total = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        total += f.stat().st_size
    return total, h.hexdigest()
