"""PSNR / SSIM against scikit-image, and the authors' PSNR of the mean MSE."""

import math

import numpy as np
import pytest
from skimage import data, filters, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from minet_jax import metrics
from minet_jax.metrics import psnr, psnr_of_mean_mse, ssim


def sk_ssim(a, b, **kw):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, **kw
    )


def natural(name: str, shape=(64, 80)) -> np.ndarray:
    img = getattr(data, name)()
    small = transform.resize(img, (img.shape[0] // 4, img.shape[1] // 4), anti_aliasing=True, preserve_range=True)
    return np.round(small[: shape[0], : shape[1]]).astype(np.uint8)


def noisy(x: np.ndarray, sigma: float, rng) -> np.ndarray:
    return np.clip(np.round(x + rng.normal(0, sigma, x.shape)), 0, 255).astype(np.uint8)


def blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    y = filters.gaussian(x.astype(np.float64), sigma=sigma, channel_axis=2, preserve_range=True)
    return np.round(y).astype(np.uint8)


def cases():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    yield "random", a, rng.integers(0, 256, a.shape, dtype=np.uint8)
    yield "random+noise", a, noisy(a, 20, rng)
    for name in ("astronaut", "coffee"):
        x = natural(name)
        yield f"{name}+noise", x, noisy(x, 10, rng)
        yield f"{name}+blur", x, blurred(x, 1.2)
        yield f"{name}+blur+noise", x, noisy(blurred(x, 2.0), 3, rng)
    flat = np.full((64, 80, 3), 200, np.uint8)
    yield "flat+noise", flat, noisy(flat, 1.5, rng)


@pytest.mark.parametrize("a,b", [pytest.param(a, b, id=name) for name, a, b in cases()])
def test_psnr_and_ssim_match_skimage(a, b):
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b, channel_axis=2), abs=1e-4)


def test_ssim_grayscale_and_float_inputs():
    rng = np.random.default_rng(1)
    a = natural("camera")  # 2-D grayscale
    b = noisy(a, 8, rng)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-4)
    # float inputs on another range: data_range is honoured
    af, bf = a / 255.0, b / 255.0
    ref = structural_similarity(af, bf, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert ssim(af, bf, data_range=1.0) == pytest.approx(ref, abs=1e-4)
    assert psnr(af, bf, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(af, bf, data_range=1.0), abs=1e-4)


def test_identical_images():
    a = natural("astronaut")
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_shape_checks():
    a = np.zeros((64, 80, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        ssim(a, a[:-1])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[:10], a[:10])


def test_ssim_compiles_once_per_shape():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    ssim(a, a)
    n = metrics._ssim_jit._cache_size()
    for _ in range(3):
        ssim(a, noisy(a, 5, rng))
    ssim(a / 255.0, a / 255.0, data_range=1.0)  # data_range is traced, dtype is float64 either way
    assert metrics._ssim_jit._cache_size() == n
    ssim(a[:, :, :2], a[:, :, 1:])  # a shape no other test uses
    assert metrics._ssim_jit._cache_size() == n + 1


def test_psnr_of_mean_mse_by_hand():
    mses = [10.0, 40.0, 100.0]
    expected = 20 * math.log10(255 / math.sqrt(50.0))
    assert psnr_of_mean_mse(mses) == pytest.approx(expected, abs=1e-12)
    assert psnr_of_mean_mse(np.array(mses) / 255**2, data_range=1.0) == pytest.approx(expected, abs=1e-9)
    mean_psnr = np.mean([10 * math.log10(255**2 / m) for m in mses])
    assert abs(psnr_of_mean_mse(mses) - mean_psnr) > 0.5  # differs from the mean of per-image PSNRs
    assert psnr_of_mean_mse([25.0, 25.0]) == pytest.approx(10 * math.log10(255**2 / 25.0))  # equal when mses agree
    assert psnr_of_mean_mse([0.0, 0.0]) == math.inf
    with pytest.raises(ValueError):
        psnr_of_mean_mse([])
