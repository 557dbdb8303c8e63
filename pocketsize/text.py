"""User text for language models: a .txt file or a folder of .txt files,
tokenized once, cut into fixed-length chunks, split seeded.

The split is a pure function of (text, tokenizer, seed, seq_len): compress,
export parity and on-device perplexity all see the same held-out chunks.
Perplexity is exp(mean token NLL) over every predicted token of the split.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from pocketsize.errors import BadInput

log = logging.getLogger(__name__)

SEQ_LEN = 128            # tokens per chunk (the evaluated context length)
MIN_SEQ_LEN = 16         # shorter text than 3 chunks of this cannot be split
MAX_VAL_CHUNKS = 32      # evaluation cost must not grow with the user's corpus
MAX_TEST_CHUNKS = 64
TEXT_SUFFIXES = {".txt"}


@dataclass
class TextSplit:
    """Token chunks (N, T) of one split."""

    ids: torch.Tensor
    chunks: list[int] | None = None  # row i is chunk chunks[i] of the token stream (split.json records them)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for s in range(0, len(self), batch_size):
            yield self.ids[order[s:s + batch_size]]


@dataclass
class TextData:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    seq_len: int
    tokens: int
    files: int
    root: str | None = None       # the --data file or folder
    seed: int | None = None       # the seed that drew the split
    # (file name, start, end) of each document in the token stream; end includes its EOS
    sources: list[tuple[str, int, int]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # listed but empty (whitespace only)
    # --lm-general-text: held-out text that is not the user's, to see forgetting (load_general_text)
    general: TextSplit | None = None

    def summary(self) -> dict[str, Any]:
        out = {"files": self.files, "tokens": self.tokens, "seq_len": self.seq_len,
               "train": len(self.train), "val": len(self.val), "test": len(self.test), "unit": "chunks"}
        if self.general is not None:
            out["general"] = len(self.general)
        return out


# --- reading -------------------------------------------------------------------

def text_files(path: str | Path) -> list[Path]:
    """The files DATA names: itself, or the .txt files under a folder (sorted)."""
    root = Path(path)
    if not root.exists():
        raise BadInput(f"--data {root} does not exist; pass a .txt file or a folder of .txt files")
    if root.is_file():
        return [root]
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                   and not any(p.startswith(".") for p in f.relative_to(root).parts))
    if not files:
        raise BadInput(f"--data {root} has no .txt files; language models need a .txt file or a folder of .txt files")
    return files


def read_text(path: Path) -> str:
    """UTF-8 text of one file; BadInput for binary or undecodable content."""
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise BadInput(f"--data {path} is a binary file, not text; pass UTF-8 .txt files")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(8, len(text) // 100):
        raise BadInput(f"--data {path} is not UTF-8 text ({bad} undecodable bytes); convert it with "
                       f"`iconv -t UTF-8` or pass another file")
    return text


def read_texts(path: str | Path) -> list[str]:
    docs = [t for t in (read_text(f) for f in text_files(path)) if t.strip()]
    if not docs:
        raise BadInput(f"--data {path} holds no text (empty or whitespace only); add some of the user's text")
    return docs


# --- tokenizer ---------------------------------------------------------------

def load_tokenizer(path: str | Path):
    """The tokenizer saved next to a model (tokenizer.json / tokenizer_config.json)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # OSError, ValueError, ... all mean "no usable tokenizer here"
        raise BadInput(f"{path} has no usable tokenizer ({type(e).__name__}); save it next to the model with "
                       "tokenizer.save_pretrained(MODEL_DIR)") from None


def tokenize(docs: list[str], tokenizer) -> torch.Tensor:
    """One id stream: the documents in order, separated by the EOS token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    out: list[int] = []
    for d in docs:
        ids = tokenizer(d, add_special_tokens=False)["input_ids"]
        out.extend(ids)
        if eos is not None:
            out.append(int(eos))
    return torch.tensor(out, dtype=torch.long)


# --- splitting -----------------------------------------------------------------

def split_stream(ids: torch.Tensor, seed: int, seq_len: int = SEQ_LEN, max_val: int = MAX_VAL_CHUNKS,
                 max_test: int = MAX_TEST_CHUNKS) -> tuple[TextSplit, TextSplit, TextSplit, int]:
    """Non-overlapping chunks, shuffled with ``seed``: 10% test, 10% val (each
    at least one chunk, at most max_*), the rest train. Short text shrinks the
    chunk length (never below MIN_SEQ_LEN) so that all three splits exist."""
    n_tok = int(ids.numel())
    if n_tok // seq_len < 3:
        seq_len = n_tok // 3
        if seq_len < MIN_SEQ_LEN:
            raise BadInput(f"--data has only {n_tok} tokens; need at least {3 * MIN_SEQ_LEN} "
                           f"(ideally {30 * SEQ_LEN}+) to hold out a test split; add more of the user's text")
        log.warning("short text: chunks of %d tokens instead of %d", seq_len, SEQ_LEN)
    n = n_tok // seq_len
    chunks = ids[: n * seq_len].reshape(n, seq_len)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max_test, max(1, round(0.1 * n)))
    n_val = min(max_val, max(1, round(0.1 * n)))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return (TextSplit(chunks[train], train.tolist()), TextSplit(chunks[val], val.tolist()),
            TextSplit(chunks[test], test.tolist()), seq_len)


def load_text_data(path: str | Path, tokenizer, seed: int = 0, seq_len: int = SEQ_LEN) -> TextData:
    """DATA (a .txt file or folder of .txt files) -> seeded train/val/test chunks."""
    if tokenizer is None:
        raise BadInput("the model has no tokenizer; save it next to the model with "
                       "tokenizer.save_pretrained(MODEL_DIR)")
    from pocketsize.data import relative_name

    files = text_files(path)
    texts = {relative_name(path, f): read_text(f) for f in files}
    docs = {name: t for name, t in texts.items() if t.strip()}
    if not docs:
        read_texts(path)  # its BadInput names the problem
    # tokenized per document so that each chunk can be traced to its files;
    # the concatenation equals tokenize(all docs)
    pieces = [tokenize([t], tokenizer) for t in docs.values()]
    ids = torch.cat(pieces)
    ends = torch.tensor([p.numel() for p in pieces]).cumsum(0).tolist()
    sources = [(name, end - p.numel(), end) for name, p, end in zip(docs, pieces, ends)]
    train, val, test, seq_len = split_stream(ids, seed, seq_len)
    return TextData(train, val, test, seq_len, int(ids.numel()), len(files), root=str(path), seed=seed,
                    sources=sources, ignored=sorted(set(texts) - set(docs)))


def load_general_text(path: str | Path, tokenizer, seq_len: int, max_chunks: int = MAX_TEST_CHUNKS) -> TextSplit:
    """Text that is not the user's, for measuring forgetting: ``max_chunks``
    non-overlapping chunks of ``seq_len`` tokens spread evenly over the whole
    text. No seed: every run and every seed is judged on the same chunks."""
    try:
        ids = tokenize(read_texts(path), tokenizer)
    except BadInput as e:  # the same checks as --data, said of the flag that named the file
        raise BadInput(str(e).replace("--data", "--lm-general-text")
                       .replace("add some of the user's text", "pass text that is not the user's")) from None
    n = int(ids.numel()) // seq_len
    if n < 1:
        raise BadInput(f"--lm-general-text {path} has {ids.numel()} tokens, fewer than one chunk of {seq_len}; "
                       "pass a longer text")
    pick = torch.linspace(0, n - 1, min(n, max_chunks)).round().long().unique()
    return TextSplit(ids[: n * seq_len].reshape(n, seq_len)[pick], pick.tolist())


# --- metric --------------------------------------------------------------------

def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of predicting ids[:, 1:] from logits[:, :-1], (B, T-1)."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")


@torch.no_grad()
def perplexity(loaded, split: TextSplit, batch_size: int = 8) -> float:
    """exp(mean token NLL) over every predicted token of ``split``."""
    if len(split) == 0:
        return float("nan")
    model = loaded.model
    model.eval()
    total, count = 0.0, 0
    for ids in split.batches(batch_size):
        nll = token_nll(loaded.adapter.logits(model, ids), ids)
        total += float(nll.double().sum())
        count += nll.numel()
    return math.exp(total / count) if count else float("nan")
