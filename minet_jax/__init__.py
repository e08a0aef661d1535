"""minet-jax: MI-Net (implicit-Euler ODE network for single-image dehazing) in JAX / Flax NNX."""

from minet_jax.checkpoint import load_pretrained, save_model
from minet_jax.inference import dehaze
from minet_jax.model import MINet, count_params
from minet_jax.model_config import model_config

__all__ = ["MINet", "count_params", "dehaze", "load_pretrained", "model_config", "save_model"]
