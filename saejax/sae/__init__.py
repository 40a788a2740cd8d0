"""SAE architectures: parameter init plus pure encode/decode functions over a params dict.

Each architecture is one `registry.Architecture` spec, registered here in this order:

    relu.py        relu (optionally leaky)          topk.py        topk, batchtopk
    jumprelu.py    jumprelu                         gated.py       gated
    matryoshka.py  matryoshka                       mlp.py         mlp (deep Flax encoder/decoder)
    skip.py        relu_skip, topk_skip, batchtopk_skip, jumprelu_skip (skip transcoders)

built from the shared linear blocks of `linear` (listed in `shipped`) and assembled into an `SAE` by
`core.make_sae`:

    sae = make_sae("topk", d_in=512, d_sae=8192, k=32)
    params = sae.init(jax.random.key(0))
    out = sae.forward(params, x)              # SAEOutput(x_hat, z, pre_acts, aux)
    registry.get("topk").has_linear_decoder   # what an architecture is and can do

A new architecture is one new spec: ``registry.register(registry.Architecture(name=..., ...))``.

Transcoders: relu, topk, batchtopk and jumprelu may also reconstruct a target other than their
input (``make_sae(arch, d_in, d_sae, d_out=d_out)``: `registry.Architecture.separate_output`); the
skip transcoders are transcoders only.
"""

from saejax.sae import registry, shipped
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

for _spec in shipped.SAES:
    registry.register(_spec)

# The SAE architectures saejax ships (`registry.names()` also lists the skip transcoders and any
# architecture registered later).
ARCHITECTURES = registry.names()
TIEABLE = tuple(name for name in ARCHITECTURES if registry.get(name).tieable)

for _spec in shipped.SKIP_TRANSCODERS:
    registry.register(_spec)

# The architectures that can be transcoders, and the skip transcoders among them.
TRANSCODERS = tuple(name for name in registry.names() if registry.get(name).separate_output)
SKIP_TRANSCODERS = tuple(name for name in TRANSCODERS if registry.get(name).needs_target)
