"""Dehazing with a model: RGB in, RGB out, whatever the network's own channel order and scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minet_jax import global_stats
from minet_jax.model import MINet


def to_network(rgb01: jax.Array, input_format: str) -> jax.Array:
    """RGB in [0, 1] (NHWC) to what a network of `input_format` takes."""
    if input_format == "bgr255":
        return rgb01[..., ::-1] * 255.0
    if input_format == "rgb01":
        return rgb01
    raise ValueError(f"model.input_format must be 'bgr255' or 'rgb01', got {input_format!r}")


def from_network(y: jax.Array, input_format: str) -> jax.Array:
    """A network's output back to RGB on the [0, 1] scale (unclamped)."""
    if input_format == "bgr255":
        return y[..., ::-1] / 255.0
    return to_network(y, input_format)


@jax.jit(static_argnums=0)
def _dehaze_rgb01(graphdef: nnx.GraphDef, state: nnx.State, rgb01: jax.Array) -> jax.Array:
    model = nnx.merge(graphdef, state)
    fmt = model.config.input_format
    return from_network(model(to_network(rgb01, fmt)), fmt)


def as_rgb01(image: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float ([0, 1]) RGB, HxWx3 or NxHxWx3, as float32 in [0, 1]."""
    x = np.asarray(image)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape HxWx3 (or NxHxWx3), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"expected uint8 (0..255) or float ([0, 1]) pixels, got dtype {x.dtype}")


# What `tile > 0` computes. "exact" is the stage-by-stage executor (streaming.py): the whole
# image's output, in memory bounded by the tile. The other two run the whole network per tile and
# blend overlapping tiles; measured on SOTS-mini with the authors' weights and 256-pixel tiles,
# 64 overlap (36.38 dB whole): "approx-tile-stats" normalises each tile by its own statistics
# (27.44 dB), "approx-image-stats" replays the whole image's statistics recorded on a copy of long
# side `stats_size` (full size, 0: 35.71 dB but a whole-image pass; 256: 28.31 dB).
TILINGS = ("exact", "approx-tile-stats", "approx-image-stats")


def _whole_image_stats(graphdef: nnx.GraphDef, state: nnx.State, fmt: str, rgb01: np.ndarray, size: int) -> list:
    """The network's spatial statistics (global_stats.record) on the HxWx3 image in [0, 1], or on a
    copy of it whose long side is at most `size` (antialiased linear resize; 0: full size)."""
    h, w = rgb01.shape[:2]
    scale = min(1.0, size / max(h, w)) if size else 1.0
    small = jnp.asarray(rgb01)[None]
    if scale < 1.0:
        shape = (1, max(2, round(h * scale)), max(2, round(w * scale)), 3)
        small = jax.image.resize(small, shape, "linear", antialias=True)
    return global_stats.record(graphdef, state, to_network(small, fmt))[1]


def dehaze(
    model: MINet,
    image: np.ndarray,
    clip: bool = True,
    tile: int = 0,
    tiling: str = "exact",
    spill: str | None = None,
    overlap: int = 64,
    stats_size: int = 0,
) -> np.ndarray:
    """Dehaze an RGB image (HxWx3 uint8, or float in [0, 1]; a leading batch axis is allowed).

    Returns float32 RGB on the [0, 1] scale with the input's shape; `clip=False` gives the
    unclamped network output on that scale.

    `tile > 0` bounds memory by the tile. With `tiling="exact"` (default) the network runs
    layer by layer over tile x tile pieces with whole-image statistics (streaming.py): the
    whole-image output to float32 rounding, feature maps in host memory or, with `spill=DIR`,
    in files there; it needs the unrolled forward solver. The approximate modes (see `TILINGS`)
    blend overlapping tiles (`overlap` pixels) and lose PSNR.
    """
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {TILINGS}, got {tiling!r}")
    if stats_size < 0:
        raise ValueError(f"stats_size must be >= 0 (0: full size), got {stats_size}")
    x = as_rgb01(image)
    graphdef, state = nnx.split(model)
    fmt = model.config.input_format

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(_dehaze_rgb01(graphdef, state, jnp.asarray(batch)))

    if tile > 0:
        from minet_jax import streaming  # noqa: PLC0415
        from minet_jax.tiling import tiled_apply  # noqa: PLC0415

        if tiling == "exact":
            streaming.check_streamable(model)

        def one_frame(frame: np.ndarray) -> np.ndarray:
            if tiling == "exact":
                y = streaming.stream(model, np.asarray(to_network(frame, fmt)), tile=tile, spill=spill)
                return np.asarray(from_network(y, fmt))
            if tiling == "approx-tile-stats":
                return tiled_apply(lambda p: run(p[None])[0], frame, tile, overlap)
            stats = _whole_image_stats(graphdef, state, fmt, frame, stats_size)

            def fn(p: np.ndarray) -> np.ndarray:
                y = global_stats.replay(graphdef, state, to_network(jnp.asarray(p[None]), fmt), stats)
                return np.asarray(from_network(y, fmt))[0]

            return tiled_apply(fn, frame, tile, overlap)

        frames = x if x.ndim == 4 else x[None]
        y = np.stack([one_frame(f) for f in frames])
    else:
        y = run(x if x.ndim == 4 else x[None])
    y = y if x.ndim == 4 else y[0]
    return np.clip(y, 0.0, 1.0) if clip else y
