"""Tiled inference for images too large for a device's memory.

MI-Net is not a local operator: instance norm and the channel attention use whole-image
statistics, so a tiled result differs from the whole-image one, by far more than the
convolutions' missing context at tile edges (README; `benchmarks/large_image.py` and `evaluate.py
--tile` measure it; global_stats.py separates the two causes). Tiles overlap and are blended with
weights that fall linearly to the tile edges, which hides seams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1 inside the tile, rising linearly over `overlap` pixels at edges shared with a neighbour."""
    w = np.ones(n, np.float32)
    k = min(overlap, n // 2)
    if k > 0:
        edge = (np.arange(k, dtype=np.float32) + 0.5) / k
        if not at_start:
            w[:k] = edge
        if not at_end:
            w[n - k :] = edge[::-1]
    return w


def tiled_apply(
    fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int = 512, overlap: int = 64
) -> np.ndarray:
    """Apply `fn` (HxWxC -> HxWxC' of the same H, W) tile by tile and blend the overlaps."""
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    h, w = image.shape[:2]
    step = tile - overlap
    ys, xs = _starts(h, tile, step), _starts(w, tile, step)
    out = acc = None
    for y in ys:
        for x in xs:
            patch = image[y : y + tile, x : x + tile]
            res = np.asarray(fn(patch), np.float32)
            if out is None:
                out = np.zeros((h, w, res.shape[-1]), np.float32)
                acc = np.zeros((h, w, 1), np.float32)
            ph, pw = patch.shape[:2]
            wy = _ramp(ph, overlap, y == 0, y + ph >= h)
            wx = _ramp(pw, overlap, x == 0, x + pw >= w)
            weight = (wy[:, None] * wx[None, :])[..., None]
            out[y : y + ph, x : x + pw] += res * weight
            acc[y : y + ph, x : x + pw] += weight
    return out / acc
