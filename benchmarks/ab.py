r"""A/B: one measurement under two or more variants, each run in fresh processes, alternating.

    python -m benchmarks.ab --variant=NAME[:TOKENS] --variant=NAME[:TOKENS] [...] [--runs=5]
        [--result=FILE] [--metrics=GLOB,...] [--out=DIR] [--name=ab] -- COMMAND [ARGS...]

COMMAND is run `--runs` times per variant, one process at a time, the variants' order rotating every
round (A B, B A, A B, ... for two), so that drift over the run hits every variant alike. A variant is
a name and, after a colon, shell-quoted tokens that say how its processes differ:

- `VAR=VALUE` (an upper-case environment variable): set in its environment (`VAR=` removes it);
- `cwd=DIR`: run there (e.g. another checkout: `git worktree add DIR COMMIT`, then
  `--variant='old: cwd=DIR'`; `python -m` imports both benchmarks and saejax from there, so that
  checkout's command must take the same flags);
- anything else: appended to COMMAND's arguments (flags such as `--config.sae.k=16`).

`{out}` in COMMAND or a variant's arguments becomes a fresh empty folder per process. The
measurement of each process is a JSON object: the file `--result` in that folder if given, else
the last stdout line that parses as one (none: only the wall time); its numeric leaves, flattened
to dotted names (`steps.0.step_s`), are the metrics, and `wall_s` (the process's wall time) is
always one. --metrics keeps the names matching any of the given shell-style patterns. Reports each
metric's median per variant and, for each later variant, the median over rounds of its value
divided by the first variant's in the same round. Writes OUT/NAME.json (every process's metrics as
well) and OUT/NAME.md, and prints the table. Examples: the allocator settings on and off, timed by
the suite's steps section; and a training run with a config override, scored by its summary.json:

    python -m benchmarks.ab --runs=4 --variant=on --variant='off: SAEJAX_NO_MALLOC_TUNING=1' \
        --result=suite.json --metrics='steps.*.step_s,steps.*.fraction_of_limit' -- \
        python -m benchmarks.run --sections=steps --variants=relu --sizes=512x8192x4096 --out={out}
    python -m benchmarks.ab --runs=3 --variant=k32 --variant='k16: --config.sae.k=16' --result=summary.json \
        --metrics='eval.*' -- python experiments/train.py --workdir={out} --config.sae.arch=topk
"""

import fnmatch
import json
import os
import re
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks import write_results

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The program's flags, defined only when it runs as one: importing its functions (as the tests do)
    leaves absl's global flag names to the other command-line modules that use the same ones."""
    flags.DEFINE_multi_string("variant", [], "NAME[:TOKENS]: one variant (give two or more); TOKENS: "
                              "VAR=VALUE (environment), cwd=DIR, or arguments appended to the command.")
    flags.DEFINE_integer("runs", 5, "Processes per variant (rounds).")
    flags.DEFINE_string("result", None, "The JSON file, in the process's {out} folder, holding its measurement "
                        "(default: the last JSON line of its stdout).")
    flags.DEFINE_list("metrics", [], "Shell-style patterns of the metrics to report (default: all).")
    flags.DEFINE_string("out", str(Path(__file__).parent / "results" / "latest" / "ab"), "Output directory.")
    flags.DEFINE_string("name", "ab", "File name of the results: OUT/NAME.json and OUT/NAME.md.")


ENV_TOKEN = re.compile(r"[A-Z_][A-Z0-9_]*=")


def parse_variant(text: str) -> dict:
    """"NAME[: TOKENS]" -> {"name", "env": {VAR: VALUE or None to remove}, "cwd": DIR or None, "args": [...]}."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise ValueError(f"--variant={text!r}: a variant needs a name before the colon")
    variant = {"name": name.strip(), "env": {}, "cwd": None, "args": []}
    for token in shlex.split(rest):
        if ENV_TOKEN.match(token):
            key, _, value = token.partition("=")
            variant["env"][key] = value or None
        elif token.startswith("cwd="):
            variant["cwd"] = token[len("cwd="):]
        else:
            variant["args"].append(token)
    return variant


def environment(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied (a None value removes the variable)."""
    env = {k: v for k, v in base.items() if k not in changes}
    return {**env, **{k: v for k, v in changes.items() if v is not None}}


def round_order(names: list[str], round_: int) -> list[str]:
    """The variants' order in round `round_`: rotated by one each round."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def flatten(value, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested dicts and lists, by dotted name (bools left out)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    else:
        return {}
    return {k: v for key, item in items for k, v in flatten(item, f"{prefix}.{key}" if prefix else str(key)).items()}


def last_json_line(stdout: str) -> dict:
    """The last line of `stdout` that parses as a JSON object ({} where none does)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return {}


def keep(metrics: dict[str, float], patterns: list[str]) -> dict[str, float]:
    """The metrics whose names match one of `patterns` (no patterns: all), wall_s always."""
    return {k: v for k, v in metrics.items()
            if k == "wall_s" or not patterns or any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def run_once(command: list[str], variant: dict, result_file: str | None, patterns: list[str]) -> dict[str, float]:
    """One process of `command` under `variant`: its metrics (kept by `patterns`) and wall_s."""
    with tempfile.TemporaryDirectory(prefix="saejax_ab_") as out:
        argv = [arg.replace("{out}", out) for arg in command + variant["args"]]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=variant["cwd"], env=environment(dict(os.environ), variant["env"]),
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"variant {variant['name']}: {shlex.join(argv)} exited {done.returncode}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        measured = json.loads((Path(out) / result_file).read_text()) if result_file else last_json_line(done.stdout)
    return keep({**flatten(measured), "wall_s": wall}, patterns)


def summarise(runs: list[dict], names: list[str]) -> dict:
    """{metric: {variant: {"median", "ratio" (later variants: median over rounds of value / first's)}}}."""
    by = {(r["round"], r["variant"]): r["metrics"] for r in runs}
    rounds = sorted({r["round"] for r in runs})
    metrics = sorted({k for r in runs for k in r["metrics"]})
    summary = {}
    for metric in metrics:
        summary[metric] = {}
        for name in names:
            values = [by[i, name][metric] for i in rounds if metric in by[i, name]]
            row = {"median": statistics.median(values) if values else None}
            ratios = [by[i, name][metric] / by[i, names[0]][metric] for i in rounds
                      if metric in by[i, name] and by[i, names[0]].get(metric)]
            if name != names[0]:
                row["ratio"] = statistics.median(ratios) if ratios else None
            summary[metric][name] = row
    return summary


def _cell(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def table(summary: dict, names: list[str], command: list[str], variants: list[dict], runs: int) -> list[str]:
    """Markdown: the command, the variants, and per metric the medians and the per-round ratios."""
    lines = [f"A/B of `{shlex.join(command)}`: {runs} fresh processes per variant, alternating; medians, and "
             f"medians over rounds of the ratio to {names[0]}", ""]
    lines += [f"- {v['name']}: " + (" ".join([*(f"{k}={'' if x is None else x}" for k, x in v['env'].items()),
                                              *([f"cwd={v['cwd']}"] if v["cwd"] else []), *v["args"]]) or "as is")
              for v in variants]
    later = names[1:]
    lines += ["", "| metric | " + " | ".join(names) + " | " + " | ".join(f"{n} / {names[0]}" for n in later) + " |",
              "|---|" + "---|" * (len(names) + len(later))]
    for metric, row in summary.items():
        cells = [_cell(row[n]["median"]) for n in names] + [_cell(row[n]["ratio"]) for n in later]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def main(argv):
    command = argv[1:]
    try:
        variants = [parse_variant(text) for text in FLAGS.variant]
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    names = [v["name"] for v in variants]
    if len(names) < 2 or len(set(names)) != len(names):
        raise app.UsageError("give two or more --variant, each with its own name")
    if not command:
        raise app.UsageError("give the measured command after --, e.g. -- python -m benchmarks.run ...")
    by_name = {v["name"]: v for v in variants}
    runs = []
    for round_ in range(FLAGS.runs):
        for name in round_order(names, round_):
            metrics = run_once(command, by_name[name], FLAGS.result, FLAGS.metrics)
            runs.append({"round": round_, "variant": name, "metrics": metrics})
            print(json.dumps({"round": round_, "variant": name, "wall_s": metrics["wall_s"]}), flush=True)
    summary = summarise(runs, names)
    result = {"command": command, "variants": variants, "runs_per_variant": FLAGS.runs, "result": FLAGS.result,
              "summary": summary, "runs": runs}
    write_results(FLAGS.out, FLAGS.name, result, table(summary, names, command, variants, FLAGS.runs))


if __name__ == "__main__":
    define_flags()
    app.run(main)
