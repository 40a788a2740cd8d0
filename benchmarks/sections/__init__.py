"""The suite's sections that each measure one thing of their own; `python -m benchmarks.run
--sections=NAME` runs the module of that name:

- checkpoint: the train step's wall time with checkpoints against without;
- loader: the shard-store loader's rows per second against the train step's consumption;
- overhead: the fixed cost of a command-line training run (fresh processes);
- dense_step: the dense ReLU step against numpy's matmul rate and a plain-autodiff step;
- topk_crossover: where the sparse TopK step overtakes the dense one;
- screen_certification: how often the bf16 pre-screen certifies its rows while a TopK SAE trains.

Each module has SIZES ({"full": settings, "quick": settings}: what one run measures at; the gpu plan
takes "full"), `measure(settings) -> dict` (JSON-able) and `table(result) -> list[str]` (markdown).
`--set=NAME.KEY=VALUE` overrides one setting (`coerce` reads VALUE as the default's type).
"""

import importlib

NAMES = ("checkpoint", "loader", "overhead", "dense_step", "topk_crossover", "screen_certification")


def module(name: str):
    """The section module `name` (imported on first use, so that a run imports only what it measures)."""
    return importlib.import_module(f"benchmarks.sections.{name}")


def coerce(default, text: str):
    """`text` read as a value of `default`'s type: bool (true/false/1/0), int, float, str, or a tuple of
    those written comma-separated."""
    if isinstance(default, tuple):
        kind = default[0] if default else ""
        return tuple(coerce(kind, part.strip()) for part in text.split(",") if part.strip())
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a bool (true, false, 1 or 0)")
        return text.lower() in ("true", "1")
    return type(default)(text)


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """["NAME.KEY=VALUE", ...] -> {NAME: {KEY: VALUE}} (values still text)."""
    overrides = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not (sep and dot and name and key):
            raise ValueError(f"--set={item!r}: write SECTION.KEY=VALUE")
        overrides.setdefault(name, {})[key] = value
    return overrides


def settings(name: str, plan: str, overrides: dict[str, str]) -> dict:
    """The settings section `name` runs at: SIZES[plan] (the gpu plan: "full") with `overrides` applied."""
    sizes = module(name).SIZES
    base = dict(sizes.get(plan, sizes["full"]))
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"--set: {name} has no setting {sorted(unknown)}; it has {sorted(base)}")
    return {**base, **{key: coerce(base[key], text) for key, text in overrides.items()}}
