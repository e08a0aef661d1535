"""minet_jax.inference: `dehaze`'s conventions (RGB in and out, uint8 or [0, 1]), tiled dehazing,
and the port against the authors' own outputs (../shared/reference) with their released weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from minet_jax import MINet, dehaze, model_config
from minet_jax.image_io import read_rgb


def test_dehaze_conventions():
    cfg = model_config("official")
    cfg.T = 1
    m = MINet(cfg)
    u8 = np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    a = dehaze(m, u8, clip=False)
    b = dehaze(m, u8.astype(np.float32) / 255, clip=False)
    assert a.shape == (9, 12, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    clipped = dehaze(m, u8)
    np.testing.assert_allclose(clipped, np.clip(a, 0, 1), atol=1e-6)
    # RGB in, RGB out: the network is fed BGR on 0..255, users never see it.
    direct = np.asarray(m(jnp.asarray(u8[None, ..., ::-1].astype(np.float32))))[0, ..., ::-1] / 255
    # (u8 / 255) * 255 is u8 only to an ulp: the same program on a 1-ulp different input.
    np.testing.assert_allclose(a, direct, rtol=1e-5, atol=1e-5 * float(np.abs(direct).max()))
    with pytest.raises(ValueError, match="HxWx3"):
        dehaze(m, u8[..., 0])


def test_dehaze_tiled():
    cfg = model_config("official")
    cfg.T = 1
    m = MINet(cfg)
    x = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    whole = dehaze(m, x, clip=False)
    np.testing.assert_array_equal(dehaze(m, x, clip=False, tile=64, overlap=8, tiling="approx-tile-stats"), whole)  # one tile
    # One tile with its own recorded statistics: the same network, but norms written out (float rounding).
    replayed = dehaze(m, x, clip=False, tile=64, overlap=8, tiling="approx-image-stats")
    np.testing.assert_allclose(replayed, whole, rtol=1e-5, atol=1e-5 * float(np.abs(whole).max()))
    tiled = dehaze(m, x, clip=False, tile=24, overlap=8, tiling="approx-tile-stats")
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert not np.allclose(tiled, whole)  # instance norm sees per-tile statistics


# --- parity with the authors' outputs ---

# ../shared/reference/README.md: a faithful float32 CPU port lands under 1e-5 relative error and
# under 0.01 in its worst pixel (0..255 scale).
REL_TOL, ABS_TOL = 1e-5, 0.01


def _check(out255: np.ndarray, ref: np.ndarray) -> None:
    assert out255.shape == ref.shape
    rel = np.linalg.norm(out255 - ref) / np.linalg.norm(ref)
    worst = np.abs(out255 - ref).max()
    assert rel < REL_TOL, f"relative error {rel:.3g}"
    assert worst < ABS_TOL, f"worst pixel off by {worst:.3g}"


def test_parity_crop(shared_file, official_model):
    inp = np.load(shared_file("reference/sots_1401_5_crop.input.npy"))
    ref = np.load(shared_file("reference/sots_1401_5_crop.official.npy"))
    _check(dehaze(official_model, inp / 255.0, clip=False) * 255.0, ref)


def test_parity_whole_image(shared_file, sots_mini, official_model):
    hazy = read_rgb(sots_mini / "hazy" / "1400_1.png")
    ref = np.load(shared_file("reference/sots_1400_1.official.npy"))
    _check(dehaze(official_model, hazy, clip=False) * 255.0, ref)
