"""Labelled texts for probing that install with the package registries: windows of source files of
several languages, found in the installed Python packages (site-packages).

    texts, labels, names = snippets(per_language=200)    # labels int [n]; names[label] = "python", ...

A language is kept when its files give at least `per_language` windows; each window is `lines`
consecutive non-blank lines of one file (cut to `max_chars`), files and windows drawn at random
(seeded), at most `per_file` windows a file so that no one file dominates. Which files exist depends on
the environment (e.g. C headers come with jaxlib and torch), so the names kept say what was found.
"""

import site
from pathlib import Path

import numpy as np

from saejax.errors import DataError

LANGUAGES = {"python": (".py",), "c": (".h", ".c", ".cc", ".cpp"), "restructuredtext": (".rst",),
             "json": (".json",), "javascript": (".js",), "css": (".css",), "yaml": (".yaml", ".yml")}


def package_roots() -> list[Path]:
    """The folders installed packages live in (site-packages)."""
    return [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]


def _windows(path: Path, lines: int, max_chars: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    kept = [line for line in text.splitlines() if line.strip()]
    return ["\n".join(kept[i:i + lines])[:max_chars] for i in range(0, len(kept) - lines + 1, lines)]


def snippets(per_language: int = 200, lines: int = 8, max_chars: int = 400, per_file: int = 4, seed: int = 0,
             roots: list[Path] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts [n], labels int64 [n], the languages' names): `per_language` windows of each language whose
    files under `roots` (default: `package_roots`) give enough; DataError when fewer than two do."""
    gen = np.random.default_rng(seed)
    files = {name: sorted(p for root in (roots or package_roots()) for suffix in suffixes
                          for p in root.rglob(f"*{suffix}") if p.is_file())
             for name, suffixes in LANGUAGES.items()}
    texts, labels, names = [], [], []
    for name, paths in files.items():
        found: list[str] = []
        for i in gen.permutation(len(paths)):
            windows = _windows(paths[i], lines, max_chars)
            found += [windows[j] for j in gen.permutation(len(windows))[:per_file]]
            if len(found) >= per_language:
                break
        if len(found) >= per_language:
            texts += found[:per_language]
            labels += [len(names)] * per_language
            names.append(name)
    if len(names) < 2:
        raise DataError(f"the installed packages give {per_language} windows of fewer than two languages "
                        f"({', '.join(names) or 'none'}); lower per_language")
    order = gen.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, np.int64)[order], names
