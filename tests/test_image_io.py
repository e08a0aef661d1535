"""minet_jax.image_io: reading every common image flavour as 8-bit RGB, writing PNGs, to_uint8."""


import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage.metrics import peak_signal_noise_ratio

from minet_jax.image_io import ImageReadError, decode_rgb, read_rgb, to_uint8, write_png

# ----------------------------------------------------------------------------- helpers



# ----------------------------------------------------------------------------- read_rgb, write_png, to_uint8


def test_load_truncated_images_is_off():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_read_rgb_8bit_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    alpha = rng.integers(0, 256, (6, 7), dtype=np.uint8)

    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.png"), rgb)

    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "l.png"), np.stack([gray] * 3, -1))

    Image.fromarray(np.stack([gray, alpha], -1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png"), np.stack([gray] * 3, -1))

    # alpha is dropped, the stored colours are kept (no compositing)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgb)

    Image.fromarray(gray > 128).save(tmp_path / "bilevel.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "bilevel.png"), np.stack([(gray > 128) * 255] * 3, -1))

    out = read_rgb(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3)


def test_read_rgb_palette(tmp_path):
    palette = [10, 20, 30, 40, 50, 60, 200, 100, 0]
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    expected = np.array(palette, np.uint8).reshape(3, 3)[idx]
    variants = {"p.png": {}, "p_index.png": {"transparency": 1}, "p_bytes.png": {"transparency": bytes([0, 128, 255])}}
    for name, kw in variants.items():
        im = Image.fromarray(idx, mode="P")
        im.putpalette(palette)
        im.save(tmp_path / name, **kw)
        assert Image.open(tmp_path / name).mode == "P"
        np.testing.assert_array_equal(read_rgb(tmp_path / name), expected, err_msg=name)


def test_read_rgb_16bit(tmp_path, write_png16):
    k = np.arange(256, dtype=np.uint16)
    gray16 = np.concatenate([257 * k, [65535, 0, 128, 129, 255, 385, 386, 65406, 65407]]).astype(np.uint16)
    gray16 = np.stack([np.roll(gray16, 7 * r) for r in range(6)])  # 6 x 265: every PNG filter is used
    expected_gray = np.round(gray16 / 257.0).astype(np.uint8)
    assert expected_gray[0, 255] == 255 and expected_gray[0, 256] == 255 and list(expected_gray[0, :256]) == list(k)
    assert list(expected_gray[0, 257:]) == [0, 0, 1, 1, 1, 2, 254, 255]  # rounding, not the high byte

    Image.fromarray(gray16).save(tmp_path / "g16_pil.png")  # Pillow writes mode I;16 as 16-bit grey
    assert Image.open(tmp_path / "g16_pil.png").mode.startswith("I")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g16_pil.png"), np.stack([expected_gray] * 3, -1))

    write_png16(tmp_path / "g16.png", gray16)
    np.testing.assert_array_equal(read_rgb(tmp_path / "g16.png"), np.stack([expected_gray] * 3, -1))

    rng = np.random.default_rng(1)
    rgb16 = np.stack([gray16, gray16[:, ::-1], rng.integers(0, 65536, gray16.shape)], -1).astype(np.uint16)
    expected_rgb = np.round(rgb16 / 257.0).astype(np.uint8)
    write_png16(tmp_path / "rgb16.png", rgb16)
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb16.png"), expected_rgb)

    alpha16 = rng.integers(0, 65536, gray16.shape).astype(np.uint16)
    write_png16(tmp_path / "rgba16.png", np.dstack([rgb16, alpha16]))
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba16.png"), expected_rgb)

    write_png16(tmp_path / "ga16.png", np.stack([gray16, alpha16], -1))
    np.testing.assert_array_equal(read_rgb(tmp_path / "ga16.png"), np.stack([expected_gray] * 3, -1))


def test_read_rgb_jpeg(tmp_path, natural_rgb):
    rgb = natural_rgb()
    Image.fromarray(rgb).save(tmp_path / "x.JPG", quality=95)
    out = read_rgb(tmp_path / "x.JPG")
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert peak_signal_noise_ratio(rgb, out, data_range=255) > 30


def test_read_rgb_errors_name_the_file(tmp_path, natural_rgb):
    good = tmp_path / "good.png"
    Image.fromarray(natural_rgb()).save(good)
    blob = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(natural_rgb()).save(tmp_path / "full.jpg")
    jpg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    for name in ("truncated.png", "text.png", "empty.png", "truncated.jpg", "missing.png"):
        with pytest.raises(ImageReadError) as info:
            read_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(info.value), name
        assert isinstance(info.value, ValueError)
        assert info.value.path == tmp_path / name


def test_write_png_and_to_uint8(tmp_path, natural_rgb):
    rgb = natural_rgb()
    write_png(tmp_path / "out.png", rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "out.png"), rgb)
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", rgb.astype(np.float32))

    x = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 128 / 255, 1.0, 1.7, np.nan, np.inf, -np.inf])
    assert to_uint8(x).dtype == np.uint8
    assert list(to_uint8(x)) == [0, 0, 0, 2, 2, 128, 255, 255, 0, 255, 0]  # half to even: 0.5->0, 1.5->2, 2.5->2
    assert list(to_uint8(np.arange(256) / 255.0)) == list(range(256))


# ----------------------------------------------------------------------------- decode_rgb


@pytest.mark.usefixtures("no_tensorflow_no_home_cache")
def test_decode_rgb_matches_read_rgb(tmp_path, write_png16, smooth_rgb, write_image):
    a16 = np.random.default_rng(0).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    write_png16(tmp_path / "x16.png", a16)
    for p in (tmp_path / "x16.png", write_image(tmp_path / "x.jpg", smooth_rgb(3))):
        assert np.array_equal(decode_rgb(p.read_bytes()), read_rgb(p))
    with pytest.raises(ImageReadError, match="thing"):
        decode_rgb(b"not an image", "thing")
