"""Latent activation functions: z = act(pre_acts), each a pure function of [B, d_sae] arrays.

JumpReLU and the Heaviside step use straight-through estimators (STE) for their threshold's
gradient (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders"), with a rectangle kernel K(u) = 1[|u| < 1/2] of width `bandwidth`:

    d/dθ JumpReLU_θ(z) := -(θ/ε) K((z - θ)/ε)          d/dθ H(z - θ) := -(1/ε) K((z - θ)/ε)

The gradient with respect to z stays the true one: 1[z > θ] for JumpReLU and 0 for the step.
Thresholds are compared in float32 whatever the matmul dtype.
"""

import functools

import jax
import jax.numpy as jnp

from saejax import batch_axis, latent_axis


def relu(pre_acts: jax.Array) -> jax.Array:
    """Plain ReLU. [B, F] -> [B, F]."""
    return jax.nn.relu(pre_acts)


def leaky_relu(pre_acts: jax.Array, negative_slope: float) -> jax.Array:
    """Leaky ReLU: negative pre-activations are scaled by `negative_slope`. [B, F] -> [B, F]."""
    return jnp.where(pre_acts > 0, pre_acts, negative_slope * pre_acts)


def topk(pre_acts: jax.Array, k: int) -> jax.Array:
    """Keep each row's k largest pre-activations, ReLU'd; zero elsewhere. [B, F] -> [B, F].

    Exactly k entries per row are selected (at most k are non-zero), ties broken by index.
    """
    return latent_axis.topk(pre_acts, k, jax.nn.relu)  # two-stage when the latents are sharded


def batchtopk(pre_acts: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Keep the k·B largest ReLU'd pre-activations of the whole batch (Bussmann et al. 2024).

    Args:
      pre_acts: [B, F] (under pmap: this replica's rows; B then counts the whole batch's rows,
        see `saejax.batch_axis`).
      k: the mean number of active latents per row.

    Returns:
      z: [B, F], the entries at or above the batch's k·B-th largest activation (k·B of them
        unless values tie exactly).
      min_selected: [] the smallest positive selected activation (0 if none is positive); its
        running mean is the inference threshold of a BatchTopK SAE.
    """
    acts = jax.nn.relu(pre_acts)
    rows = pre_acts.shape[0] * batch_axis.replicas()
    if latent_axis.sharded_mesh() is not None:  # latents split over a mesh: two-stage
        threshold = latent_axis.kth_largest(acts, k * rows)
    else:  # one device, or pmap replicas holding slices of the rows
        threshold = batch_axis.kth_largest(acts.reshape(-1), k * rows)
    selected = acts >= threshold
    z = jnp.where(selected, acts, 0.0)
    smallest = batch_axis.smallest(jnp.where(selected & (acts > 0), acts, jnp.inf))
    min_selected = jnp.where(jnp.isfinite(smallest), smallest, 0.0)
    return z, jax.lax.stop_gradient(min_selected)


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a broadcast gradient [..., F] back to the threshold's shape ([F] or [])."""
    x = x.reshape(-1, x.shape[-1]).sum(0)
    return x.sum() if shape == () else x


def _rectangle(pre_acts: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """K((z - θ)/ε) with K the rectangle kernel of width 1."""
    return (jnp.abs((pre_acts - threshold) / bandwidth) < 0.5).astype(pre_acts.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre_acts: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """JumpReLU: ReLU(z) · 1[z > θ]. pre_acts [B, F], threshold [F] or [] -> [B, F].

    The ReLU matters only when θ < 0 and matches SAELens' inference forward.
    """
    return jax.nn.relu(pre_acts) * (pre_acts > threshold)


def _jumprelu_fwd(pre_acts, threshold, bandwidth):
    return jumprelu(pre_acts, threshold, bandwidth), (pre_acts, threshold)


def _jumprelu_bwd(bandwidth, residuals, g):
    pre_acts, threshold = residuals
    d_pre = g * ((pre_acts > threshold) & (pre_acts > 0))
    d_threshold = -(threshold / bandwidth) * _rectangle(pre_acts, threshold, bandwidth) * g
    return d_pre, _sum_to_shape(d_threshold, jnp.shape(threshold))


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre_acts: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """Heaviside step H(z - θ) with a straight-through threshold gradient. [B, F] -> [B, F].

    Summed over latents it is the L0 norm, differentiable in θ through the STE.
    """
    return (pre_acts > threshold).astype(pre_acts.dtype)


def _step_fwd(pre_acts, threshold, bandwidth):
    return step(pre_acts, threshold, bandwidth), (pre_acts, threshold)


def _step_bwd(bandwidth, residuals, g):
    pre_acts, threshold = residuals
    d_threshold = -(1.0 / bandwidth) * _rectangle(pre_acts, threshold, bandwidth) * g
    return jnp.zeros_like(pre_acts), _sum_to_shape(d_threshold, jnp.shape(threshold))


step.defvjp(_step_fwd, _step_bwd)
