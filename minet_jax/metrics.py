"""Image-quality metrics: PSNR, SSIM and the authors' PSNR of the mean squared error."""

from __future__ import annotations

from collections.abc import Iterable

import dm_pix
import jax
import numpy as np

__all__ = ["mse", "psnr", "psnr_of_mean_mse", "ssim"]

SSIM_WINDOW = 11


@jax.jit
def _ssim_jit(a: jax.Array, b: jax.Array, max_val: jax.Array) -> jax.Array:
    # dm_pix defaults: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03.
    return dm_pix.ssim(a, b, max_val=max_val)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error, computed in float64."""
    a, b = _check_pair(a, b)
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (float64); ``inf`` for identical images."""
    err = mse(a, b)
    if err == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / err))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Wang et al. SSIM (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), averaged over channels.

    Takes ``HxW`` or ``HxWxC`` arrays and matches scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    channel_axis=2)``. It runs on the CPU in float64 so that scores do not depend on the
    accelerator or on float32 round-off; it compiles once per image shape.
    """
    a, b = _check_pair(a, b)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"ssim expects HxW or HxWxC images, got shape {a.shape}")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[:2]}")
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True):
        args = [jax.device_put(np.asarray(x, np.float64), cpu) for x in (a, b, data_range)]
        return float(_ssim_jit(*args))


def psnr_of_mean_mse(mses: Iterable[float], data_range: float = 255.0) -> float:
    """PSNR of the mean of per-image squared errors: ``20 log10(data_range / sqrt(mean(mses)))``.

    This is the MI-Net authors' test-set convention (computed there on the unclamped
    float output on the 0..255 scale); it is not the mean of per-image PSNRs.
    """
    m = np.asarray(list(mses), dtype=np.float64)
    if m.size == 0:
        raise ValueError("psnr_of_mean_mse needs at least one squared error")
    mean = float(np.mean(m))
    if mean == 0.0:
        return float("inf")
    return float(20.0 * np.log10(data_range / np.sqrt(mean)))
