"""The network's structure, layouts and conventions, against independent numpy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import MINet, count_params, dehaze, load_pretrained, model_config, save_model
from minet_jax.convert import _relayout
from minet_jax.model import IMBlock, field_fn


def test_official_parameter_count():
    assert count_params(MINet(model_config("official"))) == 628_078


def test_paper_variant_structure():
    cfg = model_config("paper")
    m = MINet(cfg)
    assert [b.T for b in m.blocks] == [12, 12, 12]
    assert [b.f.conv1.kernel_dilation for b in m.blocks] == [1, 2, 5]
    assert m.gate.kernel.shape == (3, 3, 64, 3)  # group conv: each W_i sees x_i only
    assert m.attention is None and m.rca is not None
    assert m.rca.fc1.kernel.shape == (64, 4)
    # The official network minus its image attention (12) and 2/3 of the gate's weights, plus the
    # feature RCA: 1x1 conv (64*64+64) and the MLP (64*4+4 + 4*64+64); no ShareSepConvs (2*(9+49)).
    expected = 628_078 - 16 - 2 * (9 + 49) - 2 * 64 * 9 * 3 + (64 * 64 + 64) + (64 * 4 + 4) + (4 * 64 + 64)
    assert count_params(m) == expected


def test_eta_is_configurable():
    cfg = model_config("paper")
    cfg.eta = 0.5
    assert all(b.eta == 0.5 for b in MINet(cfg).blocks)


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
    m.deconv3.kernel[...] = _relayout(w, "transposed_conv")
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
    conv.kernel[...] = _relayout(w, "conv")
    x = rng.normal(size=(64, 12, 10)).astype(np.float32)
    got = np.asarray(conv(jnp.asarray(x.transpose(1, 2, 0))[None]))[0].transpose(2, 0, 1)
    want = _torch_conv2d(x.astype(np.float64), w, stride=stride, pad=dil, dil=dil)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_im_block_is_t_steps_of_the_implicit_euler_iteration():
    cfg = model_config("official")
    block = IMBlock(cfg, 8, dilation=2, rngs=nnx.Rngs(3))
    g0 = jax.random.normal(jax.random.key(0), (2, 12, 10, 8))
    got, stats = block(g0)
    graphdef, params = nnx.split(block.f)
    f = field_fn(graphdef)
    g = g0
    for _ in range(cfg.T):
        g = g0 + cfg.eta * f(params, g)
    np.testing.assert_allclose(np.asarray(got), np.asarray(g), rtol=1e-6, atol=1e-6)
    assert int(stats.iterations) == cfg.T and stats.residuals.shape == (cfg.T,)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("hw", [(17, 23), (16, 24), (1, 5)])
def test_any_size_gives_same_size(variant, hw):
    cfg = model_config(variant)
    cfg.T = 2
    m = MINet(cfg)
    x = jax.random.uniform(jax.random.key(0), (1, *hw, 3))
    assert m(x).shape == (1, *hw, 3)


def test_odd_size_is_padded_then_cropped():
    # An odd-sized input equals the even network run on the edge-padded image, cropped back.
    cfg = model_config("official")
    cfg.T = 2
    m = MINet(cfg)
    x = jax.random.uniform(jax.random.key(1), (1, 15, 20, 3)) * 255
    padded = jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)), mode="edge")
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(m(padded))[:, :15], rtol=1e-6, atol=1e-5)


def test_identity_init_starts_near_identity():
    cfg = model_config("official")
    cfg.input_format, cfg.init, cfg.T = "rgb01", "identity", 2
    x = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    out = dehaze(MINet(cfg), x, clip=False)
    assert np.abs(out - x).max() < 0.05


def test_dehaze_conventions():
    cfg = model_config("official")
    cfg.T = 1
    m = MINet(cfg)
    u8 = np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    a = dehaze(m, u8, clip=False)
    b = dehaze(m, u8.astype(np.float32) / 255, clip=False)
    assert a.shape == (9, 12, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    clipped = dehaze(m, u8)
    np.testing.assert_allclose(clipped, np.clip(a, 0, 1), atol=1e-6)
    # RGB in, RGB out: the network is fed BGR on 0..255, users never see it.
    direct = np.asarray(m(jnp.asarray(u8[None, ..., ::-1].astype(np.float32))))[0, ..., ::-1] / 255
    np.testing.assert_allclose(a, direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="HxWx3"):
        dehaze(m, u8[..., 0])


def test_checkpoint_round_trip(tmp_path):
    cfg = model_config("paper")
    cfg.T, cfg.eta = 3, 0.7
    m = MINet(cfg, rngs=nnx.Rngs(5))
    save_model(m, tmp_path / "ck")
    m2 = load_pretrained(tmp_path / "ck")
    assert m2.config == m.config
    x = np.random.default_rng(0).random((8, 10, 3)).astype(np.float32)
    np.testing.assert_array_equal(dehaze(m, x, clip=False), dehaze(m2, x, clip=False))
    with pytest.raises(FileExistsError):
        save_model(m, tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a minet-jax checkpoint"):
        load_pretrained(tmp_path)
