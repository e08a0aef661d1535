"""minet_jax.layouts: finding (hazy, clear) pairs in the common data-set folder layouts."""

from pathlib import Path

import pytest

from minet_jax.layouts import LayoutError, Pair, find_pairs

# ----------------------------------------------------------------------------- helpers


def touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def stems(pairs):
    return [(p.hazy.name, p.clear.name if p.clear else None) for p in pairs]


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


def test_sots_indoor_mini(sots_mini):
    pairs = find_pairs(sots_mini)
    assert len(pairs) == 30
    assert {p.clear.stem for p in pairs} == {"1400", "1401", "1402"}
    assert all(p.hazy.stem.split("_")[0] == p.clear.stem for p in pairs)
    assert [p.name for p in pairs[:3]] == ["1400_1", "1400_2", "1400_3"] and pairs[9].name == "1400_10"
