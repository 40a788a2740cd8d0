"""TopK SAEs (Gao et al. 2024): each row keeps its k largest pre-activations; and BatchTopK
(Bussmann et al. 2024): the batch keeps its B·k largest, with a learned scalar threshold at inference.

Sparse TopK (``make_sae("topk", ..., sparse=True)``, chosen by default on CPU when d_sae ≥ core.SPARSE_MIN_RATIO·k):
the training forward decodes from the k selected rows of W_dec by gather instead of a dense
[B, d_sae] x [d_sae, d_in] matmul, and the backward touches only the selected latents' rows of W_dec
and columns of W_enc (scatter-adds), so only the encoder's forward matmul stays dense, and it runs
over chunks of rows that are selected from as they are made (`linear.linear_top_k`). Loss and gradients
equal the dense path's up to float rounding (tests/test_sparse_topk.py). Its `pre_acts` carry no
gradient and are computed only where something reads them. With ``screen`` (chosen by default on CPUs
with bf16 dot instructions at d_sae ≥ screening.MIN_WIDTH_PER_K·k, for batches of screening.MIN_ROWS
rows and more) the encoder product is screened in bfloat16 and the selection certified to be
float32's (`saejax.kernels.screening`).
"""

import functools
import math

import jax
import jax.numpy as jnp

from saejax import activations, latent_axis
from saejax.kernels import screening
from saejax.sae import core, linear, registry

# The running mean of BatchTopK's smallest selected activation becomes an EMA after this many steps.
# Short, because the mean lags behind activations that change as the SAE trains: on MiniLM activations
# (d_sae 3072, k 32, 200 steps of 4096) a window of 100 steps (SAELens' and dictionary_learning's rate
# 0.01) left an inference L0 of 24.6 on held-out rows (FVU 0.1195), 10 steps 31.6 (FVU 0.1073)
# (BUILD_NOTES.md, "Peers on the same activations").
THRESHOLD_WINDOW = 10

# AuxK coefficient for the TopK family: α = 1/32 (Gao et al. 2024, "Scaling and evaluating sparse
# autoencoders", section 2.4 and appendix B.1). The peers differ: sparsify 1.3 has AuxK off by default,
# SAELens uses 1.0 on its unnormalised MSE with a 1000-step dead window.
AUXK_COEFF = 1 / 32

# Initial norm of the TopK family's encoder rows: 1/√3 ≈ 0.577, the row norm of PyTorch's default
# nn.Linear init that sparsify's encoder starts from (uniform ±1/√d_in entries); measured beside
# sparsify and SAELens on MiniLM activations (BUILD_NOTES.md, "Peers on the same activations").
ENCODER_INIT_SCALE = 1 / math.sqrt(3)

# The TopK family's decoder rows take Adam steps this many times the learning rate. Unit-norm rows
# turn by ~lr·sqrt(d_in) a step while the encoder's rows (norm 0.58) turn 1.7x as fast; SAELens'
# TopK SAE, whose decoder rows start at norm 0.1 and are normalised in the forward pass, turns them
# ~10x as fast. On MiniLM activations (d_sae 3072, k 32, 200 steps of 4096) 1x / 2x / 3x / 10x gave a
# held-out FVU of 0.1398 / 0.1276 / 0.1248 / 0.1269 at a constant lr of 1e-3 (SAELens 0.1365), and
# 0.2462 / 0.1966 / 0.1797 at 2e-4 (SAELens 0.2557); at the default lr 0.1112 / 0.1094 / 0.1104 (1.0 /
# 1.4 / 1.6 % dead); on Gemma-3-270M layer 6 0.0474 / 0.0453 / 0.0455 (10.1 / 8.1 / 7.5 % dead); on superposition
# data (the default lr is 5.9e-3 there) dictionary recovery fell from 0.944 to 0.937 (MMCS) at 2x and
# 3x, FVU rose from 0.016 to 0.019 / 0.021. At 2,000 steps on MiniLM, 2x gave 0.0872 against 1x's
# 0.0883 at a constant lr of 1e-3 (SAELens 0.0875), but 0.0898 against 0.0873 at the default lr
# (SAELens 0.0993): it helps most where the lr is below the best (BUILD_NOTES.md). ReLU at a constant
# 1e-3: 2x gave FVU 0.218 at L0 32 against 1x's 0.268 at L0 31.5; other architectures: 1 (not
# measured at their defaults).
DECODER_LR_SCALE = 2.0

# What the TopK family (topk, batchtopk, matryoshka) declares alike: sparsity from sae.k, no sparsity
# penalty, the 1/sqrt(d_sae) learning rate (`saejax.defaults.learning_rate`) decaying linearly to 0 over
# the last fifth of the run (`saejax.defaults.DECAY_FRACTION`), AuxK on.
FAMILY = dict(tieable=True, needs_k=True, penalties=(), encoder_init_scale=ENCODER_INIT_SCALE, scaled_lr=True,
              decoder_lr_scale=DECODER_LR_SCALE, lr_decay="linear", auxk=AUXK_COEFF)
# BatchTopK's scalar inference threshold has no latent axis.
SCALAR_THRESHOLD_AXES = {**registry.LINEAR_LATENT_AXES, "threshold": None}


def init_topk(key: jax.Array, opts: registry.Options) -> registry.Params:
    """Linear params plus b_enc [d_sae] at zero."""
    return {**linear.init_linear_of(key, opts), "b_enc": linear.zero_latents(opts)}


def init_batchtopk(key: jax.Array, opts: registry.Options) -> registry.Params:
    """Linear params, b_enc [d_sae] and the scalar inference threshold [], all zero."""
    return {**init_topk(key, opts), "threshold": jnp.zeros((), jnp.float32)}


def encode_topk(params: registry.Params, x: jax.Array, train: bool, opts: registry.Options):
    """x [B, d_in] -> (z: each row's k largest pre-activations, ReLU'd, pre_acts [B, d_sae], {})."""
    pre = linear.pre_acts(params, x, opts)
    return activations.topk(pre, opts.k), pre, {}


def encode_topk_sparse(params: registry.Params, x: jax.Array, train: bool, opts: registry.Options):
    """TopK with the selection read off pre-activations that carry no gradient; the selected values
    get theirs through `selected_pre_acts` (sparse). aux holds the values and indices for decoding."""
    selected, indices = linear.linear_top_k(linear.encoder_view(params, opts), x, opts.k, opts.dtype,
                                            screening.screens(opts.screen, x.shape[0]))
    values = jax.nn.relu(selected)
    pre = jax.lax.stop_gradient(linear.pre_acts(params, x, opts))  # only computed if read
    return linear.scatter_rows(values, indices, pre.shape[1]), pre, {"values": values, "indices": indices}


def encode_batchtopk(params: registry.Params, x: jax.Array, train: bool, opts: registry.Options):
    """Training: BatchTopK over the batch. Inference: JumpReLU at the learned scalar threshold."""
    pre = linear.pre_acts(params, x, opts)
    if not train:
        return activations.relu(pre) * (pre > params["threshold"]), pre, {}
    z, min_selected = activations.batchtopk(pre, opts.k)
    return z, pre, {"min_selected": min_selected}


def _forward_sparse(encode_fn, dtype, params, x, train=True):
    """TopK forward decoding from the k selected rows of W_dec (aux "values"/"indices")."""
    z, pre, aux = encode_fn(params, x, train)
    return core.SAEOutput(linear.sparse_decode(params, aux["values"], aux["indices"], dtype), z, pre, aux)


def forward_topk(encode_fn, decode_fn, opts: registry.Options):
    """The dense forward, or with opts.sparse the sparse one (dense when the latents are split over a mesh)."""
    dense_forward = core.dense_forward(encode_fn, decode_fn, opts)
    if not opts.sparse:
        return dense_forward
    sparse_forward = functools.partial(_forward_sparse, functools.partial(encode_topk_sparse, opts=opts), opts.dtype)

    def forward_impl(params, x, train=True):
        return (dense_forward if latent_axis.sharded_mesh() is not None else sparse_forward)(params, x, train)

    return forward_impl


def update_running_threshold(params: registry.Params, out: core.SAEOutput, step: jax.Array) -> registry.Params:
    """threshold <- running mean of each batch's smallest selected activation (EMA after
    THRESHOLD_WINDOW steps); Bussmann et al. 2024's inference threshold for BatchTopK."""
    if "min_selected" not in out.aux:
        return params
    count = jnp.minimum(step + 1, THRESHOLD_WINDOW).astype(jnp.float32)
    theta = params["threshold"]
    return {**params, "threshold": theta + (out.aux["min_selected"] - theta) / count}


TOPK = registry.Architecture(
    name="topk", init=init_topk, encode=encode_topk, decode=linear.decode, forward=forward_topk,
    pre_acts_of=linear.linear_pre_acts_of, has_sparse_path=True, separate_output=True,
    export=registry.SAELensExport("topk", writes_k=True), **FAMILY,
)
BATCHTOPK = registry.Architecture(
    name="batchtopk", init=init_batchtopk, encode=encode_batchtopk, decode=linear.decode,
    forward=core.dense_forward, pre_acts_of=linear.linear_pre_acts_of, latent_axes=SCALAR_THRESHOLD_AXES,
    buffers=("threshold",), update_buffers=update_running_threshold, separate_output=True,
    export=registry.SAELensExport("jumprelu", scalar_threshold=True, transcoder="jumprelu_transcoder"), **FAMILY,
)
