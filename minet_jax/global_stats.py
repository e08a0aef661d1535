"""Record and replay the network's whole-image statistics, to separate what tiling loses.

MI-Net is not a local operator: every instance norm and the channel attention reduce over the
whole image. A tile run on its own normalises by the tile's statistics. Here the network runs
once on a (possibly downscaled) copy of the whole image while *recording* every spatial reduction
(instance-norm mean and variance, attention means) in call order; each tile then *replays* them
instead of computing its own. Recorded at full resolution this isolates the other cost of tiling,
the convolutions' missing context at tile edges; recorded on a small copy it bounds memory but
approximates the statistics (benchmarks/results, README).

The switch is a context variable read while tracing (no library offers "substitute the
statistics of every norm in a network"; flax's `sow` records intermediates but cannot inject
them). It is set inside the jitted functions below, so a trace never mixes modes. Under either
mode an IM-block runs its T unrolled steps as a Python loop, so each step's norms are recorded
and replayed separately.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from minet_jax.instance_norm import instance_norm_relu

Array = jax.Array

_MODE: contextvars.ContextVar[_Recorder | _Replayer | None] = contextvars.ContextVar("minet_stats", default=None)


def _moments(x: Array) -> tuple[Array, Array]:
    """Mean and biased variance over H and W, per batch and channel; keepdims, float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    return mean, jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)


class _Recorder:
    """Whole-input statistics, computed and kept."""

    def __init__(self) -> None:
        self.stats: list[tuple[Array, Array]] = []

    def __call__(self, x: Array) -> tuple[Array, Array]:
        self.stats.append(_moments(x))
        return self.stats[-1]


class _Replayer:
    """Recorded statistics substituted for the input's own."""

    def __init__(self, stats: list[tuple[Array, Array]]) -> None:
        self.stats = list(stats)
        self.used = 0

    def __call__(self, x: Array) -> tuple[Array, Array]:
        if self.used >= len(self.stats):
            raise ValueError(f"the network asked for more whole-image statistics than the {len(self.stats)} recorded")
        mean, var = self.stats[self.used]
        self.used += 1
        if mean.shape[0] != x.shape[0] or mean.shape[-1] != x.shape[-1]:
            raise ValueError(f"recorded statistic {self.used - 1} has shape {mean.shape}, this call needs {x.shape}")
        return mean, var


def active() -> bool:
    """Whether statistics are being recorded or replayed (in the current trace)."""
    return _MODE.get() is not None


@contextlib.contextmanager
def _mode(m: _Recorder | _Replayer) -> Iterator[_Recorder | _Replayer]:
    token = _MODE.set(m)
    try:
        yield m
    finally:
        _MODE.reset(token)


def spatial_mean(x: Array) -> Array:
    """Mean over H and W (NHWC, keepdims); recorded while recording, the recorded value while replaying."""
    mode = _MODE.get()
    if mode is None:
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    return mode(x)[0].astype(x.dtype)


class InstanceNorm(nnx.InstanceNorm):
    """nnx.InstanceNorm whose mean and variance can be recorded and replayed (see module doc).

    Outside a recording or replay it is exactly nnx.InstanceNorm."""

    def __call__(self, x: Array, *args, **kwargs) -> Array:
        mode = _MODE.get()
        if mode is None:
            return super().__call__(x, *args, **kwargs)
        mean, var = mode(x)
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype or x.dtype)

    def relu(self, x: Array) -> Array:
        """relu(self(x)), differentiated by instance_norm.instance_norm_relu's leaner rule (the
        same values) outside a recording or replay."""
        if _MODE.get() is not None or self.scale is None or self.bias is None or self.dtype != jnp.float32:
            return jax.nn.relu(self(x))
        return instance_norm_relu(x, self.scale[...], self.bias[...], self.epsilon)


@jax.jit(static_argnums=0)
def record(graphdef: nnx.GraphDef, state: nnx.State, x: Array) -> tuple[Array, list]:
    """Run the network on `x` (network input space, NHWC) and return its output and statistics."""
    with _mode(_Recorder()) as rec:
        y = nnx.merge(graphdef, state)(x)
    return y, rec.stats


@jax.jit(static_argnums=0)
def replay(graphdef: nnx.GraphDef, state: nnx.State, x: Array, stats: list) -> Array:
    """Run the network on `x` with every spatial reduction replaced by the recorded `stats`."""
    with _mode(_Replayer(stats)) as rep:
        y = nnx.merge(graphdef, state)(x)
    if rep.used != len(stats):
        raise ValueError(f"the network used {rep.used} of {len(stats)} recorded statistics")
    return y
