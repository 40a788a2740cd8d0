"""The base config every experiment config extends, and its validation.

Experiment configs (``experiments/configs/NAME.py``) call `base_config()` and override
fields; `experiments/train.py` validates the result with `validate` before anything runs.
Field names are part of the command-line contract (see README): keep them stable.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from saejax import defaults
from saejax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with defaults that work out of the box."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic | npy | patches | digits | tabular
    # npy: a shard-store folder (manifest.json), its manifest.json, or a glob of .npy files [n, d_in]
    c.data.path = ""
    c.data.chunk_rows = 512  # npy: rows per contiguous read; the unit of the global permutation
    c.data.shuffle_rows = 32768  # npy: rows per in-memory shuffle window (data/order.py)
    c.data.on_bad_rows = "error"  # npy: error | skip rows holding NaN/Inf (data/npy.py)
    # npy: share of the store's chunks kept out of training for evaluation (a fixed choice per store,
    # the same for every run on it), at most heldout_max_rows rows' worth; 0 = train on every row
    c.data.heldout_fraction = 0.1
    c.data.heldout_max_rows = 100_000
    # synthetic: superposition of n_features unit features in d dimensions
    c.data.d = 256
    c.data.n_features = 512
    c.data.avg_active = 5.0
    # feature i fires with prob. proportional to freq_ratio**(-i / (n_features - 1)), i.e. the
    # most frequent feature fires freq_ratio times as often as the least (data/synthetic.py)
    c.data.freq_ratio = 100.0
    c.data.correlation = "none"  # none | hierarchical (children fire only with their parent)
    c.data.children_per_parent = 3  # hierarchical: children of each parent feature
    # patches: natural-image patches from scikit-image's bundled images
    c.data.patch_size = 12
    c.data.n_patches = 100_000
    c.data.whiten = "zca"  # zca | none
    c.data.whiten_eps = 0.1  # ZCA regulariser, relative to the mean eigenvalue (data/patches.py)
    # tabular: anomaly-detection tables (river's bundled datasets)
    c.data.tabular_dataset = "shuttle"
    c.data.tabular_rows = "normal"  # normal (train on normal rows only) | all
    c.data.test_fraction = 0.2  # digits, tabular: seeded share of rows held out of training, for downstream evaluation

    c.sae = ml_collections.ConfigDict()
    c.sae.arch = "relu"  # relu | topk | batchtopk | jumprelu | gated | matryoshka | mlp
    c.sae.d_sae = 1024
    c.sae.k = 32  # topk, batchtopk, matryoshka: active latents per row; jumprelu: the L0 it starts at and aims for
    c.sae.leak = 0.0  # relu: negative slope of a leaky ReLU (0 = plain ReLU)
    c.sae.tied = False  # W_enc = W_dec.T (relu, topk, batchtopk, jumprelu)
    # jumprelu: None starts each latent's threshold where it fires on sae.k / d_sae of the initial
    # sample (so the SAE starts at L0 = sae.k; saejax.initializers.jumprelu_thresholds); a number
    # starts every threshold there instead
    c.sae.jumprelu_init_threshold = placeholder(float)
    c.sae.jumprelu_bandwidth = defaults.JUMPRELU_BANDWIDTH  # width of the straight-through kernel
    c.sae.matryoshka_prefixes = ""  # e.g. "64,256,1024"; empty = d_sae/16, d_sae/4, d_sae
    c.sae.mlp_hidden = "256"  # mlp: hidden widths of the encoder (decoder mirrors them)
    # initial norm of the encoder rows, W_enc = scale * W_dec.T (and of the decoder rows when their norm
    # is free); None: the architecture's default (its spec's encoder_init_scale, saejax.sae.registry)
    c.sae.dec_init_norm = placeholder(float)
    c.sae.init_b_dec = "geometric_median"  # geometric_median | mean | zeros
    c.sae.normalize_activations = True  # scale inputs so E||x||^2 = d_in; folded back at export
    c.sae.dtype = "float32"  # compute dtype of the matmuls: float32 | bfloat16 (params stay f32)
    c.sae.sparse = "auto"  # topk: decode/backprop through the k active latents only: auto | true | false
    c.sae.screen = "auto"  # sparse f32 topk: bf16 pre-screen of the encoder, certified exact: auto | true | false

    c.loss = ml_collections.ConfigDict()
    c.loss.mse = 1.0
    c.loss.normalized_mse = False
    c.loss.l1 = 0.0  # relu/gated/mlp: L1 of the latents (gated: of the gate)
    # weight each latent's |z| by its decoder row norm; None: when the decoder norm is free (relu's default)
    c.loss.l1_decoder_weighted = placeholder(bool)
    c.loss.l1_warmup_steps = 0  # linear warm-up of the L1 coefficient
    c.loss.tanh = 0.0
    c.loss.tanh_scale = 1.0
    c.loss.kl = 0.0  # KL(rho || mean activation) per latent
    c.loss.rho = 0.05
    c.loss.kl_ema = 0.0  # 0: mean over the batch; in (0, 1): EMA decay of a running mean
    c.loss.l0 = 0.0  # jumprelu: λ · L0 via the step-function straight-through estimator
    # jumprelu: > 0 adds target_l0_coeff · d_in · (L0/target - 1)^2; None: sae.k when loss.l0 is 0, else 0
    c.loss.target_l0 = placeholder(float)
    c.loss.target_l0_coeff = defaults.TARGET_L0_COEFF
    # jumprelu: Anthropic's pre-activation loss, λ · Σ_i ReLU(θ_i - pre_i) · ||W_dec[i]||; None: 1e-4 for
    # jumprelu, else 0 (saejax/sae/jumprelu.py PRE_ACT_COEFF)
    c.loss.pre_act = placeholder(float)
    c.loss.pre_act_dead_only = False  # True: on the dead latents only (SAELens' form), not every latent (Anthropic's)
    c.loss.auxk = placeholder(float)  # AuxK coefficient; None: 1/32 for topk/batchtopk/matryoshka, else 0
    c.loss.auxk_k = 0  # dead latents AuxK may use; 0: d_in // 2 (OpenAI's choice)
    # a latent that fired on none of this many training rows (tokens) counts as dead (AuxK, resampling,
    # the training dead fraction); 100k, chosen by measurement (saejax.defaults.DEAD_TOKENS)
    c.loss.dead_tokens = defaults.DEAD_TOKENS
    c.loss.dead_steps = placeholder(int)  # the same window in steps; None: dead_tokens / train.batch_size
    c.loss.balance = 0.0  # activation-balancing (load-balancing) term

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # any optax optimizer taking learning_rate
    c.optim.lr = placeholder(float)  # None: the architecture's default (saejax.defaults.learning_rate)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    # linear lr warm-up; short and independent of train.steps, so that a run resumed with more steps
    # follows the same schedule as one planned that long (a 100-step warm-up cost a 200-step TopK run
    # 0.151 -> 0.170 held-out FVU on MiniLM; BUILD_NOTES.md)
    c.optim.warmup_steps = 10
    # constant | cosine | linear (to 0 at train.steps); None: linear for the TopK family and JumpReLU,
    # constant for the rest (saejax.defaults.lr_decay)
    c.optim.decay = placeholder(str)
    # the decay's length: the last decay_steps steps; 0: every step after the warm-up; None: the last
    # 20 % of train.steps (saejax.defaults.DECAY_FRACTION)
    c.optim.decay_steps = placeholder(int)
    # jumprelu: the thresholds' steps relative to the rest's; None: saejax.defaults.THRESHOLD_LR_SCALE
    c.optim.threshold_lr_scale = placeholder(float)
    # the decoder rows' steps relative to the rest's; None: 2 for topk/batchtopk/matryoshka, else 1
    # (saejax/sae/topk.py DECODER_LR_SCALE)
    c.optim.decoder_lr_scale = placeholder(float)
    c.optim.grad_clip = placeholder(float)  # > 0: clip the global gradient norm; 0: off; None: 1.0 (saejax.defaults.GRAD_CLIP)
    # > 0: schedule-free training (Defazio et al. 2024) around optim.name with this momentum; evaluation,
    # plots and the export then use the averaged parameters
    c.optim.schedule_free_momentum = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 1024
    c.train.steps = 2000
    c.train.log_every = 50
    c.train.eval_rows = 100_000  # held-out rows the final metrics are measured on (all of them if fewer)
    # what runs after training, by name (saejax.evaluate.EVALUATORS): comma-separated, or "auto" = every
    # evaluator that applies to the run (held-out metrics, dictionary recovery, the source's task, splice
    # and dashboards with model.name, plots, export)
    c.train.evaluators = "auto"
    c.train.checkpoint_every = 1000  # also always at the end; 0 = only at the end
    c.train.keep_checkpoints = 2
    # keep decoder rows at unit norm; None: the architecture's default (free for relu, saejax.defaults)
    c.train.unit_norm_decoder = placeholder(bool)
    c.train.project_decoder_grads = True
    c.train.resample_every = 0  # > 0: resample dead latents every this many steps
    c.train.resample_until = 0  # 0: until the end

    c.parallel = ml_collections.ConfigDict()
    c.parallel.strategy = "none"  # none (one device) | pmap (data-parallel replicas) | mesh (jit over data x model)
    c.parallel.mesh_shape = ""  # mesh: "D,M" = data x model, e.g. "4,2"; "" = all devices on data

    c.model = ml_collections.ConfigDict()  # train on a text model's activations (saejax.models)
    c.model.name = ""  # minilm or a Hugging Face directory; "" = the data section says what to train on
    c.model.layer = 3
    c.model.site = "resid_post"  # attn_out | mlp_out | resid_post
    c.model.context_length = 128
    c.model.max_tokens = 200_000  # activation rows to harvest (into data.path, default DIR/activations)
    c.model.text_glob = ""  # text files to harvest from; "" = the Python standard library's docstrings and source
    c.model.eval_texts = 300  # held-out texts (every 10th) for the splice evaluation after training
    c.model.dashboard_latents = 32  # feature dashboards (DIR/dashboards) for this many latents; 0 = none

    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = True
    c.log.wandb = False  # also log to Weights & Biases (pip install -e ".[wandb]")
    c.log.wandb_project = "saejax"
    c.log.wandb_mode = "offline"  # offline (files under DIR/wandb; `wandb sync` later) | online | disabled
    c.log.progress = True
    return c


STRATEGIES = ("none", "pmap", "mesh")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def complete(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(a copy of `config` with the architecture's defaults filled in, notes for the user), validated:
    `saejax.defaults.resolve`, then `validate`."""
    config, notes = defaults.resolve(config)
    validate(config)
    return config, notes


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
