"""`saejax.guards`: what stops a run before it saves or exports something broken."""

import numpy as np
import pytest

from saejax import guards
from saejax.config import base_config
from saejax.errors import SaejaxError


@pytest.mark.parametrize("fvu, l0, problem", [
    (0.3, 12.0, None), (1.0, 12.0, "FVU 1 >= 1"), (float("nan"), 12.0, "FVU nan >= 1"),
    (0.3, 0.0, "no latent fires on any row"),
])
def test_collapse_names_what_is_wrong(fvu, l0, problem):
    found = guards.collapse(fvu, l0)
    assert found == problem if problem is None else found.startswith(problem)


def test_the_evaluation_guard_waits_for_the_warm_up():
    config = base_config()
    config.optim.warmup_steps = 300
    assert guards.collapse_check_from(config) == 300
    guards.check_evaluation_not_collapsed(2.0, 5.0, "512 held-out rows", 300, config)  # not past warm-up yet
    with pytest.raises(SaejaxError, match=r"the SAE collapsed: FVU 2 >= 1 .* on 512 held-out rows after step 301; "
                                          r"no export written"):
        guards.check_evaluation_not_collapsed(2.0, 5.0, "512 held-out rows", 301, config)


class _Checkpoints:
    def __init__(self):
        self.saved = []

    def save(self, step, state, config_dict):
        self.saved.append(step)


class _State:
    def __init__(self, value):
        self.params = {"W": np.full((2, 2), value, np.float32)}


def test_save_checkpoint_refuses_non_finite_loss_or_params_and_keeps_the_last_good_one():
    ckpt = _Checkpoints()
    assert guards.save_checkpoint(ckpt, 10, _State(1.0), 0.5, {}, None) == 10 and ckpt.saved == [10]
    with pytest.raises(SaejaxError, match=r"non-finite by step 20; stopped before saving, the last good "
                                          r"checkpoint \(step 10\) is kept"):
        guards.save_checkpoint(ckpt, 20, _State(np.inf), 0.5, {}, 10)
    with pytest.raises(SaejaxError, match="no checkpoint was written"):
        guards.save_checkpoint(ckpt, 20, _State(1.0), float("nan"), {}, None)
    assert ckpt.saved == [10]
