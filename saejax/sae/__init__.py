"""SAE architectures: parameter init plus pure encode/decode functions over a params dict.

Each architecture is one `registry.Architecture` spec, registered here in this order:

    relu.py        relu (optionally leaky)          topk.py        topk, batchtopk
    jumprelu.py    jumprelu                         gated.py       gated
    matryoshka.py  matryoshka                       mlp.py         mlp (deep Flax encoder/decoder)

built from the shared linear blocks of `linear` and assembled into an `SAE` by `core.make_sae`:

    sae = make_sae("topk", d_in=512, d_sae=8192, k=32)
    params = sae.init(jax.random.key(0))
    out = sae.forward(params, x)              # SAEOutput(x_hat, z, pre_acts, aux)
    registry.get("topk").has_linear_decoder   # what an architecture is and can do

A new architecture is one new spec: ``registry.register(registry.Architecture(name=..., ...))``.
"""

from saejax.sae import gated, jumprelu, matryoshka, mlp, registry, relu, topk
from saejax.sae.core import (
    SAE,
    SPARSE_MIN_RATIO,
    Params,
    SAEOutput,
    default_prefixes,
    dense_forward,
    encoder_init_scale,
    make_sae,
    sae_from_config,
)

for _spec in (relu.SPEC, topk.TOPK, topk.BATCHTOPK, jumprelu.SPEC, gated.SPEC, matryoshka.SPEC, mlp.SPEC):
    registry.register(_spec)

# The architectures saejax ships (`registry.names()` also lists any registered later).
ARCHITECTURES = registry.names()
TIEABLE = tuple(name for name in ARCHITECTURES if registry.get(name).tieable)
