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

import importlib

# The public API: each name is imported from its module on first use, so that `import saejax` (and
# `import saejax.data`, say) costs no more than what is used.
_EXPORTS = {
    "load": "saejax.analysis",
    "base_config": "saejax.config",
    "ConfigError": "saejax.errors", "DataError": "saejax.errors", "SaejaxError": "saejax.errors",
    "export_saelens": "saejax.export", "load_saelens": "saejax.export",
    "make_optimizer": "saejax.optimizers",
    "ARCHITECTURES": "saejax.sae", "SAE": "saejax.sae", "SAEOutput": "saejax.sae", "make_sae": "saejax.sae",
    "sae_from_config": "saejax.sae",
    "TrainState": "saejax.step", "init_train_state": "saejax.step", "jit_train_step": "saejax.step",
    "make_train_step": "saejax.step",
    "train_and_evaluate": "saejax.train",
}
_SUBMODULES = ("activations", "defaults", "losses", "metrics")
__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"saejax.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'saejax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
