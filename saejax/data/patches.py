"""Whitened natural-image patches, the classic setting in which sparse coding learns
localised, oriented, Gabor-like edge filters (Olshausen & Field 1996).

Pipeline (all at construction, nothing cached on disk; a few seconds with the defaults):

1. Images: the natural photographs bundled with scikit-image (`IMAGES`; no downloads),
   converted to grayscale floats in [0, 1], then each standardised to zero mean and unit
   variance so that no single high-contrast image dominates the statistics.
2. Patches: ``n_patches`` random ``patch_size`` x ``patch_size`` patches; each draws an
   image uniformly and a uniform top-left corner in it (fixed by the seed). Flattened
   row-major, so ``d_in = patch_size ** 2``.
3. DC removal: each patch's own mean is subtracted (every row sums to zero).
4. Whitening (``whiten='zca'``): with the patch covariance ``C = U diag(lam) U^T``,
   ``W = U diag(1 / sqrt(lam + eps)) U^T`` and rows become ``x @ W`` (W is symmetric);
   ``whiten='none'`` uses ``W = I``.

Choice of eps. ``eps = whiten_eps * mean(lam)`` (default ``whiten_eps = 0.1``), i.e. the
regulariser is relative to the eigenvalue scale, so it does not depend on image contrast.
Natural images have a power spectrum falling roughly as 1/f^2, so the eigenvalues span
orders of magnitude. Components with ``lam >> eps`` (low and middle spatial frequencies)
are equalised to unit variance, which removes the pairwise pixel correlations that
would otherwise make the learned atoms large, smooth blobs. Components with
``lam << eps`` (the highest frequencies, where the image signal is weakest and pixel and
JPEG noise dominate) get a gain capped at ``1 / sqrt(eps)`` instead of
``1 / sqrt(lam)``: their whitened variance is ``lam / (lam + eps) << 1``, so noise is
not amplified. This gives the same effect as the combined whitening / low-pass filter
``f exp(-(f / f_0)^4)`` of Olshausen & Field, but derived from the data and without a
hand-set cut-off: the whitened spectrum is ``lam / (lam + eps)``, flat (~1) up to a
soft cut-off and rolling off after it. The DC direction (zero variance after step 3)
stays exactly zero.
"""

import numpy as np
import skimage.color
import skimage.data
import skimage.util

from saejax.data import (
    STREAM_BATCH,
    STREAM_HELDOUT,
    STREAM_POOL,
    STREAM_SAMPLE,
    check_batch_args,
    check_sample_size,
    rng,
)
from saejax.errors import ConfigError

# Natural photographs bundled with scikit-image (text, synthetic, binary, astronomical
# and microscopy images are left out).
IMAGES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "moon",
    "rocket",
)
WHITENINGS = ("zca", "none")


def load_image(name: str) -> np.ndarray:
    """Bundled image `name` as grayscale float64 [H, W], zero mean and unit variance."""
    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3])
    image = skimage.util.img_as_float(image)
    return (image - image.mean()) / image.std()


def sample_patches(
    gen: np.random.Generator, images: list[np.ndarray], patch_size: int, n: int
) -> np.ndarray:
    """`n` random patches, float64 [n, patch_size**2]: a uniform image, then a uniform
    top-left corner in it."""
    which = gen.integers(len(images), size=n)
    out = np.empty((n, patch_size * patch_size))
    for i, image in enumerate(images):
        rows = np.flatnonzero(which == i)
        top = gen.integers(image.shape[0] - patch_size + 1, size=rows.size)
        left = gen.integers(image.shape[1] - patch_size + 1, size=rows.size)
        windows = np.lib.stride_tricks.sliding_window_view(image, (patch_size, patch_size))
        out[rows] = windows[top, left].reshape(rows.size, patch_size * patch_size)  # rows.size may be 0
    return out


def remove_dc(patches: np.ndarray) -> np.ndarray:
    """Subtract each row's mean: [n, d] -> [n, d]."""
    return patches - patches.mean(axis=1, keepdims=True)


def spectrum(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the covariance of zero-mean rows [n, d].

    Returns (eigenvalues [d] descending, clipped at 0; eigenvectors [d, d] as columns).
    """
    lam, u = np.linalg.eigh(patches.T @ patches / patches.shape[0])
    return np.clip(lam[::-1], 0, None), u[:, ::-1]


def zca_matrix(lam: np.ndarray, u: np.ndarray, eps_rel: float) -> np.ndarray:
    """Regularised ZCA, symmetric [d, d]: ``U diag(1 / sqrt(lam + eps)) U^T`` with
    ``eps = eps_rel * mean(lam)``."""
    eps = eps_rel * lam.mean()
    return (u / np.sqrt(lam + eps)) @ u.T


def _check_config(patch_size: int, n_patches: int, whiten: str, whiten_eps: float) -> None:
    """Raise ConfigError naming the first bad `data.*` field."""
    if patch_size < 2:
        raise ConfigError(f"data.patch_size must be >= 2, got {patch_size}")
    if n_patches < 1:
        raise ConfigError(f"data.n_patches must be >= 1, got {n_patches}")
    if whiten not in WHITENINGS:
        raise ConfigError(f"data.whiten: unknown {whiten!r}; valid: {', '.join(WHITENINGS)}")
    if whiten == "zca" and not whiten_eps > 0:
        raise ConfigError(f"data.whiten_eps must be > 0, got {whiten_eps}")


class PatchSource:
    """A fixed pool of whitened image patches; batches draw rows from it.

    Attributes:
        name: ``'patches'``.
        d_in: ``patch_size ** 2``.
        patch_size: side of a patch in pixels.
        image_shape: ``(patch_size, patch_size)``, for atom plots.
        pool: float32 [n_patches, d_in], the DC-removed (and whitened) patches.
        whitening: float32 [d_in, d_in] symmetric matrix applied to the DC-removed
            patches (identity when ``whiten == 'none'``).
        eigenvalues: float64 [d_in], descending eigenvalues of the DC-removed patch
            covariance (before whitening).
    """

    name = "patches"
    heldout_rows = None  # held-out patches are cut at fresh random places, as many as asked for

    def __init__(
        self,
        seed: int,
        patch_size: int = 12,
        n_patches: int = 100_000,
        whiten: str = "zca",
        whiten_eps: float = 0.1,
        images: tuple[str, ...] = IMAGES,
    ) -> None:
        _check_config(patch_size, n_patches, whiten, whiten_eps)
        self.seed = seed
        self.patch_size = patch_size
        self.image_shape = (patch_size, patch_size)
        self.d_in = patch_size * patch_size
        loaded = [load_image(name) for name in images]
        smallest = min(min(image.shape) for image in loaded)
        if patch_size > smallest:
            raise ConfigError(f"data.patch_size={patch_size} exceeds the smallest image side "
                              f"({smallest} px)")
        self._images = loaded
        raw = remove_dc(sample_patches(rng(seed, STREAM_POOL), loaded, patch_size, n_patches))
        self.eigenvalues, vectors = spectrum(raw)
        if whiten == "zca":
            whitening = zca_matrix(self.eigenvalues, vectors, whiten_eps)
        else:
            whitening = np.eye(self.d_in)
        self.whitening = whitening.astype(np.float32)
        self.pool = (raw @ whitening).astype(np.float32)

    def _draw(self, gen: np.random.Generator, n: int) -> np.ndarray:
        """`n` rows of the pool, drawn uniformly with replacement: float32 [n, d_in]."""
        return self.pool[gen.integers(self.pool.shape[0], size=n)]

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d_in], pool rows chosen by (seed, step)."""
        check_batch_args(step, batch_size)
        return self._draw(rng(self.seed, STREAM_BATCH, step), batch_size)

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [n, d_in] sample of the pool."""
        check_sample_size(n)
        return self._draw(rng(self.seed, STREAM_SAMPLE), n)

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d_in]: patches cut at random places drawn from (seed, index) by a
        stream of their own (not rows of the training pool), DC-removed and whitened like it."""
        check_batch_args(index, batch_size)
        raw = sample_patches(rng(self.seed, STREAM_HELDOUT, index), self._images, self.patch_size, batch_size)
        return (remove_dc(raw) @ self.whitening).astype(np.float32)
