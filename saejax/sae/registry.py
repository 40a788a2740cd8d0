"""The architecture registry: what each SAE architecture is and can do, declared in one place.

An `Architecture` spec holds an architecture's pure functions (init, encode, decode, forward,
pre_acts_of, buffer update) and everything the rest of saejax asks of it: its latent axes, its
sparsity penalties and loss terms, its training defaults, and its SAELens export mapping. A new
architecture is one new spec passed to `register`; `saejax.sae.make_sae` assembles an `SAE` from it.

    spec = registry.get("topk")              # ConfigError for an unknown name
    spec.has_linear_decoder, spec.needs_k    # True, True
    registry.names()                         # ("relu", "topk", ...), in registration order

Spec functions receive the SAE's `Options` (sizes and build options, resolved by `make_sae`).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from saejax.errors import ConfigError

Params = dict[str, Any]

# Latent axis of every parameter a linear SAE may hold (`SAE.latent_axes`).
LINEAR_LATENT_AXES = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "b_dec": None, "b_gate": 0, "b_mag": 0, "r_mag": 0,
                      "threshold": 0}


class Options(NamedTuple):
    """An SAE's sizes and build options, as `make_sae` resolved them.

    d_in: input width.  d_sae: latents.  d_out: reconstruction width (d_in for an SAE).
    transcoder: the reconstruction's target is not the input but another activation of width d_out
      (a transcoder): b_dec [d_out] lives in the output space, so the encoder does not subtract it
      (pre = x @ W_enc + b_enc, as SAELens' transcoders), and W_enc and W_dec start independent.
    k: active latents (TopK family; JumpReLU's target L0).  leak: leaky-ReLU slope.  tied: W_enc = W_dec.T.
    init_threshold / bandwidth: JumpReLU's.  prefixes: Matryoshka's nested prefix ends.
    mlp_hidden: the MLP SAE's hidden widths.  dec_init_norm, unit_norm_decoder: linear init.
    dtype: matmul compute dtype.  sparse, screen: the sparse TopK path (see `saejax.sae.topk`).
    """

    d_in: int
    d_sae: int
    d_out: int
    k: int
    leak: float
    tied: bool
    init_threshold: float | None
    bandwidth: float
    prefixes: tuple[int, ...]
    mlp_hidden: tuple[int, ...]
    dec_init_norm: float
    unit_norm_decoder: bool
    dtype: str
    sparse: bool
    screen: bool | str
    transcoder: bool = False


@dataclasses.dataclass(frozen=True)
class SAELensExport:
    """How an architecture is written in SAELens' layout (`saejax.export`).

    architecture: SAELens' `architecture` name (standard, topk, jumprelu, gated).
    scalar_threshold: our threshold is one scalar [], written broadcast to [d_sae] (BatchTopK's
      inference threshold, as SAELens saves its own BatchTopK SAEs).
    writes_k: the cfg carries `k` (SAELens' topk), so exporting needs k >= 1.
    transcoder: SAELens' architecture for a transcoder of this architecture (transcoder,
      jumprelu_transcoder, skip_transcoder, jumprelu_skip_transcoder); None: SAELens has none.
    """

    architecture: str
    scalar_threshold: bool = False
    writes_k: bool = False
    transcoder: str | None = None


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One SAE architecture. Functions take the SAE's `Options` as `opts`:

    init(key, opts) -> params.
    encode(params, x [B, d_in], train, opts) -> (z [B, d_sae], pre_acts [B, d_sae], aux dict).
    decode(params, z [B, d_sae], opts) -> x_hat [B, d_out].
    forward(encode_fn, decode_fn, opts) -> forward_fn(params, x, train=True) -> SAEOutput, where
      encode_fn(params, x, train) and decode_fn(params, z) are `encode` and `decode` bound to opts.
    pre_acts_of(params, x, latents [n] or None, dtype) -> [B, n] (None: all) differentiable
      pre-activations (`SAEOutput.pre_acts`); None where there is none (mlp).
    update_buffers(params, out, step) -> params: sets `buffers`, which the optimizer leaves alone.
    validate(opts): raises ConfigError on options this architecture cannot take.
    extra_hparams(opts) -> what `SAE.hparams` records beside the common options.
    has_sparse_path: `forward` takes the sparse TopK path when opts.sparse (`make_sae`'s sparse="auto").
    separate_output: the architecture may be a transcoder (opts.transcoder: it reconstructs a target of
      width opts.d_out, which may differ from d_in, from its input); an SAE's d_out is d_in.
    needs_target: the architecture is a transcoder only (a skip transcoder): `make_sae` needs d_out.

    Defaults and capabilities (read by `saejax.defaults`, losses, train, export, resampling, ...):
    has_linear_decoder: W_dec rows exist (decoder constraints, resampling, AuxK, tanh, weighted L1).
    tieable: W_enc may be W_dec.T.  needs_k: sparsity is sae.k latents per row (or per batch).
    learned_thresholds: per-latent JumpReLU thresholds (their lr scale, L0 and pre-activation
      losses, data-driven initial values).
    penalties: the sparsity penalties (loss fields) the loss has; others are switched off.
    reconstruction: the reconstruction loss term, "mse" or "matryoshka_mse" (`saejax.losses`).
    l1_term: the loss term loss.l1 weighs, "l1" or "gated_sparsity".
    encoder_init_scale, scaled_lr, decoder_lr_scale, lr_decay, auxk, pre_act, free_decoder_norm,
    target_l0_from_k: the defaults `saejax.defaults.resolve` fills in (see there).
    export: the SAELens mapping, None when not exportable; export_skip(hparams) -> a reason to skip
      the export of this particular SAE, or None.
    """

    name: str
    init: Callable[[Any, Options], Params]
    encode: Callable[..., tuple]
    decode: Callable[..., Any]
    forward: Callable[..., Callable]
    pre_acts_of: Callable[..., Any] | None = None
    latent_axes: Mapping[str, int | None] = dataclasses.field(default_factory=lambda: dict(LINEAR_LATENT_AXES))
    buffers: tuple[str, ...] = ()
    update_buffers: Callable[..., Params] | None = None
    validate: Callable[[Options], None] = lambda opts: None
    extra_hparams: Callable[[Options], dict] = lambda opts: {}
    has_sparse_path: bool = False
    separate_output: bool = False
    needs_target: bool = False
    has_linear_decoder: bool = True
    tieable: bool = False
    needs_k: bool = False
    learned_thresholds: bool = False
    penalties: tuple[str, ...] = ()
    reconstruction: str = "mse"
    l1_term: str = "l1"
    # Initial norm of the encoder's rows (W_enc = scale · W_decᵀ with unit decoder rows; with a free
    # decoder norm the decoder rows start at this norm too): 0.1, Anthropic's April 2024 update
    # (Conerly et al.), as SAELens, unless an architecture says otherwise.
    encoder_init_scale: float = 0.1
    scaled_lr: bool = False
    decoder_lr_scale: float = 1.0
    lr_decay: str = "constant"
    auxk: float = 0.0
    pre_act: float = 0.0
    free_decoder_norm: bool = False
    target_l0_from_k: bool = False
    export: SAELensExport | None = None
    export_skip: Callable[[Mapping[str, Any]], str | None] = lambda hparams: None


_ARCHITECTURES: dict[str, Architecture] = {}


def register(spec: Architecture) -> Architecture:
    """Add `spec` under spec.name (ConfigError if the name is taken); returns it."""
    if spec.name in _ARCHITECTURES:
        raise ConfigError(f"SAE architecture {spec.name!r} is already registered")
    _ARCHITECTURES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove the architecture `name` (e.g. one a test registered)."""
    _ARCHITECTURES.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered architecture's name, in registration order."""
    return tuple(_ARCHITECTURES)


def get(name: str) -> Architecture:
    """The spec registered as `name`; ConfigError naming the choices when there is none."""
    spec = _ARCHITECTURES.get(name)
    if spec is None:
        raise ConfigError(f"unknown SAE architecture sae.arch={name!r}; choose one of {', '.join(names())}")
    return spec


def find(name: str) -> Architecture | None:
    """The spec registered as `name`, or None."""
    return _ARCHITECTURES.get(name)
