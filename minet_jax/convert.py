"""Convert the authors' PyTorch weights to this port's parameters, and to an orbax checkpoint.

    python -m minet_jax.convert WEIGHTS.pth OUT_DIR

The `.pth` is read by `torch_pickle` (no PyTorch, no pickled code run).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from minet_jax.model import MINet
from minet_jax.model_config import model_config

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


def _relayout(w: np.ndarray, kind: str) -> np.ndarray:
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
        out[path] = np.ascontiguousarray(_relayout(np.asarray(w, np.float32), kind))
    return out


def load_torch_weights(path: str | Path, **overrides) -> MINet:
    """The official MI-Net holding the weights of a PyTorch `.pth` file; `overrides` change
    settings that hold no parameters (e.g. dtype="bfloat16", T=12, solver={"forward": ...})."""
    from minet_jax.checkpoint import model_from_flat_params, with_overrides  # noqa: PLC0415
    from minet_jax.torch_pickle import load_torch_file  # noqa: PLC0415

    flat = torch_to_flat_params(load_torch_file(path))
    return model_from_flat_params(with_overrides(model_config("official"), overrides), flat, source=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="the authors' .pth file (legacy or zip format)")
    parser.add_argument("out_dir", help="orbax checkpoint directory to write (must not exist)")
    args = parser.parse_args(argv)
    from minet_jax.checkpoint import save_model  # noqa: PLC0415 (keeps `--help` fast)

    if not Path(args.weights).is_file():
        parser.error(f"weights file not found: {args.weights}")
    model = load_torch_weights(args.weights)
    out = save_model(model, args.out_dir)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
