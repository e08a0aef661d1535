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
    TensorBoard and `WORKDIR/images/`. Disabled (writes nothing) on all but one process.

    A run resumed at step `start` first drops what an earlier attempt logged after `start`
    (records of metrics.jsonl past it are removed, and TensorBoard is told to purge them), so
    every step is logged once, as an uninterrupted run would have."""

    def __init__(self, workdir: str | Path, enabled: bool = True, start: int = 0):
        self.workdir = Path(workdir)
        self.enabled = enabled
        if enabled:
            path = self.workdir / "metrics.jsonl"
            if path.exists():
                kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= start]
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
                tmp.replace(path)
            self.tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=start + 1 if start else None)
            self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._record: dict | None = None  # one JSONL record per step: scalars of a step are merged

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self.tb.add_scalar(k, v, step)
        if self._record is not None and self._record["step"] != int(step):
            self.flush()
        self._record = self._record or {"step": int(step)}
        self._record.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})

    def flush(self) -> None:
        """Write the current step's record (before a checkpoint, so a resume finds it)."""
        if self._record is not None:
            self.jsonl.write(json.dumps(self._record) + "\n")
            self.jsonl.flush()
            self._record = None

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
        self.flush()
        self.tb.close()
        self.jsonl.close()


def _step_of(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line of a killed run: dropped


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
