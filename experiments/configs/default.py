r"""The default job: an SAE on whitened natural-image patches learns edge (Gabor-like) atoms.

12x12 patches from scikit-image's bundled photographs, mean removed, regularised ZCA whitening;
a ReLU + L1 SAE with 400 latents (~2.8x overcomplete). Look at DIR/plots/atoms.png.

    python experiments/train.py --workdir=/tmp/sae_default
"""

from saejax.config import base_config


def get_config():
    c = base_config()
    c.data.source = "patches"
    c.data.patch_size = 12
    c.sae.arch = "relu"
    c.sae.d_sae = 400
    c.loss.l1 = 2.0
    c.train.batch_size = 1024
    c.train.steps = 4000
    c.train.log_every = 200
    return c
