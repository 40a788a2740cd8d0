r"""Toy superposition data with a known dictionary: does the SAE recover it (MMCS)?

512 ground-truth features in 256 dimensions, ~5 active per sample (Sharkey et al. 2022 style);
a ReLU + L1 SAE with d_sae = 1024. Reports MMCS and Hungarian-matched |cos| in summary.json.

    python experiments/train.py --config=experiments/configs/synthetic.py --workdir=/tmp/sae_synthetic
    python experiments/train.py --config=experiments/configs/synthetic.py --workdir=/tmp/sae_synthetic_topk \
        --config.sae.arch=topk --config.sae.k=12 --config.loss.l1=0 --config.loss.auxk=0.03125 \
        --config.loss.auxk_k=128 --config.loss.dead_steps=200
"""

from saejax.config import base_config


def get_config():
    c = base_config()
    c.data.source = "synthetic"
    c.sae.arch = "relu"
    c.sae.d_sae = 1024
    c.loss.l1 = 1.0
    c.optim.lr = 2e-3
    c.train.batch_size = 1024
    c.train.steps = 4000
    return c
