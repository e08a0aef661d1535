"""A drop-in `lax.conv_general_dilated` whose weight gradient is one im2col matrix product.

Written by hand because XLA's CPU backend computes the weight gradient of a convolution as a
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
