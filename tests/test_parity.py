"""The port against the authors' own outputs (../shared/reference), with their released weights."""

from __future__ import annotations

import numpy as np

from minet_jax import dehaze
from minet_jax.imageio import read_rgb
from tests.conftest import REFERENCE, SOTS_MINI, require

# ../shared/reference/README.md: a faithful float32 CPU port lands under 1e-5 relative error and
# under 0.01 in its worst pixel (0..255 scale).
REL_TOL, ABS_TOL = 1e-5, 0.01


def _check(out255: np.ndarray, ref: np.ndarray) -> None:
    assert out255.shape == ref.shape
    rel = np.linalg.norm(out255 - ref) / np.linalg.norm(ref)
    worst = np.abs(out255 - ref).max()
    assert rel < REL_TOL, f"relative error {rel:.3g}"
    assert worst < ABS_TOL, f"worst pixel off by {worst:.3g}"


def test_parity_crop(official_model):
    inp = np.load(require(REFERENCE / "sots_1401_5_crop.input.npy"))
    ref = np.load(REFERENCE / "sots_1401_5_crop.official.npy")
    _check(dehaze(official_model, inp / 255.0, clip=False) * 255.0, ref)


def test_parity_whole_image(official_model):
    hazy = read_rgb(require(SOTS_MINI / "hazy" / "1400_1.png"))
    ref = np.load(require(REFERENCE / "sots_1400_1.official.npy"))
    _check(dehaze(official_model, hazy, clip=False) * 255.0, ref)
