"""The deep encoder and decoder of `sae.arch='mlp'`: a Flax module of dense layers."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense layers with ReLU between them: [..., n] -> [..., widths[-1]] (float32 out)."""

    widths: Sequence[int]
    final_bias: bool = True
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        for width in self.widths[:-1]:
            x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
        x = nn.Dense(self.widths[-1], use_bias=self.final_bias, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
