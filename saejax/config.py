"""The base config every experiment config extends: each field with its default and a one-line doc,
and the config's validation.

Experiment configs (``experiments/configs/NAME.py``) call `base_config()` and override
fields; `experiments/train.py` validates the result with `validate` before anything runs, and
``--config.help`` prints every field with its value and doc (`FIELDS`). Field names are part of
the command-line contract (see README): keep them stable.
"""

from typing import Any, NamedTuple

import ml_collections
from ml_collections.config_dict import placeholder

from saejax import defaults
from saejax.errors import ConfigError
from saejax.models.hooks import parse_points, point_name


class Unset(NamedTuple):
    """A default of None that the field may later hold a value of `type` (decided by the run from
    the architecture, `saejax.defaults`, unless a config or flag sets it)."""

    type: type


class Field(NamedTuple):
    """One config field: its dotted path ("section.name", or "name" at the top), default, and doc."""

    path: str
    default: Any  # a value, or Unset(type)
    doc: str  # one line, printed by --config.help


FIELDS = (
    Field("seed", 0, "seed of every random draw: data order, synthetic data, initialisation, resampling"),

    # data: what the SAE trains on
    Field("data.source", "synthetic",
          "where the training rows come from: synthetic | npy | patches | digits | tabular | model"),
    Field("data.path", "",
          "npy: a shard-store folder (manifest.json), its manifest.json, or a glob of .npy files [n, d_in]; "
          "model: a folder the stream's rows are written through to and read back from by later runs of the "
          "same stream (saejax/data/fill_store.py; empty: none)"),
    Field("data.chunk_rows", 512, "npy: rows per contiguous read; the unit of the global permutation"),
    Field("data.shuffle_rows", 32768, "npy: rows per in-memory shuffle window (data/order.py)"),
    Field("data.on_bad_rows", "error", "npy: what a row holding NaN/Inf does: error | skip (data/npy.py)"),
    # a fixed choice per store, the same for every run on it
    Field("data.heldout_fraction", 0.1, "npy: share of the store's chunks kept out of training for evaluation; 0 = "
          "train on every row"),
    Field("data.heldout_max_rows", 100_000, "npy: at most this many rows' worth of chunks held out; model: the "
          "held-out split is the first this many rows of the held-out texts"),
    # model: activations of model.name computed on the fly (saejax/data/stream.py); a fill of
    # buffer_contexts contexts at F=1024 holds ~55k MiniLM rows on the standard library (~85 MiB)
    Field("data.buffer_contexts", 1024, "model: contexts per fill of the mixing buffer; each fill's rows are "
          "shuffled and handed out over many batches"),
    Field("data.shuffle_texts", 65536, "model: the texts are read in blocks of this many, each block shuffled "
          "(seeded, anew every pass); 1 = corpus order"),
    Field("data.forward_batch", 32, "model: contexts per forward pass of the model (harvest's batch size)"),
    Field("data.stream_dtype", "float32", "model: how fills are kept in memory and written through: float32 | "
          "bfloat16 (half the memory and disk; rows rounded to nearest even, handed out as float32)"),
    Field("data.forward_on_all_devices", False, "model: under parallel.strategy mesh or pmap, run the model's "
          "forward data-parallel on every local device (faster on accelerators; the rows then differ from one "
          "device's by float rounding, so a run no longer matches one on another layout bitwise)"),
    Field("data.stream_shards", 1, "model: each fill's contexts are cut into this many shards, each handing out "
          "train.batch_size / stream_shards rows of every batch; the processes of a run share them out (each "
          "computes only its own when the processes divide them), and the batches do not depend on how many"),
    Field("data.d", 256, "synthetic: width of the rows (superposition of n_features unit features in d dimensions)"),
    Field("data.n_features", 512, "synthetic: number of true features"),
    Field("data.avg_active", 5.0, "synthetic: mean number of features active per row"),
    # feature i fires with prob. proportional to freq_ratio**(-i / (n_features - 1)) (data/synthetic.py)
    Field("data.freq_ratio", 100.0, "synthetic: how many times as often the most frequent feature fires as the least"),
    Field("data.correlation", "none", "synthetic: none | hierarchical (children fire only with their parent)"),
    Field("data.children_per_parent", 3, "synthetic, hierarchical: children of each parent feature"),
    Field("data.patch_size", 12,
          "patches: side in pixels of the square patches cut from scikit-image's bundled photographs"),
    Field("data.n_patches", 100_000, "patches: size of the pool of training patches"),
    Field("data.whiten", "zca", "patches: zca | none"),
    Field("data.whiten_eps", 0.1, "patches: ZCA regulariser, relative to the mean eigenvalue (data/patches.py)"),
    Field("data.tabular_dataset", "shuttle", "tabular: which of river's bundled anomaly-detection tables"),
    Field("data.tabular_rows", "normal", "tabular: normal (train on normal rows only) | all"),
    Field("data.test_fraction", 0.2,
          "digits, tabular: seeded share of rows held out of training, for downstream evaluation"),

    # sae: the architecture and its sizes
    Field("sae.arch", "relu", "architecture: relu | topk | batchtopk | jumprelu | gated | matryoshka | mlp"),
    Field("sae.d_sae", 1024, "number of latents (dictionary size)"),
    Field("sae.k", 32,
          "topk, batchtopk, matryoshka: active latents per row; jumprelu: the L0 it starts at and aims for"),
    Field("sae.leak", 0.0, "relu: negative slope of a leaky ReLU (0 = plain ReLU)"),
    Field("sae.tied", False, "W_enc = W_dec.T (relu, topk, batchtopk, jumprelu)"),
    # None starts each latent's threshold where it fires on sae.k / d_sae of the initial sample (so the
    # SAE starts at L0 = sae.k; saejax.initializers.jumprelu_thresholds)
    Field("sae.jumprelu_init_threshold", Unset(float), "jumprelu: every threshold starts here; None: each latent's "
          "from the data, so that L0 starts at sae.k"),
    Field("sae.jumprelu_bandwidth", defaults.JUMPRELU_BANDWIDTH, "jumprelu: width of the straight-through kernel"),
    Field("sae.matryoshka_prefixes", "", "matryoshka: nested prefix sizes, e.g. \"64,256,1024\"; empty = d_sae/16, "
          "d_sae/4, d_sae"),
    Field("sae.mlp_hidden", "256", "mlp: hidden widths of the encoder, comma-separated (the decoder mirrors them)"),
    # W_enc = scale * W_dec.T; None: the spec's encoder_init_scale (saejax.sae.registry)
    Field("sae.dec_init_norm", Unset(float), "initial norm of the encoder rows (and of free-norm decoder rows); "
          "None: the architecture's default"),
    Field("sae.init_b_dec", "geometric_median",
          "initial decoder bias: geometric_median | mean | zeros (of a data sample)"),
    Field("sae.normalize_activations", True, "scale inputs so that E||x||^2 = d_in; folded back at export"),
    Field("sae.dtype", "float32", "compute dtype of the matmuls: float32 | bfloat16 (params stay float32)"),
    Field("sae.sparse", "auto", "topk: decode/backprop through the k active latents only: auto | true | false"),
    Field("sae.screen", "auto",
          "sparse float32 topk: bf16 pre-screen of the encoder, certified exact: auto | true | false"),

    # loss: the reconstruction term and the penalties (coefficients; 0 = off)
    Field("loss.mse", 1.0, "coefficient of the reconstruction error"),
    Field("loss.normalized_mse", False, "reconstruction error divided by the batch's variance (the FVU) instead of "
          "the plain squared error"),
    Field("loss.l1", 0.0, "relu/gated/mlp: L1 of the latents (gated: of the gate)"),
    Field("loss.l1_decoder_weighted", Unset(bool), "weight each latent's |z| by its decoder row norm; None: when the "
          "decoder norm is free (relu's default)"),
    Field("loss.l1_warmup_steps", 0, "linear warm-up of the L1 coefficient from 0, in steps"),
    Field("loss.tanh", 0.0, "saturating L0 proxy: sum of tanh(tanh_scale * |z| * decoder norm)"),
    Field("loss.tanh_scale", 1.0, "scale inside loss.tanh's tanh"),
    Field("loss.kl", 0.0, "KL(rho || mean activation) per latent"),
    Field("loss.rho", 0.05, "loss.kl's target mean activation of every latent"),
    Field("loss.kl_ema", 0.0, "loss.kl's mean activation: 0 = over the batch; in (0, 1) = EMA decay of a running mean"),
    Field("loss.l0", 0.0, "jumprelu: lambda * L0 via the step-function straight-through estimator"),
    # jumprelu: > 0 adds target_l0_coeff * d_in * (L0/target - 1)^2
    Field("loss.target_l0", Unset(float), "jumprelu: the L0 the quadratic target-L0 term aims at; None: sae.k when "
          "loss.l0 is 0, else off"),
    Field("loss.target_l0_coeff", defaults.TARGET_L0_COEFF, "jumprelu: coefficient of the target-L0 term"),
    # lambda * sum_i ReLU(theta_i - pre_i) * ||W_dec[i]|| (saejax/sae/jumprelu.py PRE_ACT_COEFF)
    Field("loss.pre_act", Unset(float), "jumprelu: Anthropic's pre-activation loss coefficient; None: 1e-4 for "
          "jumprelu, else 0"),
    Field("loss.pre_act_dead_only", False, "loss.pre_act on the dead latents only (SAELens' form), not every latent "
          "(Anthropic's)"),
    Field("loss.auxk", Unset(float), "AuxK coefficient; None: 1/32 for topk/batchtopk/matryoshka, else 0"),
    Field("loss.auxk_k", 0, "dead latents AuxK may use; 0: d_in // 2 (OpenAI's choice)"),
    # 25k, chosen by measurement (saejax.defaults.DEAD_TOKENS)
    Field("loss.dead_tokens", defaults.DEAD_TOKENS, "a latent that fired on none of this many training rows counts as "
          "dead (AuxK, resampling, dead fraction)"),
    Field("loss.dead_steps", Unset(int), "the same window in steps; None: dead_tokens / train.batch_size"),
    Field("loss.balance", 0.0, "activation-balancing (load-balancing) term across latents"),

    # optim: the optimizer and its learning-rate schedule
    Field("optim.name", "adam", "any optax optimizer taking learning_rate"),
    Field("optim.lr", Unset(float), "learning rate; None: the architecture's default for sae.d_sae and "
          "train.batch_size (saejax.defaults.learning_rate)"),
    Field("optim.b1", 0.9, "Adam's first-moment decay"),
    Field("optim.b2", 0.999, "Adam's second-moment decay"),
    # short and independent of train.steps, so that a run resumed with more steps follows the same
    # schedule as one planned that long (a 100-step warm-up cost a 200-step TopK run 0.151 -> 0.170
    # held-out FVU on MiniLM; BUILD_NOTES.md)
    Field("optim.warmup_steps", 10, "steps of linear learning-rate warm-up from 0"),
    # None: linear for the TopK family and JumpReLU, constant for the rest (saejax.defaults.lr_decay)
    Field("optim.decay", Unset(str), "learning-rate decay: constant | cosine | linear (to 0 at train.steps); None: the "
          "architecture's default"),
    # None: the last 20 % of train.steps (saejax.defaults.DECAY_FRACTION)
    Field("optim.decay_steps", Unset(int), "the decay covers the last decay_steps steps; 0: every step after the "
          "warm-up; None: the last 20 %"),
    Field("optim.threshold_lr_scale", Unset(float), "jumprelu: the thresholds' step size relative to the rest's; None: "
          "saejax.defaults.THRESHOLD_LR_SCALE"),
    # (saejax/sae/topk.py DECODER_LR_SCALE)
    Field("optim.decoder_lr_scale", Unset(float), "the decoder rows' step size relative to the rest's; None: 2 for "
          "topk/batchtopk/matryoshka, else 1"),
    Field("optim.grad_clip", Unset(float), "clip the global gradient norm at this value; 0: off; None: 1.0 "
          "(saejax.defaults.GRAD_CLIP)"),
    Field("optim.schedule_free_momentum", 0.0, "> 0: schedule-free training around optim.name with this momentum "
          "(evaluation and export use the averaged params)"),

    # train: the loop
    Field("train.batch_size", 1024, "rows per training step (over all devices and processes)"),
    Field("train.steps", 2000, "training steps; a rerun with more steps continues a finished run"),
    Field("train.log_every", 50, "write metrics (metrics.jsonl, TensorBoard, progress line) every this many steps"),
    Field("train.eval_rows", 100_000, "held-out rows the final metrics are measured on (all of them if fewer)"),
    # by name (saejax.evaluate.EVALUATORS): held-out metrics, dictionary recovery, the source's task,
    # splice and dashboards with model.name, plots, export
    Field("train.evaluators", "auto",
          "what runs after training, comma-separated; auto = every evaluator that applies to the run"),
    Field("train.checkpoint_every", 1000,
          "save a checkpoint every this many steps, and always at the end; 0 = only at the end"),
    Field("train.keep_checkpoints", 2, "checkpoints kept in DIR/checkpoints (older ones are deleted)"),
    Field("train.unit_norm_decoder", Unset(bool), "keep decoder rows at unit norm; None: the architecture's default "
          "(free for relu)"),
    Field("train.project_decoder_grads", True, "with unit-norm decoder rows: remove each row's gradient component "
          "along the row"),
    Field("train.resample_every", 0, "> 0: resample dead latents every this many steps"),
    Field("train.resample_until", 0, "last step at which dead latents are resampled; 0: until the end"),

    # parallel: devices
    Field("parallel.strategy", "none",
          "none (one device) | pmap (data-parallel replicas) | mesh (jit over data x model)"),
    Field("parallel.mesh_shape", "", "mesh: \"D,M\" = data x model devices, e.g. \"4,2\"; empty = all devices on data"),

    # model: train on a text model's activations (saejax.models)
    Field("model.name", "",
          "minilm, gemma3-270m or a Hugging Face directory; empty = the data section says what to train on"),
    Field("model.layer", 3, "the model's block whose activations are harvested (data.source=npy) or streamed "
          "(data.source=model)"),
    Field("model.site", "resid_post", "hook point in that block: attn_out | mlp_in | mlp_out | resid_post"),
    # several points: one forward feeds an SAE on each (saejax/hookpoints.py); a single one is model.layer/site
    Field("model.hookpoints", "", "data.source=model: several hook points LAYER/SITE, comma-separated (e.g. "
          "\"3/resid_post,4/resid_post,5/mlp_out\"), one SAE each from one forward; empty = model.layer, model.site"),
    Field("model.context_length", 128, "tokens per harvested context"),
    Field("model.max_tokens", 200_000, "data.source=npy: activation rows to harvest (into data.path, default "
          "DIR/activations); a stream (data.source=model) reads the texts again and again instead"),
    Field("model.text_glob", "",
          "text files to harvest or stream from; empty = the Python standard library's docstrings and source"),
    Field("model.eval_texts", 300, "held-out texts (every 10th) for the splice evaluation after training"),
    Field("model.dashboard_latents", 32, "feature dashboards (DIR/dashboards) for this many latents; 0 = none"),
    Field("model.probing_snippets", 0, "k-sparse probing with this many texts of each class of each "
          "model.probing_tasks task (DIR/probing, saejax/text_probing.py); 0 = not run"),
    Field("model.probing_tasks", "auto", "the probing tasks (saejax/labelled_texts.py): code, language, sentiment "
          "(comma-separated); auto = those whose texts are installed (language: django, sentiment: vaderSentiment)"),
    Field("model.absorption_words", 0, "feature absorption on the first-letter task (DIR/absorption, "
          "saejax/first_letter.py) with this many words of the vocabulary; 0 = not measured"),

    # transcoders (saejax/data/pairs.py): each harvested or streamed row holds model.site's and
    # model.target_site's activations of one token side by side, input first
    Field("model.target_site", "", "transcoder: the hook point of model.layer reconstructed from model.site's "
          "(e.g. mlp_out from mlp_in; sae.arch relu | topk | batchtopk | jumprelu or a *_skip); empty = an SAE"),

    # log: where metrics go besides metrics.jsonl
    Field("log.tensorboard", True, "write TensorBoard event files to DIR/tensorboard"),
    Field("log.wandb", False, "also log to Weights & Biases (pip install -e \".[wandb]\")"),
    Field("log.wandb_project", "saejax", "Weights & Biases project"),
    Field("log.wandb_mode", "offline", "offline (files under DIR/wandb; `wandb sync` later) | online | disabled"),
    Field("log.progress", True,
          "print a progress line (steps/s, loss, L0, FVU, dead fraction) every train.log_every steps"),
)


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads (`FIELDS`), with defaults that work out of the box."""
    c = ml_collections.ConfigDict()
    for field in FIELDS:
        section, _, name = field.path.rpartition(".")
        if section and section not in c:
            c[section] = ml_collections.ConfigDict()
        value = placeholder(field.default.type) if isinstance(field.default, Unset) else field.default
        (c[section] if section else c)[name] = value
    return c


def field_docs() -> dict[str, str]:
    """{dotted field path: its one-line doc} for every field of `base_config()`."""
    return {field.path: field.doc for field in FIELDS}


STRATEGIES = ("none", "pmap", "mesh")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def complete(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(a copy of `config` with the architecture's defaults filled in, notes for the user), validated:
    `saejax.defaults.resolve`, then `validate`."""
    config, notes = defaults.resolve(config)
    _resolve_hookpoints(config)
    validate(config)
    return config, notes


def _resolve_hookpoints(config: ml_collections.ConfigDict) -> None:
    """model.hookpoints checked and written canonically ("3/resid_post,5/mlp_out"); one point becomes
    model.layer and model.site (a run of one SAE, as without the field). ConfigError for a bad entry,
    several points without data.source='model' (only a stream computes them all in one forward), or
    several points with a transcoder's model.target_site."""
    m = config.model
    if "hookpoints" not in m:
        return
    points = parse_points(m.hookpoints)
    if len(points) == 1:
        (m.layer, m.site), m.hookpoints = points[0], ""
        return
    m.hookpoints = ",".join(point_name(point) for point in points)
    _require(not points or config.data.source == "model",
             f"model.hookpoints={m.hookpoints!r} trains on several hook points from one forward of the model: it needs "
             f"data.source='model' (streamed), not {config.data.source!r}")
    _require(not points or not m.get("target_site"),
             f"model.hookpoints={m.hookpoints!r} names several hook points; a transcoder (model.target_site="
             f"{m.get('target_site')!r}) reads one: set model.layer and model.site instead")


def hookpoint_names(config) -> tuple[str, ...]:
    """The hook points a run's config trains an SAE on each of ("3/resid_post", ...): those of
    model.hookpoints when it lists several; () for a run of one SAE."""
    points = parse_points(config.model.get("hookpoints", "")) if "model" in config else ()
    return tuple(point_name(point) for point in points) if len(points) > 1 else ()


def point_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
    """The config of a run on hook point `index` of model.hookpoints alone: a copy with model.layer and
    model.site at that point and model.hookpoints empty (what that point's export records)."""
    config = ml_collections.ConfigDict(config.to_dict())
    (config.model.layer, config.model.site), config.model.hookpoints = parse_points(config.model.hookpoints)[index], ""
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks that need no data or model: positive sizes and counts, known choices.

    Architecture, loss and data checks live with their modules (make_sae, loss_from_config,
    make_source) and run when those are built, before the first step.
    """
    t = config.train
    _require(t.batch_size > 0, f"train.batch_size={t.batch_size} must be > 0")
    _require(t.steps > 0, f"train.steps={t.steps} must be > 0")
    _require(t.log_every > 0, f"train.log_every={t.log_every} must be > 0")
    _require(t.eval_rows >= 0, f"train.eval_rows={t.eval_rows} must be >= 0")
    _require(0 <= config.data.heldout_fraction < 1,
             f"data.heldout_fraction={config.data.heldout_fraction} must be in [0, 1)")
    _require(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every} must be >= 0 (0 = only at the end)")
    _require(t.keep_checkpoints > 0, f"train.keep_checkpoints={t.keep_checkpoints} must be > 0")
    _require(t.resample_every >= 0, f"train.resample_every={t.resample_every} must be >= 0 (0 = never)")
    _require(config.loss.dead_tokens > 0, f"loss.dead_tokens={config.loss.dead_tokens} must be > 0")
    dead_steps = config.loss.dead_steps
    _require(dead_steps is None or dead_steps > 0, f"loss.dead_steps={dead_steps} must be > 0")
    _require(config.loss.auxk_k >= 0, f"loss.auxk_k={config.loss.auxk_k} must be >= 0 (0 = d_in // 2)")
    strategy = config.parallel.strategy
    _require(strategy in STRATEGIES, f"unknown parallel.strategy={strategy!r}; choose one of {', '.join(STRATEGIES)}")
    _require(
        strategy != "pmap" or not config.parallel.mesh_shape,
        f"parallel.mesh_shape={config.parallel.mesh_shape!r} is for parallel.strategy='mesh'; 'pmap' makes every "
        "device a data replica (leave mesh_shape empty)",
    )
