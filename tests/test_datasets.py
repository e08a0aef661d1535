"""minet_jax.datasets: the TFDS folder builders and the perceptual hash."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from minet_jax import datasets
from minet_jax.datasets import OverlapWarning, PairError, build_dataset
from minet_jax.image_io import ImageReadError, decode_rgb, read_rgb
from minet_jax.layouts import LayoutError


pytestmark = pytest.mark.usefixtures("no_tensorflow_no_home_cache")


def _examples(builder, split: str) -> list[dict]:
    return list(builder.as_data_source(split))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


# ----------------------------------------------------------------------------- builders


def test_its_builder_reads_pairs_in_natural_order(tmp_path, smooth_rgb, write_image):
    src = tmp_path / "ITS"
    clear = {i: write_image(src / "clear" / f"{i}.png", smooth_rgb(i)) for i in (2, 10)}
    hazy = {
        "10_1_0.74": write_image(src / "hazy" / "10_1_0.74.png", smooth_rgb(100)),
        "2_10_0.9": write_image(src / "hazy" / "2_10_0.9.png", smooth_rgb(101)),
        "2_2_0.8": write_image(src / "hazy" / "2_2_0.8.png", smooth_rgb(102)),
    }
    with pytest.warns(OverlapWarning, match="sots_dir"):
        builder = build_dataset("reside_its", src, tmp_path / "tfds")
    assert list(builder.info.splits) == ["train"]
    ex = _examples(builder, "train")
    assert [_text(e["name"]) for e in ex] == ["2_2_0.8", "2_10_0.9", "10_1_0.74"]
    assert [_text(e["scene"]) for e in ex] == ["2", "2", "10"]
    for e in ex:
        name = _text(e["name"])
        assert np.array_equal(decode_rgb(e["hazy"]), read_rgb(hazy[name]))
        assert np.array_equal(decode_rgb(e["clear"]), read_rgb(clear[int(_text(e["scene"]))]))
        assert (e["height"], e["width"]) == (12, 16)
    assert ex[0]["hazy"] == hazy["2_2_0.8"].read_bytes()  # stored as the file's bytes


def test_ots_builder_keeps_jpeg_bytes(tmp_path, smooth_rgb, write_image):
    src = tmp_path / "OTS"
    write_image(src / "clear" / "0001.jpg", smooth_rgb(1))
    h1 = write_image(src / "hazy" / "0001_0.8_0.2.jpg", smooth_rgb(2))
    write_image(src / "hazy" / "0001_1_0.04.jpg", smooth_rgb(3))
    ex = _examples(build_dataset("reside_ots", src, tmp_path / "tfds"), "train")
    assert [_text(e["name"]) for e in ex] == ["0001_0.8_0.2", "0001_1_0.04"]
    assert ex[0]["hazy"] == h1.read_bytes()
    assert np.array_equal(decode_rgb(ex[0]["hazy"]), read_rgb(h1))


def test_sots_builder_finds_indoor_and_crops_larger_ground_truth(tmp_path, smooth_rgb, write_image):
    src = tmp_path / "SOTS" / "indoor"  # the builder is given the SOTS folder, holding indoor/
    gt_big = smooth_rgb(7, 32, 36)  # 20 + 12 rows, 20 + 16 columns: 10 px borders like 640x480 vs 620x460
    write_image(src / "GT" / "1400.png", gt_big)
    write_image(src / "GT" / "1401.png", smooth_rgb(8))
    write_image(src / "hazy" / "1400_1.png", smooth_rgb(9))
    write_image(src / "hazy" / "1401_1.png", smooth_rgb(10))
    builder = build_dataset("sots_indoor", tmp_path / "SOTS", tmp_path / "tfds")
    assert list(builder.info.splits) == ["test"]
    ex = _examples(builder, "test")
    assert [_text(e["name"]) for e in ex] == ["1400_1", "1401_1"]
    assert np.array_equal(decode_rgb(ex[0]["clear"]), gt_big[10:22, 10:26])
    assert np.array_equal(decode_rgb(ex[1]["clear"]), smooth_rgb(8))

    # beyond the tolerated border: an error naming the file
    write_image(tmp_path / "S2" / "gt" / "1.png", smooth_rgb(1, 40, 16))
    write_image(tmp_path / "S2" / "hazy" / "1_1.png", smooth_rgb(2))
    with pytest.raises(PairError, match=r"1_1\.png.*12x16.*40x16"):
        build_dataset("sots_indoor", tmp_path / "S2", tmp_path / "tfds")


def test_paired_builder_same_names_with_train_and_val_folders(tmp_path, smooth_rgb, write_image):
    src = tmp_path / "mine"
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for k, n in enumerate(names):
            write_image(src / split / "clear" / f"{n}.png", smooth_rgb(k))
            write_image(src / split / "hazy" / f"{n}.png", smooth_rgb(k + 50))
    builder = build_dataset("paired", src, tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 1
    assert [_text(e["name"]) for e in _examples(builder, "validation")] == ["d"]
    # built once: the same folder is reused, a changed folder is rebuilt
    assert build_dataset("paired", src, tmp_path / "tfds").data_dir == builder.data_dir
    write_image(src / "train" / "clear" / "e.png", smooth_rgb(5))
    write_image(src / "train" / "hazy" / "e.png", smooth_rgb(6))
    rebuilt = build_dataset("paired", src, tmp_path / "tfds")
    assert rebuilt.data_dir != builder.data_dir and rebuilt.info.splits["train"].num_examples == 4


@pytest.mark.parametrize("problem", ["missing partner", "unreadable", "size mismatch", "no clear folder"])
def test_builder_errors_name_the_file(tmp_path, problem, smooth_rgb, write_image):
    src = tmp_path / "bad"
    write_image(src / "clear" / "1.png", smooth_rgb(1))
    write_image(src / "hazy" / "1_1.png", smooth_rgb(2))
    if problem == "missing partner":
        write_image(src / "hazy" / "2_1.png", smooth_rgb(3))
        expected, match = LayoutError, r"2_1\.png"
    elif problem == "unreadable":
        (src / "hazy" / "1_2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        expected, match = ImageReadError, r"1_2\.png"
    elif problem == "size mismatch":
        write_image(src / "hazy" / "1_3.png", smooth_rgb(4, 12, 18))
        expected, match = PairError, r"1_3\.png.*12x18.*1\.png.*12x16"
    else:
        (src / "clear" / "1.png").unlink()
        (src / "clear").rmdir()
        expected, match = PairError, r"1_1\.png.*no clear"
    with pytest.raises(expected, match=match) as info:
        build_dataset("paired", src, tmp_path / "tfds")
    assert isinstance(info.value, ValueError)


def test_its_scenes_shared_with_sots_are_left_out(tmp_path, smooth_rgb, write_image):
    its, sots = tmp_path / "ITS", tmp_path / "SOTS"
    for i in (1, 2, 3):
        write_image(its / "clear" / f"{i}.png", smooth_rgb(i, 40, 60))
        for k in (1, 2):
            write_image(its / "hazy" / f"{i}_{k}_0.8.png", smooth_rgb(10 * i + k, 40, 60))
    write_image(sots / "gt" / "7.png", smooth_rgb(2, 40, 60))  # an exact copy of ITS scene 2
    big = np.zeros((48, 68, 3), np.uint8)
    big[4:44, 4:64] = smooth_rgb(3, 40, 60)  # ITS scene 3 with a 4 px border, as SOTS GT is larger than ITS
    write_image(sots / "gt" / "8.png", big)
    write_image(sots / "gt" / "9.png", smooth_rgb(99, 40, 60))
    for i in (7, 8, 9):
        write_image(sots / "hazy" / f"{i}_1.png", smooth_rgb(200 + i, 40, 60))

    with pytest.warns(OverlapWarning, match=r"leaving out 2 ITS scene\(s\).*2\.png \(~ 7\.png\).*3\.png \(~ 8\.png\)"):
        builder = build_dataset("reside_its", its, tmp_path / "tfds", sots_dir=sots)
    assert [_text(e["name"]) for e in _examples(builder, "train")] == ["1_1_0.8", "1_2_0.8"]

    with warnings.catch_warnings():  # with SOTS holding none of the ITS scenes: no warning at all
        warnings.simplefilter("error", OverlapWarning)
        (sots / "gt" / "7.png").unlink()
        (sots / "gt" / "8.png").unlink()
        (sots / "hazy" / "7_1.png").unlink()
        (sots / "hazy" / "8_1.png").unlink()
        builder = build_dataset("reside_its", its, tmp_path / "tfds", sots_dir=sots)
    assert builder.info.splits["train"].num_examples == 6


def test_perceptual_hash_separates_scenes_and_tolerates_recompression():
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    hashes = [datasets.perceptual_hash(p) for p in photos]
    assert min(datasets.hash_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 60
    buf = io.BytesIO()
    Image.fromarray(photos[0]).resize((256, 256)).save(buf, format="JPEG", quality=70)
    again = datasets.perceptual_hash(np.asarray(Image.open(buf)))
    assert datasets.hash_distance(hashes[0], again) <= datasets.DEFAULT_MAX_HASH_DISTANCE // 2


def test_sots_mini_builds(sots_mini):
    root = sots_mini
    # a separate data_dir under the test's XDG cache: build_dataset's default
    builder = build_dataset("sots_indoor", root, None)
    hazy = sorted((root / "hazy").iterdir())
    assert builder.info.splits["test"].num_examples == len(hazy)
    first = _examples(builder, "test")[0]
    assert _text(first["name"]) == "1400_1" and (first["height"], first["width"]) == (460, 620)
    assert np.array_equal(decode_rgb(first["hazy"]), read_rgb(root / "hazy" / "1400_1.png"))
