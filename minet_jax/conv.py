"""Convolutions written by hand where XLA's CPU backend is slow at the plain form.

`conv_transpose_2x`: the decoder's PyTorch ConvTranspose2d(k=4, s=2, p=1) as one 3x3
convolution to 4x the channels followed by a depth-to-space shuffle (each output phase sees a
2x2 subset of the taps). XLA lowers the input-dilated form to a generic convolution whose kernel
gradient took 825 ms of a 4.4 s training step (128x128, batch 4, 2-core CPU); this form's
forward and gradients together take 148 ms against 845 ms for the old one (a 2x2 kernel over
the undilated input, 2.25x fewer multiply-adds, had a 1.9 s kernel gradient: even kernels leave
XLA's fast path too).

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


def conv_transpose_2x(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """PyTorch's ConvTranspose2d(k=4, stride=2, padding=1) of NHWC `x`, no bias. `kernel` is
    (4, 4, in, out), spatially flipped from PyTorch's (in, out, 4, 4) (convert.relayout), i.e.
    the kernel of the equivalent correlation over the 2x-dilated input padded by 2."""
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]

    # Output pixel (2m + a, 2k + b) sees input rows m + a - 1 + i, i in {0, 1}, through flipped
    # tap a + 2i (columns alike): offset a - 1 + i from m is row a + i of a 3x3 kernel, so phase
    # (a, b)'s taps kernel[a::2, b::2] sit in rows a..a+1, columns b..b+1.
    def phase(a: int, b: int) -> jax.Array:
        return jnp.pad(kernel[a::2, b::2], ((a, 1 - a), (b, 1 - b), (0, 0), (0, 0)))

    k3 = jnp.stack([jnp.stack([phase(a, b) for b in (0, 1)], axis=3) for a in (0, 1)], axis=3)  # 3,3,in,2,2,out
    y = lax.conv_general_dilated(
        x, k3.reshape(3, 3, cin, 4 * cout), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
    )  # fmt: skip
    return y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, cout)


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
