"""evaluate.py: the evaluation pipeline and its CLI (with oracle predictors, no model)."""

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluate as ev
from minet_jax.image_io import read_rgb, to_uint8
from minet_jax.layouts import find_pairs

# ----------------------------------------------------------------------------- helpers


def sk_ssim(a, b):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2
    )


def add_haze(clear: np.ndarray, t: float) -> np.ndarray:
    return np.round(clear * t + 230 * (1 - t)).astype(np.uint8)


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture
def dataset(tmp_path, natural_rgb):
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


def test_larger_clear_is_centre_cropped_other_mismatches_fail(tmp_path, natural_rgb):
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


def test_no_ground_truth(tmp_path, natural_rgb):
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


def test_set_is_rooted_at_the_training_config_and_takes_model_fields_only():
    assert ev.model_overrides(["model.dtype=bfloat16", "model.solver.tol=1e-4", "model.T=4"]) == {
        "dtype": "bfloat16", "solver": {"tol": 1e-4}, "T": 4,
    }  # fmt: skip
    with pytest.raises(ev.ConfigError, match="evaluate.py takes model settings only"):
        ev.model_overrides(["lr=1"])
    with pytest.raises(ev.ConfigError, match="did you mean model.dtype"):
        ev.model_overrides(["model.dtyp=bfloat16"])


def test_a_non_empty_output_is_refused_and_overwrite_replaces_only_an_evaluation(dataset, tmp_path, capsys):
    root, lookup = dataset
    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"")
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--output", str(out)]
    assert ev.main(args, predict_factory=lambda _: oracle(lookup)) == 0
    stale = out / "images" / "stale.png"
    stale.write_bytes(b"an earlier run's image")
    capsys.readouterr()
    assert ev.main([*args, "--limit", "1"], predict_factory=lambda _: oracle(lookup)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --output {out} is not empty (holds images, metrics.json, per_image.csv)")
    assert stale.exists()  # nothing lost
    assert ev.main([*args, "--limit", "1", "--overwrite"], predict_factory=lambda _: oracle(lookup)) == 0
    assert not stale.exists() and json.loads((out / "metrics.json").read_text())["images"] == 1
    assert len(list((out / "images").iterdir())) == 1
    (out / "notes.txt").write_text("mine")
    assert ev.main([*args, "--overwrite"], predict_factory=lambda _: oracle(lookup)) == 2
    assert "holds files evaluate.py did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").exists() and (out / "per_image.csv").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left pending
def test_an_unreadable_checkpoint_is_named_in_one_line(dataset, tmp_path, capsys):
    from minet_jax.checkpoint import build_model, save_model

    root, _ = dataset
    ckpt = save_model(build_model({"variant": "official", "channels": 8, "T": 1}), tmp_path / "ckpt")
    damaged = max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert ev.main(["--checkpoint", str(ckpt), "--data", str(root), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot read checkpoint {ckpt}: ") and "\n" not in err
    assert not (tmp_path / "o").exists()
