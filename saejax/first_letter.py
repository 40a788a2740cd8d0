"""The first-letter task (Chanin et al. 2024, as SAEBench builds it) on a text model: which letter a
word starts with, read from the model's activation at the word in an in-context spelling prompt, and
the feature absorption of an SAE's latents for each letter (`saejax.absorption`).

    task = build(model, n_words=2000)                  # words of the vocabulary, prompts, positions
    x = activations(model, task, layer=6, site="resid_post")      # float32 [n, d_model]
    report = absorption_by_letter(x, task.letters, z, decoder)     # z = the SAE's latents of x
    report = measure_sae(model, 6, "resid_post", encode, decoder)  # all of it; save(report, folder)

Words are the tokenizer's single tokens that read as a space and 2+ ASCII letters (" cat"), drawn
at random (seeded). Each word's prompt lists `examples` other words with their first letter, then
the word itself::

     tape: T
     moon: M
     ...
     cat:

and the activation is read at the word's token (a word its prompt does not keep as that one token is
dropped). A letter is scored when its ground-truth probe reaches `MIN_PROBE_F1` on the eval words
(SAEBench's rule); the report's means are over the scored letters.
"""

import json
import string
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saejax import absorption, harvest, plots
from saejax.models.loading import padded_batch

LETTERS = string.ascii_lowercase
MIN_PROBE_F1 = 0.6
MIN_POSITIVES = 8  # eval words a letter needs to be measured at all


class Task(NamedTuple):
    """The first-letter task's rows: words [n], their prompts [n], the index of the word's token in its
    prompt's tokens [n], and the first letter of each, int64 [n] (0 = a)."""

    words: list[str]
    prompts: list[str]
    positions: np.ndarray
    letters: np.ndarray


def vocabulary_words(model) -> list[str]:
    """The words (lowercase, without the space) of every token of `model`'s tokenizer that reads as a
    space and 2+ ASCII letters."""
    ids = range(model.vocab_size)
    words = []
    for token in model.token_strings(list(ids)):
        word = token[1:]
        if token.startswith(" ") and len(word) >= 2 and word.isascii() and word.isalpha():
            words.append(word.lower())
    return sorted(set(words))


def prompt_of(word: str, examples: list[str]) -> str:
    """The in-context spelling prompt of `word` after `examples` (module docstring)."""
    return "\n".join([f" {e}: {e[0].upper()}" for e in examples] + [f" {word}:"])


def build(model, n_words: int = 2000, examples: int = 4, seed: int = 0, context_length: int = 64) -> Task:
    """`n_words` words of the vocabulary (seeded draw) with their prompts and the position of each word's
    token in its prompt; words whose prompt does not keep them as one token are dropped."""
    vocabulary = vocabulary_words(model)
    gen = np.random.default_rng(seed)
    words = [vocabulary[i] for i in gen.permutation(len(vocabulary))[:n_words]]
    prompts = [prompt_of(w, [vocabulary[i] for i in gen.choice(len(vocabulary), examples, replace=False)])
               for w in words]
    kept, positions = [], []
    for start in range(0, len(words), 256):
        ids, _ = model.tokenize(prompts[start:start + 256], context_length)
        word_ids, _ = model.tokenize([f" {w}" for w in words[start:start + 256]], 8)
        for i, (row, word_row) in enumerate(zip(ids, word_ids)):
            word_token = [t for t in word_row[~model.special(word_row)] if t != 0]
            where = np.flatnonzero(row == word_token[0]) if len(word_token) == 1 else []
            if len(where):
                kept.append(start + i)
                positions.append(int(where[-1]))
    return Task([words[i] for i in kept], [prompts[i] for i in kept], np.asarray(positions, np.int64),
                np.asarray([LETTERS.index(words[i][0]) for i in kept], np.int64))


def activations(model, task: Task, layer: int, site: str, batch_size: int = 32, context_length: int = 64) -> np.ndarray:
    """float32 [n, d_model]: the activation at (layer, site) of each word's token in its prompt."""
    capture = harvest.capture_at(model, layer, site)
    rows = []
    for start in range(0, len(task.prompts), batch_size):
        ids, mask, _ = padded_batch(model, task.prompts[start:start + batch_size], context_length)
        captured = np.asarray(capture(model.params, ids, mask), np.float32)
        rows.append(captured[np.arange(ids.shape[0]), task.positions[start:start + batch_size]])
    return np.concatenate(rows) if rows else np.zeros((0, model.d_model), np.float32)


def absorption_by_letter(x: np.ndarray, letters: np.ndarray, z: np.ndarray, decoder: np.ndarray,
                         fit_share: float = 0.5) -> dict:
    """Feature absorption of each letter (`saejax.absorption.measure`, the words shuffled once, seeded)
    and the means over the letters whose probe reaches MIN_PROBE_F1: {"letters": {letter: {"rate",
    "fraction", "main_latents", "probe_f1", "true_positives", "sparse_probe_f1"}}, "absorption_rate",
    "absorption_fraction", "main_latents", "sparse_probe_f1" (mean over the scored letters, per k),
    "scored": the count}."""
    order = np.random.default_rng(0).permutation(len(letters))
    x, z, letters = np.asarray(x)[order], np.asarray(z)[order], np.asarray(letters)[order]
    cut = int(fit_share * len(letters))
    per_letter = {}
    for index, letter in enumerate(LETTERS):
        labels = letters == index
        if labels[cut:].sum() < MIN_POSITIVES or labels[:cut].sum() < MIN_POSITIVES:
            continue
        found = absorption.measure(x, labels, z, decoder, fit_share=fit_share)
        per_letter[letter] = {"rate": found.rate, "fraction": found.fraction,
                              "main_latents": [int(i) for i in found.main_latents], "probe_f1": found.probe_f1,
                              "true_positives": found.true_positives, "sparse_probe_f1": found.f1s}
    scored = [v for v in per_letter.values() if v["probe_f1"] >= MIN_PROBE_F1]

    def mean(key):
        return float(np.mean([v[key] for v in scored])) if scored else float("nan")

    return {"letters": per_letter, "scored": len(scored), "absorption_rate": mean("rate"),
            "absorption_fraction": mean("fraction"),
            "main_latents": float(np.mean([len(v["main_latents"]) for v in scored])) if scored else float("nan"),
            "sparse_probe_f1": [float(np.mean([v["sparse_probe_f1"][k] for v in scored])) if scored else float("nan")
                                for k in range(len(scored[0]["sparse_probe_f1"]) if scored else 0)]}


def measure_sae(model, layer: int, site: str, encode, decoder: np.ndarray, n_words: int = 2000) -> dict:
    """`absorption_by_letter` of an SAE at (layer, site) of `model`, from `build` to the end: `encode`
    maps activations [n, d_model] to latents [n, F], `decoder` [F, d_model] its rows (both on raw
    activations). Adds "words", "layer", "site" and "seconds"."""
    start = time.perf_counter()
    task = build(model, n_words=n_words)
    x = activations(model, task, layer, site)
    report = absorption_by_letter(x, task.letters, np.asarray(encode(x)), np.asarray(decoder))
    return {"words": len(task.words), "layer": layer, "site": site, **report,
            "seconds": round(time.perf_counter() - start, 1)}


def save(report: dict, folder: str | Path) -> Path:
    """`report` as folder/first_letter.json, with its per-letter plot first_letter.png; returns the JSON's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "first_letter.json").write_text(json.dumps(report, indent=1) + "\n")
    plots.plot_absorption(report["letters"], folder / "first_letter.png")
    return folder / "first_letter.json"


def summary(report: dict) -> str:
    """One line of a report's means."""
    f1 = report["sparse_probe_f1"] or [float("nan")] * 5
    return (f"{report['words']} words, {report['scored']} letters scored: absorption rate "
            f"{report['absorption_rate']:.3f}, fraction {report['absorption_fraction']:.3f}, main latents "
            f"{report['main_latents']:.2f}; k-sparse probe F1 k=1 {f1[0]:.3f}, k=2 {f1[1]:.3f}, k=5 {f1[4]:.3f}; "
            f"{report['seconds']} s")


def load_report(folder: str | Path) -> dict | None:
    """The report `save` wrote into `folder`, or None when there is none."""
    path = Path(folder) / "first_letter.json"
    return json.loads(path.read_text()) if path.is_file() else None
