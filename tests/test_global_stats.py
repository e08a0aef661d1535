"""minet_jax.global_stats: whole-image statistics are recorded and replayed faithfully, and make
tiled dehazing agree with the whole image."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import MINet, dehaze, global_stats, model_config
from minet_jax.image_io import read_rgb
from minet_jax.metrics import psnr


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
        dehaze(m, x, tile=16, overlap=4, tiling="approx-image-stats")
    with pytest.raises(ValueError, match="tiling must be one of"):
        dehaze(m, x, tile=16, overlap=4, tiling="global")


def test_whole_image_statistics_make_tiles_agree_with_the_whole_image(official_model, sots_mini):
    """Authors' weights on a SOTS image: per-tile statistics cost far more than tile edges do."""
    hazy = read_rgb(sots_mini / "hazy" / "1400_1.png")[:240, :320]
    clear = read_rgb(sots_mini / "clear" / "1400.png")[:240, :320] / 255.0
    whole = dehaze(official_model, hazy)
    per_tile = dehaze(official_model, hazy, tile=128, overlap=32, tiling="approx-tile-stats")
    exact = dehaze(official_model, hazy, tile=128, overlap=32, tiling="approx-image-stats")
    assert psnr(exact, whole, data_range=1.0) > psnr(per_tile, whole, data_range=1.0) + 10.0
    assert psnr(exact, clear, data_range=1.0) > psnr(whole, clear, data_range=1.0) - 1.0
    assert psnr(per_tile, clear, data_range=1.0) < psnr(whole, clear, data_range=1.0) - 5.0
