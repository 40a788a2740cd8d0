"""Architecture-dependent defaults: filled in once, penalties kept with their architecture."""

import math

import pytest

from saejax import defaults
from saejax.config import base_config, validate
from saejax.errors import ConfigError


def config_for(arch, **loss):
    c = base_config()
    c.sae.arch = arch
    for field, value in loss.items():
        c.loss[field] = value
    return c


@pytest.mark.parametrize("arch", defaults.TOPK_FAMILY)
def test_topk_family_gets_auxk_and_its_init_and_drops_an_inherited_l1(arch):
    resolved, notes = defaults.resolve(config_for(arch, l1=2.0))
    assert resolved.loss.auxk == pytest.approx(1 / 32) and resolved.loss.l1 == 0.0
    assert resolved.sae.dec_init_norm == pytest.approx(1 / math.sqrt(3))
    assert len(notes) == 1 and "loss.l1=2.0" in notes[0] and arch in notes[0] and "sae.k" in notes[0]


def test_relu_keeps_its_penalties_and_gets_no_auxk():
    resolved, notes = defaults.resolve(config_for("relu", l1=2.0, kl=0.5))
    assert (resolved.loss.l1, resolved.loss.kl, resolved.loss.auxk, resolved.sae.dec_init_norm) == (2.0, 0.5, 0.0, 0.1)
    assert notes == []


def test_jumprelu_drops_l1_but_keeps_l0():
    resolved, notes = defaults.resolve(config_for("jumprelu", l1=1.0, l0=0.01))
    assert resolved.loss.l1 == 0.0 and resolved.loss.l0 == 0.01 and "loss.l0" in notes[0]


def test_jumprelu_aims_at_sae_k_unless_it_has_an_l0_coefficient_or_a_target():
    c = config_for("jumprelu")
    c.sae.k = 48
    assert defaults.resolve(c)[0].loss.target_l0 == 48.0
    assert defaults.resolve(config_for("jumprelu", l0=0.5))[0].loss.target_l0 == 0.0
    assert defaults.resolve(config_for("jumprelu", target_l0=20.0))[0].loss.target_l0 == 20.0
    assert defaults.resolve(config_for("relu"))[0].loss.target_l0 == 0.0


def test_explicit_values_win_and_resolving_twice_changes_nothing():
    c = config_for("topk", auxk=0.0)
    c.sae.dec_init_norm, c.loss.dead_steps = 0.3, 7
    once, _ = defaults.resolve(c)
    assert (once.loss.auxk, once.sae.dec_init_norm, once.loss.dead_steps) == (0.0, 0.3, 7)
    twice, notes = defaults.resolve(once)
    assert twice.to_dict() == once.to_dict() and notes == []


def test_dead_window_in_tokens_becomes_whole_batches():
    c = config_for("topk")
    c.loss.dead_tokens, c.train.batch_size = 10_000, 4096
    assert defaults.resolve(c)[0].loss.dead_steps == 3
    c.loss.dead_tokens = 0
    with pytest.raises(ConfigError, match="loss.dead_tokens=0"):
        validate(c)



def test_learning_rate_and_clipping_follow_the_architecture():
    topk = config_for("topk")
    topk.sae.d_sae, topk.train.batch_size = 4096, 4096
    assert defaults.resolve(topk)[0].optim.lr == pytest.approx(1.3e-3 * 2)  # 1/sqrt(d_sae): 4096 = 2^14 / 4
    topk.sae.d_sae = 1024
    assert defaults.resolve(topk)[0].optim.lr == pytest.approx(1.3e-3 * 4)
    topk.train.batch_size = 1024  # sqrt(batch / 4096) below batches of 4096
    assert defaults.resolve(topk)[0].optim.lr == pytest.approx(1.3e-3 * 2)
    topk.train.batch_size = 16384  # and no more above
    assert defaults.resolve(topk)[0].optim.lr == pytest.approx(1.3e-3 * 4)
    jumprelu = config_for("jumprelu")
    jumprelu.sae.d_sae, jumprelu.train.batch_size = 4096, 256
    assert defaults.resolve(jumprelu)[0].optim.lr == pytest.approx(1.3e-3 * 2 / 4)
    assert defaults.resolve(jumprelu)[0].optim.threshold_lr_scale == defaults.THRESHOLD_LR_SCALE
    assert [defaults.resolve(config_for(arch))[0].optim.decoder_lr_scale for arch in ("topk", "relu")] == [2.0, 1.0]
    topk.optim.decoder_lr_scale = 1.0
    assert defaults.resolve(topk)[0].optim.decoder_lr_scale == 1.0
    resolved, _ = defaults.resolve(config_for("relu"))
    assert (resolved.optim.lr, resolved.optim.grad_clip) == (1e-3, 1.0)
    assert defaults.resolve(config_for("batchtopk"))[0].optim.grad_clip == 1.0
    pinned = config_for("relu")
    pinned.optim.grad_clip = 0.0  # 0 switches clipping off
    assert defaults.resolve(pinned)[0].optim.grad_clip == 0.0


def test_relu_gets_a_free_decoder_norm_with_a_weighted_l1_and_the_rest_unit_rows():
    relu, _ = defaults.resolve(config_for("relu", l1=5.0))
    assert relu.train.unit_norm_decoder is False and relu.loss.l1_decoder_weighted is True
    pinned = config_for("relu", l1=5.0)
    pinned.train.unit_norm_decoder = True
    pinned, _ = defaults.resolve(pinned)
    assert pinned.train.unit_norm_decoder is True and pinned.loss.l1_decoder_weighted is False
    for arch in ("topk", "jumprelu", "gated", "mlp"):
        resolved, _ = defaults.resolve(config_for(arch))
        assert resolved.train.unit_norm_decoder is True and resolved.loss.l1_decoder_weighted is False, arch


@pytest.mark.parametrize("arch, decay", [("topk", "linear"), ("batchtopk", "linear"), ("matryoshka", "linear"),
                                         ("jumprelu", "linear"), ("relu", "constant"), ("gated", "constant")])
def test_lr_decays_over_the_last_fifth_where_it_was_measured_to_help(arch, decay):
    c = base_config()
    c.sae.arch, c.train.steps = arch, 2000
    resolved, _ = defaults.resolve(c)
    assert (resolved.optim.decay, resolved.optim.decay_steps) == (decay, 400)
    c.optim.decay, c.optim.decay_steps = "cosine", 0  # chosen values stay
    resolved, _ = defaults.resolve(c)
    assert (resolved.optim.decay, resolved.optim.decay_steps) == ("cosine", 0)
