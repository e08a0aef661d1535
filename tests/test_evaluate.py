"""Image reading, data-set layouts and the evaluate.py pipeline (with oracle predictors, no model)."""

import csv
import functools
import io
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluate as ev
from minet_jax.imageio import ImageReadError, read_rgb, to_uint8, write_png
from minet_jax.layouts import LayoutError, Pair, find_pairs

SOTS_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sots-indoor-mini"


# ----------------------------------------------------------------------------- helpers


def write_png16(path: Path, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit colour PNGs).

    Rows cycle through the PNG filters None, Sub, Up, Average and Paeth so that reading exercises
    un-filtering with the right bytes per pixel.
    """
    arr = np.ascontiguousarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = arr.reshape(h, -1).view(np.uint8).reshape(h, -1).astype(np.int16)
    bpp = 2 * channels
    rows = []
    for y in range(h):
        cur = raw[y]
        left = np.concatenate([np.zeros(bpp, np.int16), cur[:-bpp]])
        up = raw[y - 1] if y else np.zeros_like(cur)
        upleft = np.concatenate([np.zeros(bpp, np.int16), up[:-bpp]])
        ftype = y % 5
        if ftype == 0:
            pred = np.zeros_like(cur)
        elif ftype == 1:
            pred = left
        elif ftype == 2:
            pred = up
        elif ftype == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        rows.append(bytes([ftype]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@functools.cache
def _quarter_size(name: str) -> np.ndarray:
    img = getattr(data, name)()
    small = transform.resize(img, (img.shape[0] // 4, img.shape[1] // 4), anti_aliasing=True, preserve_range=True)
    return np.round(small).astype(np.uint8)


def natural_rgb(name: str = "astronaut", shape=(64, 80), offset=0) -> np.ndarray:
    return _quarter_size(name)[offset : offset + shape[0], offset : offset + shape[1]].copy()


def sk_ssim(a, b):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2
    )


def add_haze(clear: np.ndarray, t: float) -> np.ndarray:
    return np.round(clear * t + 230 * (1 - t)).astype(np.uint8)


def touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def stems(pairs):
    return [(p.hazy.name, p.clear.name if p.clear else None) for p in pairs]


# ----------------------------------------------------------------------------- imageio


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


def test_read_rgb_16bit(tmp_path):
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


def test_read_rgb_jpeg(tmp_path):
    rgb = natural_rgb()
    Image.fromarray(rgb).save(tmp_path / "x.JPG", quality=95)
    out = read_rgb(tmp_path / "x.JPG")
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert peak_signal_noise_ratio(rgb, out, data_range=255) > 30


def test_read_rgb_errors_name_the_file(tmp_path):
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


def test_write_png_and_to_uint8(tmp_path):
    rgb = natural_rgb()
    write_png(tmp_path / "out.png", rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "out.png"), rgb)
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", rgb.astype(np.float32))

    x = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 128 / 255, 1.0, 1.7, np.nan, np.inf, -np.inf])
    assert to_uint8(x).dtype == np.uint8
    assert list(to_uint8(x)) == [0, 0, 0, 2, 2, 128, 255, 255, 0, 255, 0]  # half to even: 0.5->0, 1.5->2, 2.5->2
    assert list(to_uint8(np.arange(256) / 255.0)) == list(range(256))


# ----------------------------------------------------------------------------- layouts


def test_sots_layout_natural_order(tmp_path):
    touch_images(tmp_path / "hazy", [f"{i}_{k}.png" for i in (1400, 1401) for k in (10, 2, 1)])
    touch_images(tmp_path / "clear", ["1400.png", "1401.png", "9999.png"])
    pairs = find_pairs(tmp_path)
    assert stems(pairs) == [
        ("1400_1.png", "1400.png"), ("1400_2.png", "1400.png"), ("1400_10.png", "1400.png"),
        ("1401_1.png", "1401.png"), ("1401_2.png", "1401.png"), ("1401_10.png", "1401.png"),
    ]  # fmt: skip
    assert pairs[0] == Pair(tmp_path / "hazy" / "1400_1.png", tmp_path / "clear" / "1400.png", "1400_1")
    assert find_pairs(str(tmp_path)) == pairs


@pytest.mark.parametrize("clear_dir", ["gt", "GT", "Clear"])
def test_its_ots_names_and_clear_dir_names(tmp_path, clear_dir):
    touch_images(tmp_path / "hazy", ["1_1_0.74.png", "0002_0.8_0.2.jpg", "3_A_0.1.JPG", "notes.txt", ".1_1.png"])
    (tmp_path / "hazy" / "sub.png").mkdir()  # folders are ignored even with an image extension
    touch_images(tmp_path / clear_dir, ["1.png", "0002.JPG", "3.jpeg"])
    assert stems(find_pairs(tmp_path)) == [
        ("1_1_0.74.png", "1.png"), ("0002_0.8_0.2.jpg", "0002.JPG"), ("3_A_0.1.JPG", "3.jpeg"),
    ]  # fmt: skip


def test_same_name_pairs_and_preference(tmp_path):
    touch_images(tmp_path / "hazy", ["a.png", "b_2.png", "c_3.jpg"])
    touch_images(tmp_path / "GT", ["a.png", "b.png", "b_2.png", "c.png"])
    assert stems(find_pairs(tmp_path)) == [("a.png", "a.png"), ("b_2.png", "b_2.png"), ("c_3.jpg", "c.png")]


def test_hazy_only_layouts(tmp_path):
    touch_images(tmp_path / "a" / "hazy", ["x10.png", "x9.jpg"])
    assert stems(find_pairs(tmp_path / "a")) == [("x9.jpg", None), ("x10.png", None)]
    touch_images(tmp_path / "b", ["img2.png", "img1.bmp", "readme.md"])
    assert stems(find_pairs(tmp_path / "b")) == [("img1.bmp", None), ("img2.png", None)]
    assert find_pairs(tmp_path / "b" / "img2.png") == [Pair(tmp_path / "b" / "img2.png", None, "img2")]


def test_layout_errors(tmp_path):
    touch_images(tmp_path / "hazy", ["1_1.png", "2_1.png", "3_1.png", "3_2.png"])
    touch_images(tmp_path / "clear", ["1.png"])
    with pytest.raises(LayoutError) as info:
        find_pairs(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "2_1.png" in msg and "3_2.png" in msg and "1_1.png" not in msg
    assert isinstance(info.value, ValueError)

    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no hazy images"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(LayoutError, match="no such"):
        find_pairs(tmp_path / "nope")
    touch_images(tmp_path / "dup" / "hazy", ["x.png", "x.jpg"])
    with pytest.raises(LayoutError, match="share the name"):
        find_pairs(tmp_path / "dup")


def test_missing_partner_lists_only_first_few(tmp_path):
    touch_images(tmp_path / "hazy", [f"5_{k}.png" for k in range(1, 21)])
    touch_images(tmp_path / "gt", ["1.png"])
    with pytest.raises(LayoutError, match=r"20 hazy image.*5_1\.png, 5_2\.png.*and 15 more"):
        find_pairs(tmp_path)


@pytest.mark.skipif(not SOTS_MINI.is_dir(), reason=f"{SOTS_MINI} not found")
def test_sots_indoor_mini():
    pairs = find_pairs(SOTS_MINI)
    assert len(pairs) == 30
    assert {p.clear.stem for p in pairs} == {"1400", "1401", "1402"}
    assert all(p.hazy.stem.split("_")[0] == p.clear.stem for p in pairs)
    assert [p.name for p in pairs[:3]] == ["1400_1", "1400_2", "1400_3"] and pairs[9].name == "1400_10"


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture
def dataset(tmp_path):
    """Three clear images, two hazy versions each; returns (root, {hazy bytes: clear array})."""
    root = tmp_path / "data"
    (root / "hazy").mkdir(parents=True)
    (root / "clear").mkdir()
    lookup = {}
    for i, (name, off) in enumerate([("astronaut", 0), ("coffee", 0), ("astronaut", 40)]):
        clear = natural_rgb(name, offset=off)
        clear[:4, :6] = 255  # saturated pixels, so clamping the output matters
        Image.fromarray(clear).save(root / "clear" / f"{i}.png")
        for k, t in ((1, 0.8), (2, 0.6)):
            hazy = add_haze(clear, t)
            Image.fromarray(hazy).save(root / "hazy" / f"{i}_{k}.png")
            lookup[hazy.tobytes()] = clear
    return root, lookup


NOISE = np.random.default_rng(7).normal(0, 0.02, (64, 80, 3)) + 0.004


def oracle(lookup):
    """Predicts the clear image plus a fixed, known perturbation (some of it beyond [0, 1])."""
    return lambda hazy: (lookup[hazy.tobytes()] / 255.0 + NOISE).astype(np.float32)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_oracle(dataset, tmp_path):
    root, lookup = dataset
    pairs = find_pairs(root)
    predict = oracle(lookup)
    out = tmp_path / "out"
    m = ev.evaluate(predict, pairs, out, progress=False, extra={"checkpoint": "ck"})

    psnrs, ssims, mses, in_psnrs, in_ssims = [], [], [], [], []
    for p in pairs:
        hazy, clear = read_rgb(p.hazy), read_rgb(p.clear)
        pred = predict(hazy)
        u8 = np.round(np.clip(pred.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        psnrs.append(peak_signal_noise_ratio(clear, u8, data_range=255))
        ssims.append(sk_ssim(clear, u8))
        mses.append(np.mean((pred.astype(np.float64) * 255 - clear) ** 2))
        in_psnrs.append(peak_signal_noise_ratio(clear, hazy, data_range=255))
        in_ssims.append(sk_ssim(clear, hazy))
        np.testing.assert_array_equal(read_rgb(out / "images" / f"{p.name}.png"), u8)

    assert m["images"] == 6 and m["failed"] == [] and m["border_crop"] == 0 and m["checkpoint"] == "ck"
    assert m["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-6)
    assert m["ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)
    assert m["input_psnr"] == pytest.approx(np.mean(in_psnrs), abs=1e-6)
    assert m["input_ssim"] == pytest.approx(np.mean(in_ssims), abs=1e-4)
    expected_pmm = 20 * math.log10(255 / math.sqrt(np.mean(mses)))
    assert m["psnr_of_mean_mse"] == pytest.approx(expected_pmm, abs=1e-6)
    # the unclamped error is the known perturbation, up to float32 rounding of the output
    assert np.mean(mses) == pytest.approx(np.mean((NOISE * 255) ** 2), rel=1e-4)
    assert m["psnr_of_mean_mse"] < m["psnr"]  # clamping removes part of the error

    saved = json.loads((out / "metrics.json").read_text())
    for key in ("images", "psnr", "ssim", "psnr_of_mean_mse", "input_psnr", "input_ssim", "border_crop",
                "seconds_per_image", "failed", "checkpoint"):  # fmt: skip
        assert key in saved, key
    assert saved["psnr"] == pytest.approx(m["psnr"])

    rows = read_csv(out / "per_image.csv")
    assert list(rows[0]) == list(ev.CSV_COLUMNS)
    assert [r["name"] for r in rows] == [p.name for p in pairs]
    assert [float(r["psnr"]) for r in rows] == pytest.approx(psnrs, abs=1e-9)
    assert [float(r["mse_unclamped"]) for r in rows] == pytest.approx(mses, rel=1e-9)
    assert rows[0]["clear"] == str(pairs[0].clear)


def test_identity_predict_scores_like_the_input(dataset, tmp_path):
    root, _ = dataset
    m = ev.evaluate(lambda x: x / 255.0, find_pairs(root), tmp_path / "out", save_images=False, progress=False)
    assert m["psnr"] == pytest.approx(m["input_psnr"], abs=1e-9)
    assert m["ssim"] == pytest.approx(m["input_ssim"], abs=1e-9)
    assert not (tmp_path / "out" / "images").exists()


def test_border_crop(dataset, tmp_path):
    root, lookup = dataset
    pairs = find_pairs(root)[:2]
    predict = oracle(lookup)
    full = ev.evaluate(predict, pairs, tmp_path / "a", progress=False)
    cropped = ev.evaluate(predict, pairs, tmp_path / "b", border_crop=6, progress=False)
    assert cropped["border_crop"] == 6
    n = 6
    psnrs, ssims, mses = [], [], []
    for p in pairs:
        hazy, clear = read_rgb(p.hazy), read_rgb(p.clear)
        pred = predict(hazy)[n:-n, n:-n]
        clear = clear[n:-n, n:-n]
        u8 = to_uint8(pred)
        psnrs.append(peak_signal_noise_ratio(clear, u8, data_range=255))
        ssims.append(sk_ssim(clear, u8))
        mses.append(np.mean((pred.astype(np.float64) * 255 - clear) ** 2))
    assert cropped["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-6)
    assert cropped["ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)
    assert cropped["psnr_of_mean_mse"] == pytest.approx(20 * math.log10(255 / math.sqrt(np.mean(mses))), abs=1e-6)
    # the saturated top-left corner (clamped away in uint8) lies inside the crop: PSNR goes up
    assert cropped["psnr"] != pytest.approx(full["psnr"], abs=1e-3)
    # saved images are never cropped
    assert read_rgb(tmp_path / "b" / "images" / f"{pairs[0].name}.png").shape == (64, 80, 3)


def test_corrupted_files_are_skipped_and_listed(dataset, tmp_path):
    root, lookup = dataset
    (root / "hazy" / "1_1.png").write_text("not a png")
    blob = (root / "clear" / "2.png").read_bytes()
    (root / "clear" / "2.png").write_bytes(blob[: len(blob) // 3])
    log = io.StringIO()
    out = tmp_path / "out"
    m = ev.evaluate(oracle(lookup), find_pairs(root), out, progress=False, log=log)
    failed_files = [f["file"] for f in m["failed"]]
    bad_hazy, bad_clear = str(root / "hazy" / "1_1.png"), str(root / "clear" / "2.png")
    assert failed_files == [bad_hazy, bad_clear, bad_clear]  # 2.png is the partner of 2_1 and 2_2
    assert m["images"] == 3
    assert str(root / "hazy" / "1_1.png") in log.getvalue() and "truncated" in log.getvalue()
    rows = read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["0_1", "0_2", "1_2"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0_1.png", "0_2.png", "1_2.png"]
    assert json.loads((out / "metrics.json").read_text())["failed"] == m["failed"]


def test_larger_clear_is_centre_cropped_other_mismatches_fail(tmp_path):
    root = tmp_path / "data"
    big = natural_rgb(shape=(84, 100))
    clear_inner = big[10:-10, 10:-10]
    hazy = add_haze(clear_inner, 0.7)
    (root / "hazy").mkdir(parents=True)
    (root / "gt").mkdir()
    Image.fromarray(big).save(root / "gt" / "1.png")
    for k in (1, 2):
        Image.fromarray(hazy).save(root / "hazy" / f"1_{k}.png")
    Image.fromarray(big[:-1]).save(root / "gt" / "2.png")  # odd margin: not cropped
    Image.fromarray(hazy).save(root / "hazy" / "2_1.png")
    log = io.StringIO()
    m = ev.evaluate(lambda x: x / 255.0, find_pairs(root), tmp_path / "out", progress=False, log=log)
    assert m["images"] == 2 and m["clear_centre_cropped"] == 2
    assert m["input_psnr"] == pytest.approx(peak_signal_noise_ratio(clear_inner, hazy, data_range=255))
    assert log.getvalue().count("centre-cropped") == 1
    assert [f["file"] for f in m["failed"]] == [str(root / "gt" / "2.png")]
    assert "size mismatch" in m["failed"][0]["error"]


def test_no_ground_truth(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(natural_rgb()).save(tmp_path / "imgs" / "a.png")
    m = ev.evaluate(lambda x: x / 255.0, find_pairs(tmp_path / "imgs"), tmp_path / "out", progress=False)
    assert m["images"] == 1 and "psnr" not in m and m["failed"] == []
    assert (tmp_path / "out" / "images" / "a.png").is_file()
    row = read_csv(tmp_path / "out" / "per_image.csv")[0]
    assert row["clear"] == "" and row["psnr"] == "" and float(row["seconds"]) >= 0


def test_cli_exit_status(dataset, tmp_path, capsys):
    root, lookup = dataset
    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"")
    seen = []

    def factory(path):
        seen.append(path)
        return oracle(lookup)

    args = ["--checkpoint", str(ckpt), "--data", str(root), "--output", str(tmp_path / "o1")]
    assert ev.main(args, predict_factory=factory) == 0
    assert seen == [str(ckpt)]
    saved = json.loads((tmp_path / "o1" / "metrics.json").read_text())
    assert saved["checkpoint"] == str(ckpt) and saved["data"] == str(root) and saved["images"] == 6

    args = ["--checkpoint", str(ckpt), "--data", str(root), "--output", str(tmp_path / "o2"),
            "--limit", "2", "--no-images", "--border-crop", "6"]  # fmt: skip
    assert ev.main(args, predict_factory=factory) == 0
    saved = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert saved["images"] == 2 and saved["border_crop"] == 6 and not (tmp_path / "o2" / "images").exists()

    (root / "hazy" / "2_2.png").write_bytes(b"")
    capsys.readouterr()
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--output", str(tmp_path / "o3")]
    assert ev.main(args, predict_factory=factory) == 1
    assert str(root / "hazy" / "2_2.png") in capsys.readouterr().err
    saved = json.loads((tmp_path / "o3" / "metrics.json").read_text())
    assert saved["images"] == 5 and saved["failed"][0]["file"] == str(root / "hazy" / "2_2.png")

    missing = tmp_path / "missing.pth"
    assert ev.main(["--checkpoint", str(missing), "--data", str(root), "--output", str(tmp_path / "o4")], factory) == 2
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
