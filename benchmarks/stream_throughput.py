"""Streamed activations (``data.source=model``) against Hugging Face transformers, in kept tokens per second.

    python -m benchmarks.stream_throughput --model=minilm --texts=512 --repeats=3
    python -m benchmarks.stream_throughput --model=gemma3-270m --texts=256 --repeats=3

Both sides turn the same texts (the first ``--texts`` training texts of the default corpus,
`saejax.harvest.run_texts` with an empty ``model.text_glob``) into the rows at (``--layer``,
resid_post), ``--context_length`` tokens a context, ``--batch`` contexts a forward, grouped as harvesting
groups them (length-sorted within chunks of `saejax.harvest.CHUNK_BATCHES` batches), and count only
the kept tokens (not padding, not [CLS]/[SEP]/BOS):

- saejax: `saejax.data.stream.ModelSource.rows_of`, what a fill of the stream runs: tokenise, pad to
  a length bucket (`saejax.models.loading.bucket_length`), the jitted forward
  (`saejax.harvest.capture_at`; layers past the hook point are never computed), the kept rows copied
  out as float32.
- torch (transformers, CPU, ``torch.no_grad``, the model without its LM head): the same ids (the
  model's own tokenizer, padded to the longest text of the batch), block ``layer``'s output read by a
  forward hook, the kept rows copied out as float32; once with every block (what a plain forward costs)
  and once with the blocks after the hook point removed (what a stop-at-layer harness such as SAELens'
  does).

Each side's time is the median of ``--repeats`` passes over all the texts after one warm-up pass
(which compiles saejax's buckets). The two sides' rows are compared (largest difference relative to
the largest value) to show they compute the same thing.

Next to them, a TopK train step (``--step_d_sae`` latents, ``--step_batch`` rows, k = 32) on rows of
the model's width: the rows per second it consumes, against the rows per second saejax's stream
produces, and the share of a step's time (generation + step, run one after the other) that generating
its batch takes. Writes stream_throughput_MODEL.json and .md under ``--out``.
"""

import os
import statistics
import time
from itertools import islice
from pathlib import Path

import numpy as np
from absl import app, flags

from benchmarks import time_steps, train_setup, write_results
from saejax import harvest
from saejax.data.stream import ModelSource
from saejax.errors import ConfigError
from saejax.models.loading import PACKAGED, load_text_model, resolve_path


def define_flags() -> None:
    """The command line's flags, defined only when this file runs as a program: other benchmarks imported
    beside it in one process (the tests) define flags of the same names."""
    flags.DEFINE_string("model", "minilm", "minilm, gemma3-270m, or a BERT/Gemma-3 directory or .gguf file")
    flags.DEFINE_integer("texts", 512, "texts of the default corpus to run through both models")
    flags.DEFINE_integer("repeats", 3, "timed passes over the texts (median reported), after one warm-up pass")
    flags.DEFINE_integer("layer", -1, "hook layer (resid_post); -1: n_layers // 2")
    flags.DEFINE_integer("context_length", 128, "tokens per context")
    flags.DEFINE_integer("batch", 32, "contexts per forward")
    flags.DEFINE_integer("step_d_sae", 3072, "latents of the TopK step compared against")
    flags.DEFINE_integer("step_batch", 4096, "rows per TopK step")
    flags.DEFINE_integer("step_repeats", 5, "timed TopK steps (median)")
    flags.DEFINE_string("out", "benchmarks/results/latest/stream_throughput", "output folder")


def corpus(n: int, context_length: int) -> list[str]:
    """The first `n` training texts of the default corpus (the stdlib's docs, harvest's windows)."""
    texts = list(islice(harvest.corpus_texts("", context_length, held_out=False), n))
    if len(texts) < n:
        raise ConfigError(f"--texts={n}: the default corpus has only {len(texts)} training texts")
    return texts


def harvest_order(model, texts: list[str], context_length: int, batch: int) -> list[list[str]]:
    """`texts` in the batches `saejax.harvest.chunk_rows` runs them in: chunks of batch × CHUNK_BATCHES
    texts, each sorted by token count (stable), cut into batches of `batch`."""
    chunk = batch * harvest.CHUNK_BATCHES
    batches = []
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        order = np.argsort(model.tokenize(part, context_length)[1].sum(1), kind="stable")
        batches += [[part[i] for i in order[b:b + batch]] for b in range(0, len(part), batch)]
    return batches


def hf_model(spec: str, kind: str):
    """The transformers model of the same weights, float32, eval mode, without an LM head (the rows need
    none): BertModel for a BERT directory, the text model inside AutoModelForCausalLM (the GGUF
    dequantised) for Gemma 3."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    path = resolve_path(spec)
    if kind == "bert":
        return transformers.BertModel.from_pretrained(path).eval()
    if path.suffix == ".gguf":
        causal = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                   dtype=torch.float32)
    else:
        causal = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return causal.model.eval()


def blocks_of(reference):
    """(owner, attribute) of the ModuleList of transformer blocks of a BertModel or a decoder text model."""
    return (reference.encoder, "layer") if hasattr(reference, "encoder") else (reference, "layers")


def truncated(reference, layer: int):
    """`reference` with the blocks after `layer` removed (in place; returns a function that puts them back)."""
    import torch  # noqa: PLC0415

    owner, name = blocks_of(reference)
    blocks = getattr(owner, name)
    setattr(owner, name, torch.nn.ModuleList(list(blocks)[:layer + 1]))
    return lambda: setattr(owner, name, blocks)


def torch_rows(reference, model, batches: list[list[str]], layer: int, context_length: int) -> np.ndarray:
    """float32 [kept tokens, d_model]: the output of block `layer` (resid_post, read by a forward hook) for
    every batch (tokenised by `model`'s tokenizer, padded to the batch's longest text), kept tokens only."""
    import torch  # noqa: PLC0415

    owner, name = blocks_of(reference)
    captured = []
    handle = getattr(owner, name)[layer].register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
    parts = []
    try:
        with torch.no_grad():
            for texts in batches:
                ids, mask = model.tokenize(texts, context_length)
                keep = mask.astype(bool) & ~model.special(ids)
                captured.clear()
                reference(input_ids=torch.from_numpy(ids.astype(np.int64)),
                          attention_mask=torch.from_numpy(mask.astype(np.int64)),
                          **({} if hasattr(reference, "encoder") else {"use_cache": False}))
                parts.append(captured[0].float().numpy()[keep])
    finally:
        handle.remove()
    return np.concatenate(parts)


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds of `repeats` calls of fn() after one warm-up call, the warm-up's result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs| (inf when the shapes differ)."""
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def topk_step_seconds(d_in: int, d_sae: int, batch: int, repeats: int, rows: np.ndarray) -> float:
    """Median seconds of saejax's TopK train step on `batch` rows (the model's rows, tiled)."""
    x = np.resize(rows, (batch, d_in)).astype(np.float32)
    step, state = train_setup("topk", d_in, d_sae, x)
    return time_steps(step, state, x, repeats)


def measure(spec: str, n_texts: int, repeats: int, layer: int = -1, context_length: int = 128, batch: int = 32,
            step_d_sae: int = 3072, step_batch: int = 4096, step_repeats: int = 5, model=None,
            reference=None) -> dict:
    """The comparison (see module docstring) as a JSON-able dict. `model` / `reference`: already loaded
    saejax / transformers models of `spec` (loaded here when None)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    model = model or load_text_model(spec)
    load_saejax_s = time.perf_counter() - start
    layer = model.n_layers // 2 if layer < 0 else layer
    texts = corpus(n_texts, context_length)
    source = ModelSource(model, lambda: texts, lambda: [], seed=0, layer=layer, site="resid_post",
                         context_length=context_length, forward_batch=batch)
    saejax_s, ours = timed(lambda: source.rows_of(texts), repeats)

    start = time.perf_counter()
    reference = reference or hf_model(spec, model.kind)
    load_torch_s = time.perf_counter() - start
    batches = harvest_order(model, texts, context_length, batch)
    full_s, theirs_full = timed(lambda: torch_rows(reference, model, batches, layer, context_length), repeats)
    restore = truncated(reference, layer)
    try:
        cut_s, theirs = timed(lambda: torch_rows(reference, model, batches, layer, context_length), repeats)
    finally:
        restore()
    rows = len(ours)
    if len(theirs) != rows or len(theirs_full) != rows:
        raise AssertionError(f"kept tokens differ: saejax {rows}, torch {len(theirs_full)} / {len(theirs)}")

    step_s = topk_step_seconds(model.d_model, step_d_sae, step_batch, step_repeats, ours)
    saejax_rate = rows / saejax_s
    generate_s = step_batch / saejax_rate
    return {
        "model": spec if spec in PACKAGED else str(Path(spec)), "kind": model.kind, "layer": layer,
        "site": "resid_post", "d_model": model.d_model, "n_layers": model.n_layers, "texts": n_texts,
        "context_length": context_length, "batch": batch, "kept_tokens": rows, "repeats": repeats,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "load_s": {"saejax": load_saejax_s, "torch": load_torch_s},
        "seconds": {"saejax": saejax_s, "torch_full": full_s, "torch_to_layer": cut_s},
        "tokens_per_s": {"saejax": saejax_rate, "torch_full": rows / full_s, "torch_to_layer": rows / cut_s},
        "speedup_vs_torch": {"full": full_s / saejax_s, "to_layer": cut_s / saejax_s},
        "max_relative_difference": {"full": relative_difference(ours, theirs_full),
                                    "to_layer": relative_difference(ours, theirs)},
        "topk_step": {"d_sae": step_d_sae, "batch": step_batch, "k": 32, "step_s": step_s,
                      "rows_per_s_needed": step_batch / step_s, "rows_per_s_produced": saejax_rate,
                      "generate_s_per_batch": generate_s, "generate_over_step": generate_s / step_s,
                      "generation_share": generate_s / (generate_s + step_s)},
    }


def table(result: dict) -> list[str]:
    """The result as markdown lines."""
    rate, sec, diff, step = (result["tokens_per_s"], result["seconds"], result["max_relative_difference"],
                             result["topk_step"])
    lines = [f"Streamed activations of {result['model']} at layer {result['layer']} resid_post: {result['texts']} "
             f"texts, {result['kept_tokens']} kept tokens, context {result['context_length']}, batch "
             f"{result['batch']}; median of {result['repeats']} after a warm-up; {result['cpu_count']} CPUs "
             f"(torch {result['torch_version']}, {result['torch_threads']} threads)", "",
             "| pipeline | s per pass | kept tokens/s | saejax speedup | max rel diff vs saejax |",
             "|---|---|---|---|---|",
             f"| saejax ModelSource (jit, stops at the layer) | {sec['saejax']:.3f} | {rate['saejax']:,.0f} | 1.00 | - |"]
    for key, what in (("torch_to_layer", "torch, blocks after the layer removed (hook)"),
                      ("torch_full", "torch, every block (hook at the layer)")):
        short = key.removeprefix("torch_")
        lines.append(f"| {what} | {sec[key]:.3f} | {rate[key]:,.0f} | "
                     f"{result['speedup_vs_torch'][short]:.2f} | {diff[short]:.1e} |")
    lines += ["", f"TopK step (d_sae {step['d_sae']}, batch {step['batch']}, k {step['k']}): {step['step_s']:.3f} s "
              f"= {step['rows_per_s_needed']:,.0f} rows/s needed; the stream produces "
              f"{step['rows_per_s_produced']:,.0f} rows/s: {step['generate_s_per_batch']:.2f} s per batch, "
              f"{step['generate_over_step']:.1f}x the step, {100 * step['generation_share']:.0f} % of "
              "generate + step"]
    return lines


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    result = measure(f.model, f.texts, f.repeats, f.layer, f.context_length, f.batch, f.step_d_sae, f.step_batch,
                     f.step_repeats)
    name = "stream_throughput_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(f.model).stem)
    write_results(f.out, name, result, table(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
