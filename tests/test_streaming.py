"""minet_jax.streaming: the stage-by-stage tiled executor gives the whole-image output."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import MINet, dehaze, model_config, streaming
from minet_jax.image_io import read_rgb
from minet_jax.inference import to_network


def _small(variant: str, T: int = 2) -> MINet:
    cfg = model_config(variant)
    cfg.T = T
    return MINet(cfg, rngs=nnx.Rngs(5))


def _input(variant: str, h: int, w: int) -> np.ndarray:
    x = np.random.default_rng(h * w).uniform(0, 1, (h, w, 3)).astype(np.float32)
    return np.asarray(to_network(x, model_config(variant).input_format))


def _close(y: np.ndarray, ref: np.ndarray) -> None:
    # The bound, 1e-4 of the output's range: the executor sums each norm's statistics
    # per tile and merges them in float64, a different order of float32 additions than one
    # whole-image reduction, so agreement is to rounding (~1e-6 relative, seen), not bitwise.
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4 * float(np.ptp(ref)))


@pytest.mark.parametrize(
    ("variant", "size", "tile"),
    [("official", (37, 51), 16), ("official", (37, 51), 32), ("paper", (30, 44), 32), ("paper", (22, 18), 64)],
)
def test_stream_equals_the_whole_image(variant, size, tile):
    """Odd and even sizes, tiles smaller than the image (many edge tiles) and one larger."""
    m = _small(variant)
    x = _input(variant, *size)
    ref = np.asarray(m(x[None]))[0]
    _close(streaming.stream(m, x, tile=tile), ref)


def test_stream_with_the_authors_weights(official_model, sots_mini):
    hazy = read_rgb(sots_mini / "hazy" / "1400_1.png")[:90, :130] / 255.0
    x = np.asarray(to_network(hazy.astype(np.float32), "bgr255"))
    ref = np.asarray(official_model(x[None]))[0]
    _close(streaming.stream(official_model, x, tile=32), ref)


def test_spilled_maps_give_the_same_output_and_leave_no_files(tmp_path, monkeypatch):
    """Also with every copy split over three threads (the real sizes' path): the same bits."""
    m = _small("official", T=1)
    x = _input("official", 26, 30)
    in_ram = streaming.stream(m, x, tile=16)
    spilled = streaming.stream(m, x, tile=16, spill=tmp_path / "spill")
    np.testing.assert_array_equal(spilled, in_ram)
    monkeypatch.setattr(streaming, "COPY_THREADS", 3)
    monkeypatch.setattr(streaming, "PARALLEL_BYTES", 0)
    np.testing.assert_array_equal(streaming.stream(m, x, tile=16), in_ram)
    np.testing.assert_array_equal(streaming.stream(m, x, tile=16, spill=tmp_path / "spill"), in_ram)
    assert list((tmp_path / "spill").iterdir()) == []


@pytest.mark.parametrize("threads", [1, 3])
def test_file_map_reads_and_writes_sub_rectangles(tmp_path, monkeypatch, threads):
    """FileMap's pwrite / preadv of row segments against the same writes to a numpy array, in one
    thread and split by rows over three (blocks of 4 to 8 rows: uneven parts)."""
    monkeypatch.setattr(streaming, "COPY_THREADS", threads)
    monkeypatch.setattr(streaming, "PARALLEL_BYTES", 0)
    rng = np.random.default_rng(2)
    ref = np.zeros((13, 11, 3), np.float32)
    fm = streaming.FileMap(tmp_path / "m.f32", ref.shape)
    for r, c, h, w in ((0, 0, 5, 4), (5, 4, 8, 7), (0, 4, 5, 7), (5, 0, 8, 4)):
        block = rng.normal(size=(h, w + 2, 3)).astype(np.float32)[:, 1 : w + 1]  # a strided view, as a crop
        fm.write(r, c, block)
        ref[r : r + h, c : c + w] = block
    out = np.full((6, 9, 3), np.nan, np.float32)
    fm.read(4, 1, out[1:, 2:7])  # a window's sub-rectangle: its rows are contiguous, the block not
    np.testing.assert_array_equal(out[1:, 2:7], ref[4:9, 1:6])
    assert np.isnan(out[0]).all() and np.isnan(out[:, :2]).all() and np.isnan(out[:, 7:]).all()
    np.testing.assert_array_equal(fm.to_array(), ref)
    fm.close()
    assert not (tmp_path / "m.f32").exists()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_copy_writes_exactly_the_destination(monkeypatch, threads):
    """_copy into a strided sub-rectangle: every row range lands where it belongs, nothing around
    it is touched (7 rows over 2 or 3 threads: uneven parts)."""
    monkeypatch.setattr(streaming, "COPY_THREADS", threads)
    monkeypatch.setattr(streaming, "PARALLEL_BYTES", 0)
    rng = np.random.default_rng(3)
    src = rng.normal(size=(9, 12, 5)).astype(np.float32)[1:8, 2:10]
    dst = np.full((11, 13, 5), np.nan, np.float32)
    streaming._copy(dst[2:9, 3:11], src)
    np.testing.assert_array_equal(dst[2:9, 3:11], src)
    outside = np.ones(dst.shape, bool)
    outside[2:9, 3:11] = False
    assert np.isnan(dst[outside]).all()


@pytest.mark.parametrize("group", [1, 3])
def test_each_call_sees_tiles_never_the_image(monkeypatch, group):
    """Every array handed to the compiled stage is a tile plus its halo, never the image; a call
    holds `TILES_PER_CALL` tiles (one on an accelerator), edge and full tiles mixed, and gives
    the whole image's output."""
    m = _small("official", T=1)
    x = _input("official", 62, 74)  # edge tiles, and 20 tiles: groups of 3 leave 2
    shapes = []
    tile_fn = streaming._tile

    def spy(graphdef, state, windows, *args, **kwargs):
        calls.append(len(windows))
        shapes.extend(w.shape[:2] for tile in windows for w in tile)
        return tile_fn(graphdef, state, windows, *args, **kwargs)

    calls = []
    monkeypatch.setattr(streaming, "_tile", spy)
    monkeypatch.setattr(streaming, "TILES_PER_CALL", group)
    _close(streaming.stream(m, x, tile=16), np.asarray(m(x[None]))[0])
    halo = 2 * max(m.config.dilations) - 1 + 2  # the widest stage: ShareSepConv then the dilated conv
    assert shapes and max(max(s) for s in shapes) <= 16 + 2 * halo
    assert max(max(s) for s in shapes) < 64
    assert max(calls) == group


def test_dehaze_tiles_exactly_by_default():
    m = _small("official", T=1)
    u8 = np.random.default_rng(2).integers(0, 256, (33, 40, 3), dtype=np.uint8)
    whole = dehaze(m, u8, clip=False)
    _close(dehaze(m, u8, clip=False, tile=16), whole)


def test_chan_merge_matches_numpy_in_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (1000, 4))
    acc = streaming.Moments()
    for part in np.split(x, [10, 11, 400, 999]):
        acc.add(len(part), part.mean(0), ((part - part.mean(0)) ** 2).sum(0))
    mean, var = acc.stats()
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, x.var(0), rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_tile_moments_match_numpy_in_float64(masked):
    """A tile's statistics over its crop of a window-sized output: by the ring subtraction (a full
    tile) and by the mask (an edge tile), against numpy in float64 on the same float32 values."""
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, (41, 37, 5)).astype(np.float32)
    crop = (3, 2, 34, 32)  # rows 3..36, columns 2..33: a ring on every side
    r0, c0, th, tw = crop
    mask = np.zeros((th, tw, 1), np.float32)
    mask[: th - 5, : tw - 7] = 1.0
    n, mean, m2 = streaming._moments(jnp.asarray(x), crop, jnp.asarray(mask) if masked else None)
    t = x[r0 : r0 + th, c0 : c0 + tw].astype(np.float64)
    t = t[: th - 5, : tw - 7] if masked else t
    t = t.reshape(-1, 5)
    ref_mean, ref_m2 = t.mean(0), ((t - t.mean(0)) ** 2).sum(0)
    assert float(n) == len(t)
    # float32 sums of ~1e3 terms: relative error ~1e-7 * sqrt(terms) each, and the ring
    # subtraction adds one rounding of the window's sum (mean ~2, std 3: no cancellation to speak of)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-5 * float(np.abs(t).max()))
    np.testing.assert_allclose(m2, ref_m2, rtol=1e-5)


def test_what_cannot_be_streamed_is_refused():
    cfg = model_config("official")
    cfg.T = 1
    cfg.solver.forward = "anderson"
    m = MINet(cfg)
    x = np.zeros((20, 20, 3), np.float32)
    with pytest.raises(ValueError, match="forward='unrolled'"):
        streaming.stream(m, x, tile=16)
    with pytest.raises(ValueError, match="forward='unrolled'"):
        dehaze(m, x, tile=16)
    with pytest.raises(ValueError, match="even number of pixels >= 8"):
        streaming.stream(_small("official", T=1), x, tile=15)
