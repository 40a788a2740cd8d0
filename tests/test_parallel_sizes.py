"""Sizes a parallel run refuses: one ConfigError naming the field, raised from the sizes alone
(no devices needed, nothing compiled). `test_parallel` runs two of them through the command line
on 8 devices."""

from types import SimpleNamespace

import pytest

import saejax
from saejax import config as config_lib
from saejax import parallel
from saejax.errors import ConfigError


def mesh_of(data: int, model: int):
    """What `check_sizes` reads of a mesh: its axis sizes."""
    return SimpleNamespace(shape={"data": data, "model": model})


@pytest.mark.parametrize("data, model, d_sae, batch, message", [
    (2, 4, 102, 256, "sae.d_sae=102 must divide by the mesh's model axis (4); parallel.mesh_shape=2,4"),
    (8, 1, 128, 100, "train.batch_size=100 must divide by the mesh's data axis (8); parallel.mesh_shape=8,1"),
])
def test_sizes_that_do_not_divide_the_mesh(data, model, d_sae, batch, message):
    sae = saejax.make_sae("topk", 32, d_sae, k=4)
    with pytest.raises(ConfigError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        parallel.check_sizes(mesh_of(data, model), sae, batch)
    parallel.check_sizes(mesh_of(data, model), saejax.make_sae("topk", 32, 128, k=4), 256)  # these fit


def test_a_mlp_sae_keeps_its_latents_on_one_device():
    mlp = saejax.make_sae("mlp", 32, 128)
    with pytest.raises(ConfigError, match="sae.arch='mlp' cannot shard its latents; use parallel.mesh_shape='D,1'"):
        parallel.check_sizes(mesh_of(2, 4), mlp, 256)
    parallel.check_sizes(mesh_of(8, 1), mlp, 256)


@pytest.mark.parametrize("shape, message", [
    ("4,4", r"parallel.mesh_shape='4,4' needs 16 devices; 8 are visible \(jax.device_count\(\)\)"),
    ("4x2", r"parallel.mesh_shape='4x2' must be two integers 'D,M' \(data x model\)"),
    ("0,8", "parallel.mesh_shape='0,8' needs 0 devices"),
])
def test_mesh_shapes_that_cannot_be_built(shape, message):
    with pytest.raises(ConfigError, match=message):
        parallel.parse_mesh_shape(shape, 8)
    assert parallel.parse_mesh_shape("2,4", 8) == (2, 4) and parallel.parse_mesh_shape("", 8) == (8, 1)


def test_pmap_takes_no_mesh_shape():
    config = saejax.base_config()
    config.parallel.strategy, config.parallel.mesh_shape = "pmap", "4,2"
    with pytest.raises(ConfigError, match="parallel.mesh_shape='4,2' is for parallel.strategy='mesh'"):
        config_lib.validate(config)
