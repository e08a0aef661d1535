"""Training logs without TensorFlow: TensorBoard event files (tensorboardX) and a JSONL of the same
scalars, plus hazy | dehazed | clear image grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter

from minet_jax.image_io import to_uint8, write_png


class MetricLog:
    """Writes scalars to `WORKDIR/tensorboard/` and `WORKDIR/metrics.jsonl`, images to both
    TensorBoard and `WORKDIR/images/`. Disabled (writes nothing) on all but one process."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.workdir = Path(workdir)
        self.enabled = enabled
        if enabled:
            self.tb = SummaryWriter(str(self.workdir / "tensorboard"))
            self.jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self.tb.add_scalar(k, v, step)
        record = {"step": int(step), **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def image(self, step: int, name: str, rgb_uint8: np.ndarray) -> Path | None:
        if not self.enabled:
            return None
        self.tb.add_image(name, rgb_uint8, step, dataformats="HWC")
        path = self.workdir / "images" / f"{name.replace('/', '_')}_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, rgb_uint8)
        return path

    def close(self) -> None:
        if not self.enabled:
            return
        self.tb.close()
        self.jsonl.close()


def image_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], gap: int = 4) -> np.ndarray:
    """One row per example: hazy | dehazed | clear (float RGB [0, 1]), white gaps, uint8."""
    height = max(r[0].shape[0] for r in rows)
    width = max(r[0].shape[1] for r in rows)
    grid = np.full((len(rows) * (height + gap) - gap, 3 * (width + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            h, w = img.shape[:2]
            y, x = i * (height + gap), j * (width + gap)
            grid[y : y + h, x : x + w] = to_uint8(np.asarray(img))
    return grid
