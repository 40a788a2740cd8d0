"""Evaluators built by name from `train.evaluators`."""

import json

import pytest

import saejax
from saejax import evaluate
from saejax.config import base_config


def _tiny_config(evaluators: str):
    c = base_config()  # synthetic data: a known dictionary, no downstream task, no text model
    c.sae.d_sae, c.train.batch_size, c.train.steps, c.train.eval_rows = 64, 64, 20, 512
    c.log.progress, c.log.tensorboard = False, False
    c.train.evaluators = evaluators
    return c


class _Run:
    def __init__(self, config, source=None, text_model=None):
        self.config, self.source, self.text_model = config, source, text_model


def test_auto_selects_what_applies_in_running_order():
    source = type("Source", (), {"name": "fake", "dictionary": None, "task": None})()
    run = _Run(_tiny_config("auto"), source)
    assert evaluate.selected(run) == ["curves", "heldout", "plots", "export"]


def test_named_evaluators_run_in_registry_order():
    run = _Run(_tiny_config("export, heldout"))
    assert evaluate.selected(run) == ["heldout", "export"]


@pytest.mark.parametrize("names, message", [
    ("heldout,probes", r"train.evaluators='heldout,probes': unknown probes; choose from curves, heldout"),
    ("splice", r"train.evaluators names 'splice', which does not apply here: model.name is not set"),
])
def test_bad_names_are_config_errors_before_training(tmp_path, names, message):
    with pytest.raises(saejax.ConfigError, match=message):
        saejax.train_and_evaluate(_tiny_config(names), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_only_the_named_evaluators_run(tmp_path):
    summary = saejax.train_and_evaluate(_tiny_config("heldout,dictionary"), tmp_path)
    assert summary["eval"]["rows"] == 512 and summary["eval_split"] == "held-out"
    assert 0 < summary["eval"]["mmcs"] <= 1
    assert summary["export"] == "skipped: not in train.evaluators"
    assert not (tmp_path / "export").exists() and not (tmp_path / "plots").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["eval"] == summary["eval"]


def test_auto_runs_every_applicable_evaluator(tmp_path):
    summary = saejax.train_and_evaluate(_tiny_config("auto"), tmp_path)
    assert "mmcs" in summary["eval"] and summary["export"] == str(tmp_path / "export")
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"training.png", "density.png"}


def test_the_evaluation_compiled_ahead_measures_what_the_jitted_one_does():
    import jax
    import numpy as np

    from saejax import config as config_lib
    from saejax import data, from_config
    from saejax import step as step_lib
    from saejax.evaluate import heldout

    config, _ = config_lib.complete(_tiny_config("auto"))
    source = data.make_source(config.data, config.seed)
    sae, loss, optimizer = from_config.model_from_config(config, source.d_in)
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(1), source.sample(256))
    ahead = heldout.compile_sums(sae, step_lib.abstract_train_state(sae, loss, optimizer).params, 64)
    plain, plain_density, _ = heldout.measure(config, source, sae, state)
    compiled, compiled_density, _ = heldout.measure(config, source, sae, state, ahead)
    assert compiled == plain and plain["rows"] == 512
    np.testing.assert_array_equal(compiled_density, plain_density)
