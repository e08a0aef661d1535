"""minet-jax: MI-Net (implicit-Euler ODE network for single-image dehazing) in JAX / Flax NNX.

The public names below import lazily, so that light modules (image_io, layouts, the data
pipeline's worker processes) do not pay for importing JAX and Flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "MINet": "minet_jax.model",
    "count_params": "minet_jax.model",
    "dehaze": "minet_jax.inference",
    "load_pretrained": "minet_jax.checkpoint",
    "save_model": "minet_jax.checkpoint",
    "model_config": "minet_jax.config",
    "train_config": "minet_jax.config",
    "load_config": "minet_jax.config",
}
__all__ = ["MINet", "count_params", "dehaze", "load_config", "load_pretrained", "model_config", "save_model", "train_config"]

if TYPE_CHECKING:
    from minet_jax.checkpoint import load_pretrained as load_pretrained
    from minet_jax.checkpoint import save_model as save_model
    from minet_jax.config import load_config as load_config
    from minet_jax.config import model_config as model_config
    from minet_jax.config import train_config as train_config
    from minet_jax.inference import dehaze as dehaze
    from minet_jax.model import MINet as MINet
    from minet_jax.model import count_params as count_params


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minet_jax' has no attribute {name!r}")
