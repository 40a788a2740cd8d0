"""Text for harvesting: files matching a glob, or, with nothing given, Python's own standard library
(its docstrings, then its source code: English prose and code that every machine with Python has,
offline; 10 M characters in all, some 3 M Gemma-3 tokens, docstrings first).

Both yield paragraphs (blank-line separated blocks, whitespace collapsed) in a fixed order, so a
harvest can resume by counting the texts it has done. `windows` cuts long paragraphs (whole functions
of source code) into pieces that fit a context, so that nothing past the context length is lost.
"""

import ast
import glob
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator

from saejax.errors import DataError

_BLANK_LINES = re.compile(r"\n\s*\n")


def paragraphs(text: str, min_chars: int = 20) -> Iterator[str]:
    """Blank-line separated blocks of `text`, whitespace collapsed, shorter ones skipped."""
    for block in _BLANK_LINES.split(text):
        block = " ".join(block.split())
        if len(block) >= min_chars:
            yield block


def windows(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Each text, cut at whitespace into consecutive pieces of at most `max_chars` characters (a
    single longer word is a piece of its own, cut at `max_chars`)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    for text in texts:
        if len(text) <= max_chars:
            yield text
            continue
        piece = ""
        for word in text.split(" "):
            while len(word) > max_chars:
                if piece:
                    yield piece
                    piece = ""
                yield word[:max_chars]
                word = word[max_chars:]
            if piece and len(piece) + 1 + len(word) > max_chars:
                yield piece
                piece = word
            else:
                piece = f"{piece} {word}" if piece else word
        if piece:
            yield piece


def text_files(pattern: str) -> Iterator[str]:
    """Paragraphs of the UTF-8 files matching `pattern` (sorted; ``**`` allowed)."""
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(f"--text_glob={pattern!r}: no files match")
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from paragraphs(f.read())


def _stdlib_files() -> list[str]:
    """Paths of the standard library's .py files, sorted; tests, idlelib, lib2to3 and site-packages
    left out."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        relative = os.path.relpath(path, root)
        if "site-packages" in relative or relative.startswith(("test", "idlelib", "lib2to3")) or "/test" in relative:
            continue
        files.append(path)
    return files


def stdlib_text() -> Iterator[str]:
    """The standard library's docstrings (`stdlib_docstrings`), then its source files' paragraphs."""
    yield from stdlib_docstrings()
    for path in _stdlib_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from paragraphs(f.read())


def stdlib_docstrings() -> Iterator[str]:
    """Paragraphs of the module, class and function docstrings of the standard library's .py files
    (read with `ast`, nothing imported; test packages and site-packages left out)."""
    for path in _stdlib_files():
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield from paragraphs(doc)
