r"""The classic sparse autoencoder of the design documents (Ng's lecture notes): sparsity from a
KL penalty that pulls each latent's mean activation towards a target ρ = 0.05, on the 8×8 digits.

    python experiments/train.py --workdir=/tmp/sae_kl --config=experiments/configs/kl_sparsity.py

Needs ``pip install -e ".[digits]"``. No L1 term: λ Σ_i KL(ρ || ρ̂_i) with ρ̂_i the batch mean of
latent i (clipped into (0, 1) for ReLU latents). Check summary.json's "eval" and
DIR/plots/density.png: the latents' firing densities cluster instead of a few latents doing
everything.
"""

from saejax.config import base_config


def get_config():
    c = base_config()
    c.data.source = "digits"
    c.sae.arch = "relu"
    c.sae.d_sae = 128
    c.loss.l1 = 0.0
    c.loss.kl = 1.0
    c.loss.rho = 0.05
    c.optim.lr = 2e-3
    c.train.batch_size = 256
    c.train.steps = 3000
    c.train.log_every = 100
    return c
