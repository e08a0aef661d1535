"""minet_jax.convert: PyTorch weight layouts (`relayout`) give PyTorch's convolution semantics,
checked against independent numpy references of Conv2d and ConvTranspose2d."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from minet_jax import MINet, model_config
from minet_jax.convert import relayout


def _torch_conv2d(x, w, b=None, stride=1, pad=0, dil=1):
    """PyTorch Conv2d semantics in numpy: x (C, H, W), w (O, C, kh, kw) cross-correlation."""
    _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((o, ho, wo))
    for a in range(kh):
        for bb in range(kw):
            patch = xp[:, a * dil : a * dil + stride * ho : stride, bb * dil : bb * dil + stride * wo : stride]
            out += np.einsum("chw,oc->ohw", patch, w[:, :, a, bb])
    return out if b is None else out + b[:, None, None]


def _torch_conv_transpose2d(x, w, b, stride, pad):
    """PyTorch ConvTranspose2d semantics in numpy, by scattering: w (C_in, C_out, kh, kw)."""
    _, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            full[:, i * stride : i * stride + kh, j * stride : j * stride + kw] += np.einsum(
                "c,cokl->okl", x[:, i, j], w
            )
    ho, wo = (h - 1) * stride - 2 * pad + kh, (wd - 1) * stride - 2 * pad + kw
    return full[:, pad : pad + ho, pad : pad + wo] + b[:, None, None]


def test_transposed_conv_matches_pytorch_semantics():
    rng = np.random.default_rng(0)
    m = MINet(model_config("official"))
    w = rng.normal(size=(64, 64, 4, 4)).astype(np.float32) * 0.05
    b = rng.normal(size=(64,)).astype(np.float32)
    m.deconv3.kernel[...] = relayout(w, "transposed_conv")
    m.deconv3.bias[...] = b
    x = rng.normal(size=(64, 5, 7)).astype(np.float32)
    got = np.asarray(m.deconv3(jnp.asarray(x.transpose(1, 2, 0))[None]))[0].transpose(2, 0, 1)
    want = _torch_conv_transpose2d(x.astype(np.float64), w, b, stride=2, pad=1)
    assert got.shape == (64, 10, 14)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,stride,dil", [("conv3", 2, 1), ("blocks.2.f.conv1", 1, 4)])
def test_conv_layout_matches_pytorch_semantics(name, stride, dil):
    rng = np.random.default_rng(1)
    m = MINet(model_config("official"))
    conv = m
    for part in name.split("."):
        conv = conv[int(part)] if part.isdigit() else getattr(conv, part)
    w = rng.normal(size=(64, 64, 3, 3)).astype(np.float32) * 0.05
    conv.kernel[...] = relayout(w, "conv")
    x = rng.normal(size=(64, 12, 10)).astype(np.float32)
    got = np.asarray(conv(jnp.asarray(x.transpose(1, 2, 0))[None]))[0].transpose(2, 0, 1)
    want = _torch_conv2d(x.astype(np.float64), w, stride=stride, pad=dil, dil=dil)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
