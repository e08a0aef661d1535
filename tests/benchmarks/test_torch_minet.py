"""benchmarks/torch_minet.py is the authors' network: it reproduces their reference outputs, and
minet-jax agrees with it on random weights and odd inputs. Runs only where torch is installed
(it is never a requirement)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (benchmark-only: pip install 'torch==2.13.0+cpu')")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import torch_minet  # noqa: E402

from minet_jax.checkpoint import model_from_flat_params  # noqa: E402
from minet_jax.config import model_config  # noqa: E402
from minet_jax.convert import torch_to_flat_params  # noqa: E402


def test_reproduces_the_authors_reference(shared_file):
    shared = shared_file("reference").parent
    for row in torch_minet.check_reference(shared):
        assert row["relative_error"] < 1e-5 and row["max_abs_error"] < 0.01, row  # the reference README's bounds


def test_minet_jax_agrees_on_random_weights():
    torch.manual_seed(1)
    net = torch_minet.MINet().eval()
    with torch.no_grad():  # move every parameter off its init, ShareSepConv and the scalars included
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flat = torch_to_flat_params({k: v.numpy() for k, v in net.state_dict().items()})
    model = model_from_flat_params(model_config("official"), flat, source="torch_minet")
    rgb = np.random.default_rng(0).uniform(0, 255, (24, 40, 3)).astype(np.float32)
    want = torch_minet.run_rgb(net, rgb)
    got = np.asarray(model(rgb[None, ..., ::-1].copy()))[0, ..., ::-1]
    # float32 through ~60 normalised layers: relative error a few hundred ulps of the output's scale
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
