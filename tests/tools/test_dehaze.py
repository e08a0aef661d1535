"""minet_jax.tools.dehaze: one photo in, its dehazed PNG beside it."""

from __future__ import annotations

import numpy as np
import pytest

from minet_jax import dehaze, load_pretrained
from minet_jax.checkpoint import build_model, save_model
from minet_jax.image_io import read_rgb, to_uint8
from minet_jax.tools import dehaze as tool


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build_model({"variant": "official", "channels": 8, "T": 1, "input_format": "rgb01", "init": "identity"})
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model")


def test_writes_the_dehazed_photo_beside_it_and_never_replaces_one(checkpoint, tmp_path, natural_rgb, capsys):
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.fromarray(natural_rgb()[:37, :50]).save(photo, quality=95)  # odd size, JPEG
    assert tool.main(["--checkpoint", str(checkpoint), str(photo)]) == 0
    out = tmp_path / "photo_dehazed.png"
    expected = to_uint8(dehaze(load_pretrained(checkpoint), read_rgb(photo)))
    np.testing.assert_array_equal(read_rgb(out), expected)
    assert f"{photo} -> {out}" in capsys.readouterr().out

    out.write_bytes(b"mine")
    assert tool.main(["--checkpoint", str(checkpoint), str(photo)]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: {out} exists (pass --overwrite to replace it, or choose --suffix)"
    )
    assert out.read_bytes() == b"mine"
    assert (
        tool.main(["--checkpoint", str(checkpoint), str(photo), "--overwrite", "--output-dir", str(tmp_path / "o")])
        == 0
    )
    assert (tmp_path / "o" / "photo_dehazed.png").is_file()


def test_bad_inputs_are_one_line(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert tool.main(["--checkpoint", str(checkpoint), str(broken)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {broken}: expected") and "\n" not in err
    assert tool.main(["--checkpoint", str(tmp_path / "none.pth"), str(broken)]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path / 'none.pth'}"
