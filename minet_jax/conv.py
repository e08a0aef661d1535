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

`conv_general_dilated_explicit_vjp`: `lax.conv_general_dilated` whose input gradient is a plain
forward convolution with an explicitly flipped, transposed kernel. JAX's own rule reads the
reversed kernel with swapped feature dimensions; in straight-line code XLA's CPU backend turns
that into a kernel copy and its fast (YNNPACK) convolution, but inside a while loop (the implicit
backward's adjoint solve) it does not, and the generic convolution it falls back to made that
step 2.4x slower than backprop through all the steps (7.3 s against 3.1 s, 128x128, batch 4).
"""

from __future__ import annotations

from functools import partial

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


def _unfused(fn, x: jax.Array, key: jax.Array) -> jax.Array:
    """`fn(x)` computed once, as its own op, on the CPU (`key`: any small array the branch
    choice is read from; pick one that `vmap` leaves unbatched, or both branches run).

    XLA's CPU backend fuses cheap elementwise producers into every consumer. In an IM-block's
    backward the ShareSepConv input gradient of each step has two: the step before's backward
    and the sum of all steps' cotangents of the block input g0 (g <- g0 + eta f(g)); so every
    one of those k^2-term sums was computed twice, T of them in one fused loop over T padded
    inputs that took 118 ms for T = 8 (7x7, 2x64x64x64), ~7x the time of the same sums apart.
    A conditional is a boundary XLA does not fuse across; both branches are `fn`, so the
    predicate (a runtime value, never folded away) does not matter."""
    if jax.default_backend() != "cpu":
        return fn(x)
    return lax.cond(jnp.isfinite(key.ravel()[0]), fn, fn, x)


def _sdc_bwd(res, g):
    x, kernel = res
    k = kernel.shape[0]
    p = (k - 1) // 2
    dx = _unfused(lambda a: shifted_sum(a, kernel[::-1, ::-1]), g, kernel)
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


def _same_padding(padding, kernel_shape, dilation) -> bool:
    if isinstance(padding, str):
        return False
    return all(
        tuple(p) == ((d * (k - 1)) // 2,) * 2 and k % 2 == 1
        for p, k, d in zip(padding, kernel_shape, dilation, strict=True)
    )


def conv_general_dilated_explicit_vjp(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
    feature_group_count=1, precision=None, **kwargs,
):  # fmt: skip
    """Drop-in for `lax.conv_general_dilated` (as nnx.Conv calls it) with a reverse-mode-only
    gradient whose input gradient is a forward convolution (module docstring). Used for the
    cases it covers, NHWC / HWIO, stride 1, odd kernel, 'same' padding d (k - 1) / 2, one group,
    no options; anything else goes to `lax.conv_general_dilated` unchanged. For jvp / jacfwd use
    `lax.conv_general_dilated` itself (same values)."""
    spatial = rhs.shape[:-2]
    dilation = tuple(rhs_dilation or (1,) * len(spatial))
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    given = dimension_numbers and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (
        given == nhwc
        and all(s == 1 for s in window_strides)
        and all(d == 1 for d in (lhs_dilation or ()))
        and feature_group_count == 1
        and not {k: v for k, v in kwargs.items() if v is not None}
        and _same_padding(padding, spatial, dilation)
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, **kwargs,
        )  # fmt: skip
    return _same_conv(lhs, rhs, dilation, precision)


def _correlate(x, kernel, dilation, precision):
    pad = tuple(((d * (k - 1)) // 2,) * 2 for k, d in zip(kernel.shape[:-2], dilation, strict=True))
    return lax.conv_general_dilated(
        x, kernel, (1,) * len(dilation), pad, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
    )  # fmt: skip


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _same_conv(x, kernel, dilation, precision):
    return _correlate(x, kernel, dilation, precision)


def _same_conv_fwd(x, kernel, dilation, precision):
    return _correlate(x, kernel, dilation, precision), (x, kernel)


def _same_conv_bwd(dilation, precision, res, g):
    x, kernel = res
    # A stride-1 'same' correlation's transpose is the correlation with the kernel flipped in
    # space and its in / out features swapped (same dilation, same padding, odd k).
    flipped = jnp.swapaxes(jnp.flip(kernel, (0, 1)), 2, 3)
    dx = _correlate(g, flipped, dilation, precision)
    # The kernel gradient by JAX's own rule: outside while loops XLA lowers it to its fast path.
    dk = jax.vjp(lambda k: _correlate(x, k, dilation, precision), kernel)[1](g)[0]
    return dx, dk


_same_conv.defvjp(_same_conv_fwd, _same_conv_bwd)


def conv_general_dilated_1x1_as_dot(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
    feature_group_count=1, precision=None, preferred_element_type=None, **kwargs,
):  # fmt: skip
    """Drop-in for `lax.conv_general_dilated` (as nnx.Conv calls it) that computes a 1x1, stride-1,
    unpadded, one-group NHWC / HWIO convolution as a matrix product over the channels. XLA's CPU
    backend ran the decoder's 1x1 convolution to 3 channels at 460x620 in 165 ms of a 2.5 s
    inference (42 ms alone) against 3.9 ms as a dot: its convolution path is slow for so few
    output channels. Anything else goes to `lax.conv_general_dilated` unchanged. Same values."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    given = dimension_numbers and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    flat_pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    plain = (
        given == nhwc
        and rhs.shape[:-2] == (1, 1)
        and all(s == 1 for s in window_strides)
        and all(d == 1 for d in (lhs_dilation or ()))
        and feature_group_count == 1
        and flat_pad in ("VALID", "SAME", ((0, 0), (0, 0)))
        and not {k: v for k, v in kwargs.items() if v is not None}
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, preferred_element_type=preferred_element_type, **kwargs,
        )  # fmt: skip
    return lax.dot_general(
        lhs, rhs[0, 0], (((lhs.ndim - 1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=preferred_element_type,
    )  # fmt: skip
