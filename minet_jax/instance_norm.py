"""ReLU(InstanceNorm(x)) with a derivative rule that keeps one float map per layer.

Differentiated op by op, `relu(nnx.InstanceNorm(x))` leaves four full-size float32 maps per
layer for the backward pass (x - mean, its square, a broadcast scale and the ReLU's output) and
a boolean mask. The rule below is the same derivative written once:

    x^ = (x - mean) / sqrt(var + eps),   y = relu(scale x^ + bias)
    dy = [y > 0] (scale dx^ + x^ dscale + dbias),   dx^ = (dxc - x^ mean(x^ dxc)) / sqrt(var + eps)

with dxc = dx - mean(dx) and means over the spatial axes, so linearising it saves x^ and the
mask only (the output, which the next convolution keeps for its own gradient anyway, is shared).
It is a custom_jvp, not a custom_vjp: forward mode (the Jacobian probes' jacfwd) goes through it,
and JAX transposes it for reverse mode. Values are those of flax's InstanceNorm (biased variance,
`use_fast_variance=False`, the same order of operations) followed by ReLU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Array = jax.Array

_AXES = (1, 2)  # NHWC: statistics per image and channel


def _real(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))  # bf16 -> f32; f64 stays


def _parts(x: Array, scale: Array, bias: Array, epsilon: float):
    xc = x - jnp.mean(_real(x), _AXES, keepdims=True)
    var = jnp.mean(jnp.square(xc), _AXES, keepdims=True)
    inv = jax.lax.rsqrt(var + epsilon)
    pre = xc * (inv * scale) + bias
    return xc, inv, pre


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def instance_norm_relu(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """relu(instance_norm(x) * scale + bias), at least float32, for NHWC `x` and per-channel scale, bias."""
    return jax.nn.relu(_parts(x, scale, bias, epsilon)[2])


def _instance_norm_relu_jvp(epsilon, primals, tangents):
    x, scale, bias = primals
    # Symbolic zeros: a parameter held constant (jvp in x alone) adds no term, and no zero map
    # times x^ is computed and saved.
    dx, dscale, dbias = (None if type(t) is SymbolicZero else t for t in tangents)
    xc, inv, pre = _parts(x, scale, bias, epsilon)
    y = jax.nn.relu(pre)
    xhat = xc * inv
    terms = []
    if dx is not None:
        dxc = _real(dx)
        dxc = dxc - jnp.mean(dxc, _AXES, keepdims=True)
        terms.append(inv * (dxc - xhat * jnp.mean(xhat * dxc, _AXES, keepdims=True)) * scale)
    if dscale is not None:
        terms.append(xhat * dscale)
    if dbias is not None:
        terms.append(jnp.broadcast_to(dbias, pre.shape) if not terms else dbias)
    if not terms:
        return y, jnp.zeros_like(y)
    dpre = sum(terms[1:], terms[0])
    # The zero comes from the tangent (0 * dpre), not a constant: a broadcast constant would be
    # known at linearisation and saved as one more full-size map (as jax.nn.relu's rule does).
    return y, jnp.where(pre > 0, dpre, 0 * dpre)


instance_norm_relu.defjvp(_instance_norm_relu_jvp, symbolic_zeros=True)
