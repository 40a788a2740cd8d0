"""Labelled texts for probing that install from the package registries, one loader a task:

    texts, labels, names = load("code", per_class=200)        # labels int64 [n]; names[label]

- "code": the programming language of a window of source (`saejax.snippets`: the installed packages'
  files).
- "language": the natural language of a sentence: Django's translations of its own messages
  (django/**/locale/LANG/LC_MESSAGES/django.po; English from the message ids), the same messages in
  English, German, French, Spanish, Italian, Dutch and Portuguese, so that a probe can only read the
  language and not the topic.
- "sentiment": the sentiment of a word: the VADER lexicon (Hutto & Gilbert 2014; vaderSentiment's
  vader_lexicon.txt), words whose mean rating by ten people is at least +1 (positive) or at most -1
  (negative) on its -4..4 scale.

Each loader draws `per_class` texts of each class at random (seeded) and shuffles them together;
DataError names the package to install when its data is missing, or the class that has too few.
"""

import importlib.util
import re
from pathlib import Path

import numpy as np

from saejax import snippets
from saejax.errors import DataError

TRANSLATED = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "nl": "dutch",
              "pt": "portuguese"}
# A translated message is kept from this many words on (leaves out "Jan.", "Yes", "Log out").
MIN_WORDS = 3
MAX_CHARS = 400
# A VADER word is labelled when its mean rating is at least this far from 0 (the scale is -4..4).
SENTIMENT_MARGIN = 1.0
PACKAGES = {"language": "django", "sentiment": "vaderSentiment"}  # the pip package of a task's data
Labelled = tuple[list[str], np.ndarray, list[str]]  # texts [n], labels int64 [n], class names
_PO_STRING = re.compile(r'^(msgid_plural|msgid|msgstr\[\d+\]|msgstr)?\s*"(.*)"\s*$')
_PO_KEYS = {"msgid": "msgid", "msgstr": "msgstr", "msgstr[0]": "msgstr"}


def package_folder(task: str) -> Path:
    """The installed folder of `task`'s package (PACKAGES; its pip and import names are the same), found
    without importing it; DataError naming the package to install."""
    spec = importlib.util.find_spec(PACKAGES[task])
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the {task} probing task reads its texts from the {PACKAGES[task]} package: "
                        f"pip install {PACKAGES[task]}  (or pip install -e \".[probing]\")")
    return Path(next(iter(spec.submodule_search_locations)))


def _unescape(text: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def po_messages(path: Path) -> dict[str, str]:
    """{message id: translation} of a gettext .po file: translated, not fuzzy, singular forms only
    (msgstr or msgstr[0]), the header (empty id) and obsolete (#~) entries left out."""
    messages: dict[str, str] = {}
    entry, fuzzy, key = {}, False, None
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        match = _PO_STRING.match(line)
        if not line.strip():
            if entry.get("msgid") and entry.get("msgstr") and not fuzzy:
                messages[_unescape(entry["msgid"])] = _unescape(entry["msgstr"])
            entry, fuzzy, key = {}, False, None
        elif line.startswith("#,"):
            fuzzy = fuzzy or "fuzzy" in line
        elif match and match.group(1):
            key = _PO_KEYS.get(match.group(1))  # None for msgid_plural and msgstr[1], msgstr[2], ...
            if key:
                entry[key] = match.group(2)
        elif match and key:
            entry[key] += match.group(2)  # a continuation line
    return messages


def _keep(text: str) -> bool:
    return len(text.split()) >= MIN_WORDS and len(text) <= MAX_CHARS and "\n" not in text


def translations(per_class: int = 200, seed: int = 0, root: Path | None = None) -> Labelled:
    """(texts [n], labels int64 [n], language names): `per_class` of Django's messages in each language
    of TRANSLATED, drawn from the messages translated into every one of them (a message may appear in
    several languages, never twice in one)."""
    root = root or package_folder("language")
    tables: dict[str, dict[str, str]] = {code: {} for code in TRANSLATED if code != "en"}
    for code, table in tables.items():
        for path in sorted(root.glob(f"**/locale/{code}/LC_MESSAGES/django.po")):
            table.update(po_messages(path))
    shared = sorted(set.intersection(*(set(t) for t in tables.values())))
    shared = [m for m in shared if _keep(m) and all(_keep(t[m]) and t[m] != m for t in tables.values())]
    if len(shared) < per_class:
        raise DataError(f"Django's translations under {root} give {len(shared)} messages translated into every "
                        f"one of {', '.join(TRANSLATED.values())}, fewer than {per_class}; lower per_class")
    gen = np.random.default_rng(seed)
    texts, labels = [], []
    for label, code in enumerate(TRANSLATED):
        chosen = [shared[i] for i in gen.choice(len(shared), per_class, replace=False)]
        texts += chosen if code == "en" else [tables[code][m] for m in chosen]
        labels += [label] * per_class
    return _shuffled(texts, labels, list(TRANSLATED.values()), gen)


def sentiment_words(per_class: int = 200, seed: int = 0, root: Path | None = None) -> Labelled:
    """(words [n], labels int64 [n], ["negative", "positive"]): `per_class` words of the VADER lexicon
    rated at most -SENTIMENT_MARGIN and as many rated at least +SENTIMENT_MARGIN (letters only)."""
    root = root or package_folder("sentiment")
    path = root / "vader_lexicon.txt"
    rated = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].isalpha():
            try:
                rated.append((fields[0], float(fields[1])))
            except ValueError:
                raise DataError(f"{path}:{number}: the mean rating {fields[1]!r} is not a number") from None
    classes = [[w for w, m in rated if m <= -SENTIMENT_MARGIN], [w for w, m in rated if m >= SENTIMENT_MARGIN]]
    gen = np.random.default_rng(seed)
    texts, labels = [], []
    for label, (name, words) in enumerate(zip(("negative", "positive"), classes)):
        if len(words) < per_class:
            raise DataError(f"{path} rates {len(words)} words {name}, fewer than {per_class}; lower per_class")
        texts += [words[i] for i in gen.choice(len(words), per_class, replace=False)]
        labels += [label] * per_class
    return _shuffled(texts, labels, ["negative", "positive"], gen)


def _shuffled(texts, labels, names, gen) -> Labelled:
    order = gen.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, np.int64)[order], names


TASKS = {"code": lambda per_class, seed: snippets.snippets(per_language=per_class, seed=seed),
         "language": translations, "sentiment": sentiment_words}
DESCRIPTIONS = {"code": "language of a source snippet", "language": "natural language of a sentence (Django's "
                "translations)", "sentiment": "sentiment of a word (VADER lexicon)"}


def load(task: str, per_class: int = 200, seed: int = 0) -> Labelled:
    """(texts [n], labels int64 [n], class names) of one of TASKS; DataError on an unknown task."""
    if task not in TASKS:
        raise DataError(f"probing task {task!r}: expected one of {', '.join(TASKS)}")
    return TASKS[task](per_class, seed)


def available(task: str) -> bool:
    """Whether `task`'s data is installed ("code" always is; the others need their PACKAGES)."""
    return task not in PACKAGES or importlib.util.find_spec(PACKAGES[task]) is not None
