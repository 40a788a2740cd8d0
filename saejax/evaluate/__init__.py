"""Evaluators: what a run does with the trained SAE, built by name from `train.evaluators`.

    names = selected(run)                 # "auto": every evaluator that applies to this run
    results = evaluate_all(run, state, names)

An evaluator is a pair of functions: `applies(run) -> str | None` (why it does not apply, or None)
and `evaluate(run, state, found) -> dict`, where `run` is the `saejax.assemble.Run`, `state` the host
TrainState holding the params to evaluate and `found` what the evaluators before it returned.
Numbers in the results are the run's eval metrics; "density" [d_sae], "eval_split", "export" and
"held_out_texts" are the held-out firing density, the split the metrics come from, where the export
went and the text model's held-out texts (read once, for the splice and the dashboards).
Evaluators marked `background` (the plots) run on one worker thread while the rest go on.
"""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from saejax.errors import ConfigError
from saejax.evaluate import artifacts, heldout, language, tasks


class Evaluator(NamedTuple):
    applies: Callable
    evaluate: Callable
    background: bool = False  # draws plots: runs on the worker thread
    draws: bool = False  # draws plots on this thread: waits for the worker first (one plot at a time)
    prepare: Callable | None = None  # run -> what `evaluate` takes as `prepared`, built while the run trains


def _always(run) -> None:
    return None


EVALUATORS = {  # in the order they run
    "curves": Evaluator(_always, artifacts.curves, background=True),
    "heldout": Evaluator(_always, heldout.evaluate, prepare=heldout.prepare),
    "dictionary": Evaluator(tasks.dictionary_applies, tasks.dictionary_recovery),
    "task": Evaluator(tasks.task_applies, tasks.task, draws=True),
    "splice": Evaluator(language.applies, language.splice_metrics),
    "absorption": Evaluator(language.absorption_applies, language.first_letter_absorption, draws=True),
    "probing": Evaluator(language.probing_applies, language.text_probing_tasks),
    "dashboards": Evaluator(language.dashboards_apply, language.feature_dashboards),
    "plots": Evaluator(_always, artifacts.dictionary_plots, background=True),
    "export": Evaluator(_always, artifacts.export_sae),
}


def selected(run) -> list[str]:
    """The evaluators `train.evaluators` names for `run`, in running order: "auto" = every one that
    applies; a comma-separated list = those, each checked to apply (ConfigError naming the field)."""
    spec = run.config.train.get("evaluators", "auto")
    if spec == "auto":
        return [name for name, e in EVALUATORS.items() if e.applies(run) is None]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVALUATORS]
    if unknown:
        raise ConfigError(f"train.evaluators={spec!r}: unknown {', '.join(unknown)}; choose from "
                          f"{', '.join(EVALUATORS)} or 'auto'")
    for name in names:
        reason = EVALUATORS[name].applies(run)
        if reason:
            raise ConfigError(f"train.evaluators names {name!r}, which does not apply here: {reason}")
    return [name for name in EVALUATORS if name in names]


def prepare(run, names: list[str]) -> dict[str, Future]:
    """Start the `prepare` step of the evaluators `names` (compiling their programs) on a worker thread,
    so that it overlaps training; `evaluate_all` takes the result."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
    futures = {name: pool.submit(EVALUATORS[name].prepare, run) for name in names if EVALUATORS[name].prepare}
    pool.shutdown(wait=False)
    return futures


def _prepared(future: Future | None):
    """What a `prepare` future holds; None when absent or when it failed (the evaluator then builds its
    own, and raises what is wrong with the run itself)."""
    try:
        return None if future is None else future.result()
    except Exception:  # noqa: BLE001
        return None


def evaluate_all(run, state, names: list[str], prepared: dict[str, Future] | None = None) -> dict:
    """Run the evaluators `names` in order on `state` (with what `prepare` built for them); returns
    everything they found. A failing evaluator's error propagates after the background work finishes."""
    prepared = prepared or {}
    found: dict = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate") as background:
        pending = []
        for name in names:
            evaluator = EVALUATORS[name]
            if evaluator.background:
                pending.append(background.submit(evaluator.evaluate, run, state, dict(found)))
                continue
            if evaluator.draws:
                _finish(pending, found)
            extra = {"prepared": _prepared(prepared.get(name))} if evaluator.prepare else {}
            found.update(evaluator.evaluate(run, state, found, **extra))
        _finish(pending, found)
    return found


def _finish(pending: list, found: dict) -> None:
    while pending:
        found.update(pending.pop(0).result())
