"""Pretraining text for tiny models, gathered offline at build time.

English prose that every Python install has: the docstrings of the standard library. Modules
with Python source are read with `ast` rather than imported, so nothing runs (no browser from
`antigravity`, no poem from `this`, no Tk window); only built-in and extension modules, which
have no source, are imported to read their docstrings. On top of that come chats made from those
docstrings, rendered through the model's chat template, so the model has seen its chat markers.
`split_corpus` holds some docstrings out (never trained on, and neither are their chats), so a
model's next-token accuracy can be measured on text of its own domain that it has not seen.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from slmforge.models.chat import ChatFormat, render

# Imported or parsed modules whose docs are GUI/demo text, or whose import has side effects.
SKIP_MODULES = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "pydoc_data",
    "lib2to3",
    "ensurepip",
    "venv",
    "msilib",
    "winreg",
    "winsound",
    "msvcrt",
    "nturl2path",
}
# sys's functions include hooks that other libraries replace (typer sets sys.excepthook), so
# they would make the corpus depend on the process; its module docstring describes them all.
_MODULE_DOC_ONLY = {"sys"}
DEFAULT_MAX_CHARS = 1_500_000
_MIN_DOC_CHARS = 40  # one-liners like "Return self." teach little


def _public(name: str) -> bool:
    return not name.startswith("_") and not name.startswith("xx")


def _source_files(spec: importlib.machinery.ModuleSpec) -> list[Path]:
    """A module's .py file, or every .py file of a package (sorted, public names only)."""
    origin = Path(spec.origin or "")
    if origin.suffix != ".py":
        return []
    if spec.submodule_search_locations is None:
        return [origin]
    files = sorted(origin.parent.rglob("*.py"))
    return [
        f
        for f in files
        if all(_public(p) or p == "__init__.py" for p in f.relative_to(origin.parent).parts)
    ]


def _docs_from_source(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    nodes = [
        tree,
        *(
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and _public(n.name)
        ),
    ]
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc:
            yield doc


def _docs_from_import(name: str) -> Iterator[str]:
    """Docstrings of a built-in or extension module and its public classes and functions."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # any failure means "not available here": skip the module
        return
    yield inspect.getdoc(module) or ""
    if name in _MODULE_DOC_ONLY:
        return
    for attr in sorted(vars(module)):
        obj = getattr(module, attr, None)
        # Only what the module defines: hooks such as sys.excepthook may have been replaced by
        # other libraries (typer does), which would make the corpus depend on the process.
        defined_here = getattr(obj, "__module__", None) == name
        if _public(attr) and defined_here and (inspect.isclass(obj) or inspect.isroutine(obj)):
            yield inspect.getdoc(obj) or ""


def _module_docs(name: str) -> Iterator[str]:
    if name in sys.builtin_module_names:
        yield from _docs_from_import(name)
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    files = _source_files(spec)
    if files:
        for path in files:
            yield from _docs_from_source(path)
    elif spec.origin and spec.origin not in ("frozen", "built-in"):
        yield from _docs_from_import(name)


@functools.cache
def stdlib_docstrings(max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, ...]:
    """Distinct docstrings of the standard library, in a stable order, up to `max_chars`.

    Cached: parsing the library takes seconds, and building several models reuses it."""
    seen: set[str] = set()
    docs: list[str] = []
    total = 0
    for name in sorted(sys.stdlib_module_names):
        if not _public(name) or name in SKIP_MODULES:
            continue
        for doc in _module_docs(name):
            doc = doc.strip()
            if len(doc) < _MIN_DOC_CHARS or doc in seen:
                continue
            seen.add(doc)
            docs.append(doc)
            total += len(doc)
            if total >= max_chars:
                return tuple(docs)
    return tuple(docs)


_CHAT_DOCS = 600  # enough chats for the model to learn its template's markers


def summary_chats(docs: tuple[str, ...], limit: int | None = _CHAT_DOCS) -> list[list[dict]]:
    """Chats made from docstrings (summarize the body -> its summary line), as messages.

    They teach the chat markers and turn-taking without showing the model any of the data it
    will be fine-tuned on later, so fine-tuning in tests and the demo has something to learn.
    """
    chats = []
    for doc in docs:
        summary, _, body = doc.partition("\n")
        body = body.strip()
        if len(body) < _MIN_DOC_CHARS or len(summary) < 20:
            continue
        chats.append(
            [
                {"role": "user", "content": f"Summarize in one line: {body[:400]}"},
                {"role": "assistant", "content": summary.strip()},
            ]
        )
        if len(chats) == limit:
            break
    return chats


def chat_documents(fmt: ChatFormat, docs: tuple[str, ...]) -> list[str]:
    """`summary_chats` of `docs` rendered in the chat format."""
    return [render(fmt, messages) for messages in summary_chats(docs)]


def build_corpus(fmt: ChatFormat, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """The documents a tiny model is pretrained on (and its tokenizer trained on)."""
    docs = stdlib_docstrings(max_chars)
    return [*docs, *chat_documents(fmt, docs)]


def is_heldout(doc: str, every: int) -> bool:
    """Whether `doc` is one of the 1-in-`every` held-out documents: chosen by the sha256 of its
    body (the text after its summary line, or all of it when it has one line), so the split
    does not depend on the order or number of the other documents, and docstrings that repeat
    one body under different summaries (overrides of a documented method) fall on one side."""
    body = doc.partition("\n")[2].strip() or doc
    return int.from_bytes(hashlib.sha256(body.encode("utf-8")).digest()[:8], "big") % every == 0


def split_corpus(
    fmt: ChatFormat, every: int, max_chars: int = DEFAULT_MAX_CHARS
) -> tuple[list[str], list[str]]:
    """`build_corpus` split into (training, held-out) documents: about 1 in `every` docstrings
    held out, each with the chat made from it, so no held-out text reaches training."""
    docs = stdlib_docstrings(max_chars)
    train = tuple(doc for doc in docs if not is_heldout(doc, every))
    heldout = tuple(doc for doc in docs if is_heldout(doc, every))
    return [*train, *chat_documents(fmt, train)], [*heldout, *chat_documents(fmt, heldout)]
