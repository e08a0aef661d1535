"""The map from the authors' PyTorch parameter names and layouts to this port's parameters.

Pure data: names in, {flax dotted path: array} out. `checkpoint.load_torch_weights` reads the
`.pth` (through torch_pickle) and applies it; `python -m minet_jax.tools.convert` writes an orbax
checkpoint from it.
"""

from __future__ import annotations

import re

import numpy as np

# Buffers PyTorch may store that carry no parameters of this network.
_IGNORED = re.compile(r".*\.(running_mean|running_var|num_batches_tracked)$")
_BLOCKS = {"res1": "blocks.0.f", "res2": "blocks.1.f", "res4": "blocks.2.f"}
_ATTENTION = {"layer1.0": "attention.c0", "layer1.2": "attention.l2", "layer1.3": "attention.l3"}


def _target(name: str) -> tuple[str, str]:
    """(flax path, kind of layout change) for one PyTorch parameter name."""
    module, leaf = name.rsplit(".", 1)
    first, _, rest = module.partition(".")
    if first in _BLOCKS:
        module = _BLOCKS[first] + ("." + rest if rest else "")
    if module in ("layer1.2", "layer1.3"):
        return f"{_ATTENTION[module]}_{'w' if leaf == 'weight' else 'b'}", "copy"
    module = _ATTENTION.get(module, module)
    if module.split(".")[-1].startswith("norm"):
        return f"{module}.{'scale' if leaf == 'weight' else 'bias'}", "copy"
    if leaf == "bias":
        return f"{module}.bias", "copy"
    if module.split(".")[-1].startswith("pre_conv"):
        return f"{module}.kernel", "sharesep"
    if module == "deconv3":
        return f"{module}.kernel", "transposed_conv"
    return f"{module}.kernel", "conv"


def relayout(w: np.ndarray, kind: str) -> np.ndarray:
    """A PyTorch weight in this port's layout: `kind` is "conv", "transposed_conv", "sharesep" or "copy"."""
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return w.transpose(2, 3, 1, 0)
    if kind == "transposed_conv":  # (in, out, kh, kw) -> flipped (kh, kw, in, out)
        return w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
    if kind == "sharesep":  # (1, 1, k, k) -> (k, k)
        return w[0, 0]
    return w


def torch_to_flat_params(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map an official-network PyTorch state dict to {flax dotted path: array}."""
    out = {}
    for name, w in state_dict.items():
        if _IGNORED.match(name):
            continue
        path, kind = _target(name)
        out[path] = np.ascontiguousarray(relayout(np.asarray(w, np.float32), kind))
    return out
