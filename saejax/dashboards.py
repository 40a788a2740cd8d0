"""Feature dashboards: one static HTML page per latent and an index, no JavaScript, no network.

    dashboards.write(model, sae, params, texts, layer=3, site="resid_post", out_dir=DIR / "dashboards")

For each latent (the `n_latents` most frequently firing, or the ones asked for) a page shows its
firing density, a histogram of its non-zero activations (log10, inline SVG), its top-activating
token contexts with each token shaded by the latent's activation and the top token outlined, and,
for causal LMs, the tokens its decoder direction promotes most through the unembedding (logit
lens). The index lists the latents with their density and strongest activation.
"""

import html
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

import jax
import numpy as np

from saejax.models.hooks import check_points
from saejax.models.loading import padded_batch
from saejax.splice import check_width

HIST_EDGES = np.linspace(-3.0, 3.0, 31)  # log10 activation bins


class _Top:
    """The n largest activations per latent with where they occurred (text, position)."""

    def __init__(self, d_sae: int, n: int) -> None:
        self.values = np.full((d_sae, n), -np.inf, np.float32)
        self.where = np.zeros((d_sae, n, 2), np.int64)

    def add(self, codes: np.ndarray, where: np.ndarray) -> None:
        """codes [m, d_sae] of m tokens at where [m, 2] (text index, position)."""
        n = self.values.shape[1]
        take = min(n, codes.shape[0])
        best = np.argpartition(-codes, take - 1, axis=0)[:take].T  # [d_sae, take]
        values = np.concatenate([self.values, np.take_along_axis(codes.T, best, 1)], 1)
        places = np.concatenate([self.where, where[best]], 1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, :n]
        self.values = np.take_along_axis(values, keep, 1)
        self.where = np.take_along_axis(places, keep[..., None], 1)


def collect(model, sae, params, texts: Sequence[str], *, layer: int, site: str, context_length: int = 128,
            batch_size: int = 16, top_n: int = 8, encode=None) -> dict:
    """Activation statistics of every latent over `texts`: density [d_sae], log10 histograms
    [d_sae, bins], top activations and where they occurred, and the texts' tokens. `encode`: an
    `_encoder` to reuse (default: a new one)."""
    encode = encode or _encoder(model, sae, params, layer, site)
    top = _Top(sae.d_sae, top_n)
    fired = np.zeros(sae.d_sae, np.int64)
    hist = np.zeros((sae.d_sae, len(HIST_EDGES) - 1), np.int64)
    tokens, n_tokens = [], 0
    for start in range(0, len(texts), batch_size):
        ids, mask, keep = padded_batch(model, texts[start:start + batch_size], context_length)
        codes = encode(ids, mask)[keep]  # [kept tokens, d_sae]
        rows, cols = np.nonzero(keep)
        top.add(codes, np.stack([rows + start, cols], 1))
        active = codes > 0
        fired += active.sum(0)
        latent, _ = np.nonzero(active.T)
        bins = np.clip(np.digitize(np.log10(codes.T[active.T]), HIST_EDGES) - 1, 0, len(HIST_EDGES) - 2)
        np.add.at(hist, (latent, bins), 1)
        n_tokens += int(keep.sum())
        tokens += [model.token_strings(row[:int(m.sum())]) for row, m in zip(ids, mask)]  # right padding dropped
    return {"density": fired / max(n_tokens, 1), "hist": hist, "top_values": top.values, "top_where": top.where,
            "tokens": tokens, "n_tokens": n_tokens}


def _encoder(model, sae, params, layer: int, site: str):
    """(ids, mask) [B, T] -> the SAE's codes at (layer, site), [B, T, d_sae] (jitted once; the model's
    and the SAE's params are arguments, not baked-in constants)."""
    check_points([(layer, site)], model.n_layers)
    check_width(sae, model, layer, site)
    jitted = jax.jit(lambda model_params, sae_params, ids, mask: sae.encode(
        sae_params, model.apply(model_params, ids, mask, capture=[(layer, site)])[1][(layer, site)].reshape(
            -1, model.d_model)).reshape(*ids.shape, -1))
    return lambda ids, mask: np.asarray(jitted(model.params, params, ids, mask))


def _clean(token: str) -> str:
    return html.escape(token)


def _context_html(tokens: list[str], position: int, activations: dict[int, float], peak: float, window: int) -> str:
    """Tokens around `position`, shaded by activation (relative to `peak`), the position outlined."""
    parts = []
    for i in range(max(0, position - window), min(len(tokens), position + window + 1)):
        strength = min(1.0, activations.get(i, 0.0) / peak) if peak > 0 else 0.0
        style = f"background: rgba(255, 120, 0, {strength:.2f});"
        if i == position:
            style += " outline: 1.5px solid #a00;"
        parts.append(f'<span class="tok" style="{style}" title="{activations.get(i, 0.0):.3g}">{_clean(tokens[i])}</span>')
    return "".join(parts)


def _histogram_svg(counts: np.ndarray) -> str:
    width, height = 300, 80
    bar = width / len(counts)
    top = max(int(counts.max()), 1)
    bars = "".join(f'<rect x="{i * bar:.1f}" y="{height - height * c / top:.1f}" width="{bar - 1:.1f}" '
                   f'height="{height * c / top:.1f}" fill="#d60"/>' for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height + 14}" role="img"><g>{bars}</g>'
            f'<text x="0" y="{height + 12}" font-size="10">1e{HIST_EDGES[0]:.0f}</text>'
            f'<text x="{width - 24}" y="{height + 12}" font-size="10">1e{HIST_EDGES[-1]:.0f}</text></svg>')


_STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:60em} .tok{white-space:pre;border-radius:2px} "
          "td,th{padding:2px 8px;text-align:left} .ctx{font-family:monospace;margin:3px 0}")


def write(model, sae, params, texts: Iterable[str], *, layer: int, site: str, out_dir: str | Path,
          n_latents: int = 32, latents: Sequence[int] | None = None, max_texts: int = 300, context_length: int = 128,
          top_n: int = 8, window: int = 8, absorption: dict | None = None, probing: Sequence[dict] = ()) -> Path:
    """Write the dashboards (module docstring) into `out_dir`; returns the index page's path. `absorption`:
    a first-letter absorption report (`saejax.first_letter.measure_sae`) to show on the index, its main
    latents marked on their pages; `probing`: sparse-probing reports (`saejax.text_probing.task_report`)
    to show on the index, each class's probe latents marked on their pages."""
    texts = list(islice(texts, max_texts))
    encode = _encoder(model, sae, params, layer, site)
    stats = collect(model, sae, params, texts, layer=layer, site=site, context_length=context_length, top_n=top_n,
                    encode=encode)
    chosen = list(latents) if latents is not None else list(np.argsort(-stats["density"], kind="stable")[:n_latents])
    letters_of = {}  # latent -> the letters it is a main latent of
    for letter, found in ((absorption or {}).get("letters") or {}).items():
        for latent in found["main_latents"]:
            letters_of.setdefault(int(latent), []).append(letter.upper())
    classes_of = {}  # latent -> the probing classes whose best latent it is
    for report in probing:
        for name, found in report["classes"].items():
            if found.get("latents"):
                classes_of.setdefault(int(found["latents"][0]), []).append(f"{report['task']}: {name}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every position's activation of the chosen latents in the texts of their top contexts
    needed = sorted({int(t) for latent in chosen for t, _ in stats["top_where"][latent]})
    shading = {}
    for start in range(0, len(needed), 16):
        part = needed[start:start + 16]
        ids, mask, keep = padded_batch(model, [texts[t] for t in part], context_length)
        codes = (encode(ids, mask) * keep[..., None])[..., chosen]  # special and padding positions zeroed
        shading.update({t: codes[i] for i, t in enumerate(part)})
    column = {latent: j for j, latent in enumerate(chosen)}
    rows = []
    for latent in chosen:
        values, places = stats["top_values"][latent], stats["top_where"][latent]
        peak = float(values[0]) if np.isfinite(values[0]) else 0.0
        contexts = []
        for value, (text, position) in zip(values, places):
            if not np.isfinite(value) or value <= 0:
                break
            row = shading[int(text)][:, column[latent]]
            activations = {i: float(a) for i, a in enumerate(row) if a > 0}
            contexts.append(f'<div class="ctx">{value:.3g} &nbsp; '
                            f'{_context_html(stats["tokens"][text], int(position), activations, peak, window)}</div>')
        promoted = ""
        if model.unembed is not None and "W_dec" in params:
            logits = model.unembed(np.asarray(params["W_dec"][latent]))
            best = np.argsort(-logits)[:10]
            promoted = ("<h3>Promoted tokens (logit lens)</h3><p>" + ", ".join(
                f"<code>{_clean(t)}</code> {logits[i]:.2f}" for i, t in zip(best, model.token_strings(best))) + "</p>")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>latent {latent}</title>"
                f"<style>{_STYLE}</style></head><body><p><a href='index.html'>index</a></p>"
                f"<h1>Latent {latent}</h1><p>{model.name}, layer {layer} {site}: fires on "
                f"{stats['density'][latent]:.3%} of {stats['n_tokens']:,} tokens; max activation {peak:.3g}"
                + (f"; main latent of the first letter {', '.join(letters_of[latent])}" if latent in letters_of
                   else "")
                + (f"; best probe latent of {', '.join(classes_of[latent])}" if latent in classes_of else "") + "</p>"
                f"<h3>Activation histogram (non-zero, log10)</h3>{_histogram_svg(stats['hist'][latent])}"
                f"<h3>Top-activating contexts</h3>{''.join(contexts) or '<p>never fired on these texts</p>'}"
                f"{promoted}</body></html>")
        (out / f"latent_{latent:06d}.html").write_text(page, encoding="utf-8")
        rows.append(f"<tr><td><a href='latent_{latent:06d}.html'>{latent}</a></td>"
                    f"<td>{stats['density'][latent]:.3%}</td><td>{peak:.3g}</td></tr>")
    index = (f"<!doctype html><html><head><meta charset='utf-8'><title>SAE dashboards</title><style>{_STYLE}</style>"
             f"</head><body><h1>SAE on {model.name}, layer {layer} {site}</h1><p>d_sae {sae.d_sae}; "
             f"{len(texts)} texts, {stats['n_tokens']:,} tokens; {int(np.sum(stats['density'] == 0))} latents never "
             f"fired.</p><table><tr><th>latent</th><th>density</th><th>max</th></tr>{''.join(rows)}</table>"
             f"{_absorption_html(absorption, set(chosen))}{_probing_html(probing, set(chosen))}</body></html>")
    path = out / "index.html"
    path.write_text(index, encoding="utf-8")
    return path


def _latent_link(latent: int, pages: set[int]) -> str:
    return f"<a href='latent_{latent:06d}.html'>{latent}</a>" if latent in pages else str(latent)


def _probing_html(reports: Sequence[dict], pages: set[int]) -> str:
    """The index's sparse-probing section ("" without reports): per task, each class's dense and k-sparse
    probe accuracy and the latents of its largest k (the first five, linked when they have a page)."""
    parts = []
    for report in reports:
        ks = list(report["sparse_accuracy"])
        head = "".join(f"<th>k={k}</th>" for k in ks)
        rows = "".join(f"<tr><td>{name}</td><td>{found['dense']:.3f}</td>"
                       + "".join(f"<td>{found['sparse'][k]:.3f}</td>" for k in ks)
                       + f"<td>{', '.join(_latent_link(int(i), pages) for i in found.get('latents', [])[:5])}</td></tr>"
                       for name, found in report["classes"].items())
        mean = "".join(f"<td>{report['sparse_accuracy'][k]:.3f}</td>" for k in ks)
        parts.append(f"<h3>{report['description']}</h3><p>{report['texts']} texts; accuracy on the held-out half, "
                     f"one class against the rest (balanced)</p><table><tr><th>class</th><th>dense</th>{head}"
                     f"<th>latents</th></tr>{rows}<tr><td><b>mean</b></td><td>{report['dense_accuracy']:.3f}</td>"
                     f"{mean}<td></td></tr></table>")
    return "<h2>Sparse probing</h2>" + "".join(parts) if parts else ""


def _absorption_html(report: dict | None, pages: set[int]) -> str:
    """The index's first-letter absorption section ("" without a report): the means, then a row per
    letter with its main latents (linked when they have a page)."""
    if not report:
        return ""
    rows = "".join(f"<tr><td>{letter.upper()}</td><td>{found['rate']:.3f}</td><td>{found['fraction']:.3f}</td>"
                   f"<td>{found['probe_f1']:.2f}</td>"
                   f"<td>{', '.join(_latent_link(int(i), pages) for i in found['main_latents'])}</td></tr>"
                   for letter, found in sorted(report["letters"].items()))
    return (f"<h2>Feature absorption (first letter)</h2><p>{report['words']} words, {report['scored']} letters with a "
            f"probe F1 of at least 0.6: absorption rate {report['absorption_rate']:.3f}, mean absorption fraction "
            f"{report['absorption_fraction']:.3f}.</p><table><tr><th>letter</th><th>rate</th><th>fraction</th>"
            f"<th>probe F1</th><th>main latents</th></tr>{rows}</table>")
