"""python -m minet_jax.tools.convert: the authors' .pth to an orbax checkpoint directory."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from minet_jax import load_pretrained
from minet_jax.checkpoint import params_of
from minet_jax.tools import convert


def test_writes_a_checkpoint_holding_the_same_parameters(official_weights, tmp_path, capsys):
    out = tmp_path / "official"
    assert convert.main([str(official_weights), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    a, b = load_pretrained(official_weights), load_pretrained(out)
    assert b.config.to_dict() == a.config.to_dict()
    for x, y in zip(jax.tree.leaves(params_of(a)), jax.tree.leaves(params_of(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(SystemExit):  # an existing output is never overwritten
        convert.main([str(official_weights), str(out)])
    assert "refusing to overwrite" in capsys.readouterr().err


def test_missing_weights_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main([str(tmp_path / "nope.pth"), str(tmp_path / "out")])
    assert "weights file not found" in capsys.readouterr().err and not (tmp_path / "out").exists()
