"""minet_jax.tiling: blending overlapping tiles is exact for local maps, every pixel is covered,
tiles stay within the requested size, and bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest

from minet_jax.tiling import tiled_apply


@pytest.mark.parametrize("shape,tile,overlap", [((37, 53, 3), 16, 6), ((64, 64, 3), 32, 0), ((10, 12, 3), 64, 8)])
def test_blending_reproduces_a_pointwise_map(shape, tile, overlap):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    fn = lambda p: np.tanh(3 * p) * p[..., ::-1]
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
