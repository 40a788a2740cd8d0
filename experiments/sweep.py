r"""Run a grid of trainings and collect their final metrics into one table and a Pareto plot.

    python experiments/sweep.py --workdir=/tmp/sweep --config=experiments/configs/digits.py \
        --grid=loss.l1=0.03,0.1,0.3,1,3 --grid=sae.d_sae=32,256 [--parallel=2] [-- --config.train.steps=1000]

Every combination of the --grid values (one --grid per config field) runs as
``experiments/train.py --workdir=WORKDIR/<field=value,...> --config=CONFIG --config.<field>=<value> ...``
(anything after ``--`` is passed to every run), sequentially or ``--parallel`` at a time, each in
its own process. A point whose summary.json exists is not run again, so rerunning the same command
finishes an interrupted sweep (each run also resumes from its own checkpoints). At the end:

    WORKDIR/results.csv, WORKDIR/results.md   one row per point: its grid values, the final eval
                                              metrics (L0, FVU, dead fraction, and downstream
                                              numbers such as PCA's FVU or probe accuracy), wall time
    WORKDIR/pareto.png                        L0 vs FVU across the points (held-out numbers and the
                                              PCA baseline when the data has a test split)

A failed point is reported (its last error line) and left out of the table; the exit status is 1
if any failed.
"""

import csv
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import app, flags

from saejax import plots

TRAIN = Path(__file__).resolve().parent / "train.py"
_DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.py"

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the sweep: one sub-folder per point, plus the tables.")
_CONFIG = flags.DEFINE_string("config", str(_DEFAULT_CONFIG), "Config file (with an optional :variant) for every run.")
_GRID = flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,... one config field and its values; repeat for a grid.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "How many runs at a time.", lower_bound=1)
flags.mark_flag_as_required("workdir")

COLUMNS = ("l0", "fvu", "dead_fraction", "dense_fraction", "cos_sim", "test_l0", "test_fvu", "pca_fvu_at_l0",
           "probe_accuracy_codes", "probe_accuracy_raw", "anomaly_roc_auc", "mmcs")


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """["loss.l1=0.1,1", ...] -> [("loss.l1", ["0.1", "1"]), ...]; app.UsageError on a malformed spec."""
    grid = []
    for spec in specs:
        field, sep, values = spec.partition("=")
        values = [v for v in values.split(",") if v]
        if not sep or not field or not values:
            raise app.UsageError(f"--grid={spec!r} must look like FIELD=V1,V2 (e.g. loss.l1=0.1,0.3,1)")
        if field.startswith("config."):
            field = field[len("config."):]
        grid.append((field, values))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, as {field: value}, in row-major order."""
    fields = [field for field, _ in grid]
    return [dict(zip(fields, combo)) for combo in itertools.product(*(values for _, values in grid))]


def point_name(point: dict[str, str]) -> str:
    """The sub-folder name of a point: 'loss.l1=0.3,sae.d_sae=32' ('base' for an empty grid)."""
    return ",".join(f"{k}={v}" for k, v in point.items()).replace(os.sep, "_") or "base"


def run_point(workdir: Path, config: str, point: dict[str, str], extra: list[str]) -> tuple[dict, str | None]:
    """Train one point (unless its summary.json exists); returns (summary or {}, error line or None)."""
    summary_path = workdir / "summary.json"
    if not summary_path.exists():
        args = [sys.executable, str(TRAIN), f"--workdir={workdir}", f"--config={config}",
                *(f"--config.{k}={v}" for k, v in point.items()), "--config.log.progress=False", *extra]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
            return {}, lines[-1]
        if not summary_path.exists():  # e.g. stopped by a signal: a checkpoint, no summary yet
            return {}, "ended without summary.json (stopped early?); rerun the sweep to finish it"
    return json.loads(summary_path.read_text()), None


def table_rows(grid_points: list[dict[str, str]], summaries: list[dict]) -> list[dict]:
    """One flat row per finished point: grid values, the eval metrics in COLUMNS that any run has."""
    rows = []
    for point, summary in zip(grid_points, summaries):
        if summary:
            evals = summary.get("eval", {})
            rows.append({**point, **{k: evals[k] for k in COLUMNS if k in evals},
                         "wall_time_s": summary.get("wall_time_s")})
    return rows


def write_tables(rows: list[dict], fields: list[str], out: Path) -> str:
    """results.csv and results.md in `out`; returns the markdown table."""
    metrics = [c for c in (*COLUMNS, "wall_time_s") if any(c in r for r in rows)]
    header = [*fields, *metrics]
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows([{k: r.get(k, "") for k in header} for r in rows])

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in header) + " |" for r in rows]
    markdown = "\n".join(lines) + "\n"
    (out / "results.md").write_text(markdown, encoding="utf-8")
    return markdown


def plot_sweep(rows: list[dict], fields: list[str], out: Path) -> Path:
    """L0 vs FVU of the points; held-out values with PCA's curve when every row has them."""
    held_out = rows and all("test_fvu" in r and "pca_fvu_at_l0" in r for r in rows)
    x, y = ("test_l0", "test_fvu") if held_out else ("l0", "fvu")
    labelled = [{**r, "label": ",".join(f"{k.split('.')[-1]}={r[k]}" for k in fields)} for r in rows]
    baseline = [(r["test_l0"], r["pca_fvu_at_l0"]) for r in rows] if held_out else None
    return plots.plot_pareto(labelled, out / "pareto.png", x=x, y=y, baseline=baseline)


def main(argv):
    extra = argv[1:]
    grid = parse_grid(_GRID.value)
    out = Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    grid_points = points(grid)
    print(f"sweep of {len(grid_points)} run(s) in {out}", flush=True)

    def one(point):
        summary, error = run_point(out / point_name(point), _CONFIG.value, point, extra)
        print(f"{point_name(point)}: " + (f"error: {error}" if error else "done"), flush=True)
        return summary, error

    with ThreadPoolExecutor(max_workers=_PARALLEL.value) as pool:
        results = list(pool.map(one, grid_points))
    rows = table_rows(grid_points, [summary for summary, _ in results])
    fields = [field for field, _ in grid]
    if rows:
        print(write_tables(rows, fields, out), end="")
        print(f"plot: {plot_sweep(rows, fields, out)}")
    failed = [point_name(p) for p, (_, error) in zip(grid_points, results) if error]
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    app.run(main)
