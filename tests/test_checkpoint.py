"""minet_jax.checkpoint: a saved model loads back identical, and bad paths fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from minet_jax import MINet, dehaze, load_pretrained, model_config, save_model


def test_checkpoint_round_trip(tmp_path):
    cfg = model_config("paper")
    cfg.T, cfg.eta = 3, 0.7
    m = MINet(cfg, rngs=nnx.Rngs(5))
    save_model(m, tmp_path / "ck")
    m2 = load_pretrained(tmp_path / "ck")
    assert m2.config == m.config
    x = np.random.default_rng(0).random((8, 10, 3)).astype(np.float32)
    np.testing.assert_array_equal(dehaze(m, x, clip=False), dehaze(m2, x, clip=False))
    with pytest.raises(FileExistsError):
        save_model(m, tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a minet-jax checkpoint"):
        load_pretrained(tmp_path)


def test_config_diff_ignores_how_the_same_values_are_computed():
    from minet_jax.checkpoint import IMPLEMENTATION_KEYS, config_diff

    saved = {"T": 8, "share_sep_impl": "shift", "conv_vjp": "explicit", "batch_split": 2, "remat": True,
             "solver": {"tol": 1e-3}}  # fmt: skip
    now = {"T": 8, "share_sep_impl": "xla", "conv_vjp": "lax", "batch_split": 1, "remat": False, "solver": {"tol": 1e-3}}
    assert set(IMPLEMENTATION_KEYS) == {"share_sep_impl", "conv_vjp", "batch_split", "remat"}
    assert config_diff(saved, now) == []
    assert config_diff(saved, {**now, "T": 4, "solver": {"tol": 1e-2}}) == [
        "T: checkpoint 8, config 4", "solver.tol: checkpoint 0.001, config 0.01"]  # fmt: skip
