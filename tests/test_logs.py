"""minet_jax.logs: the JSONL and TensorBoard scalars, and the hazy | dehazed | clear grid."""

from __future__ import annotations

import json
import math

import numpy as np

from minet_jax.image_io import read_rgb
from minet_jax.logs import MetricLog, image_grid


def test_scalars_go_to_jsonl_with_non_finite_as_null(tmp_path):
    log = MetricLog(tmp_path)
    log.scalars(10, {"loss": np.float32(0.5), "psnr": math.inf})
    log.scalars(20, {"loss": 0.25})
    path = log.image(20, "val/grid", np.zeros((4, 6, 3), np.uint8))
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 10, "loss": 0.5, "psnr": None}, {"step": 20, "loss": 0.25}]
    assert path == tmp_path / "images" / "val_grid_0000020.png" and read_rgb(path).shape == (4, 6, 3)
    assert any(p.stat().st_size > 0 for p in (tmp_path / "tensorboard").iterdir())


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricLog(tmp_path / "other", enabled=False)
    log.scalars(1, {"loss": 1.0})
    assert log.image(1, "x", np.zeros((2, 2, 3), np.uint8)) is None
    log.close()
    assert not (tmp_path / "other").exists()


def test_grid_places_each_image_in_its_cell():
    a, b, c = (np.full((3, 5, 3), v, np.float32) for v in (0.0, 0.5, 1.0))
    small = np.full((2, 4, 3), 0.2, np.float32)
    grid = image_grid([(a, b, c), (small, small, small)], gap=2)
    assert grid.shape == (2 * 3 + 2, 3 * 5 + 2 * 2, 3) and grid.dtype == np.uint8
    assert (grid[0:3, 0:5] == 0).all() and (grid[0:3, 7:12] == 128).all() and (grid[0:3, 14:19] == 255).all()
    assert (grid[3:5] == 255).all()  # the white gap
    assert (grid[5:7, 0:4] == 51).all() and (grid[7, 0:4] == 255).all()  # smaller image, padded white


def test_one_record_per_step_and_a_resume_drops_what_came_after_its_step(tmp_path):
    log = MetricLog(tmp_path)
    for step in (2, 4, 6):
        log.scalars(step, {"loss": 1.0 / step})
        log.scalars(step, {"val_psnr": 10.0 + step})  # logged apart, one record
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # the torn last line of a killed run
    log = MetricLog(tmp_path, start=4)  # resumed from the checkpoint at step 4
    log.scalars(6, {"loss": 0.5})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert rows[1] == {"step": 4, "loss": 0.25, "val_psnr": 14.0} and rows[2] == {"step": 6, "loss": 0.5}
