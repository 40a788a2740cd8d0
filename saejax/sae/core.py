"""SAE architectures: parameter init plus pure encode/decode functions over a params dict.

Params are a plain dict, named and oriented like SAELens:

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]
    threshold [d_sae] (jumprelu) or [] (batchtopk, matryoshka: the learned inference threshold)
    b_gate, b_mag, r_mag [d_sae] (gated, which has no b_enc)

Tied SAEs have no W_enc (W_enc = W_dec.T). The deep `mlp` SAE keeps its Flax MLP params under
"encoder" / "decoder" beside b_dec. Every encoder subtracts b_dec from its input first.

An `SAE` is a NamedTuple of pure functions built by `make_sae`; nothing is hidden in objects:

    sae = make_sae("topk", d_in=512, d_sae=8192, k=32)
    params = sae.init(jax.random.key(0))
    out = sae.forward(params, x)              # SAEOutput(x_hat, z, pre_acts, aux)
    z = sae.encode(params, x)                 # inference latents [B, d_sae]
    x_hat = sae.decode(params, z)             # [B, d_in]

Each architecture is an `Architecture` spec in `saejax.sae.registry` (its own module: relu, topk
(with batchtopk), jumprelu, gated, matryoshka, mlp); `make_sae` assembles an `SAE` from the spec.

`sae.pre_acts_of(params, x, latents)` computes the pre-activations of a subset of the latents only,
with their gradient: AuxK encodes just the dead latents with it (`saejax.losses.auxk`).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from saejax import kernels
from saejax.kernels import screening
from saejax.errors import ConfigError, DataError
from saejax.sae import linear, registry

Params = registry.Params

# sparse="auto" picks the sparse TopK path on CPU when d_sae >= SPARSE_MIN_RATIO * k (`saejax.kernels`).
SPARSE_MIN_RATIO = kernels.SPARSE_MIN_RATIO


class SAEOutput(NamedTuple):
    """What a forward pass returns; loss transforms read it.

    x_hat: [B, d_out] reconstruction (d_out = d_in for an SAE).  z: [B, d_sae] latents.
    pre_acts: [B, d_sae] encoder pre-activations (gated: the magnitude path).
    aux: architecture extras: gated "gate_pre" [B, d_sae]; batchtopk/matryoshka "min_selected" [];
      matryoshka "prefix_x_hats" (one [B, d_in] reconstruction per nested prefix); sparse topk
      "values" [B, k] (the ReLU'd selected activations) and "indices" [B, k] int32. In training the
      step adds "steps_since_fired" [d_sae] int32 (its dead-latent counter) for the loss terms.
    """

    x_hat: jax.Array
    z: jax.Array
    pre_acts: jax.Array
    aux: dict


class SAE(NamedTuple):
    """An architecture as pure functions over a params dict (see module docstring).

    init(key) -> params.  forward(params, x [B, d_in], train=True) -> SAEOutput.
    encode(params, x) -> z [B, d_sae] (inference mode).  decode(params, z) -> x_hat [B, d_out].
    latent_axes: for each param key, the axis indexing latents (None: no latent axis).
    buffers: param keys not trained by the optimizer but set by update_buffers(params, out, step).
    hparams: the options the SAE was built with (k, bandwidth, prefixes, sparse, ...).
    pre_acts_of: (params, x [B, d_in], latents [n] int or None) -> the pre-activations
      (`SAEOutput.pre_acts`) of those latents only, [B, n] (None: all, [B, d_sae]), differentiable
      in params; None for the mlp SAE.
    d_out: the reconstruction's width: d_in for an SAE (`make_sae` sets it); another width for an
      architecture that reconstructs a target other than its input (a transcoder).
    transcoder: the reconstruction's target is another activation than the input (`make_sae`'s d_out
      was given): batches are (inputs [B, d_in], targets [B, d_out]) pairs, and the run keeps a
      normalisation scale for each (`saejax.normalization`).
    """

    arch: str
    d_in: int
    d_sae: int
    hparams: Mapping[str, Any]
    init: Callable[[jax.Array], Params]
    forward: Callable[..., SAEOutput]
    encode: Callable[[Params, jax.Array], jax.Array]
    decode: Callable[[Params, jax.Array], jax.Array]
    latent_axes: Mapping[str, int | None]
    buffers: tuple[str, ...]
    update_buffers: Callable[[Params, SAEOutput, jax.Array], Params]
    pre_acts_of: Callable[..., jax.Array] | None = None
    d_out: int | None = None
    transcoder: bool = False

    @property
    def spec(self) -> registry.Architecture:
        """What this SAE's architecture is and can do (its `registry.Architecture`)."""
        return registry.get(self.arch)


# ---------------------------------------------------------------------------------------------
# Linear building blocks.


def _check_width(x: jax.Array, d_in: int) -> None:
    if x.ndim != 2 or x.shape[-1] != d_in:
        raise DataError(f"input of shape {tuple(x.shape)} does not fit the SAE: expected [batch, {d_in}]")


def _no_buffers(params, out, step):
    return params


def _forward(encode_fn, decode_fn, params, x, train=True):
    z, pre, aux = encode_fn(params, x, train)
    return SAEOutput(decode_fn(params, z), z, pre, aux)


def dense_forward(encode_fn, decode_fn, opts: registry.Options):
    """The plain forward: (params, x [B, d_in], train=True) -> SAEOutput(decode(encode(x)), ...)."""
    return functools.partial(_forward, encode_fn, decode_fn)


def _validate(spec: registry.Architecture, opts: registry.Options) -> None:
    """ConfigError on options no architecture, or not this one, can take."""
    arch, d_in, d_sae, k = spec.name, opts.d_in, opts.d_sae, opts.k
    if d_in <= 0 or d_sae <= 0:
        raise ConfigError(f"SAE sizes must be positive: d_in={d_in}, sae.d_sae={d_sae}")
    if spec.needs_k and not 0 < k <= d_sae:
        raise ConfigError(f"sae.k={k} must be in [1, sae.d_sae={d_sae}] for sae.arch={arch!r}")
    if opts.tied and not spec.tieable:
        tieable = [name for name in registry.names() if registry.get(name).tieable]
        raise ConfigError(f"sae.tied=True is not supported for sae.arch={arch!r} (only {', '.join(tieable)})")
    if opts.transcoder and not spec.separate_output:
        transcoders = [name for name in registry.names() if registry.get(name).separate_output]
        raise ConfigError(f"sae.arch={arch!r} reconstructs its input and cannot be a transcoder (a target of width "
                          f"d_out={opts.d_out} from inputs of width d_in={d_in}); transcoders: "
                          f"{', '.join(transcoders)}")
    if spec.needs_target and not opts.transcoder:
        raise ConfigError(f"sae.arch={arch!r} is a skip transcoder: it reconstructs a target other than its input "
                          "(set model.target_site, e.g. mlp_out with model.site=mlp_in)")
    if opts.transcoder and (opts.d_out <= 0 or opts.tied):
        raise ConfigError(f"a transcoder needs a target width d_out > 0 (got {opts.d_out}) and an untied encoder "
                          f"(sae.tied={opts.tied}): its input and output are different spaces")
    spec.validate(opts)
    if opts.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"sae.dtype={opts.dtype!r} must be 'float32' or 'bfloat16'")


def default_prefixes(d_sae: int) -> tuple[int, ...]:
    """Nested Matryoshka prefixes d_sae/16, d_sae/4, d_sae (deduplicated, at least 1)."""
    return tuple(sorted({max(1, d_sae // 16), max(1, d_sae // 4), d_sae}))


def make_sae(
    arch: str,
    d_in: int,
    d_sae: int,
    *,
    k: int = 32,
    leak: float = 0.0,
    tied: bool = False,
    jumprelu_init_threshold: float | None = None,
    jumprelu_bandwidth: float = 0.05,
    matryoshka_prefixes: Sequence[int] | None = None,
    mlp_hidden: Sequence[int] = (256,),
    dec_init_norm: float = 0.1,
    unit_norm_decoder: bool = True,
    dtype: str = "float32",
    sparse: bool | str = "auto",
    screen: bool | str = "auto",
    d_out: int | None = None,
) -> SAE:
    """Build the architecture registered as `arch` (see module docstring). Raises ConfigError on bad options.

    jumprelu_init_threshold: every JumpReLU threshold's initial value; None leaves them at 0 for
    `step.init_train_state` to set from the data (`initializers.jumprelu_thresholds`).

    sparse: topk only: True decodes and back-propagates through the k selected latents only,
    False uses dense matmuls, "auto" picks sparse on CPU when d_sae >= SPARSE_MIN_RATIO · k
    (`kernels.sparse_topk_pays`), dense elsewhere.
    screen: sparse float32 topk only: True screens the encoder's pre-activations in bfloat16 and
    certifies the selection (`screening`; the same latents, faster where bf16 dots are), "auto" does
    where `screening.worth_screening` says it pays, for batches of screening.MIN_ROWS rows and more.
    d_out: None: an SAE, which reconstructs its input (of width d_in). A width: a transcoder, which
    reconstructs a target of that width (another activation) from its input; only architectures with
    `separate_output` can be one (`registry.Options.transcoder`).
    """
    spec = registry.get(arch)
    prefixes = tuple(matryoshka_prefixes) if matryoshka_prefixes else default_prefixes(d_sae)
    opts = registry.Options(
        d_in=d_in, d_sae=d_sae, d_out=d_in if d_out is None else d_out, k=k, leak=leak, tied=tied,
        init_threshold=jumprelu_init_threshold, bandwidth=jumprelu_bandwidth, prefixes=prefixes,
        mlp_hidden=tuple(mlp_hidden), dec_init_norm=dec_init_norm, unit_norm_decoder=unit_norm_decoder,
        dtype=dtype, sparse=False, screen=False, transcoder=d_out is not None,
    )
    _validate(spec, opts)
    sparse = _resolve_sparse(sparse, arch, d_sae, k)
    screen = _resolve_screen(screen, sparse, dtype, d_sae, k)
    opts = opts._replace(sparse=sparse, screen=screen)
    hparams = dict(k=k, leak=leak, tied=tied, bandwidth=jumprelu_bandwidth, dtype=dtype, sparse=sparse,
                   screen=screen, **spec.extra_hparams(opts))

    encode_fn = functools.partial(spec.encode, opts=opts)
    decode_fn = functools.partial(spec.decode, opts=opts)
    forward_impl = spec.forward(encode_fn, decode_fn, opts)

    def forward(params, x, train=True):
        _check_width(x, d_in)
        return forward_impl(params, x, train)

    def encode(params, x):
        _check_width(x, d_in)
        return encode_fn(params, x, False)[0]

    pre_acts_of = None if spec.pre_acts_of is None else _pre_acts_of(spec.pre_acts_of, opts)
    return SAE(arch, d_in, d_sae, hparams, functools.partial(spec.init, opts=opts), forward, encode, decode_fn,
               dict(spec.latent_axes), spec.buffers, spec.update_buffers or _no_buffers, pre_acts_of, opts.d_out,
               opts.transcoder)


def _pre_acts_of(pre_acts_of: Callable, opts: registry.Options) -> Callable:
    """A spec's pre_acts_of bound to opts.dtype; a transcoder's encoder reads `linear.encoder_view`."""
    if not opts.transcoder:
        return functools.partial(pre_acts_of, dtype=opts.dtype)

    def transcoder_pre_acts_of(params, x, latents):
        return pre_acts_of(linear.encoder_view(params, opts), x, latents, dtype=opts.dtype)

    return transcoder_pre_acts_of


def _resolve_sparse(sparse: bool | str, arch: str, d_sae: int, k: int) -> bool:
    """sparse=True/False/"auto" -> whether this SAE takes the sparse TopK path."""
    if sparse == "auto":
        return registry.get(arch).has_sparse_path and kernels.sparse_topk_pays(d_sae, k)
    if not isinstance(sparse, bool):
        raise ConfigError(f"sae.sparse={sparse!r} must be True, False or 'auto'")
    if sparse and not registry.get(arch).has_sparse_path:
        with_path = ", ".join(repr(name) for name in registry.names() if registry.get(name).has_sparse_path)
        raise ConfigError(f"sae.sparse=True is for sae.arch={with_path}, not {arch!r}")
    return sparse


def _resolve_screen(screen: bool | str, sparse: bool, dtype: str, d_sae: int, k: int) -> bool | str:
    """screen=True/False/"auto" -> True, False, or "auto" where it may pay (`screening.worth_screening`;
    whether a batch is screened then depends on its rows, `screening.screens`)."""
    if screen == "auto":
        worth = sparse and jnp.dtype(dtype) == jnp.float32 and screening.worth_screening(d_sae, k)
        return "auto" if worth else False
    if not isinstance(screen, bool):
        raise ConfigError(f"sae.screen={screen!r} must be True, False or 'auto'")
    if screen and not (sparse and jnp.dtype(dtype) == jnp.float32):
        raise ConfigError("sae.screen=True needs the sparse float32 TopK path (sae.arch='topk', sae.sparse "
                          f"not false, sae.dtype='float32'); this SAE has sparse={sparse}, dtype={dtype!r}")
    return screen


def _int_list(text: str, field: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{field}={text!r} must be comma-separated integers, e.g. '64,256,1024'") from None


def _sparse_setting(text, field: str) -> bool | str:
    """sae.sparse or sae.screen from a config: "auto" | "true" | "false" (booleans accepted too)."""
    if isinstance(text, bool):
        return text
    setting = {"auto": "auto", "true": True, "false": False}.get(str(text).lower())
    if setting is None:
        raise ConfigError(f"{field}={text!r} must be 'auto', 'true' or 'false'")
    return setting


def encoder_init_scale(arch: str, chosen: float | None = None) -> float:
    """`chosen` (sae.dec_init_norm) unless it is None, else the architecture's `encoder_init_scale`
    (0.1 for a name that is not registered, which `make_sae` then reports)."""
    if chosen is not None:
        return chosen
    spec = registry.find(arch)
    return 0.1 if spec is None else spec.encoder_init_scale


def sae_from_config(sae_config, d_in: int, unit_norm_decoder: bool = True, d_out: int | None = None) -> SAE:
    """Build the SAE that the `sae` section of a run's config describes (a transcoder to targets of
    width `d_out` when given)."""
    return make_sae(
        sae_config.arch,
        d_in,
        sae_config.d_sae,
        k=sae_config.k,
        leak=sae_config.leak,
        tied=sae_config.tied,
        jumprelu_init_threshold=sae_config.jumprelu_init_threshold,
        jumprelu_bandwidth=sae_config.jumprelu_bandwidth,
        matryoshka_prefixes=_int_list(sae_config.matryoshka_prefixes, "sae.matryoshka_prefixes") or None,
        mlp_hidden=_int_list(sae_config.mlp_hidden, "sae.mlp_hidden"),
        dec_init_norm=encoder_init_scale(sae_config.arch, sae_config.dec_init_norm),
        unit_norm_decoder=unit_norm_decoder,
        dtype=sae_config.dtype,
        sparse=_sparse_setting(sae_config.get("sparse", "auto"), "sae.sparse"),
        screen=_sparse_setting(sae_config.get("screen", "auto"), "sae.screen"),
        d_out=d_out,
    )
