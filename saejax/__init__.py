"""saejax: sparse autoencoders in JAX.

    import saejax
    sae = saejax.make_sae("topk", d_in=512, d_sae=8192, k=32)
    loss = saejax.losses.chain(saejax.losses.mse(), saejax.losses.auxk(1 / 32, k_aux=256, dead_steps=1000))
    optimizer = saejax.make_optimizer(optax.adam(1e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), sample)
    step = saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer))
    state, metrics = step(state, batch)

or, from a config: `saejax.train_and_evaluate(config, workdir)`; afterwards
`params, config = saejax.load(workdir)` (params act on raw activations).
"""

from saejax import activations, defaults, losses, metrics
from saejax.analysis import load
from saejax.config import base_config
from saejax.errors import ConfigError, DataError, SaejaxError
from saejax.export import export_saelens, load_saelens
from saejax.loop import train_and_evaluate
from saejax.sae import ARCHITECTURES, SAE, SAEOutput, make_sae, sae_from_config
from saejax.train import (
    TrainState,
    init_train_state,
    jit_train_step,
    make_optimizer,
    make_train_step,
)

__version__ = "0.1.0"
