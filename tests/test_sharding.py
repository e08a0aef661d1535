"""Data-parallel training: the same steps on 1 and on 8 (simulated CPU) devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from minet_jax import load_pretrained
from minet_jax.checkpoint import params_of
from minet_jax.synthetic import make_synthetic_haze

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import jax
import train
from tests.test_train import load_config
cfg = load_config("test")
cfg.data.manual_dir, cfg.data.data_dir = {synth!r}, {tfds!r}
cfg.batch_size, cfg.num_steps = 8, 2
cfg.eval_every = cfg.checkpoint_every = cfg.image_every = 2
summary = train.train_and_evaluate(cfg, {workdir!r})
print("DEVICES", jax.device_count(), summary["devices"], summary["processes"])
"""


def _train_on(devices: int, synth: Path, tfds: Path, workdir: Path) -> str:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    code = _SCRIPT.format(root=str(ROOT), synth=str(synth), tfds=str(tfds), workdir=str(workdir))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_one_and_eight_devices_give_the_same_parameters(tmp_path):
    synth = make_synthetic_haze(tmp_path / "synth", hazy_per_clear=2, val_hazy_per_clear=1, size=64, val_size=(48, 64))
    runs = {}
    for n in (1, 8):
        out = _train_on(n, synth, tmp_path / "tfds", tmp_path / f"run{n}")
        assert f"DEVICES {n} {n} 1" in out
        assert json.loads((tmp_path / f"run{n}" / "summary.json").read_text())["devices"] == n
        runs[n] = jax.tree.leaves(params_of(load_pretrained(tmp_path / f"run{n}" / "checkpoints" / "2")))
    moved = 0.0
    for a, b in zip(runs[1], runs[8], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        moved = max(moved, float(np.abs(np.asarray(a)).max()))
    assert moved > 0
