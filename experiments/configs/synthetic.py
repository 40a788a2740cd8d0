r"""Toy superposition data with a known dictionary: does the SAE recover it (MMCS)?

512 ground-truth features in 256 dimensions, ~5 active per sample (Sharkey et al. 2022 style);
an SAE with d_sae = 1024. Reports MMCS and Hungarian-matched |cos| in summary.json. Two variants,
chosen by the text after the colon (ReLU + L1 without one):

    python experiments/train.py --config=experiments/configs/synthetic.py --workdir=/tmp/sae_synthetic
    python experiments/train.py --config=experiments/configs/synthetic.py:topk --workdir=/tmp/sae_synthetic_topk

- ``relu``: ReLU + L1 (coefficient 1.0), 4000 steps.
- ``topk``: TopK with k = 6 (one more than the mean number of active features: the count per
  sample is roughly Poisson, and a k at the mean starves the rows with more) + AuxK (1/32,
  k_aux = d_in / 2 = 128) with a short dead window (20 steps = 20k samples: the rarest feature
  fires about once per 2,200 samples, so a latent that waits longer than this is not holding one),
  2000 steps.
"""

from saejax.config import base_config

VARIANTS = ("relu", "topk")


def get_config(variant: str = "relu"):
    c = base_config()
    c.data.source = "synthetic"
    c.sae.d_sae = 1024
    c.optim.lr = 2e-3
    c.train.batch_size = 1024
    if variant == "relu":
        c.sae.arch = "relu"
        c.loss.l1 = 1.0
        c.train.steps = 4000
    elif variant == "topk":
        c.sae.arch = "topk"
        c.sae.k = 6
        c.loss.l1 = 0.0
        c.loss.auxk = 1 / 32
        c.loss.dead_tokens = 20 * 1024
        c.train.steps = 2000
    else:
        raise ValueError(f"experiments/configs/synthetic.py: unknown variant {variant!r}; "
                         f"choose one of {', '.join(VARIANTS)}")
    return c
