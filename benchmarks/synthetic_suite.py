r"""The synthetic ground-truth suite: every architecture whose decoder is a dictionary,
trained on toy superposition data with known features, independent and hierarchical, in one table (the
deep ``mlp`` SAE has no decoder rows to match against the features, and the ``*_skip`` transcoders map
one site to another, so neither is scored here).

    python -m benchmarks.synthetic_suite [--steps=1000] [--archs=relu,topk,...] [--out=...]

Data (`saejax.data.synthetic`): 256 unit features in 64 dimensions, ~5 active per row, firing
frequencies spread 100×; "independent" (each feature on its own) and "hierarchical" (a parent and 4
children each: a child fires only with its parent). Each architecture: d_sae 512, batch 1024, its own
defaults (`saejax.defaults`), k (TopK family, and JumpReLU's target L0) 6; ReLU and Gated with an L1 of
1.0. Every run is `experiments/train.py` in a process of its own, and its summary.json gives, on
held-out rows: FVU, L0, dead %, MMCS, MCC (Hungarian-matched mean |cos|, as SAELens' SynthSAEBench
reports it) and, on the hierarchy, the parents' feature absorption (`saejax.absorption.hierarchy`:
full absorption rate and mean absorption fraction over the 16 most frequent parents whose probe
reaches F1 0.6). Writes synthetic_suite.json and .md under --out.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks import write_results

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka", "gated")
DATASETS = {"independent": ["--config.data.correlation=none"],
            "hierarchical": ["--config.data.correlation=hierarchical", "--config.data.children_per_parent=4"]}
COMMON = ["--config.data.source=synthetic", "--config.data.d=64", "--config.data.n_features=256",
          "--config.data.avg_active=5", "--config.data.freq_ratio=100", "--config.sae.d_sae=512", "--config.sae.k=6",
          "--config.train.batch_size=1024", "--config.train.evaluators=heldout,dictionary",
          "--config.log.progress=False", "--config.log.tensorboard=False"]
PENALTY = {"relu": ["--config.loss.l1=1.0"], "gated": ["--config.loss.l1=1.0"]}
COLUMNS = (("fvu", "FVU", 3), ("l0", "L0", 1), ("dead_fraction", "dead %", None), ("mmcs", "MMCS", 3),
           ("matched_mean_abs_cos", "MCC", 3), ("absorption/rate", "absorption rate", 3),
           ("absorption/fraction", "absorption fraction", 3))


def run(arch: str, dataset: str, steps: int, workdir: Path) -> dict:
    """One architecture on one data set: its summary.json's eval metrics and its wall time."""
    command = [sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={workdir}", *COMMON,
               *DATASETS[dataset], f"--config.sae.arch={arch}", f"--config.train.steps={steps}", *PENALTY.get(arch, [])]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    evaluated = json.loads((workdir / "summary.json").read_text())["eval"]
    return {**evaluated, "wall_s": round(time.perf_counter() - start, 1)}


def _cell(value, digits) -> str:
    if value is None or isinstance(value, str):
        return "–" if value is None else value
    return f"{100 * value:.1f}" if digits is None else f"{value:.{digits}f}"


def table(results: dict, steps: int) -> list[str]:
    lines = [f"Synthetic ground-truth suite: 256 features in 64 dims, ~5 active, 100× frequency spread; d_sae 512, "
             f"k 6, {steps} steps of 1024; held-out metrics", ""]
    for dataset, by_arch in results.items():
        lines += [f"**{dataset}**", "", "| arch | " + " | ".join(name for _, name, _ in COLUMNS) + " | s |",
                  "|---" * (len(COLUMNS) + 2) + "|"]
        for arch, found in by_arch.items():
            if "error" in found:
                lines.append(f"| {arch} | error: {found['error']} |")
                continue
            cells = [_cell(found.get(key), digits) for key, _, digits in COLUMNS]
            lines.append(f"| {arch} | " + " | ".join(cells) + f" | {found['wall_s']} |")
        lines.append("")
    return lines


def main(argv):
    del argv
    f = flags.FLAGS
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="saejax_synthetic_suite_") as tmp:
        for dataset in DATASETS:
            results[dataset] = {arch: run(arch, dataset, f.steps, Path(tmp) / f"{dataset}_{arch}") for arch in f.archs}
    write_results(f.out, "synthetic_suite", {"steps": f.steps, "results": results}, table(results, f.steps))


if __name__ == "__main__":
    flags.DEFINE_integer("steps", 1000, "Train steps of each run.")
    flags.DEFINE_list("archs", list(ARCHS), "Architectures to train.")
    flags.DEFINE_string("out", "benchmarks/results/latest/synthetic_suite", "Output folder.")
    app.run(main)
