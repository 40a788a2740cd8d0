"""The architectures saejax ships, in the order `saejax.sae` registers them: the SAE families, then
the skip transcoders (`saejax.sae.skip`) of the architectures that can be transcoders."""

from saejax.sae import gated, jumprelu, matryoshka, mlp, relu, skip, topk

SAES = (relu.SPEC, topk.TOPK, topk.BATCHTOPK, jumprelu.SPEC, gated.SPEC, matryoshka.SPEC, mlp.SPEC)
SKIP_TRANSCODERS = tuple(skip.skip_variant(spec) for spec in (relu.SPEC, topk.TOPK, topk.BATCHTOPK, jumprelu.SPEC))
