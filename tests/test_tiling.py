"""Tiled inference: blending is exact for local maps, the tiled output keeps the image's size, and
whole-image statistics are recorded and replayed faithfully."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import MINet, dehaze, global_stats, model_config
from minet_jax.metrics import psnr
from minet_jax.tiling import tiled_apply

from .conftest import SOTS_MINI, require


@pytest.mark.parametrize("shape,tile,overlap", [((37, 53, 3), 16, 6), ((64, 64, 3), 32, 0), ((10, 12, 3), 64, 8)])
def test_blending_reproduces_a_pointwise_map(shape, tile, overlap):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    fn = lambda p: np.tanh(3 * p) * p[..., ::-1]  # noqa: E731
    np.testing.assert_allclose(tiled_apply(fn, x, tile, overlap), fn(x), rtol=1e-6, atol=1e-6)


def test_every_pixel_is_covered_and_tiles_are_bounded():
    seen = []

    def fn(p):
        seen.append(p.shape)
        return np.ones(p.shape[:2] + (1,), np.float32)

    out = tiled_apply(fn, np.zeros((100, 70, 3), np.float32), tile=32, overlap=8)
    assert out.shape == (100, 70, 1) and np.allclose(out, 1.0)
    assert max(max(s[:2]) for s in seen) <= 32 and len(seen) == 4 * 3  # rows start 0, 24, 48, 68; columns 0, 24, 38


def test_bad_tiling_arguments():
    with pytest.raises(ValueError, match="tile > overlap"):
        tiled_apply(lambda p: p, np.zeros((8, 8, 3)), tile=8, overlap=8)


def test_dehaze_tiled():
    cfg = model_config("official")
    cfg.T = 1
    m = MINet(cfg)
    x = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    whole = dehaze(m, x, clip=False)
    np.testing.assert_array_equal(dehaze(m, x, clip=False, tile=64, overlap=8, tile_stats="tile"), whole)  # one tile
    # One tile with its own recorded statistics: the same network, but norms written out (float rounding).
    np.testing.assert_allclose(dehaze(m, x, clip=False, tile=64, overlap=8, tile_stats="image"), whole, atol=1e-5)
    tiled = dehaze(m, x, clip=False, tile=24, overlap=8)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert not np.allclose(tiled, whole)  # instance norm sees per-tile statistics


def _small(variant: str) -> MINet:
    cfg = model_config(variant)
    cfg.T = 2
    return MINet(cfg, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_replaying_an_images_own_statistics_reproduces_the_network(variant):
    m = _small(variant)
    gd, st = nnx.split(m)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (1, 26, 34, 3)).astype(np.float32))
    y = m(x)
    y_rec, stats = global_stats.record(gd, st, x)
    # 5 stem/decoder norms + 3x2 residual-block norms + 3 blocks x T x 2 field norms + 1 attention.
    assert len(stats) == 5 + 6 + 3 * m.config.T * 2 + 1
    # Float32 rounding only: the norms are written out and the T steps unrolled in Python.
    scale = float(jnp.abs(y).max())
    np.testing.assert_allclose(y_rec, y, atol=1e-4 * scale)
    np.testing.assert_allclose(global_stats.replay(gd, st, x, stats), y, atol=1e-4 * scale)
    # Replayed statistics are really used: another image's change the output.
    other = global_stats.record(gd, st, x[:, ::-1] * 0.5)[1]
    assert float(jnp.abs(global_stats.replay(gd, st, x, other) - y).max()) > 1e-2 * scale


def test_whole_image_statistics_need_the_unrolled_forward():
    cfg = model_config("official")
    cfg.T = 2
    cfg.solver.forward = "fixed_point"
    m = MINet(cfg)
    x = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="forward='unrolled'"):
        dehaze(m, x, tile=16, overlap=4, tile_stats="image")
    with pytest.raises(ValueError, match="tile_stats must be one of"):
        dehaze(m, x, tile=16, overlap=4, tile_stats="global")


def test_whole_image_statistics_make_tiles_agree_with_the_whole_image(official_model):
    """Authors' weights on a SOTS image: per-tile statistics cost far more than tile edges do."""
    from minet_jax.imageio import read_rgb

    hazy = read_rgb(require(SOTS_MINI / "hazy" / "1400_1.png"))[:240, :320]
    clear = read_rgb(require(SOTS_MINI / "clear" / "1400.png"))[:240, :320] / 255.0
    whole = dehaze(official_model, hazy)
    per_tile = dehaze(official_model, hazy, tile=128, overlap=32)
    exact = dehaze(official_model, hazy, tile=128, overlap=32, tile_stats="image")
    assert psnr(exact, whole, data_range=1.0) > psnr(per_tile, whole, data_range=1.0) + 10.0
    assert psnr(exact, clear, data_range=1.0) > psnr(whole, clear, data_range=1.0) - 1.0
    assert psnr(per_tile, clear, data_range=1.0) < psnr(whole, clear, data_range=1.0) - 5.0
