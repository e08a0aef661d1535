"""ShareSepConv's convolution written by hand, because XLA's CPU backend is slow at it.

`shared_depthwise_conv`: one k x k kernel applied to every channel (the authors' ShareSepConv).
XLA's CPU depthwise convolution is slow: at 4x64x64x64 a 7x7 one took 65 ms forward and 138 ms
for its gradients, where a dense 3x3 64->64 convolution with 26x its multiply-adds took 12 ms
and 49 ms. As k^2 shifted, scaled copies (one fused loop) the forward takes 3 ms; the input
gradient is the same op with the kernel flipped, and the kernel gradient is one dense
convolution with batch x channels as its contraction (18 ms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' cross-correlation of every channel of NHWC `x` with one odd k x k `kernel`, as a sum
    of k^2 shifted copies (XLA fuses it into one loop)."""
    k = kernel.shape[0]
    p = (k - 1) // 2
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    kernel = kernel.astype(x.dtype)
    y = None
    for i in range(k):
        for j in range(k):
            term = kernel[i, j] * xp[:, i : i + h, j : j + w, :]
            y = term if y is None else y + term
    return y


@jax.custom_vjp
def shared_depthwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Every channel of NHWC `x` cross-correlated with the same odd k x k `kernel`, zero padding
    (k - 1) / 2: `lax`'s depthwise convolution with the kernel repeated over channels. Reverse mode
    only (a custom_vjp): for jvp / jacfwd use `shifted_sum`, the same op left to JAX's autodiff."""
    return shifted_sum(x, kernel)


def _sdc_fwd(x, kernel):
    return shifted_sum(x, kernel), (x, kernel)


def _sdc_bwd(res, g):
    x, kernel = res
    k = kernel.shape[0]
    p = (k - 1) // 2
    dx = shifted_sum(g, kernel[::-1, ::-1])
    # dk[a, b] = sum over n, h, w, c of x_pad[n, h + a, w + b, c] g[n, h, w, c]: a 'valid'
    # correlation of x (batch 1, N*C channels) with g as the kernel (N*C in, 1 out).
    n, h, w, c = x.shape
    lhs = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, w, n * c)
    rhs = jnp.transpose(g.astype(x.dtype), (1, 2, 0, 3)).reshape(h, w, n * c, 1)
    dk = lax.conv_general_dilated(
        lhs, rhs, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.promote_types(x.dtype, jnp.float32),
    )  # fmt: skip
    return dx.astype(x.dtype), dk[0, :, :, 0].astype(kernel.dtype)


shared_depthwise_conv.defvjp(_sdc_fwd, _sdc_bwd)


def shared_depthwise_conv_lax(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`shared_depthwise_conv` as XLA's own depthwise convolution (any differentiation mode)."""
    k, c = kernel.shape[0], x.shape[-1]
    w = jnp.broadcast_to(kernel.astype(x.dtype)[:, :, None, None], (k, k, 1, c))
    p = (k - 1) // 2
    return lax.conv_general_dilated(
        x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
    )
