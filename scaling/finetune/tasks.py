"""Fine-tuning tasks built from a corpus, so that they run offline on the embedded default.

Text is read only through :func:`scaling.data.corpus.corpus_documents`; every choice is made
by a fixed seed, so the same corpus gives the same file byte for byte. Whitespace runs are
collapsed to one space before anything is cut.

``author`` (classify)  which book a passage comes from. The books are the first
    ``classes`` documents (in corpus order) of at least ``min_chars`` characters whose first
    line reads as a title (3-32 characters, starting with a letter); the label is that title.
    A book's text is one run of characters, so its held-out passages cannot come from other
    documents: each book's last ``test_fraction`` is held out whole, and training passages
    come from the part before it (no passage straddles the cut).
``book`` (instruct)    the same books and split; prompt: a passage, response: its book's title.
``nextsentence`` (instruct)  prompt: the text before a sentence (up to ``context_chars``, cut
    at a word), response: that sentence (10 to ``max_answer_chars`` characters). Held out by
    documents: the corpus's validation documents (:func:`scaling.data.corpus.val_doc_indices`)
    give the test split, the others the training split.

Records are JSON objects with ``split`` (``train`` | ``test``) and ``doc`` (the file name); classify records
hold ``text`` and ``label``, instruct records ``prompt`` and ``response``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import DataConfig
from scaling.data.corpus import Document, corpus_documents, val_doc_indices
from scaling.errors import UsageError

TASKS = ("author", "book", "nextsentence")
SEED = 20240611  # the fixed seed of every task's choices
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_TITLE = re.compile(r"^[A-Za-z][A-Za-z '\-,.;:!?]{2,31}$")


@dataclass(frozen=True)
class TaskSpec:
    """Sizes of a built task (characters and counts)."""

    classes: int = 8
    min_chars: int = 100_000
    passage_chars: int = 96
    train_per_class: int = 512
    test_per_class: int = 64
    test_fraction: float = 0.2
    context_chars: int = 64
    max_answer_chars: int = 40
    per_doc: int = 64


def normalise(text: str) -> str:
    return " ".join(text.split())


def title_of(text: str) -> str | None:
    """The document's first non-empty line as a title, or None when it does not read as one."""
    for line in text.splitlines():
        line = line.strip().strip('*_"').rstrip(";,.:").strip()
        if line:
            return string.capwords(line.lower()) if _TITLE.match(line) else None
    return None


def pick_books(docs: list[Document], spec: TaskSpec) -> list[tuple[str, str, str]]:
    """(document name, title, normalised text) of the books of the author and book tasks."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for doc in docs:
        text = doc.read()
        title = title_of(text)
        if title is None or title in seen or len(text) < spec.min_chars:
            continue
        seen.add(title)
        out.append((doc.name, title, normalise(text)))
        if len(out) == spec.classes:
            break
    if len(out) < 2:
        raise UsageError(f"the corpus has {len(out)} document(s) usable as a book (titled, >= {spec.min_chars} chars)")
    return out


def _passages(text: str, n: int, length: int, rng: np.random.Generator) -> list[str]:
    """``n`` non-overlapping passages of ``length`` characters at random slots of ``text``,
    each starting after a space (a whole word) where one is near."""
    slots = len(text) // length
    if slots < n:
        raise UsageError(f"a book region of {len(text)} characters holds fewer than {n} passages of {length}")
    out = []
    for s in sorted(rng.choice(slots, size=n, replace=False).tolist()):
        start = s * length
        space = text.find(" ", start, start + length // 4)
        start = start if space < 0 else space + 1
        out.append(text[start : start + length].strip())
    return out


def book_records(docs: list[Document], spec: TaskSpec, instruct: bool) -> list[dict]:
    rng = np.random.default_rng(SEED)
    records = []
    for name, title, text in pick_books(docs, spec):
        cut = int(len(text) * (1 - spec.test_fraction))
        for split, region, n in (
            ("train", text[:cut], spec.train_per_class),
            ("test", text[cut:], spec.test_per_class),
        ):
            for p in _passages(region, n, spec.passage_chars, rng):
                rec = {"prompt": p, "response": title} if instruct else {"text": p, "label": title}
                records.append({**rec, "split": split, "doc": Path(name).name})
    return records


def next_sentence_records(docs: list[Document], spec: TaskSpec) -> list[dict]:
    held_out = val_doc_indices(len(docs), 0.1)
    rng = np.random.default_rng(SEED)
    records = []
    for i, doc in enumerate(docs):
        text = normalise(doc.read())
        bounds = [m.end() for m in _SENTENCE_END.finditer(text)]
        candidates = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            answer = text[a:b].strip()
            if 10 <= len(answer) <= spec.max_answer_chars and a >= spec.context_chars:
                candidates.append((a, answer))
        if not candidates:
            continue
        pick = rng.choice(len(candidates), size=min(spec.per_doc, len(candidates)), replace=False)
        for j in sorted(pick.tolist()):
            a, answer = candidates[j]
            context = text[a - spec.context_chars : a].strip()
            space = context.find(" ")
            context = context[space + 1 :] if 0 <= space < len(context) // 3 else context
            split = "test" if i in held_out else "train"
            records.append({"prompt": context, "response": answer, "split": split, "doc": Path(doc.name).name})
    if not any(r["split"] == "test" for r in records) or not any(r["split"] == "train" for r in records):
        raise UsageError("the corpus is too small for the nextsentence task (it needs a train and a test document)")
    return records


def build_task(name: str, corpus: str = "gutenberg", spec: TaskSpec | None = None) -> list[dict]:
    """The records of task ``name`` (one of TASKS) built from ``corpus``."""
    spec = spec or TaskSpec()
    if name not in TASKS:
        raise UsageError(f"--make-task must be one of {', '.join(TASKS)}, got {name!r}")
    docs = corpus_documents(DataConfig(corpus=corpus))
    if name == "nextsentence":
        return next_sentence_records(docs, spec)
    return book_records(docs, spec, instruct=name == "book")


def task_kind(name: str) -> str:
    """The ``task.kind`` a built task trains with."""
    return "classify" if name == "author" else "instruct"
