"""Convolutions written by hand where XLA's CPU backend is slow.

`shared_depthwise_conv`: one k x k kernel applied to every channel (the authors' ShareSepConv).
XLA's CPU depthwise convolution is slow: at 4x64x64x64 a 7x7 one took 65 ms forward and 138 ms
for its gradients, where a dense 3x3 64->64 convolution with 26x its multiply-adds took 12 ms
and 49 ms. As k^2 shifted, scaled copies (one fused loop) the forward takes 3 ms; the input
gradient is the same op with the kernel flipped, and the kernel gradient is one dense
convolution with batch x channels as its contraction (18 ms).

`conv_general_dilated`: a drop-in `lax.conv_general_dilated` whose weight gradient is one im2col
matrix product. Written by hand because XLA's CPU backend computes the weight gradient of a convolution as a
convolution with the (large) output gradient as its kernel, about 10x the cost of the forward
pass; as a GEMM of image patches against the output gradient it runs at matmul speed. The forward
pass and the input gradient are XLA's own, so outputs are bit-identical to `lax`'s.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs NHWC, rhs HWIO, out NHWC as specs


def _is_nhwc_hwio(dn) -> bool:
    if dn is None:
        return False
    if isinstance(dn, lax.ConvDimensionNumbers):
        return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _NHWC
    return tuple(dn) == ("NHWC", "HWIO", "NHWC")


def patches(x: jax.Array, kernel_hw: tuple[int, int], stride, padding, dilation) -> jax.Array:
    """(N, H, W, C) -> (N, Ho, Wo, kh * kw * C), the receptive fields in HWIO kernel order."""
    kh, kw = kernel_hw
    (sh, sw), (dh, dw) = stride, dilation
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    cols = [
        xp[:, a * dh : a * dh + sh * (ho - 1) + 1 : sh, b * dw : b * dw + sw * (wo - 1) + 1 : sw, :]
        for a in range(kh)
        for b in range(kw)
    ]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _conv(x, w, stride, padding, dilation, precision):
    return lax.conv_general_dilated(
        x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _im2col_conv(x, w, stride, padding, dilation, precision):
    return _conv(x, w, stride, padding, dilation, precision)


def _fwd(x, w, stride, padding, dilation, precision):
    return _conv(x, w, stride, padding, dilation, precision), (x, w)


def _bwd(stride, padding, dilation, precision, res, g):
    x, w = res
    _, input_vjp = jax.vjp(lambda x_: _conv(x_, w, stride, padding, dilation, precision), x)
    (dx,) = input_vjp(g)
    kh, kw, cin, cout = w.shape
    cols = patches(x, (kh, kw), stride, padding, dilation).reshape(-1, kh * kw * cin)
    dw = jnp.matmul(cols.T, g.reshape(-1, cout).astype(cols.dtype), precision=precision,
                    preferred_element_type=jnp.float32)  # fmt: skip
    return dx, dw.reshape(w.shape).astype(w.dtype)


_im2col_conv.defvjp(_fwd, _bwd)


def conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
    feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None, **kwargs,
):  # fmt: skip
    """`lax.conv_general_dilated` with an im2col weight gradient for plain NHWC/HWIO convolutions;
    anything else (grouped, input-dilated, other layouts) falls through to `lax`."""
    plain = (
        _is_nhwc_hwio(dimension_numbers)
        and feature_group_count == 1
        and batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and not isinstance(padding, str)
        and preferred_element_type is None
        and all(v is None for v in kwargs.values())  # e.g. out_sharding
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type, **kwargs,
        )  # fmt: skip
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    return _im2col_conv(
        lhs, rhs, tuple(window_strides), padding, tuple(rhs_dilation or (1, 1)), precision
    )


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
