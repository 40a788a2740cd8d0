"""Speed and memory benchmarks; each module writes results/NAME.{json,md} (see BUILD_NOTES.md)."""

import json
from pathlib import Path


def write_results(out_dir: str | Path, name: str, result: dict, table: list[str]) -> None:
    """Write `result` as out_dir/NAME.json and the markdown `table` lines as out_dir/NAME.md; print the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
