"""split.json: the train/val/test split compress drew, recorded file by file.

compress writes it (beside plan.json and inside DIR/model/), export copies it
next to its manifest and bench reads it from there. Export parity and bench
accuracy evaluate exactly the recorded test entries after checking that --data
still holds the same bytes, so no image the model trained on can reach a
"held-out" number, whatever seed or folder edits happened since.

Images: one entry per file (name relative to --data, sha256). Text: the split
is over fixed-length chunks of one token stream (pocketsize.text), so an entry
is one file's part of one chunk: file, sha256, chunk index and the file-local
token range [start, end) (a file's trailing EOS token counts as its last).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import BadInput
from .io import digest, read_json, write_json

SPLIT_FILE = "split.json"
FORMAT_VERSION = 1
PARTS = ("train", "val", "test")
_FIX = "pass the data compress used or re-run pocketsize compress"


@dataclass(frozen=True)
class Entry:
    """One file of a split (images), or one file's part of one chunk (text)."""

    file: str                               # relative to --data (its own name when --data is a file)
    sha256: str
    chunk: int | None = None                # text: the chunk of the token stream
    tokens: tuple[int, int] | None = None   # text: file-local token range [start, end)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        if self.chunk is not None:
            d.update(chunk=self.chunk, tokens=list(self.tokens or ()))
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> "Entry":
        if not isinstance(d, dict):
            raise BadInput(f"{where}: an entry is {type(d).__name__}, not an object; {_FIX}")
        _check_keys(d, {"file", "sha256"}, {"chunk", "tokens"}, where)
        tokens = d.get("tokens")
        if "chunk" in d and (not isinstance(tokens, list) or len(tokens) != 2):
            raise BadInput(f"{where}: entry {d['file']!r} has no [start, end] token range; {_FIX}")
        return cls(str(d["file"]), str(d["sha256"]), None if d.get("chunk") is None else int(d["chunk"]),
                   None if tokens is None else (int(tokens[0]), int(tokens[1])))


@dataclass
class SplitRecord:
    """What split.json holds; see the module doc."""

    seed: int
    task: str                                        # "image-classification" or "causal-lm"
    train: list[Entry]
    val: list[Entry]
    test: list[Entry]
    labels: list[str] = field(default_factory=list)  # images: class names in index order
    seq_len: int | None = None                       # text: tokens per chunk
    ignored: list[Entry] = field(default_factory=list)  # listed in --data but unused (unreadable, empty, capped)
    format_version: int = FORMAT_VERSION

    def files(self, part: str) -> list[str]:
        """The distinct file names of one part, in recorded order."""
        return list(dict.fromkeys(e.file for e in getattr(self, part)))

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in (*PARTS, "ignored"):
            d[k] = [e.to_json() for e in d[k]]
        return {"format_version": d.pop("format_version"), **d}

    @classmethod
    def from_json(cls, d: Any, where: str = SPLIT_FILE) -> "SplitRecord":
        if not isinstance(d, dict):
            raise BadInput(f"{where} holds a {type(d).__name__}, not an object; {_FIX}")
        names = {f.name for f in dataclasses.fields(cls)}
        _check_keys(d, {"format_version", "seed", "task", *PARTS}, names, where)
        if d["format_version"] != FORMAT_VERSION:
            raise BadInput(f"{where} has format_version {d['format_version']!r}; this pocketsize reads "
                           f"{FORMAT_VERSION}; re-run pocketsize compress")
        kw = dict(d)
        for k in (*PARTS, "ignored"):
            if not isinstance(kw.get(k, []), list):
                raise BadInput(f"{where}: {k} is not a list; {_FIX}")
            kw[k] = [Entry.from_json(e, where) for e in kw.get(k, [])]
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "SplitRecord":
        return cls.from_json(read_json(path), str(path))


def _check_keys(d: dict, required: set[str], known: set[str], where: str) -> None:
    missing, unknown = sorted(required - set(d)), sorted(set(d) - required - known)
    if missing or unknown:
        what = "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unknown {unknown}"]))
        raise BadInput(f"{where} is not a split.json pocketsize can read ({what}); re-run pocketsize compress")


# --- building (compress) -------------------------------------------------------------

def _path(root: Path, name: str) -> Path:
    return root if root.is_file() else root / name


def _hasher(root: Path):
    cache: dict[str, str] = {}

    def sha(name: str) -> str:
        if name not in cache:
            cache[name] = digest(_path(root, name))[1]
        return cache[name]
    return sha


def record_of(data: Any) -> SplitRecord | None:
    """The record of a pocketsize.data.ImageData or pocketsize.text.TextData;
    None when it was built in-process without file names (nothing to record)."""
    if getattr(data, "root", None) is None:
        return None
    root = Path(data.root)
    sha = _hasher(root)
    ignored = [Entry(n, sha(n)) for n in data.ignored]
    if hasattr(data, "labels"):
        if any(getattr(data, p).files is None for p in PARTS):
            return None
        parts = {p: [Entry(n, sha(n)) for n in getattr(data, p).files] for p in PARTS}
        return SplitRecord(int(data.seed), "image-classification", labels=list(data.labels), ignored=ignored, **parts)
    if any(getattr(data, p).chunks is None for p in PARTS):
        return None
    parts = {p: _chunk_entries(getattr(data, p).chunks, data.sources, data.seq_len, sha) for p in PARTS}
    return SplitRecord(int(data.seed), "causal-lm", seq_len=int(data.seq_len), ignored=ignored, **parts)


def _chunk_entries(chunks: Sequence[int], sources: Sequence[tuple[str, int, int]], seq_len: int,
                   sha) -> list[Entry]:
    out = []
    for k in chunks:
        a, b = k * seq_len, (k + 1) * seq_len
        for name, s, e in sources:
            if s < b and e > a:  # this document overlaps chunk k
                out.append(Entry(name, sha(name), int(k), (max(a, s) - s, min(b, e) - s)))
    return out


# --- checking (export, bench) --------------------------------------------------------

def find_split(*folders: str | Path) -> Path | None:
    """The first folder's split.json that exists."""
    for f in folders:
        if f is not None and (Path(f) / SPLIT_FILE).is_file():
            return Path(f) / SPLIT_FILE
    return None


def _listed(record: SplitRecord, data: Path) -> list[str]:
    if record.task == "causal-lm":
        from .text import text_files

        files = text_files(data)
    else:
        from .data import list_image_folder

        files = [f for f, _ in list_image_folder(data)[1]]
    from .data import relative_name

    return [relative_name(data, f) for f in files]


def check_data(record: SplitRecord, data: str | Path, where: str | Path = SPLIT_FILE) -> None:
    """BadInput (one line) unless --data holds exactly the files the record lists, byte for byte."""
    data = Path(data)
    recorded: dict[str, str] = {}
    for e in [*record.train, *record.val, *record.test, *record.ignored]:
        recorded.setdefault(e.file, e.sha256)
    now = set(_listed(record, data))
    sha = _hasher(data)
    changed = sorted(n for n in recorded if n in now and sha(n) != recorded[n])
    missing = sorted(set(recorded) - now)
    added = sorted(now - set(recorded))
    if not (changed or missing or added):
        return
    found = [(k, v) for k, v in (("changed", changed), ("missing", missing), ("added", added)) if v]
    counts = ", ".join(f"{len(v)} {'file' if len(v) == 1 else 'files'} {k}" for k, v in found)
    first = (changed or missing or added)[0]
    raise BadInput(f"--data {data} no longer matches {where}: {counts} (first: {first}); {_FIX}")


# --- loading (export, bench) -----------------------------------------------------------

def load_images(record: SplitRecord, data: str | Path, part: str, preprocessing: dict[str, Any],
                limit: int | None = None):
    """Exactly the recorded images of ``part`` (``limit`` of them, spread over the
    classes: pocketsize.data.class_spread), as a pocketsize.data.Split."""
    from .data import class_of, class_spread, load_image_files

    names = record.files(part)
    names = [names[i] for i in class_spread([class_of(n) for n in names], limit)]
    return load_image_files(data, names, record.labels, preprocessing)


def load_chunks(record: SplitRecord, data: str | Path, tokenizer, part: str, limit: int | None = None):
    """Exactly the recorded token chunks of ``part`` (the first ``limit``), as a pocketsize.text.TextSplit.

    The files are re-tokenized with ``tokenizer``; a tokenizer that cuts them
    differently from compress's is an error (the chunks would not be the same)."""
    import torch

    from .text import TextSplit, read_text, tokenize

    data = Path(data)
    by_chunk: dict[int, list[Entry]] = {}
    for e in getattr(record, part):
        by_chunk.setdefault(int(e.chunk), []).append(e)
    ids: dict[str, torch.Tensor] = {}
    rows, order = [], list(by_chunk)[:limit]
    for k in order:
        parts = []
        for e in by_chunk[k]:
            if e.file not in ids:
                ids[e.file] = tokenize([read_text(_path(data, e.file))], tokenizer)
            parts.append(ids[e.file][e.tokens[0]:e.tokens[1]])
        row = torch.cat(parts)
        if row.numel() != record.seq_len:
            raise BadInput(f"the tokenizer cuts --data {data} differently from the one compress used "
                           f"(chunk {k}: {row.numel()} tokens, not {record.seq_len}); export the compressed model "
                           "with its tokenizer")
        rows.append(row)
    x = torch.stack(rows) if rows else torch.empty((0, int(record.seq_len or 0)), dtype=torch.long)
    return TextSplit(x, order)
