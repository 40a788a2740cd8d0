r"""scikit-learn's 8×8 digits (the design documents' image example): a shallow ReLU + L1 SAE with
256 latents (4× overcomplete), or a deep MLP encoder/decoder.

    python experiments/train.py --workdir=/tmp/sae_digits --config=experiments/configs/digits.py
    python experiments/train.py --workdir=/tmp/sae_digits_deep --config=experiments/configs/digits.py:deep

Needs ``pip install -e ".[digits]"``. 20 % of the images are held out: after training the run
reports the linear-probe accuracy of the sparse codes vs the raw pixels, and the SAE's held-out
FVU vs PCA's with as many components as the SAE's mean L0 (summary.json, "eval"). Atoms in
DIR/plots/atoms.png (shallow only: an MLP decoder has no atoms).
"""

from saejax.config import base_config

VARIANTS = ("shallow", "deep")


def get_config(variant: str = "shallow"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown digits variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    c = base_config()
    c.data.source = "digits"
    c.sae.arch = "relu" if variant == "shallow" else "mlp"
    c.sae.d_sae = 256
    c.sae.mlp_hidden = "128"
    c.loss.l1 = 0.3
    c.optim.lr = 2e-3
    c.train.batch_size = 256
    c.train.steps = 3000
    c.train.log_every = 100
    return c
